"""Training batches in a new order every epoch, reproducible from the run's seed.

`model.fit(images, labels, shuffle=True)` is not enough: under the TensorFlow backend with
a global seed set (train.py sets one), Keras draws its permutation with a seeded op that
restarts with each epoch's iterator, so every epoch repeats the first epoch's batches in
the same order. PyTorch's DataLoader, and the recipes the presets copy, reshuffle each
epoch. Here epoch e's order is drawn from (seed, e), so a resumed run sees the orders an
uninterrupted one would.
"""

import math

import keras
import numpy as np


class ShuffledBatches(keras.utils.PyDataset):
    """The (uint8 images, labels) batches of epochs first_epoch .. end_epoch - 1, in one
    sequence: pass `steps_per_epoch` and `shuffle=False` to fit. Each batch is a function
    of its index alone, as Keras and tf.data fetch ahead of the epoch hooks."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        first_epoch: int,
        end_epoch: int,
    ):
        super().__init__()
        self.images, self.labels = images, labels
        self.batch_size, self.seed = batch_size, seed
        self.first_epoch, self.end_epoch = first_epoch, end_epoch
        self.steps_per_epoch = math.ceil(len(labels) / batch_size)
        self._cached = (None, None)  # (epoch, its order): batches come epoch by epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        cached_epoch, order = self._cached
        if cached_epoch != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.labels))
            self._cached = (epoch, order)
        return order

    def __len__(self) -> int:
        return self.steps_per_epoch * (self.end_epoch - self.first_epoch)

    def __getitem__(self, index: int):
        epoch, step = divmod(index, self.steps_per_epoch)
        order = self.epoch_order(self.first_epoch + epoch)
        rows = order[step * self.batch_size : (step + 1) * self.batch_size]
        return self.images[rows], self.labels[rows]
