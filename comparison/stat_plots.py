"""Figures of the significance analysis: intervals, reliability diagrams, train/val curves.

Drawn like comparison/plots.py: matplotlib's object API on Agg, series count in the PNG.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from comparison.plots import _figure, _no_data, _save
from comparison.significance import NOT_SIGNIFICANT_TEXT, Significance
from comparison.stats import LEVEL

TOP1_INTERVALS = "test_top1_intervals.png"
RELIABILITY = "reliability_diagrams.png"
TRAIN_VAL_CURVES = "train_val_curves.png"


def plot_top1_intervals(significance: Significance, path: Path) -> Path:
    """Each row's test top-1 with its interval over test images; the best and the rows not
    significantly below it stand out."""
    shown = [s for s in significance.rows if s.top1_interval is not None]
    figure = _figure(8, max(3, 0.5 * len(shown) + 2.2))
    ax = figure.add_subplot()
    for y, stats in enumerate(shown):
        top1, interval = stats.top1 * 100, stats.top1_interval.scaled(100)
        if stats.is_best:
            color, marker = "C3", "D"
        elif stats.significant is False:
            color, marker = "C1", "o"
        else:
            color, marker = "C0", "o"
        ax.errorbar(
            top1,
            y,
            xerr=[[top1 - interval.low], [interval.high - top1]],
            fmt=marker,
            color=color,
            capsize=4,
        )
        if stats.seed_interval is not None:
            seeds = stats.seed_interval.scaled(100)
            ax.plot([seeds.low, seeds.high], [y + 0.2] * 2, color=color, lw=1.2, ls=":")
    ax.set_yticks(range(len(shown)), [s.label for s in shown])
    ax.invert_yaxis()
    ax.set(
        xlabel=f"test top-1 (%), {LEVEL * 100:.0f} % bootstrap interval over test images",
        title="Test top-1 with intervals",
    )
    ax.grid(axis="x", alpha=0.3)
    if shown:
        handles = [
            ax.scatter([], [], marker="D", color="C3", label="best"),
            ax.scatter([], [], marker="o", color="C1", label=NOT_SIGNIFICANT_TEXT),
            ax.scatter([], [], marker="o", color="C0", label="significantly below the best"),
        ]
        if any(s.seed_interval for s in shown):
            (line,) = ax.plot([], [], color="grey", ls=":", label="interval of the seed mean")
            handles.append(line)
        figure.legend(handles=handles, fontsize="small", loc="outside lower center", ncols=2)
        ax.set_xlim(left=max(0.0, ax.get_xlim()[0]), right=min(100.0, ax.get_xlim()[1]))
    else:
        _no_data(ax, "test predictions")
    return _save(figure, path, len(shown))


def _grid(count: int, width: float, height: float):
    columns = max(1, min(3, count))
    lines = max(1, math.ceil(count / columns))
    figure = _figure(width * columns, height * lines)
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_axis_off()
    return figure, axes


def plot_reliability(significance: Significance, path: Path) -> Path:
    """Per row: accuracy against confidence in equal-width bins, the diagonal is perfect."""
    shown = [s for s in significance.rows if s.reliability is not None]
    figure, axes = _grid(len(shown), 4, 4)
    for ax, stats in zip(axes, shown, strict=False):
        binned = stats.reliability
        centers = (binned.edges[:-1] + binned.edges[1:]) / 2
        width = binned.edges[1] - binned.edges[0]
        filled = binned.counts > 0
        ax.bar(
            centers[filled],
            binned.accuracy[filled],
            width=width,
            color="C0",
            edgecolor="white",
            label="accuracy",
        )
        ax.bar(
            centers[filled],
            binned.confidence[filled] - binned.accuracy[filled],
            bottom=binned.accuracy[filled],
            width=width,
            color="C3",
            alpha=0.3,
            edgecolor="C3",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        # Images per bin: a tall bar over a handful of images says little.
        tops = np.fmax(binned.accuracy, binned.confidence)
        for center, top, count in zip(
            centers[filled], tops[filled], binned.counts[filled], strict=True
        ):
            inside = top > 0.85  # no room above: write it inside the bar, in white
            ax.text(
                center,
                top - 0.02 if inside else top + 0.02,
                f"{count:,}",
                rotation=90,
                ha="center",
                va="top" if inside else "bottom",
                fontsize=6,
                color="white" if inside else "dimgrey",
            )
        ece = 100 * float(np.mean(stats.ece))
        images = int(binned.counts.sum())
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)")
        ax.set_title(
            f"{stats.label}\nECE {ece:.2f} %, {images:,} images (numbers: images per bin)",
            fontsize="medium",
        )
        ax.set_ylabel("accuracy")
        ax.legend(fontsize="x-small", loc="upper left")
    if not shown:
        _no_data(axes[0], "test predictions")
    return _save(figure, path, len(shown))


def _mean_curve(curves: Sequence[Sequence[float]]) -> np.ndarray:
    length = max((len(c) for c in curves), default=0)
    padded = np.full((len(curves), length), np.nan)
    for index, curve in enumerate(curves):
        padded[index, : len(curve)] = curve
    with np.errstate(invalid="ignore"):
        return np.nanmean(padded, axis=0) if length else padded[0:0]


def plot_train_val_curves(significance: Significance, path: Path) -> Path:
    """Per row: top-1 on fixed training images and on validation, per epoch (mean over
    seeds); the dotted line is the epoch validation chose."""
    shown = [s for s in significance.rows if any(run.train_eval_top1 for run in s.row.runs)]
    figure, axes = _grid(len(shown), 4.2, 3.4)
    for ax, stats in zip(axes, shown, strict=False):
        runs = stats.row.runs
        train = _mean_curve([run.train_eval_top1 for run in runs])  # %, as logged
        val = _mean_curve([run.val_top1 for run in runs])
        ax.plot(range(1, len(train) + 1), train, marker=".", label="train images (no augment)")
        ax.plot(range(1, len(val) + 1), val, marker=".", label="validation")
        title = stats.label
        if stats.gap is not None:
            for epoch in sorted(set(stats.gap.epochs)):
                ax.axvline(epoch, color="grey", ls=":", lw=1)
            title += f"\ngap at best epoch {100 * stats.gap.value:+.2f} pts"
        ax.set_title(title, fontsize="medium")
        ax.set(xlabel="epoch", ylabel="top-1 (%)", xlim=(0.5, max(len(train), len(val)) + 0.5))
        ax.set_ylim(0, max(1.0, np.nanmax([*train, *val, 0.0]) * 1.15))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="lower right")
    if not shown:
        _no_data(axes[0], "train_eval_top1 curve")
    return _save(figure, path, len(shown))


def write_stat_plots(significance: Significance, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    plots = {
        TOP1_INTERVALS: plot_top1_intervals,
        RELIABILITY: plot_reliability,
        TRAIN_VAL_CURVES: plot_train_val_curves,
    }
    return {name: plot(significance, out_dir / name) for name, plot in plots.items()}
