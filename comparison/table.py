"""The comparison table: one row per architecture and varied setting, seeds averaged.

FINISHED runs of the same architecture, strategy, backend and varied override values form
one row (mean ± sample std over seeds). Every run that did not finish is a row of its own,
so a failure is never averaged away or dropped.
"""

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from comparison.collect import RunRecord
from comparison.reference import architecture_order, reference_top1

# Overrides that never make a row: the model is the row, seeds are what a row averages.
NOT_VARIED = ("model", "seed")
STATUS_ORDER = {"FINISHED": 0, "RUNNING": 1, "SCHEDULED": 2, "FAILED": 3, "KILLED": 4}

# What a run without a `device` tag (one logged before runs recorded it) shows.
UNKNOWN_DEVICE = "unknown device"
# Speeds are only comparable on one device: a row whose runs ran on several shows none.
SPEED_FIELDS = ("train_seconds", "images_per_second")

# Row field -> the final metric it averages.
FINAL_METRICS = {
    "best_val_top1": "best_val_top1",
    "test_top1": "test_top1",
    "test_top5": "test_top5",
    "epochs_run": "epochs_run",
    "train_seconds": "train_seconds",
    "images_per_second": "train_images_per_second",
}


@dataclass(frozen=True)
class Stat:
    """One metric over a row's runs (those that logged it)."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation; None for a single run."""
        return statistics.stdev(self.values) if self.n > 1 else None


@dataclass(frozen=True)
class Row:
    architecture: str
    strategy: str
    varied: tuple[tuple[str, str], ...]  # (override key, value) for each varied key
    status: str
    runs: tuple[RunRecord, ...]
    param_count: Stat | None
    input_size: str
    backend: str
    best_val_top1: Stat | None  # %, as stored
    test_top1: Stat | None
    test_top5: Stat | None
    epochs_run: Stat | None
    train_seconds: Stat | None
    images_per_second: Stat | None
    reference_top1: float | None  # %, the reference study's
    devices: tuple[str, ...] = ()  # the runs' `device` tags, each once
    superclass_top1: dict[str, float] = field(default_factory=dict)  # mean %
    val_top1_curve: tuple[float, ...] = ()  # mean over seeds per epoch
    val_top1_curve_std: tuple[float, ...] = ()
    label: str = ""

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> tuple[str, ...]:
        return tuple(run.seed or "?" for run in self.runs)

    @property
    def run_ids(self) -> tuple[str, ...]:
        return tuple(run.run_id for run in self.runs)

    @property
    def error(self) -> str | None:
        errors = [run.error for run in self.runs if run.error]
        return "; ".join(errors) or None

    @property
    def device(self) -> str:
        return " / ".join(self.devices)

    @property
    def mixed_devices(self) -> bool:
        return len(self.devices) > 1

    @property
    def delta_top1(self) -> float | None:
        """Ours − the reference study, in percentage points."""
        if self.reference_top1 is None or self.test_top1 is None:
            return None
        return self.test_top1.mean - self.reference_top1


# -- grouping ----------------------------------------------------------------------------------


def override_value(run: RunRecord, key: str) -> str:
    """The value a run had for an override key: the resolved param when one exists (a reused
    run may have got it from a default), else the override as typed, "" when absent."""
    if key in run.params:
        return run.params[key]
    return run.overrides.get(key, "")


def varied_keys(runs: Iterable[RunRecord]) -> tuple[str, ...]:
    """Override keys, other than model and seed, whose values differ across the runs."""
    runs = list(runs)
    keys = sorted({key for run in runs for key in run.overrides} - set(NOT_VARIED))
    return tuple(k for k in keys if len({override_value(run, k) for run in runs}) > 1)


def _natural(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def build_rows(runs: Iterable[RunRecord], varied: Sequence[str]) -> list[Row]:
    groups: dict[tuple, list[RunRecord]] = {}
    for run in sorted(runs, key=lambda r: (r.start_time, r.run_id)):
        varied_values = tuple((key, override_value(run, key)) for key in varied)
        key = (
            run.architecture,
            run.tags.get("strategy", ""),
            varied_values,
            run.tags.get("backend", ""),
            run.status,
            # Each run that did not finish is its own row.
            "" if run.status == "FINISHED" else run.run_id,
        )
        groups.setdefault(key, []).append(run)

    def order(key: tuple) -> tuple:
        architecture, strategy, values, backend, status, _ = key
        first = min(run.start_time for run in groups[key])
        return (
            architecture_order(architecture),
            tuple(_natural(value) for _, value in values),
            strategy,
            backend,
            STATUS_ORDER.get(status, 9),
            first,
        )

    rows = [_row(key, groups[key]) for key in sorted(groups, key=order)]
    return _label(rows)


def _stat(runs: Sequence[RunRecord], metric: str) -> Stat | None:
    values = tuple(run.metrics[metric] for run in runs if metric in run.metrics)
    return Stat(values) if values else None


def _joined(values: Iterable[str | None]) -> str:
    return "/".join(sorted({v for v in values if v}))


def _row(key: tuple, runs: list[RunRecord]) -> Row:
    architecture, strategy, varied_values, backend, status, _ = key
    superclasses = sorted({name for run in runs for name in run.superclass_top1})
    superclass_top1 = {
        name: statistics.fmean(
            run.superclass_top1[name] for run in runs if name in run.superclass_top1
        )
        for name in superclasses
    }
    curve, curve_std = _mean_curve([run.val_top1 for run in runs])
    devices = tuple(sorted({run.tags.get("device") or UNKNOWN_DEVICE for run in runs}))
    finals = {name: _stat(runs, metric) for name, metric in FINAL_METRICS.items()}
    if len(devices) > 1:  # a mean over different devices' speeds means nothing
        finals.update(dict.fromkeys(SPEED_FIELDS))
    return Row(
        architecture=architecture,
        strategy=strategy,
        varied=varied_values,
        status=status,
        runs=tuple(runs),
        param_count=_stat(runs, "param_count"),
        input_size=_joined(run.params.get("model.input_size") for run in runs),
        backend=backend,
        **finals,
        reference_top1=reference_top1(architecture),
        devices=devices,
        superclass_top1=superclass_top1,
        val_top1_curve=curve,
        val_top1_curve_std=curve_std,
    )


def _mean_curve(curves: list[tuple[float, ...]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per epoch, the mean (and sample std) over the seeds that reached that epoch."""
    means, stds = [], []
    for epoch in range(max((len(c) for c in curves), default=0)):
        values = [c[epoch] for c in curves if epoch < len(c) and not math.isnan(c[epoch])]
        means.append(statistics.fmean(values) if values else math.nan)
        stds.append(statistics.stdev(values) if len(values) > 1 else math.nan)
    return tuple(means), tuple(stds)


def _label(rows: list[Row]) -> list[Row]:
    """Short unique names for legends: architecture, varied values, and status when unfinished."""

    def base(row: Row) -> str:
        text = " ".join([row.architecture, *(f"{k}={v}" for k, v in row.varied)])
        if row.status != "FINISHED":
            text += f" seed={row.seeds[0]} [{row.status}]"
        return text

    names = [base(row) for row in rows]
    labelled = []
    for row, name in zip(rows, names, strict=True):
        if names.count(name) > 1:
            name += f" ({row.strategy}, {row.backend})"
            if row.status != "FINISHED":
                name += f" {row.run_ids[0][:8]}"
        labelled.append(replace(row, label=name))
    return labelled


# -- display -----------------------------------------------------------------------------------


def _pct(stat: Stat | None) -> str:
    if stat is None:
        return ""
    text = f"{stat.mean:.2f}"
    return text if stat.std is None else f"{text} ± {stat.std:.2f}"


def _plain(stat: Stat | None, digits: int) -> str:
    if stat is None:
        return ""
    text = f"{stat.mean:.{digits}f}"
    return text if stat.std is None else f"{text} ± {stat.std:.{digits}f}"


def _count(stat: Stat | None) -> str:
    if stat is None:
        return ""
    value = stat.mean
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}K"
    return f"{value:.0f}"


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _note(row: Row, width: int | None) -> str:
    if row.status == "FINISHED":
        text = "seeds ran on different devices: speed not averaged" if row.mixed_devices else ""
    else:
        text = row.error or ("no final metrics yet" if row.status == "RUNNING" else "")
    text = " ".join(text.split())
    if width and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _speed(row: Row, stat: Stat | None, digits: int) -> str:
    return "mixed devices" if row.mixed_devices else _plain(stat, digits)


def _integral(stat: Stat) -> bool:
    return all(float(v).is_integer() for v in stat.values) and (stat.std or 0) == 0


def headers(varied: Sequence[str]) -> list[str]:
    return [
        "strategy",
        "architecture",
        *varied,
        "n",
        "params",
        "input size",
        "backend",
        "best val top-1 (%)",
        "test top-1 (%)",
        "test top-5 (%)",
        "epochs",
        "device",
        "train time (s)",
        "images/s",
        "reference top-1 (%)",
        "Δ top-1 (pts)",
        "status",
        "note",
    ]


def cells(row: Row, note_width: int | None = 100) -> list[str]:
    """A row as displayed: percentages with 2 decimals, mean ± std over seeds."""
    reference = row.reference_top1
    epochs = 0 if row.epochs_run is None or _integral(row.epochs_run) else 1
    return [
        row.strategy,
        row.architecture,
        *(value for _, value in row.varied),
        str(row.n),
        _count(row.param_count),
        row.input_size,
        row.backend,
        _pct(row.best_val_top1),
        _pct(row.test_top1),
        _pct(row.test_top5),
        _plain(row.epochs_run, epochs),
        row.device,
        _speed(row, row.train_seconds, 0),
        _speed(row, row.images_per_second, 0),
        "" if reference is None else f"{reference:.2f}",
        _signed(row.delta_top1),
        row.status,
        _note(row, note_width),
    ]


# The console's table: what a sweep is judged by. The files keep every column.
COMPACT_HEADERS = ("val top-1", "test top-1", "top-5", "time", "status")
# Left out, in this order, while the table is wider than the terminal; the rest always shows.
OPTIONAL_COLUMNS = ("top-5", "n", "val top-1", "strategy", "time")


def _compact_pct(stat: Stat | None) -> str:
    if stat is None:
        return ""
    text = f"{stat.mean:.2f}"  # % as logged
    return text if stat.std is None else f"{text}±{stat.std:.2f}"


def _clock(stat: Stat | None) -> str:
    if stat is None:
        return ""
    minutes, seconds = divmod(round(stat.mean), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def compact_headers(varied: Sequence[str]) -> list[str]:
    return ["model", *varied, "strategy", "n", *COMPACT_HEADERS]


def compact_cells(row: Row) -> list[str]:
    """Best val top-1, test top-1 and top-5 in % (mean±std over seeds), train time as m:ss."""
    return [
        row.architecture,
        *(value for _, value in row.varied),
        row.strategy,
        str(row.n),
        _compact_pct(row.best_val_top1),
        _compact_pct(row.test_top1),
        _compact_pct(row.test_top5),
        _clock(row.train_seconds),
        row.status,
    ]


# -- files -------------------------------------------------------------------------------------


def _num(value: float | None, digits: int) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def csv_header(varied: Sequence[str]) -> list[str]:
    columns = ["strategy", "architecture", *varied, "status", "n", "seeds", "param_count"]
    columns += ["input_size", "backend", "device"]
    for name in FINAL_METRICS:
        unit = "_pct" if name in ("best_val_top1", "test_top1", "test_top5") else ""
        columns += [f"{name}{unit}", f"{name}{unit}_std"]
    return [*columns, "reference_top1_pct", "delta_top1_pts", "run_ids", "error"]


def csv_values(row: Row) -> list[str]:
    """A row for the CSV: accuracies in % to 4 decimals, std blank for a single run."""
    values = [row.strategy, row.architecture, *(v for _, v in row.varied)]
    values += [row.status, str(row.n), " ".join(row.seeds)]
    params = None if row.param_count is None else row.param_count.mean
    values += [_num(params, 0), row.input_size, row.backend, row.device]
    for name in FINAL_METRICS:
        stat: Stat | None = getattr(row, name)
        digits = 4 if name in ("best_val_top1", "test_top1", "test_top5") else 2
        mean = None if stat is None else stat.mean
        std = None if stat is None or stat.std is None else stat.std
        values += [_num(mean, digits), _num(std, digits)]
    values += [_num(row.reference_top1, 2), _num(row.delta_top1, 4)]
    return [*values, " ".join(row.run_ids), row.error or ""]


def write_csv(rows: Sequence[Row], varied: Sequence[str], path: Path) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(csv_header(varied))
        writer.writerows(csv_values(row) for row in rows)
    return path


def markdown_table(rows: Sequence[Row], varied: Sequence[str]) -> str:
    def line(values: Sequence[str]) -> str:
        escaped = (value.replace("|", "\\|") for value in values)
        return "| " + " | ".join(escaped) + " |"

    head = headers(varied)
    return "\n".join([line(head), line(["---"] * len(head)), *(line(cells(row)) for row in rows)])
