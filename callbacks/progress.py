"""What a job prints while it trains: one line per epoch, and a live bar on a terminal.

[2/5] vgg13     epoch 3/30  loss 3.41  top-1 18.3%  val top-1 17.9%  41 s  ETA 18:58, sweep 1:32:10

Accuracies show in %, as the comparison table has them (the logs keep fractions). The ETAs
extrapolate from finished epochs: the job's from its own, the sweep's from every epoch this
process has finished, times the epochs left in this job and in the jobs after it.

The bar within the epoch is drawn only where stdout is a terminal; a log file or a pipe gets
the epoch lines alone, with no carriage returns. It moves in `on_train_batch_begin`, which
Keras calls before dispatching a step and without the step's logs, so it never waits for
the device (a batch-*end* hook would: see EpochStats).
"""

import time

import keras
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

REFRESH_SECONDS = 0.25  # the bar takes at most 4 updates a second, whatever the step rate


def clock(seconds: float) -> str:
    """12 s, 4:05, 1:02:03."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _pct(logs: dict, key: str) -> str:
    return f"{logs[key]:4.1f}%" if key in logs else "  – "  # the logs hold %


class EpochProgress(keras.callbacks.Callback):
    """Prints `label  epoch e/E  loss  top-1  val top-1  epoch time  ETA job, sweep`.

    label: "[k/N] architecture" in a sweep, the architecture alone for a single run.
    epochs: the job's total, over every fit() stage (epoch numbers are absolute).
    jobs_after: jobs of the sweep still to run after this one; None leaves out the sweep's
        ETA (a single run, or a launcher that runs jobs side by side).
    live: draw the bar within the epoch; None: when the console is a terminal.
    """

    # Every epoch this process finished, across the jobs a sequential sweep runs in it.
    sweep_epoch_seconds: list[float] = []

    def __init__(
        self,
        label: str,
        epochs: int,
        jobs_after: int | None = None,
        console: Console | None = None,
        live: bool | None = None,
    ):
        super().__init__()
        self.label = label
        self.epochs = epochs
        self.jobs_after = jobs_after
        self.console = console or Console(highlight=False)
        self.live = self.console.is_terminal if live is None else live
        self.job_epoch_seconds: list[float] = []
        self._bar: Progress | None = None

    # -- the line ------------------------------------------------------------------------------

    def line(self, epoch: int, logs: dict, seconds: float) -> str:
        parts = [
            f"{self.label}  epoch {epoch + 1}/{self.epochs}",
            f"loss {logs['loss']:.2f}" if "loss" in logs else "",
            f"top-1 {_pct(logs, 'top1')}",
            f"val top-1 {_pct(logs, 'val_top1')}",
            clock(seconds),
        ]
        left = self.epochs - epoch - 1
        eta = [f"ETA {clock(left * _mean(self.job_epoch_seconds))}"] if left else ["done"]
        if self.jobs_after is not None and (left or self.jobs_after):
            later = self.jobs_after * self.epochs * _mean(self.sweep_epoch_seconds)
            eta.append(f"sweep {clock(left * _mean(self.job_epoch_seconds) + later)}")
        return "  ".join([*filter(None, parts), ", ".join(eta)])

    # -- Keras hooks ---------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        if self.live and self._bar is None:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
                auto_refresh=False,
            )
            self._bar.start()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._start = time.perf_counter()
        if self._bar is not None:
            for task in list(self._bar.task_ids):
                self._bar.remove_task(task)
            description = f"{self.label}  epoch {epoch + 1}/{self.epochs}"
            self._task = self._bar.add_task(description, total=self.params.get("steps"))
            self._next_refresh = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        if self._bar is None:
            return
        now = time.monotonic()
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_SECONDS
            self._bar.update(self._task, completed=batch)
            self._bar.refresh()

    def on_test_begin(self, logs=None):
        if self._bar is not None:
            description = f"{self.label}  epoch {self._epoch + 1}/{self.epochs}  validating"
            steps = self.params.get("steps")
            self._bar.update(self._task, completed=steps, description=description)
            self._bar.refresh()

    def on_epoch_end(self, epoch, logs=None):
        seconds = (logs or {}).get("epoch_seconds", time.perf_counter() - self._start)
        self.job_epoch_seconds.append(seconds)
        self.sweep_epoch_seconds.append(seconds)
        line = self.line(epoch, logs or {}, seconds)
        self.console.print(line, soft_wrap=True, markup=False, highlight=False)

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
