"""A Hydra multirun as one thing in MLflow: a parent run with every job nested under it.

The Hydra callback creates (or, for the same command run again, reopens) the parent run
before any job starts, and records its id in the sweep folder. Jobs read it from there,
whichever process or machine a launcher puts them on, and pass it as MLflow's
`parent_run_id`. At the end the callback closes the parent, prints what failed, and exits
non-zero if anything did.

Hydra instantiates the callback at start-up, for `--help` too, so Keras and MLflow are
imported only once a sweep starts.
"""

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger(__name__)

SWEEP_FILE = "mlflow_sweep.json"
OUTCOME_FILE = "outcome.json"


@dataclass(frozen=True)
class Sweep:
    sweep_id: str
    parent_run_id: str
    experiment_id: str
    job_count: int | None = None  # None where the sweeper decides as it goes


def sweep_id_for(overrides: list[str], resume: bool, backend: str) -> str:
    """Same command line on the same Keras backend, same sweep: a rerun after a kill reopens
    it. Another backend is a sweep of its own, as its runs are (see config_identity).
    resume=false never reopens one."""
    key = " ".join(sorted(overrides)) + f" #{backend}" + ("" if resume else f" @{time.time_ns()}")
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def current_sweep() -> Sweep | None:
    """The sweep this job belongs to; None for a single run."""
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None
    path = Path(hydra.sweep.dir) / SWEEP_FILE
    return Sweep(**json.loads(path.read_text())) if path.exists() else None


def count_jobs(config: DictConfig) -> int | None:
    """How many jobs the sweep launches: n_trials for Optuna, the grid size for the basic
    sweeper, None when it cannot be known up front."""
    sweeper = config.hydra.sweeper
    if sweeper.get("n_trials") is not None:
        return int(sweeper.n_trials)
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides(
            [*params, *config.hydra.overrides.task]
        )
        return len(BasicSweeper.split_arguments(overrides, None)[0])
    except Exception:  # a sweep syntax only Hydra's own parse understands
        return None


def write_outcome(output_dir: str | Path, **outcome) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / OUTCOME_FILE).write_text(json.dumps(outcome))


def read_outcomes(sweep_dir: str | Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob(f"*/{OUTCOME_FILE}"))]


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from cli.quiet import start_backend

        # First, so TensorFlow starts quietly; the backend is part of the sweep's identity.
        backend = start_backend()
        import mlflow
        from mlflow.entities import RunStatus

        from tracking.params import public_overrides
        from tracking.store import connect

        experiment_id = connect(config.tracking)
        overrides = list(config.hydra.overrides.task)
        sweep_id = sweep_id_for(overrides, config.resume, backend)
        client = mlflow.MlflowClient()
        existing = client.search_runs(
            [experiment_id], f"tags.sweep_id = '{sweep_id}' and tags.sweep_parent = 'true'"
        )
        if existing:
            parent_run_id = existing[0].info.run_id
            client.update_run(parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        else:
            parent_run_id = client.create_run(
                experiment_id,
                run_name=f"sweep-{sweep_id}",
                tags={
                    "sweep_id": sweep_id,
                    "sweep_parent": "true",
                    "sweep_overrides": " ".join(public_overrides(overrides)),
                    "backend": backend,
                },
            ).info.run_id
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # The summary reports this launch only: a job killed before it ended writes none.
        for stale in sweep_dir.glob(f"*/{OUTCOME_FILE}"):
            stale.unlink()
        sweep = Sweep(sweep_id, parent_run_id, experiment_id, count_jobs(config))
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(asdict(sweep)))
        count = sweep.job_count
        jobs = "? jobs" if count is None else f"{count} job{'' if count == 1 else 's'}"
        log.info("sweep %s: %s · parent run %s", sweep_id, jobs, parent_run_id)
        uri = config.tracking.uri
        log.info("store %s · ui: mlflow ui --backend-store-uri %s", uri, uri)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        import mlflow

        from comparison import build_report

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep = Sweep(**json.loads((sweep_dir / SWEEP_FILE).read_text()))
        outcomes = read_outcomes(sweep_dir)
        failed = [o for o in outcomes if o["status"] == "failed"]
        mlflow.MlflowClient().set_terminated(
            sweep.parent_run_id, status="FAILED" if failed else "FINISHED"
        )
        for outcome in outcomes:
            log.info("%-8s %s %s", outcome["status"], outcome["job"], outcome.get("error", ""))
        # The compact table, then where the full one, the CSV and the plots are.
        build_report(
            config.tracking.uri,
            config.tracking.experiment,
            sweep.sweep_id,
            sweep_dir / "comparison",
        )
        if failed:
            log.error(
                "%d of %d jobs failed: %s",
                len(failed),
                len(outcomes),
                ", ".join(o["job"] for o in failed),
            )
            raise SystemExit(1)
