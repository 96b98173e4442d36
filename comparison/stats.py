"""The statistics of a comparison: intervals, paired tests, multiple testing, calibration.

Plain numpy and scipy on per-image arrays; nothing here knows about MLflow or rows.

The bootstraps resample test images with replacement. For a mean of per-image values that
take few distinct values (0/1 correctness, its mean over seeds, the difference of two such),
a resample is fully described by how often each distinct value is drawn: a multinomial
draw. So `bootstrap_means` draws those counts directly, which is the same distribution as
drawing image indices, exactly, at a cost that does not grow with the number of images.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0
ECE_BINS = 15


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def scaled(self, factor: float) -> "Interval":
        return Interval(self.low * factor, self.high * factor)


def bootstrap_means(values: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """`resamples` bootstrap replicates of mean(values), resampling the images (axis 0)."""
    values = np.asarray(values, dtype=np.float64)
    distinct, counts = np.unique(values, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(values), counts / len(values), size=resamples)
    return draws @ distinct / len(values)


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> Interval:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Interval(float(low), float(high))


def bootstrap_interval(
    values: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> Interval:
    """Percentile bootstrap interval of the mean of per-image values."""
    return percentile_interval(bootstrap_means(values, resamples, seed), level)


def accuracy_interval(
    correct: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> Interval:
    """Top-1 with a bootstrap interval over test images.

    `correct` is (images,) for one run, or (seeds, images) for several runs on the same
    images: then the statistic is the mean top-1 over seeds, and each resample draws the
    same images for every seed.
    """
    correct = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    return bootstrap_interval(correct.mean(axis=0), level, resamples, seed)


def seed_mean_interval(
    values: Sequence[float], level: float = LEVEL, bounds: tuple[float, float] = (0.0, 1.0)
) -> Interval | None:
    """Student-t interval of the mean of per-seed values, clipped to `bounds` (an accuracy
    is never below 0); None for fewer than two seeds."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return None
    mean, sem = values.mean(), stats.sem(values)
    if sem == 0:
        return Interval(float(mean), float(mean))
    low, high = stats.t.interval(level, len(values) - 1, loc=mean, scale=sem)
    return Interval(float(max(low, bounds[0])), float(min(high, bounds[1])))


@dataclass(frozen=True)
class PairedTest:
    """A against B on the same test images."""

    method: str  # "McNemar exact" or "paired bootstrap"
    difference: float  # mean top-1 of A − of B, as a fraction
    interval: Interval  # bootstrap interval of the difference
    p_value: float  # two-sided
    a_only: int | None = None  # images only A gets right (McNemar's b)
    b_only: int | None = None  # images only B gets right (McNemar's c)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test: (images only A gets right, only B gets right, two-sided p).

    Under "A and B are equally accurate" each discordant image is a fair coin between them,
    so the p-value is the exact binomial test of one count among the discordant ones.
    """
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    a_only = int(np.sum(correct_a & ~correct_b))
    b_only = int(np.sum(~correct_a & correct_b))
    if a_only + b_only == 0:
        return a_only, b_only, 1.0
    return a_only, b_only, float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)


def bootstrap_p_value(replicates: np.ndarray) -> float:
    """Two-sided p of "the mean is 0": the smallest 1 − level whose percentile interval
    leaves 0 out, with the +1 correction so it is never 0."""
    below = (np.sum(replicates <= 0) + 1) / (len(replicates) + 1)
    above = (np.sum(replicates >= 0) + 1) / (len(replicates) + 1)
    return float(min(1.0, 2 * min(below, above)))


def paired_test(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> PairedTest:
    """A vs B on the same images: exact McNemar for one run each, else a paired bootstrap.

    Arrays are (images,) or (seeds, images). With several seeds the statistic is the
    difference of the mean top-1 over seeds, and each resample draws the same images for
    every run of both. The interval of the difference is the paired bootstrap's either way.
    """
    correct_a = np.atleast_2d(np.asarray(correct_a, dtype=np.float64))
    correct_b = np.atleast_2d(np.asarray(correct_b, dtype=np.float64))
    per_image = correct_a.mean(axis=0) - correct_b.mean(axis=0)
    replicates = bootstrap_means(per_image, resamples, seed)
    interval = percentile_interval(replicates, level)
    difference = float(per_image.mean())
    if len(correct_a) == 1 and len(correct_b) == 1:
        a_only, b_only, p = mcnemar_exact(correct_a[0] > 0, correct_b[0] > 0)
        return PairedTest("McNemar exact", difference, interval, p, a_only, b_only)
    return PairedTest("paired bootstrap", difference, interval, bootstrap_p_value(replicates))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, family-wise error), in the order given."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    result = np.empty(m)
    result[order] = adjusted
    return result.tolist()


@dataclass(frozen=True)
class Reliability:
    """Equal-width confidence bins on [0, 1]; empty bins have count 0 and NaN means."""

    edges: np.ndarray  # (bins + 1,)
    counts: np.ndarray  # images per bin
    accuracy: np.ndarray  # top-1 of the images in each bin
    confidence: np.ndarray  # their mean top-1 probability

    @property
    def ece(self) -> float:
        """Expected calibration error: Σ (bin share) × |accuracy − confidence|."""
        filled = self.counts > 0
        share = self.counts[filled] / self.counts.sum()
        return float(np.sum(share * np.abs(self.accuracy[filled] - self.confidence[filled])))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Bins images by the probability of their top-1 class, bin i holding (i/bins, (i+1)/bins]."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
    return Reliability(np.linspace(0, 1, bins + 1), counts, accuracy, mean_confidence)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    return reliability(confidence, correct, bins).ece


def proportion_difference(
    first: Sequence[tuple[float, int]],
    second: Sequence[tuple[float, int]],
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, Interval, float]:
    """Mean over runs of p1 − p2, for accuracies measured on two independent image sets.

    `first` and `second` hold one (accuracy, images) pair per run. Only the accuracies are
    stored, so each is resampled as a binomial count (the bootstrap of a 0/1 mean), and the
    runs are averaged. Returns the difference, its interval and the two-sided p of "0".
    """
    rng = np.random.default_rng(seed)

    def replicates(pairs):
        draws = [rng.binomial(n, min(max(p, 0.0), 1.0), size=resamples) / n for p, n in pairs]
        return np.mean(draws, axis=0)

    difference = float(np.mean([p for p, _ in first]) - np.mean([p for p, _ in second]))
    spread = replicates(first) - replicates(second)
    return difference, percentile_interval(spread, level), bootstrap_p_value(spread)
