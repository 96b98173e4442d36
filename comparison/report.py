"""The comparison of one sweep: table, CSV, figures, Markdown, console, parent-run artifacts.

Everything comes from the tracking store, so `python compare.py --sweep <id>` rebuilds the
same files on any machine that reaches the store. The output carries no timestamps or local
paths, so two builds from the same store are identical.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from comparison import significance_table
from comparison.collect import SweepRecord, load_sweep
from comparison.findings import write_findings
from comparison.plots import (
    SUPERCLASS_HEATMAP,
    TEST_BARS,
    TOP1_VS_PARAMS,
    TOP1_VS_TIME,
    VAL_CURVES,
    write_plots,
)
from comparison.predictions import load_predictions
from comparison.reference import REFERENCE
from comparison.search import ArchitectureSearch, summarize_search, table_runs
from comparison.significance import Significance, analyse
from comparison.stat_plots import RELIABILITY, TOP1_INTERVALS, TRAIN_VAL_CURVES, write_stat_plots
from comparison.summary import (
    HTML,
    leaderboard_view,
    parent_description,
    parent_metrics,
    render_html,
    ui_hint,
)
from comparison.table import (
    OPTIONAL_COLUMNS,
    Row,
    build_rows,
    compact_cells,
    compact_headers,
    markdown_table,
    varied_keys,
    write_csv,
)
from errors import UserError, one_line
from tracking.store import set_experiment_tag

MARKDOWN = "comparison.md"
CSV = "comparison.csv"
ARTIFACT_DIR = "comparison"
STATUS_STYLE = {"FINISHED": "green", "RUNNING": "yellow", "FAILED": "bold red", "KILLED": "red"}


@dataclass(frozen=True)
class Report:
    sweep: SweepRecord
    varied_keys: tuple[str, ...]
    rows: tuple[Row, ...]
    markdown: Path
    csv: Path
    plots: dict[str, Path]  # file name -> path
    html: Path  # comparison.md with its figures embedded
    logged_to: str | None  # the parent run id that got the files as artifacts, if any
    significance: Significance | None = None
    significance_csv: Path | None = None
    findings: Path | None = None

    @property
    def sweep_id(self) -> str:
        return self.sweep.sweep_id

    @property
    def parent_run_id(self) -> str:
        return self.sweep.parent_run_id

    @property
    def paths(self) -> list[Path]:
        extra = [p for p in (self.significance_csv, self.findings) if p is not None]
        return [self.markdown, self.html, self.csv, *extra, *self.plots.values()]


def build_report(
    tracking_uri: str,
    experiment: str,
    sweep_id: str | None,
    out_dir: Path,
    log_to_parent: bool = True,
    *,
    console: Console | None = None,
) -> Report:
    """Builds the comparison of a sweep (None: the latest started) from the store alone.

    Writes comparison.md, comparison.csv, significance.csv, findings.md and the PNG figures
    into out_dir, prints the tables, and logs the files under `comparison/` of the sweep's
    parent run when log_to_parent.
    Raises comparison.StoreError (a UserError) when the store, experiment or sweep is missing.
    """
    sweep = load_sweep(tracking_uri, experiment, sweep_id)
    return write_report(sweep, out_dir, log_to_parent, console=console)


def write_report(
    sweep: SweepRecord,
    out_dir: Path,
    log_to_parent: bool = True,
    *,
    console: Console | None = None,
) -> Report:
    """The files, console table and artifacts of a sweep already read with load_sweep."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    search = summarize_search(sweep.runs)
    runs = table_runs(sweep.runs, search)
    # A search's trial number and study name differ per trial, not per setting.
    varied = tuple(k for k in varied_keys(runs) if not k.startswith("search."))
    rows = tuple(build_rows(runs, varied))
    csv_path = write_csv(rows, varied, out_dir / CSV)
    significance = analyse(rows, load_predictions(sweep.tracking_uri, sweep.runs))
    significance_csv = significance_table.write_csv(
        significance, out_dir / significance_table.SIGNIFICANCE_CSV
    )
    plots = {**write_plots(rows, out_dir), **write_stat_plots(significance, out_dir)}
    findings = write_findings(sweep, significance, out_dir)
    markdown = out_dir / MARKDOWN
    text = render_markdown(sweep, rows, varied, significance, search)
    markdown.write_text(text)
    page = out_dir / HTML
    page.write_text(render_html(text, plots, f"CIFAR-100 comparison — sweep {sweep.sweep_id}"))
    print_table(sweep, rows, varied, console, significance)
    if search:
        lines = [f"search: {summary.line()}" for summary in search]
        if console is None:
            print("\n".join(lines))
        else:
            console.print("\n".join(lines))

    report = Report(
        sweep,
        varied,
        rows,
        markdown,
        csv_path,
        plots,
        page,
        None,
        significance,
        significance_csv,
        findings,
    )
    if log_to_parent:
        _log_artifacts(sweep, report.paths, out_dir)
        _describe_parent(sweep, rows)
        report = replace(report, logged_to=sweep.parent_run_id)
    print_paths(report, console)
    return report


def _describe_parent(sweep: SweepRecord, rows: Sequence[Row]) -> None:
    """What the parent's own page shows: the short table as its description, and metrics."""
    client = MlflowClient(sweep.tracking_uri)
    set_experiment_tag(client, sweep.experiment_id, *leaderboard_view(sweep))
    client.set_tag(sweep.parent_run_id, "mlflow.note.content", parent_description(sweep, rows))
    for name, value in parent_metrics(rows).items():
        client.log_metric(sweep.parent_run_id, name, value)


def _log_artifacts(sweep: SweepRecord, paths: Sequence[Path], out_dir: Path) -> None:
    client = MlflowClient(sweep.tracking_uri)
    try:
        for path in paths:
            client.log_artifact(sweep.parent_run_id, str(path), ARTIFACT_DIR)
    except (OSError, MlflowException) as error:
        # A store copied from another machine keeps that machine's artifact location.
        reason = one_line(error, 200)
        raise UserError(
            f"cannot log the report to parent run {sweep.parent_run_id} ({reason}); "
            f"the files are in {out_dir}; skip logging with compare.py --no-log "
            "(log_to_parent=False)"
        ) from None


# -- console -----------------------------------------------------------------------------------


def rich_table(
    sweep: SweepRecord, rows: Sequence[Row], varied: Sequence[str], leave_out: Sequence[str] = ()
) -> Table:
    """The compact table. No cell is ever cut: each column is as wide as its widest cell."""
    table = Table(
        title=f"sweep {sweep.sweep_id} ({sweep.status})",
        box=box.SIMPLE_HEAD,
        caption="accuracies in %, mean±std over n seeds; time: training wall time",
        caption_justify="left",
        show_edge=False,
        collapse_padding=True,
    )
    names = compact_headers(varied)
    values = [compact_cells(row) for row in rows]
    shown = [i for i, name in enumerate(names) if name not in leave_out]
    labels = 1 + len(varied) + 1  # model, the varied values, strategy
    for index in shown:
        width = max((len(row[index]) for row in values), default=0)
        left = index < labels or names[index] == "status"
        table.add_column(
            names[index], justify="left" if left else "right", no_wrap=True, min_width=width
        )
    for row, cells in zip(rows, values, strict=True):
        style = STATUS_STYLE.get(row.status, "")
        cells = [escape(cell) for cell in cells]
        cells[-1] = f"[{style}]{row.status}[/]" if style else row.status
        table.add_row(*(cells[i] for i in shown))
    return table


def print_table(
    sweep: SweepRecord,
    rows: Sequence[Row],
    varied: Sequence[str],
    console: Console | None = None,
    significance: Significance | None = None,
) -> None:
    """Prints the compact table, leaving out optional columns until it fits the console."""
    console = console or Console()
    unbounded = Console(width=10_000)  # measures the table's natural width
    leave_out: list[str] = []
    table = rich_table(sweep, rows, varied)
    for column in OPTIONAL_COLUMNS:
        if unbounded.measure(table).maximum <= console.width:
            break
        leave_out.append(column)
        table = rich_table(sweep, rows, varied, leave_out)
    console.print(table)
    for row in rows:
        if row.status != "FINISHED":
            detail = row.error or ("still running" if row.status == "RUNNING" else "no error")
            console.print(
                f"{row.status} {row.label}: {' '.join(detail.split())}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    if significance is not None and significance.rows:
        console.print(significance_table.rich_table(significance))


def print_paths(report: "Report", console: Console | None = None) -> None:
    console = console or Console()
    lines = [f"full table: {report.markdown}", f"csv: {report.csv}"]
    if report.plots:
        lines.append(f"plots: {next(iter(report.plots.values())).parent}/*.png")
    if report.logged_to:
        lines.append(f"parent run: {report.logged_to} (files under {ARTIFACT_DIR}/)")
        lines.append(ui_hint(report.sweep))
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


# -- Markdown ----------------------------------------------------------------------------------


def _reference_text() -> str:
    groups: dict[str, list[str]] = {}
    for name, reference in REFERENCE.items():
        groups.setdefault(reference.setting, []).append(f"{name} {reference.top1:.2f}")
    parts = [f"{', '.join(names)} ({setting})" for setting, names in groups.items()]
    return "The reference study reports CIFAR-100 test top-1 (%) of " + "; ".join(parts) + "."


def _setting_notes(rows: Sequence[Row]) -> list[str]:
    notes = []
    seen = set()
    for row in rows:
        reference = REFERENCE.get(row.architecture)
        if reference is None or reference.strategy in (None, row.strategy):
            continue
        if (row.architecture, row.strategy) in seen:
            continue
        seen.add((row.architecture, row.strategy))
        notes.append(
            f"- {row.architecture} here uses strategy `{row.strategy}`; the reference study's "
            f"number is for {reference.setting}, so Δ compares different settings."
        )
    return notes


def _unfinished_notes(rows: Sequence[Row]) -> list[str]:
    notes = []
    for row in rows:
        if row.status == "FINISHED":
            continue
        run = row.runs[0]
        detail = row.error or (
            "still running: the row shows what it has logged so far"
            if row.status == "RUNNING"
            else "no error recorded"
        )
        notes.append(f"- {row.label} — run `{run.run_id}`: {' '.join(detail.split())}")
    return notes


def _significance_section(significance: Significance) -> list[str]:
    lines = ["", "## Which differences are real", ""]
    if not significance.rows:
        return [*lines, "No finished run in this sweep."]
    lines += [significance_table.markdown_table(significance), "", significance_table.explanation()]
    if significance.notes:
        lines += ["", *(f"- {note}" for note in significance.notes)]
    return [
        *lines,
        "",
        "The reference study's claims, tested on these numbers: [findings.md](findings.md).",
    ]


def render_markdown(
    sweep: SweepRecord,
    rows: Sequence[Row],
    varied: Sequence[str],
    significance: Significance | None = None,
    search: Sequence[ArchitectureSearch] | None = None,
) -> str:
    statuses = Counter(run.status for run in sweep.runs)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())) or "none"
    reused = sum(run.tags.get("sweep_id") != sweep.sweep_id for run in sweep.runs)
    lines = [
        f"# CIFAR-100 comparison — sweep {sweep.sweep_id}",
        "",
        f"Experiment `{sweep.experiment}`, sweep `{sweep.sweep_id}` (parent run "
        f"`{sweep.parent_run_id}`, {sweep.status}), overrides `{sweep.overrides or '(none)'}`.",
        f"Runs: {counts}"
        + (f"; {reused} reused from earlier sweeps" if reused else "")
        + (f"; rows split by {', '.join(f'`{k}`' for k in varied)}" if varied else "")
        + ".",
        "",
        "Built from the MLflow tracking store alone; rebuild with "
        f"`python compare.py --experiment {sweep.experiment} --sweep {sweep.sweep_id}`.",
        "",
    ]
    if search:
        lines += [
            "A hyperparameter search: the table shows the best finished trial of each "
            "architecture (by best validation top-1); pruned trials stopped early and are "
            "counted, not tabled.",
            "",
            *(f"- {summary.line()}" for summary in search),
            "",
        ]
    if rows:
        lines += [markdown_table(rows, varied), ""]
    else:
        lines += ["No run of this sweep is recorded in the store yet.", ""]
    lines += [
        "Accuracies are top-1/top-5 in %: test on the CIFAR-100 test split, best val on the "
        "validation split. With n > 1 seeds a cell is mean ± sample standard deviation. "
        "Train time is the wall time of fit; images/s the training throughput. "
        "Δ top-1 = our test top-1 − the reference study's, in percentage points.",
        "",
        "## The reference study",
        "",
        _reference_text() + " Architectures it did not test have no reference number and no Δ.",
    ]
    notes = _setting_notes(rows)
    if notes:
        lines += ["", *notes]
    unfinished = _unfinished_notes(rows)
    if unfinished:
        lines += ["", "## Runs that did not finish", "", *unfinished]
    if sweep.superseded:
        lines += [
            "",
            "## Superseded attempts",
            "",
            "Configs that ran more than once; the table shows only the latest started run.",
            "",
        ]
        for run in sorted(sweep.superseded, key=lambda r: (r.start_time, r.run_id)):
            error = f": {' '.join(run.error.split())}" if run.error else ""
            lines.append(
                f"- {run.architecture} seed={run.seed} — run `{run.run_id}` {run.status}{error}"
            )
    if significance is not None:
        lines += _significance_section(significance)
    figures = [
        (
            TOP1_INTERVALS,
            "Test top-1 with 95 % intervals over test images; best and not "
            "significantly different rows marked",
        ),
        (VAL_CURVES, "Validation top-1 per epoch (mean over seeds)"),
        (TEST_BARS, "Test top-1 per row; black tick: the reference study"),
        (TOP1_VS_TIME, "Test top-1 vs train wall time"),
        (TOP1_VS_PARAMS, "Test top-1 vs parameter count"),
        (SUPERCLASS_HEATMAP, "Test top-1 per superclass"),
        (TRAIN_VAL_CURVES, "Top-1 on fixed training images and on validation per epoch"),
        (RELIABILITY, "Reliability diagrams: accuracy against confidence, 15 bins"),
    ]
    lines += ["", "## Figures", ""]
    for name, caption in figures:
        lines += [f"![{caption}]({name})", ""]
    return "\n".join(lines)
