"""Learning-rate schedules named by conf/schedule/*.yaml.

Each factory gets the peak `lr` and the run's length and returns a `Schedule`: what the
optimizer takes as its learning rate (a float or a per-step Keras schedule) plus the
callbacks the schedule needs (ReduceLROnPlateau reacts to validation, not to steps).
"""

from dataclasses import dataclass, field

import keras
from keras.optimizers import schedules

from callbacks.monitor import monitor_mode


@dataclass
class Schedule:
    learning_rate: float | schedules.LearningRateSchedule
    callbacks: list[keras.callbacks.Callback] = field(default_factory=list)


def _warmup_steps(epochs: float, steps_per_epoch: int, total: int) -> int:
    # Short runs (smoke, the head stage of a fine-tune) still get a decay phase.
    return min(int(round(epochs * steps_per_epoch)), max(total - 1, 0))


def constant(*, lr: float, steps_per_epoch: int, epochs: int) -> Schedule:
    return Schedule(lr)


def cosine(
    *,
    lr: float,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float = 5,
    warmup_start: float = 0.01,
    final_scale: float = 0.0,
) -> Schedule:
    total = steps_per_epoch * epochs
    warmup = _warmup_steps(warmup_epochs, steps_per_epoch, total)
    return Schedule(
        schedules.CosineDecay(
            initial_learning_rate=lr * warmup_start if warmup else lr,
            decay_steps=max(total - warmup, 1),
            alpha=final_scale,
            warmup_target=lr if warmup else None,
            warmup_steps=warmup,
        )
    )


def step(
    *,
    lr: float,
    steps_per_epoch: int,
    epochs: int,
    milestones: list[float] = (0.3, 0.6, 0.8),
    factor: float = 0.2,
) -> Schedule:
    total = steps_per_epoch * epochs
    boundaries = sorted({max(1, int(m * epochs) * steps_per_epoch) for m in milestones})
    boundaries = [b for b in boundaries if b < total] or [total]
    values = [lr * factor**i for i in range(len(boundaries) + 1)]
    return Schedule(schedules.PiecewiseConstantDecay(boundaries, values))


def plateau(
    *,
    lr: float,
    steps_per_epoch: int,
    epochs: int,
    monitor: str = "val_top1",
    factor: float = 0.1,
    patience: int = 3,
    min_lr: float = 1e-6,
) -> Schedule:
    return Schedule(
        lr,
        [
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor,
                factor=factor,
                patience=patience,
                min_lr=min_lr,
                mode=monitor_mode(monitor),
            )
        ],
    )


def onecycle(
    *,
    lr: float,
    steps_per_epoch: int,
    epochs: int,
    warmup_fraction: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """A cosine schedule whose long warmup starts at lr / div_factor."""
    return cosine(
        lr=lr,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        warmup_epochs=warmup_fraction * epochs,
        warmup_start=1 / div_factor,
        final_scale=1 / final_div_factor,
    )
