"""Adds the learning rate and training speed to each epoch's logs."""

import time

import keras


class EpochStats(keras.callbacks.Callback):
    """Puts `lr`, `epoch_seconds` and `images_per_second` into the epoch logs.

    Placed first in the callback list, so every later callback (checkpoints, the MLflow
    logger) sees them. images/s counts training steps only, not validation.
    """

    def __init__(self, train_images: int):
        super().__init__()
        self.train_images = train_images

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._last_step_end = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last_step_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        train_seconds = max(self._last_step_end - self._epoch_start, 1e-9)
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["epoch_seconds"] = time.perf_counter() - self._epoch_start
        logs["images_per_second"] = self.train_images / train_seconds
