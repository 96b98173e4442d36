"""Top-1 on a fixed subset of the training images, each epoch: the generalization gap's curve.

The epoch's `top1` log is measured on augmented images while the weights change, so it
is no fair match for `val_top1`. This callback predicts a fixed subset of the training
images the way validation does (inference mode: the in-graph augmentation, dropout and
batch statistics are off), so train_eval_top1 − val_top1 is the gap between images the
model was fitted to and images it never saw.
"""

import time

import keras
import numpy as np

TRAIN_EVAL_KEY = "train_eval_top1"
# Fixed, so every run and seed of a sweep draws its subset the same way.
SUBSET_SEED = 0


def train_subset(labels: np.ndarray, size: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """Sorted indices of `size` training images (all of them when there are fewer)."""
    if size >= len(labels):
        return np.arange(len(labels))
    return np.sort(np.random.default_rng(seed).choice(len(labels), size, replace=False))


class TrainEvalTop1(keras.callbacks.Callback):
    """Adds `train_eval_top1` (in %, like val_top1) to each epoch's logs, with
    `train_eval_images` (the subset's size) and `train_eval_seconds` (what the pass cost: one
    inference over the subset).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int):
        super().__init__()
        self.images = images
        self.labels = np.asarray(labels)
        self.batch_size = batch_size

    @classmethod
    def from_split(cls, split, size: int, batch_size: int) -> "TrainEvalTop1":
        index = train_subset(split.labels, size)
        return cls(split.images[index], split.labels[index], batch_size)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or len(self.labels) == 0:
            return
        start = time.perf_counter()
        logits = self.model.predict(self.images, batch_size=self.batch_size, verbose=0)
        predicted = np.argmax(np.asarray(logits), axis=1)
        logs[TRAIN_EVAL_KEY] = 100 * float(np.mean(predicted == self.labels))
        logs["train_eval_images"] = float(len(self.labels))
        logs["train_eval_seconds"] = time.perf_counter() - start
