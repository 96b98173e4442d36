"""One sweep read out of the MLflow tracking store, and nothing else.

A sweep's members are the runs tagged `sweep.<sweep_id>=true`: the jobs it ran and the
FINISHED runs of earlier sweeps it reused, which keep their first parent. When a config was
run more than once (a FAILED attempt, then a re-run) only the latest started run counts.
"""

import json
import math
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from errors import UserError, one_line
from tracking.store import server_silence
from tracking.values import stored_curve_keys

SQLITE_PREFIX = "sqlite:///"
PARENT_FILTER = "tags.sweep_parent = 'true'"
# Written by tracking.results with mlflow.log_table; read back here without TensorFlow.
SUPERCLASS_TABLE = "superclass_top1.json"

# How each input is named to the person who gave it: Hydra keys for the sweep callback,
# flags for compare.py (see StoreError.line).
HYDRA_NAMES = {
    "tracking_uri": "tracking.uri",
    "experiment": "tracking.experiment",
    "sweep": "sweep",
}


class StoreError(UserError):
    """The store, experiment or sweep asked for is not there; says which input and the fix."""

    def __init__(self, option: str, value: str, detail: str):
        self.option, self.value, self.detail = option, value, detail
        super().__init__(self.line())

    def line(self, names: Mapping[str, str] = HYDRA_NAMES) -> str:
        name = names.get(self.option, self.option)
        return f"{name}{' ' if name.startswith('-') else '='}{self.value}: {self.detail}"


@dataclass(frozen=True)
class RunRecord:
    """What the comparison needs of one run: its tags, params, final metrics and curve."""

    run_id: str
    architecture: str
    status: str
    start_time: int
    tags: Mapping[str, str]
    params: Mapping[str, str]
    metrics: Mapping[str, float]  # latest value of each metric; finals are logged once
    val_top1: tuple[float, ...]  # per epoch (step 1 first), NaN where an epoch is missing
    train_eval_top1: tuple[float, ...] = ()  # the same (%), on fixed training images
    superclass_top1: Mapping[str, float] = field(default_factory=dict)  # test top-1 (%)

    @property
    def overrides(self) -> dict[str, str]:
        return parse_overrides(self.tags.get("overrides", ""))

    @property
    def seed(self) -> str | None:
        return self.params.get("seed", self.overrides.get("seed"))

    @property
    def error(self) -> str | None:
        return self.tags.get("error")


@dataclass(frozen=True)
class SweepRecord:
    experiment: str
    experiment_id: str
    sweep_id: str
    parent_run_id: str
    status: str  # the parent's: RUNNING while jobs still run
    overrides: str
    tracking_uri: str
    runs: tuple[RunRecord, ...]  # one per config identity, the latest started
    superseded: tuple[RunRecord, ...] = field(default=())  # older attempts of those configs
    # Set when no sweep id was given: newer sweeps without a single run that were passed over.
    skipped_empty: tuple[str, ...] | None = None

    @property
    def how_chosen(self) -> str:
        if self.skipped_empty is None:
            return f"sweep {self.sweep_id}"
        text = f"sweep {self.sweep_id}: the latest with at least one run"
        if self.skipped_empty:
            text += f" (newer sweeps without runs skipped: {', '.join(self.skipped_empty)})"
        return text


def parse_overrides(text: str) -> dict[str, str]:
    """`model=vgg13 optimizer.lr=0.05 +x=1 ~y` -> {model: vgg13, optimizer.lr: 0.05, x: 1, y: ~}."""
    overrides = {}
    for item in text.split():
        if item.startswith("~"):
            key, _, _ = item[1:].partition("=")
            overrides[key] = "~"
            continue
        key, sep, value = item.lstrip("+").partition("=")
        if sep:
            overrides[key] = value
    return overrides


# -- the store ---------------------------------------------------------------------------------


def check_tracking_uri(uri: str) -> None:
    """Refuses a store that is not there before MLflow connects, which would create it."""
    if uri.startswith(SQLITE_PREFIX):
        path = Path(uri.removeprefix(SQLITE_PREFIX).split("?", 1)[0])
        _check_sqlite(uri, path)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)
    else:
        raise StoreError(
            "tracking_uri",
            uri,
            "only an sqlite store (sqlite:///<path>/mlflow.db) or an MLflow server "
            "(http://host:port) is read; pass the sqlite:/// URI of the store train.py wrote",
        )


def _check_sqlite(uri: str, path: Path) -> None:
    if not path.is_file():
        raise StoreError(
            "tracking_uri",
            uri,
            f"no store file at {path.resolve()}; run from the folder that holds it or pass "
            "sqlite:///<path>/mlflow.db",
        )
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as db:
            found = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'experiments'"
            ).fetchone()
    except sqlite3.Error as error:
        found, reason = None, str(error)
    else:
        reason = "empty file" if path.stat().st_size == 0 else "no experiments table"
    if not found:
        raise StoreError(
            "tracking_uri",
            uri,
            f"{path} is not an MLflow store ({reason}); pass the mlflow.db that train.py wrote",
        )


def _check_server(uri: str) -> None:
    reason = server_silence(uri)
    if reason is not None:
        raise StoreError(
            "tracking_uri",
            uri,
            f"no MLflow server answers ({reason}); start it or pass sqlite:///<path>/mlflow.db",
        )


@contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    try:
        yield
    except MlflowException as error:
        raise StoreError(
            "tracking_uri", uri, f"the store refused ({one_line(error)}); check the URI"
        ) from None


def _search(client: MlflowClient, experiment_id: str, query: str, **kwargs) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            query,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
            **kwargs,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


# -- the sweep ---------------------------------------------------------------------------------


def load_sweep(tracking_uri: str, experiment: str, sweep_id: str | None) -> SweepRecord:
    """Reads sweep `sweep_id` (None: the most recently started one) of `experiment`.

    Raises StoreError (a UserError) when the store, the experiment or the sweep is missing.
    """
    check_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    with _store_errors(tracking_uri):
        experiment_id = _experiment_id(client, tracking_uri, experiment)
        skipped = None
        if sweep_id is None:
            parent, skipped = _latest_with_runs(client, experiment, experiment_id)
        else:
            parent = _find_parent(client, experiment, experiment_id, sweep_id)
        sweep_id = parent.data.tags["sweep_id"]
        members = _search(
            client,
            experiment_id,
            f"tags.`sweep.{sweep_id}` = 'true'",
            order_by=["attributes.start_time DESC"],
        )
        members = [run for run in members if run.data.tags.get("sweep_parent") != "true"]
        latest, superseded = _latest_per_identity(members)
        records = tuple(_record(client, run) for run in latest)
        older = tuple(_record(client, run, curve=False) for run in superseded)
    return SweepRecord(
        experiment=experiment,
        experiment_id=experiment_id,
        sweep_id=sweep_id,
        parent_run_id=parent.info.run_id,
        status=parent.info.status,
        overrides=parent.data.tags.get("sweep_overrides", ""),
        tracking_uri=tracking_uri,
        runs=records,
        superseded=older,
        skipped_empty=skipped,
    )


def _latest_with_runs(client: MlflowClient, experiment: str, experiment_id: str):
    """The most recently started sweep that has a run, and the ids of newer empty ones.

    A sweep stopped before its first job (killed, or from before configs were checked up
    front) has only its parent: an empty report of it helps no one.
    """
    parents = _search(client, experiment_id, PARENT_FILTER, order_by=["attributes.start_time DESC"])
    empty = []
    for parent in parents:
        sweep_id = parent.data.tags.get("sweep_id", "")
        if not sweep_id:
            continue  # tagged by hand or half-written: it names no sweep
        member = client.search_runs(
            [experiment_id], f"tags.`sweep.{sweep_id}` = 'true'", max_results=1
        )
        if member:
            return parent, tuple(empty)
        empty.append(sweep_id)
    detail = "holds no sweep (no parent run tagged sweep_parent=true)"
    if parents:
        detail = f"holds no sweep with a run yet (empty sweeps: {', '.join(empty)})"
    raise StoreError(
        "experiment",
        experiment,
        f"{detail}; run one with python train.py -m model=alexnet,vgg13 or pass the "
        "experiment that has one",
    )


def _experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    names = [e.name for e in client.search_experiments() if e.name != "Default"]
    if not names:
        raise StoreError(
            "experiment",
            name,
            f"the store {uri} holds no experiment yet; run a sweep first "
            "(python train.py -m model=alexnet,vgg13)",
        )
    raise StoreError(
        "experiment", name, f"no such experiment in {uri}; pass one of: {', '.join(names)}"
    )


def _find_parent(client: MlflowClient, experiment: str, experiment_id: str, sweep_id: str):
    latest_first = ["attributes.start_time DESC"]
    if not re.fullmatch(r"[A-Za-z0-9_-]+", sweep_id):
        raise StoreError(
            "sweep", sweep_id, "a sweep id is 12 hex digits; pass one like 3f2a9c0b1d4e"
        )
    exact = client.search_runs(
        [experiment_id], f"{PARENT_FILTER} and tags.sweep_id = '{sweep_id}'", order_by=latest_first
    )
    if exact:
        return exact[0]
    # Like a git hash, a unique prefix is enough.
    prefixed = _search(
        client,
        experiment_id,
        f"{PARENT_FILTER} and tags.sweep_id LIKE '{sweep_id}%'",
        order_by=latest_first,
    )
    ids = sorted({run.data.tags.get("sweep_id", "") for run in prefixed} - {""})
    if len(ids) == 1:
        return prefixed[0]
    if ids:
        raise StoreError("sweep", sweep_id, f"matches sweeps {', '.join(ids)}; pass more digits")
    recent = client.search_runs(
        [experiment_id], PARENT_FILTER, order_by=latest_first, max_results=5
    )
    known = ", ".join(run.data.tags.get("sweep_id", "?") for run in recent)
    raise StoreError(
        "sweep",
        sweep_id,
        f"no such sweep in experiment {experiment} (latest first: {known or 'none'}); "
        "pass one of those, or leave it out for the latest",
    )


def _latest_per_identity(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """Splits runs into the latest started per config identity and the older attempts."""
    latest: dict[str, Run] = {}
    older = []
    for run in sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id), reverse=True):
        identity = run.data.tags.get("identity") or run.info.run_id
        if identity in latest:
            older.append(run)
        else:
            latest[identity] = run
    return list(latest.values()), older


def _record(client: MlflowClient, run: Run, curve: bool = True) -> RunRecord:
    tags = dict(run.data.tags)
    return RunRecord(
        run_id=run.info.run_id,
        architecture=tags.get("model") or run.info.run_name or "?",
        status=run.info.status,
        start_time=run.info.start_time or 0,
        tags=tags,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        val_top1=_curve(client, run.info.run_id) if curve else (),
        train_eval_top1=_curve(client, run.info.run_id, "train_eval_top1") if curve else (),
        superclass_top1=_superclass_table(client, run) if curve else {},
    )


def _superclass_table(client: MlflowClient, run: Run) -> dict[str, float]:
    """The run's per-superclass test top-1 table (tracking.results); {} when it has none."""
    if run.info.status != "FINISHED":
        return {}
    with tempfile.TemporaryDirectory() as folder, no_progress_bars():
        try:
            path = client.download_artifacts(run.info.run_id, SUPERCLASS_TABLE, folder)
            table = json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):
            return {}
    columns = table.get("columns", [])
    if columns[:2] != ["superclass", "test_top1"]:
        return {}
    return {str(name): float(value) for name, value, *_ in table.get("data", [])}


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """MLflow draws a progress bar per download: dozens of lines of noise in a sweep's log."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _curve(client: MlflowClient, run_id: str, metric: str = "val_top1") -> tuple[float, ...]:
    """A per-epoch value (`<section>/<metric>` in the store) by epoch (steps from 1); a step
    logged twice (a resume re-logs it) keeps the latest value."""
    by_step: dict[int, float] = {}
    for key in stored_curve_keys(metric):
        history = client.get_metric_history(run_id, key)
        if history:
            break
    for metric in sorted(history, key=lambda m: m.timestamp):
        by_step[metric.step] = metric.value
    if not by_step:
        return ()
    return tuple(by_step.get(step, math.nan) for step in range(1, max(by_step) + 1))
