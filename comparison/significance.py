"""Which differences between the rows are real: intervals, tests against the best, the
generalization gap and calibration, from each run's test predictions and curves.

A row is the table's row (one architecture and varied setting, its seeds). Its statistics
need the predictions of every run in it, made on the same test images; a row without them
(a run from before predictions were logged) shows its top-1 only and is "not measured".

Accuracies here are fractions 0..1, as the per-image statistics compute them; the store's
metrics and curves are in % and are divided by 100 where they come in. The tables, figures
and findings show accuracies in % and differences in points.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from comparison.predictions import Predictions
from comparison.stats import (
    Interval,
    PairedTest,
    Reliability,
    accuracy_interval,
    holm,
    paired_test,
    proportion_difference,
    reliability,
    seed_mean_interval,
)
from comparison.table import Row
from tracking.values import latest_curve_value

ALPHA = 0.05
NOT_SIGNIFICANT_TEXT = f"not significantly below the best (p ≥ {ALPHA}, Holm)"
TRAIN_EVAL = "train_eval_top1"


@dataclass(frozen=True)
class Gap:
    """Top-1 on training images − validation top-1, at the epoch validation chose."""

    train: float  # mean over seeds, fraction
    val: float
    interval: Interval  # of train − val
    p_value: float  # two-sided, of "no gap"
    epochs: tuple[int, ...]  # the best epoch of each run, from 1 (the logged best_epoch)

    @property
    def value(self) -> float:
        return self.train - self.val


@dataclass(frozen=True, eq=False)
class RowStats:
    row: Row
    correct: np.ndarray | None  # (seeds, images) 0/1; None: not every run has predictions
    fingerprint: str | None  # of the test images the predictions are on
    top1_interval: Interval | None  # bootstrap over test images, of the mean over seeds
    seed_interval: Interval | None  # Student t over the seeds' top-1, n > 1 only
    ece: tuple[float, ...] = ()  # per run
    reliability: Reliability | None = None  # the runs' images pooled
    gap: Gap | None = None
    versus_best: PairedTest | None = None
    p_holm: float | None = None
    is_best: bool = False

    @property
    def label(self) -> str:
        return self.row.label

    @property
    def measured(self) -> bool:
        return self.correct is not None

    @property
    def top1(self) -> float | None:
        """Mean top-1 over seeds, from the predictions (the stored metric otherwise)."""
        if self.correct is not None:
            return float(self.correct.mean())
        return None if self.row.test_top1 is None else self.row.test_top1.mean / 100

    @property
    def significant(self) -> bool | None:
        """Differs from the best at ALPHA after Holm; None for the best or the unmeasured."""
        return None if self.p_holm is None else self.p_holm < ALPHA


@dataclass(frozen=True)
class Significance:
    rows: tuple[RowStats, ...]
    best: RowStats | None
    notes: tuple[str, ...]  # why something is not measured

    def for_architecture(self, architecture: str) -> RowStats | None:
        """The architecture's highest-scoring measured row (several with a varied key)."""
        candidates = [s for s in self.rows if s.row.architecture == architecture and s.measured]
        return max(candidates, key=lambda s: s.top1, default=None)


def _row_predictions(row: Row, predictions: dict[str, Predictions]) -> list[Predictions] | None:
    found = [predictions.get(run.run_id) for run in row.runs]
    if not found or any(p is None for p in found):
        return None
    if len({p.test_fingerprint for p in found}) > 1:
        return None
    return found


def _gap(row: Row) -> Gap | None:
    train, val, epochs = [], [], []
    for run in row.runs:
        best = run.metrics.get("best_epoch")
        images = latest_curve_value(run.metrics, "train_eval_images")
        val_size = run.params.get("data.val_size")
        if best is None or images is None or val_size is None:
            return None
        # best_epoch counts from 1 like the curves' steps; the curves start at step 1.
        epoch = int(best)
        index = epoch - 1
        curve, val_curve = run.train_eval_top1, run.val_top1
        if not 0 <= index < min(len(curve), len(val_curve)):
            return None
        if math.isnan(curve[index]) or math.isnan(val_curve[index]):
            return None
        train.append((curve[index] / 100, int(images)))
        val.append((val_curve[index] / 100, int(float(val_size))))
        epochs.append(epoch)
    if not train:
        return None
    _, interval, p_value = proportion_difference(train, val)
    return Gap(
        train=float(np.mean([p for p, _ in train])),
        val=float(np.mean([p for p, _ in val])),
        interval=interval,
        p_value=p_value,
        epochs=tuple(epochs),
    )


def row_stats(row: Row, predictions: dict[str, Predictions]) -> RowStats:
    found = _row_predictions(row, predictions)
    gap = _gap(row)
    if found is None:
        return RowStats(row, None, None, None, None, gap=gap)
    correct = np.stack([p.correct for p in found]).astype(np.float64)
    confidence = np.concatenate([p.confidence for p in found])
    return RowStats(
        row=row,
        correct=correct,
        fingerprint=found[0].test_fingerprint,
        top1_interval=accuracy_interval(correct),
        seed_interval=seed_mean_interval(correct.mean(axis=1)),
        ece=tuple(reliability(p.confidence, p.correct).ece for p in found),
        reliability=reliability(confidence, correct.ravel()),
        gap=gap,
    )


def compare(a: RowStats, b: RowStats) -> PairedTest | None:
    """A against B on the same test images; None when either is unmeasured or the images
    differ."""
    if not (a.measured and b.measured) or a.fingerprint != b.fingerprint:
        return None
    return paired_test(a.correct, b.correct)


def analyse(rows: Sequence[Row], predictions: dict[str, Predictions]) -> Significance:
    """Every FINISHED row's statistics, each tested against the best measured row."""
    stats = [row_stats(row, predictions) for row in rows if row.status == "FINISHED"]
    notes = []
    unmeasured = [s.label for s in stats if not s.measured]
    if unmeasured:
        notes.append(
            f"No test predictions for: {', '.join(unmeasured)} (runs logged before "
            "predictions.npz, or seeds tested on different images); their intervals and tests "
            "are not measured."
        )
    measured = [s for s in stats if s.measured]
    if not measured:
        return Significance(tuple(stats), None, tuple(notes))
    best = max(measured, key=lambda s: s.top1)
    tests = {id(s): compare(s, best) for s in measured if s is not best}
    tested = [key for key, test in tests.items() if test is not None]
    adjusted = dict(zip(tested, holm([tests[k].p_value for k in tested]), strict=True))
    other_images = [s.label for s in measured if s is not best and tests[id(s)] is None]
    if other_images:
        notes.append(
            f"Tested on other test images than the best row: {', '.join(other_images)}; "
            "not compared."
        )
    result = []
    for s in stats:
        if s is best:
            result.append(replace(s, is_best=True))
        elif id(s) in adjusted:
            result.append(replace(s, versus_best=tests[id(s)], p_holm=adjusted[id(s)]))
        else:
            result.append(s)
    best = next(s for s in result if s.is_best)
    return Significance(tuple(result), best, tuple(notes))
