"""Adds the learning rate and training speed to each epoch's logs."""

import math
import time

import keras


class EpochStats(keras.callbacks.Callback):
    """Puts `lr`, `epoch_seconds` and `images_per_second` into the epoch logs.

    Placed first in the callback list, so every later callback (checkpoints, the MLflow
    logger) sees them. images/s counts the training steps, up to the start of validation.
    It has no per-batch hook on purpose: any callback with one makes Keras wait for every
    step to finish on the device instead of dispatching the next one.
    """

    def __init__(self, train_images: int):
        super().__init__()
        self.train_images = train_images

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs=None):
        if self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        end = time.perf_counter()
        train_seconds = max((self._train_end or end) - self._epoch_start, 1e-9)
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["epoch_seconds"] = end - self._epoch_start
        logs["images_per_second"] = self.train_images / train_seconds


class StopOnDivergence(keras.callbacks.Callback):
    """Stops training after an epoch whose loss is NaN or infinite.

    keras.callbacks.TerminateOnNaN checks every batch, and its per-batch hook makes each
    step wait for the device; an epoch-level check costs nothing.
    """

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite((logs or {}).get("loss", 0.0)):
            self.model.stop_training = True
