"""The significance table: as Markdown, as a console table, as CSV."""

import csv
from collections.abc import Sequence
from pathlib import Path

from rich import box
from rich.table import Table

from comparison.significance import ALPHA, RowStats, Significance
from comparison.stats import ECE_BINS, LEVEL, RESAMPLES, Interval

SIGNIFICANCE_CSV = "significance.csv"
NOT_SIGNIFICANT = "n.s."


def _pts(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value * 100:+.2f}" if signed else f"{value * 100:.2f}"


def _interval(interval: Interval | None, signed: bool = False) -> str:
    if interval is None:
        return ""
    return f"[{_pts(interval.low, signed)}, {_pts(interval.high, signed)}]"


def _p(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2g}" if value >= 0.001 else f"{value:.1e}"


def _versus_best(stats: RowStats) -> str:
    if stats.is_best:
        return "best"
    test = stats.versus_best
    if test is None:
        return "not measured"
    mark = "" if stats.significant else f" {NOT_SIGNIFICANT}"
    return f"{_pts(test.difference, signed=True)}{mark}"


def _ece(stats: RowStats) -> str:
    if not stats.ece:
        return ""
    values = [100 * e for e in stats.ece]
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.2f} ± {spread:.2f}"


def _gap(stats: RowStats) -> str:
    gap = stats.gap
    if gap is None:
        return ""
    return f"{_pts(gap.value, signed=True)} {_interval(gap.interval, signed=True)}"


def headers() -> list[str]:
    return [
        "row",
        "n",
        "test top-1 (%)",
        f"{LEVEL * 100:.0f} % CI, test images",
        f"{LEVEL * 100:.0f} % CI of the mean, seeds",
        "Δ vs best (pts)",
        f"{LEVEL * 100:.0f} % CI of Δ",
        "test",
        "p",
        "p (Holm)",
        "train − val gap (pts)",
        "ECE (%)",
    ]


def cells(stats: RowStats) -> list[str]:
    test = stats.versus_best
    return [
        stats.label,
        str(stats.row.n),
        _pts(stats.top1),
        _interval(stats.top1_interval),
        _interval(stats.seed_interval),
        _versus_best(stats),
        "" if test is None else _interval(test.interval, signed=True),
        "" if test is None else test.method,
        "" if test is None else _p(test.p_value),
        _p(stats.p_holm),
        _gap(stats),
        _ece(stats),
    ]


def markdown_table(significance: Significance) -> str:
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    head = headers()
    body = [line(cells(stats)) for stats in significance.rows]
    return "\n".join([line(head), line(["---"] * len(head)), *body])


def explanation() -> str:
    level = f"{LEVEL * 100:.0f} %"
    return " ".join(
        [
            "Computed from each run's test predictions (predictions.npz).",
            "Test top-1 is the mean over the row's n seeds.",
            f"CI, test images: {level} percentile bootstrap over test images",
            f"({RESAMPLES:,} resamples, the same images for every seed).",
            "CI of the mean, seeds: Student t over the seeds' top-1 (n > 1 only).",
            "Δ vs best: this row's top-1 minus the best row's, on the same test images,",
            "tested by the exact McNemar test when both rows are single runs, else by a",
            "paired bootstrap; p is two-sided and p (Holm) corrects it for the number of rows",
            f"tested. `{NOT_SIGNIFICANT}` marks a difference from the best that is not",
            f"significant at {ALPHA} after Holm correction.",
            "Train − val gap: top-1 on a fixed subset of the training images (no augmentation)",
            "minus validation top-1, at the epoch validation chose, with its bootstrap interval.",
            f"ECE: expected calibration error over {ECE_BINS} equal-width confidence bins,",
            "mean ± std over seeds.",
        ]
    )


def _short(interval: Interval | None) -> str:
    return "" if interval is None else f"{interval.low * 100:.1f}–{interval.high * 100:.1f}"


def console_cells(stats: RowStats, with_seeds: bool) -> list[str]:
    """A row for an 80–100 column terminal: one decimal, no test name; the files have all."""
    test, gap = stats.versus_best, stats.gap
    if stats.is_best:
        versus = "best"
    elif test is None:
        versus = "—"
    else:
        versus = f"{test.difference * 100:+.1f}" + ("" if stats.significant else " n.s.")
    ece = ""
    if stats.ece:
        ece = f"{100 * sum(stats.ece) / len(stats.ece):.1f}"
    values = [
        stats.label,
        str(stats.row.n),
        "" if stats.top1 is None else f"{stats.top1 * 100:.2f}",
        _short(stats.top1_interval),
        *([_short(stats.seed_interval)] if with_seeds else []),
        versus,
        _p(stats.p_holm),
        "" if gap is None else f"{gap.value * 100:+.1f}",
        ece,
    ]
    return values


def rich_table(significance: Significance) -> Table:
    level = f"{LEVEL * 100:.0f} %"
    table = Table(
        title="Which differences are real",
        box=box.SIMPLE_HEAVY,
        caption=f"{level} intervals over test images (and over seeds); Δ and gap in points; "
        f"{NOT_SIGNIFICANT}: not significantly below the best at p < {ALPHA} (Holm); "
        "the full table is in comparison.md, the claims in findings.md",
    )
    with_seeds = any(s.seed_interval is not None for s in significance.rows)
    columns = ["row", "n", "top-1 %", "CI images", *(["CI seeds"] if with_seeds else [])]
    columns += ["Δ best", "p Holm", "train−val gap", "ECE %"]
    for index, name in enumerate(columns):
        table.add_column(name, justify="left" if index == 0 else "right")
    for stats in significance.rows:
        table.add_row(*console_cells(stats, with_seeds))
    return table


def write_csv(significance: Significance, path: Path) -> Path:
    """The numbers to 6 decimals, for a paper's own table: accuracies and ECE in %,
    differences and the gap in points, p-values as they are."""
    columns = [
        "row",
        "architecture",
        "n",
        "run_ids",
        "test_top1",
        "top1_ci_low",
        "top1_ci_high",
        "seed_ci_low",
        "seed_ci_high",
        "versus_best",
        "difference",
        "difference_ci_low",
        "difference_ci_high",
        "test",
        "p_value",
        "p_holm",
        "significant",
        "gap",
        "gap_ci_low",
        "gap_ci_high",
        "gap_p_value",
        "train_eval_top1_at_best",
        "val_top1_at_best",
        "ece_mean",
    ]

    def number(value) -> str:
        return "" if value is None else f"{value:.6f}"

    def pct(value) -> str:
        return number(None if value is None else 100 * value)

    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for s in significance.rows:
            test, gap = s.versus_best, s.gap
            writer.writerow(
                [
                    s.label,
                    s.row.architecture,
                    s.row.n,
                    " ".join(s.row.run_ids),
                    pct(s.top1),
                    pct(s.top1_interval and s.top1_interval.low),
                    pct(s.top1_interval and s.top1_interval.high),
                    pct(s.seed_interval and s.seed_interval.low),
                    pct(s.seed_interval and s.seed_interval.high),
                    "best" if s.is_best else ("" if test is None else significance.best.label),
                    pct(test and test.difference),
                    pct(test and test.interval.low),
                    pct(test and test.interval.high),
                    "" if test is None else test.method,
                    number(test and test.p_value),
                    number(s.p_holm),
                    "" if s.significant is None else str(s.significant).lower(),
                    pct(gap and gap.value),
                    pct(gap and gap.interval.low),
                    pct(gap and gap.interval.high),
                    number(gap and gap.p_value),
                    pct(gap and gap.train),
                    pct(gap and gap.val),
                    pct(sum(s.ece) / len(s.ece) if s.ece else None),
                ]
            )
    return path
