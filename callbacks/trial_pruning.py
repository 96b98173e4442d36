"""Optuna pruning from inside Keras' fit: report each epoch, stop when the trial is pruned."""

import math

import keras

# The trial's user attribute that says it was pruned, and after how many epochs.
PRUNED_AT = "pruned_at_epoch"


class TrialPruning(keras.callbacks.Callback):
    """Reports `monitor` of every epoch to an Optuna trial (step = epoch, from 0).

    When the study's pruner says so, it marks the trial (`pruned_at_epoch`, the epochs it ran)
    and stops training at the end of that epoch. The sweeper then tells the study the trial
    was pruned; the caller ends the tracked run. The last of the run's `epochs` is never
    pruned: stopping there saves nothing, and the study gets a complete trial.
    """

    def __init__(self, trial, epochs: int, monitor: str = "val_top1"):
        super().__init__()
        self.trial = trial
        self.epochs = epochs
        self.monitor = monitor
        self.pruned_at: int | None = None

    @property
    def pruned(self) -> bool:
        return self.pruned_at is not None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return  # a diverged epoch: StopOnDivergence and the failure path handle it
        self.trial.report(float(value), epoch)
        if epoch + 1 < self.epochs and self.trial.should_prune():
            self.pruned_at = epoch + 1
            self.trial.set_user_attr(PRUNED_AT, self.pruned_at)
            self.model.stop_training = True
