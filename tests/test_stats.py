"""comparison/stats.py on constructed predictions whose answers are known: scipy's exact
tests, large-sample normal references, and hand-computed cases."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from comparison.stats import (
    RESAMPLES,
    accuracy_interval,
    bootstrap_interval,
    expected_calibration_error,
    holm,
    mcnemar_exact,
    paired_test,
    proportion_difference,
    reliability,
    seed_mean_interval,
)

Z = scipy_stats.norm.ppf(0.975)


def paired(n: int, both: int, a_only: int, b_only: int, seed: int = 0):
    """Correctness of A and B on n images with exactly these cell counts, shuffled."""
    neither = n - both - a_only - b_only
    a = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither, bool)
    b = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither, bool)
    order = np.random.default_rng(seed).permutation(n)
    return a[order], b[order]


def test_mcnemar_is_the_exact_binomial_test_on_discordant_images():
    a, b = paired(1000, both=500, a_only=12, b_only=3)
    assert mcnemar_exact(a, b) == (12, 3, pytest.approx(scipy_stats.binomtest(12, 15).pvalue))
    # By hand: 2 * P(X >= 12), X ~ Binomial(15, 1/2) = 2 * (455 + 105 + 15 + 1) / 2**15.
    assert mcnemar_exact(a, b)[2] == pytest.approx(1152 / 32768)
    assert mcnemar_exact(b, a)[2] == pytest.approx(1152 / 32768)  # two-sided: symmetric
    assert mcnemar_exact(a, a) == (0, 0, 1.0)  # no discordant image: no evidence


def test_single_runs_are_compared_by_mcnemar_and_seeds_by_paired_bootstrap():
    a, b = paired(2000, both=900, a_only=40, b_only=20)
    single = paired_test(a, b)
    assert single.method == "McNemar exact"
    assert (single.a_only, single.b_only) == (40, 20)
    assert single.p_value == pytest.approx(scipy_stats.binomtest(40, 60).pvalue)
    assert single.difference == pytest.approx(20 / 2000)
    seeds = paired_test(np.stack([a, a]), np.stack([b, b]))
    assert seeds.method == "paired bootstrap"
    assert seeds.difference == pytest.approx(20 / 2000)


def test_accuracy_interval_matches_the_large_sample_normal_interval():
    n = 10_000
    correct = np.random.default_rng(1).permutation(np.arange(n) < 6_000)
    interval = accuracy_interval(correct)
    half = Z * math.sqrt(0.6 * 0.4 / n)  # 0.0096
    assert interval.low == pytest.approx(0.6 - half, abs=8e-4)
    assert interval.high == pytest.approx(0.6 + half, abs=8e-4)


def test_the_count_bootstrap_is_the_index_bootstrap():
    """Drawing how often each distinct value comes up is resampling the images."""
    values = np.random.default_rng(2).permutation(np.arange(1000) < 300).astype(float)
    ours = bootstrap_interval(values)
    reference = scipy_stats.bootstrap(
        (values,), np.mean, n_resamples=RESAMPLES, method="percentile", rng=3
    ).confidence_interval
    assert ours.low == pytest.approx(reference.low, abs=3e-3)
    assert ours.high == pytest.approx(reference.high, abs=3e-3)


def test_seeds_resample_the_same_images():
    """Two identical seeds carry no more information than one: the same interval."""
    correct = np.random.default_rng(4).random(5_000) < 0.7
    one, two = accuracy_interval(correct), accuracy_interval(np.stack([correct, correct]))
    assert (one.low, one.high) == (two.low, two.high)
    # Two seeds that disagree on images average them: the mean's interval is narrower.
    other = np.random.default_rng(5).random(5_000) < 0.7
    mixed = accuracy_interval(np.stack([correct, other]))
    assert mixed.high - mixed.low < one.high - one.low


def test_paired_difference_interval_and_p_match_the_large_sample_reference():
    n, a_only, b_only = 10_000, 530, 470
    a, b = paired(n, both=5_000, a_only=a_only, b_only=b_only)
    difference = (a_only - b_only) / n
    se = math.sqrt((a_only + b_only) / n**2 - (a_only - b_only) ** 2 / n**3)
    # Two identical seeds each: a paired bootstrap on exactly the single runs' images.
    test = paired_test(np.stack([a, a]), np.stack([b, b]))
    assert test.interval.low == pytest.approx(difference - Z * se, abs=8e-4)
    assert test.interval.high == pytest.approx(difference + Z * se, abs=8e-4)
    normal_p = 2 * scipy_stats.norm.sf(difference / se)  # 0.058
    assert test.p_value == pytest.approx(normal_p, abs=0.012)
    # And the exact test on the same counts agrees with both.
    assert paired_test(a, b).p_value == pytest.approx(normal_p, abs=0.01)


def test_paired_bootstrap_p_is_one_for_equal_and_tiny_for_far_apart_models():
    a, b = paired(2000, both=1000, a_only=0, b_only=0)
    assert paired_test(np.stack([a, a]), np.stack([b, b])).p_value == 1.0
    a, b = paired(2000, both=800, a_only=300, b_only=10)
    far = paired_test(np.stack([a, a]), np.stack([b, b]))
    assert far.p_value == pytest.approx(2 / (RESAMPLES + 1))  # as small as 10,000 draws say
    assert far.interval.low > 0


def test_seed_mean_interval_is_student_t_and_stays_an_accuracy():
    interval = seed_mean_interval([0.50, 0.52, 0.54])
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    assert interval.low == pytest.approx(0.52 - half)
    assert interval.high == pytest.approx(0.52 + half)
    assert seed_mean_interval([0.5]) is None
    wide = seed_mean_interval([0.01, 0.03])  # t(0.975, 1) = 12.7: below 0 unclipped
    assert wide.low == 0.0 and wide.high == pytest.approx(0.02 + 12.706204736 * 0.01)


def test_holm_on_a_hand_computed_case():
    # Sorted 0.01, 0.03, 0.04, 0.20 times 4, 3, 2, 1 = 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.20.
    assert holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])


def test_ece_on_a_hand_computed_case():
    # Bins of width 1/15: 0.95 -> bin 14, 0.55 -> bin 8, 0.25 -> bin 3.
    confidence = np.array([0.95, 0.95, 0.55, 0.55, 0.25])
    correct = np.array([1, 0, 1, 1, 0])
    # 2/5 |0.5 - 0.95| + 2/5 |1 - 0.55| + 1/5 |0 - 0.25| = 0.18 + 0.18 + 0.05
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.41)
    binned = reliability(confidence, correct)
    assert binned.counts.tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 2]
    assert binned.accuracy[14] == 0.5 and binned.confidence[8] == pytest.approx(0.55)
    # A bin's upper edge belongs to it: 1/15 is in bin 0, 1.0 in bin 14.
    assert reliability(np.array([1 / 15, 1.0]), np.array([1, 1])).counts[[0, 14]].tolist() == [
        1,
        1,
    ]
    assert expected_calibration_error(np.full(10, 0.8), np.arange(10) < 8) == pytest.approx(0)


def test_gap_of_independent_accuracies_matches_the_normal_reference():
    difference, interval, p = proportion_difference([(0.8, 5000)], [(0.7, 5000)])
    se = math.sqrt(0.8 * 0.2 / 5000 + 0.7 * 0.3 / 5000)
    assert difference == pytest.approx(0.1)
    assert interval.low == pytest.approx(0.1 - Z * se, abs=1e-3)
    assert interval.high == pytest.approx(0.1 + Z * se, abs=1e-3)
    assert p < 0.001
    none, _, p_none = proportion_difference([(0.6, 200)], [(0.6, 200)])
    assert none == 0 and p_none > 0.5
