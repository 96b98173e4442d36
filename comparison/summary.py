"""The comparison where the MLflow UI shows it: one self-contained HTML page, and on the
sweep's parent run a Markdown description (the short table) and one metric per row."""

import base64
import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from markdown_it import MarkdownIt

from comparison.collect import SweepRecord
from comparison.table import Row, _pct, _plain

HTML = "comparison.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1f2328; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; white-space: nowrap; }
th { background: #f6f8fa; }
td { text-align: right; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0 1.5em; }
code { background: #f6f8fa; padding: 0 3px; }
"""
SHORT_HEADERS = (
    "architecture",
    "test top-1 (%)",
    "test top-5 (%)",
    "best val top-1 (%)",
    "train time (s)",
    "images/s",
    "status",
)
# MLflow metric names take letters, digits, _ - . / and spaces.
NOT_IN_METRIC_NAME = re.compile(r"[^\w.\-/ ]+")


def short_table(rows: Sequence[Row]) -> str:
    """The columns a reader scans first, as a Markdown table the MLflow UI renders."""
    lines = ["| " + " | ".join(SHORT_HEADERS) + " |", "|---" + "|---:" * 5 + "|---|"]
    for row in rows:
        cells = [
            row.label or row.architecture,
            _pct(row.test_top1),
            _pct(row.test_top5),
            _pct(row.best_val_top1),
            _plain(row.train_seconds, 0),
            _plain(row.images_per_second, 0),
            row.status,
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


# MLflow's "Share" view: an experiment tag the runs page reads for ?viewStateShareKey=<key>.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
LEADERBOARD_COLUMNS = (
    "attributes.`Dataset`",
    "attributes.`Models`",
    "metrics.`test_top1`",
    "metrics.`test_top5`",
    "metrics.`best_val_top1`",
    "metrics.`train_seconds`",
    "metrics.`train_images_per_second`",
)


def leaderboard_view(sweep: SweepRecord) -> tuple[str, str]:
    """(experiment tag, value): the sweep's runs flat (not folded under the parent), best
    test top-1 first, with the final metrics as columns."""
    state = {
        "searchFilter": f"tags.`sweep.{sweep.sweep_id}` = 'true'",
        "orderByKey": "metrics.`test_top1`",
        "orderByAsc": False,
        "selectedColumns": list(LEADERBOARD_COLUMNS),
    }
    return SHARED_VIEW_TAG + sweep.sweep_id, json.dumps(state)


# MLflow 3's UI opens in its GenAI mode unless the URL (or the browser's last choice) says
# otherwise; links the repo writes ask for its "Model training" mode.
TRAINING_MODE = "workflowType=machine_learning"


def leaderboard_route(sweep: SweepRecord) -> str:
    return (
        f"#/experiments/{sweep.experiment_id}/runs"
        f"?viewStateShareKey={sweep.sweep_id}&{TRAINING_MODE}"
    )


def ui_hint(sweep: SweepRecord) -> str:
    """Where a user sees the sweep's runs in the MLflow UI: a server's own page, or the
    address `mlflow ui` serves by default for a local store."""
    route = leaderboard_route(sweep)
    if sweep.tracking_uri.startswith(("http://", "https://")):
        return f"in MLflow: {sweep.tracking_uri.rstrip('/')}/{route}"
    return (
        f"in MLflow: mlflow ui --backend-store-uri {sweep.tracking_uri}\n"
        f"  then open http://127.0.0.1:5000/{route}"
    )


def parent_description(sweep: SweepRecord, rows: Sequence[Row]) -> str:
    """The parent run's description (`mlflow.note.content`): command, short table, pointer."""
    command = f"python train.py -m {sweep.overrides}".strip()
    table = short_table(rows) if rows else "No run of this sweep is recorded yet."
    return "\n".join(
        [
            f"**Sweep** `{sweep.sweep_id}` ({sweep.status}): `{command}`",
            "",
            table,
            "",
            f"[Every run of this sweep, best test top-1 first]({leaderboard_route(sweep)}). "
            "Accuracies in %, mean ± sample std over seeds. The full comparison with figures "
            "is `comparison/comparison.html` under Artifacts; rebuild it with "
            f"`python compare.py --sweep {sweep.sweep_id}`.",
        ]
    )


def parent_metrics(rows: Sequence[Row]) -> dict[str, float]:
    """`test_top1.<row>` for each finished row, and the best of them as `best_test_top1`."""
    metrics = {}
    for row in rows:
        if row.status == "FINISHED" and row.test_top1 is not None:
            name = NOT_IN_METRIC_NAME.sub("_", row.label or row.architecture).strip()
            metrics[f"test_top1.{name}"] = round(row.test_top1.mean, 4)
    if metrics:
        metrics["best_test_top1"] = max(metrics.values())
    return metrics


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(markdown: str, plots: Mapping[str, Path], title: str) -> str:
    """comparison.md as one HTML file, its figures embedded: the artifact view shows it whole."""
    renderer = MarkdownIt("commonmark", {"html": False}).enable("table")
    body = renderer.render(markdown)
    for name, path in plots.items():
        body = body.replace(f'src="{name}"', f'src="{_data_uri(path)}"')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>\n{body}</body></html>\n"
    )
