"""The comparison's figures, as PNG files.

Figures are built with matplotlib's object API on the Agg canvas, never pyplot, so drawing
them neither needs a display nor changes the backend of the process that calls us (the Hydra
sweep callback). Each PNG records how many series it draws in its `Description` tEXt chunk,
as `series=<n>`: read it with `PIL.Image.open(path).text["Description"]`.
"""

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from comparison.table import SPEED_FIELDS, Row

SERIES_KEY = "Description"

VAL_CURVES = "val_top1_curves.png"
TEST_BARS = "test_top1_bars.png"
TOP1_VS_TIME = "test_top1_vs_train_time.png"
TOP1_VS_PARAMS = "test_top1_vs_params.png"
SUPERCLASS_HEATMAP = "superclass_heatmap.png"


def series_metadata(n: int) -> dict[str, str]:
    return {SERIES_KEY: f"series={n}"}


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path, series: int) -> Path:
    figure.savefig(path, dpi=150, metadata=series_metadata(series))
    return path


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} logged yet", ha="center", va="center", transform=ax.transAxes)


def plot_val_curves(rows: Sequence[Row], path: Path) -> Path:
    """Validation top-1 per epoch, one line per row (mean over seeds, ±1 std shaded)."""
    figure = _figure(9, 5.5)
    ax = figure.add_subplot()
    series = 0
    for row in rows:
        if not any(not math.isnan(v) for v in row.val_top1_curve):
            continue
        epochs = range(1, len(row.val_top1_curve) + 1)
        mean = list(row.val_top1_curve)
        style = "-" if row.status == "FINISHED" else "--"
        (line,) = ax.plot(epochs, mean, style, marker=".", label=row.label)
        if row.n > 1:
            std = list(row.val_top1_curve_std)
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15, lw=0)
        series += 1
    ax.set(xlabel="epoch", ylabel="validation top-1 (%)", title="Validation top-1 per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize="small")
    else:
        _no_data(ax, "validation curve")
    return _save(figure, path, series)


def plot_test_bars(rows: Sequence[Row], path: Path) -> Path:
    """Test top-1 per row, ±1 std, the reference study's number as a black tick.

    A row without a test score (failed, running) keeps its slot, marked with its status.
    """
    figure = _figure(max(6, 0.9 * len(rows) + 2), 5.5)
    ax = figure.add_subplot()
    series = 0
    referenced = False
    for x, row in enumerate(rows):
        if row.test_top1 is not None:
            std = row.test_top1.std
            ax.bar(
                x,
                row.test_top1.mean,
                yerr=std,
                capsize=4,
                color=f"C{x % 10}",
            )
            series += 1
        else:
            ax.text(x, 1, row.status, ha="center", va="bottom", rotation=90, fontsize="small")
        if row.reference_top1 is not None:
            ax.scatter(
                x,
                row.reference_top1,
                marker="_",
                s=900,
                linewidths=2.5,
                color="black",
                zorder=3,
                label=None if referenced else "the reference study",
            )
            referenced = True
    ax.set_xticks(range(len(rows)), [row.label for row in rows], rotation=30, ha="right")
    ax.set(ylabel="test top-1 (%)", title="Test top-1", ylim=(0, 100))
    ax.grid(axis="y", alpha=0.3)
    if referenced:
        ax.legend(fontsize="small")
    if not rows:
        _no_data(ax, "run")
    return _save(figure, path, series)


def _scatter(rows: Sequence[Row], path: Path, x_field: str, xlabel: str, log_x: bool) -> Path:
    figure = _figure(8, 5.5)
    ax = figure.add_subplot()
    series = 0
    shown = [row for row in rows if row.test_top1 is not None and getattr(row, x_field)]
    # Times from different devices on one axis: each point says where it ran.
    by_device = len({row.device for row in shown}) > 1 and x_field in SPEED_FIELDS
    for index, row in enumerate(rows):
        x_stat = getattr(row, x_field)
        if row.test_top1 is None or x_stat is None:
            continue
        x, y = x_stat.mean, row.test_top1.mean
        yerr = row.test_top1.std
        ax.errorbar(x, y, yerr=yerr, fmt="o", capsize=3, color=f"C{index % 10}")
        text = f"{row.label} [{row.device}]" if by_device else row.label
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        series += 1
    if log_x and series:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="test top-1 (%)", title=f"Test top-1 vs {xlabel}")
    ax.grid(alpha=0.3)
    if not series:
        _no_data(ax, "test result")
    return _save(figure, path, series)


def plot_top1_vs_time(rows: Sequence[Row], path: Path) -> Path:
    return _scatter(rows, path, "train_seconds", "train wall time (s)", log_x=False)


def plot_top1_vs_params(rows: Sequence[Row], path: Path) -> Path:
    return _scatter(rows, path, "param_count", "parameter count", log_x=True)


def plot_superclass_heatmap(rows: Sequence[Row], path: Path) -> Path:
    """Test top-1 on each superclass's images: one line per row, one column per superclass."""
    shown = [row for row in rows if row.superclass_top1]
    names = sorted({name for row in shown for name in row.superclass_top1})
    figure = _figure(max(8, 0.55 * len(names) + 3), max(3, 0.45 * len(shown) + 2.5))
    ax = figure.add_subplot()
    if shown:
        grid = [[row.superclass_top1.get(n, math.nan) for n in names] for row in shown]
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i, line in enumerate(grid):
            for j, value in enumerate(line):
                if not math.isnan(value):
                    color = "white" if value < 60 else "black"
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(shown)), [row.label for row in shown], fontsize=8)
        figure.colorbar(image, ax=ax, label="test top-1 (%)")
    else:
        _no_data(ax, "superclass accuracy")
    ax.set_title("Test top-1 per superclass")
    return _save(figure, path, len(shown))


def write_plots(rows: Sequence[Row], out_dir: Path) -> dict[str, Path]:
    """All figures into out_dir; returns {file name: path}."""
    out_dir = Path(out_dir)
    plots = {
        VAL_CURVES: plot_val_curves,
        TEST_BARS: plot_test_bars,
        TOP1_VS_TIME: plot_top1_vs_time,
        TOP1_VS_PARAMS: plot_top1_vs_params,
        SUPERCLASS_HEATMAP: plot_superclass_heatmap,
    }
    return {name: plot(rows, out_dir / name) for name, plot in plots.items()}


def read_series(path: Path) -> int:
    """The series count a PNG written here records (for tests and checks)."""
    from PIL import Image

    with Image.open(path) as image:
        return int(image.text[SERIES_KEY].removeprefix("series="))
