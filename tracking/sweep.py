"""A Hydra multirun as one thing in MLflow: a parent run with every job nested under it.

The Hydra callback creates (or, for the same command run again, reopens) the parent run
before any job starts, and records its id in the sweep folder. Jobs read it from there,
whichever process or machine a launcher puts them on, and pass it as MLflow's
`parent_run_id`. At the end the callback closes the parent and prints what failed.

Hydra turns a callback's exception into a warning, so the callback never sets the exit
code: it records what went wrong here, and train.py asks `exit_code()` once Hydra returns.

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

from errors import UserError
from tracking.sweep_plan import check_jobs_compose, describe, planned_jobs

log = logging.getLogger(__name__)

SWEEP_FILE = "mlflow_sweep.json"
OUTCOME_FILE = "outcome.json"
# How a job may end without failing its sweep; a pruned trial stopped early on purpose.
CLEAN_ENDS = ("finished", "skipped", "pruned")


@dataclass
class Launch:
    """What this process's multirun left for train.py's exit code."""

    sweep_dir: Path | None = None
    tracking: DictConfig | None = None
    store_error: str | None = None


LAUNCH = Launch()


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
        # Before the parent exists: a sweep whose configs do not compose leaves no trace.
        jobs = planned_jobs(config)
        if jobs is not None:
            try:
                check_jobs_compose(config, jobs)
            except UserError as error:
                # Hydra turns a callback's exception into a warning and runs on; this ends it.
                log.error("%s", error)
                raise SystemExit(2) from None
        sweep_dir = Path(config.hydra.sweep.dir)
        LAUNCH.sweep_dir, LAUNCH.tracking, LAUNCH.store_error = sweep_dir, config.tracking, None
        # A parent from an earlier launch into this folder must not be picked up by the jobs.
        (sweep_dir / SWEEP_FILE).unlink(missing_ok=True)
        # The summary reports this launch only: a job killed before it ended writes none.
        for stale in sweep_dir.glob(f"*/{OUTCOME_FILE}"):
            stale.unlink()
        try:
            self._open_parent(config, sweep_dir, jobs)
        except Exception as error:
            LAUNCH.store_error = " ".join(str(error).split())
            log.error("sweep: no parent run (%s)", LAUNCH.store_error)

    def _open_parent(self, config: DictConfig, sweep_dir: Path, jobs) -> None:
        from cli.quiet import start_backend

        # First, so TensorFlow starts quietly; the backend is part of the sweep's identity.
        backend = start_backend()
        import mlflow
        from mlflow.entities import RunStatus

        from tracking.owner import machine_lock
        from tracking.params import public_overrides
        from tracking.store import connect

        experiment_id = connect(config.tracking)
        overrides = list(config.hydra.overrides.task)
        sweep_id = sweep_id_for(overrides, config.resume, backend)
        client = mlflow.MlflowClient()
        # Copies of one command started together would each find no parent and create one.
        with machine_lock(Path(config.tracking.root) / "locks" / f"sweep-{sweep_id}.lock"):
            existing = client.search_runs(
                [experiment_id], f"tags.sweep_id = '{sweep_id}' and tags.sweep_parent = 'true'"
            )
            if existing:
                parent_run_id = existing[0].info.run_id
                client.update_run(parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            else:
                command = " ".join(public_overrides(overrides))
                what = describe(jobs, overrides, config.model.name)
                parent_run_id = client.create_run(
                    experiment_id,
                    run_name=f"sweep {what} · {sweep_id[:6]}",
                    tags={
                        "sweep_id": sweep_id,
                        "sweep_parent": "true",
                        "sweep_overrides": command,
                        "backend": backend,
                        # The description, until the comparison replaces it at the end.
                        "mlflow.note.content": f"`python train.py -m {command}`",
                    },
                ).info.run_id
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        sweep = Sweep(sweep_id, parent_run_id, experiment_id, count_jobs(config))
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(asdict(sweep)))
        count = sweep.job_count
        counted = "? jobs" if count is None else f"{count} job{'' if count == 1 else 's'}"
        log.info("sweep %s: %s · parent run %s", sweep_id, counted, parent_run_id)
        uri = config.tracking.uri
        log.info("store %s · ui: mlflow ui --backend-store-uri %s", uri, uri)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        import mlflow

        sweep_dir = Path(config.hydra.sweep.dir)
        outcomes = read_outcomes(sweep_dir)
        for outcome in outcomes:
            log.info("%-8s %s %s", outcome["status"], outcome["job"], outcome.get("error", ""))
        if LAUNCH.store_error is not None:
            return
        from tracking.store import connect

        try:
            sweep = Sweep(**json.loads((sweep_dir / SWEEP_FILE).read_text()))
            connect(config.tracking, must_exist=True)  # never re-create a vanished store
            failed = any(o["status"] not in CLEAN_ENDS for o in outcomes)
            mlflow.MlflowClient().set_terminated(
                sweep.parent_run_id, status="FAILED" if failed else "FINISHED"
            )
            # Imported after the parent is closed: a broken comparison must not leave it RUNNING.
            from comparison import build_report

            # The compact table, then where the full one, the CSV and the plots are.
            build_report(
                config.tracking.uri,
                config.tracking.experiment,
                sweep.sweep_id,
                sweep_dir / "comparison",
            )
        except Exception as error:
            LAUNCH.store_error = " ".join(str(error).split())
            log.error("sweep: could not close the parent run (%s)", LAUNCH.store_error)


def exit_code() -> tuple[int, str]:
    """This process's multirun verdict: the exit code and, when non-zero, the one line why.
    (0, "") when no multirun ran here."""
    if LAUNCH.sweep_dir is None:
        return 0, ""
    outcomes = read_outcomes(LAUNCH.sweep_dir)
    failed = [o for o in outcomes if o["status"] not in CLEAN_ENDS]
    if LAUNCH.store_error is not None:
        return 1, f"sweep failed: {LAUNCH.store_error}"
    if not outcomes:
        return 1, "sweep failed: no job reported an outcome"
    if failed:
        names = ", ".join(
            o["job"] + ("" if o["status"] == "failed" else " (ended without an outcome)")
            for o in failed
        )
        return 1, f"{len(failed)} of {len(outcomes)} jobs failed: {names}"
    return 0, ""


def interrupted(signal_name: str) -> str:
    """Marks this process's sweep parent KILLED, as the interrupted job's run already is."""
    if LAUNCH.sweep_dir is not None and (LAUNCH.sweep_dir / SWEEP_FILE).exists():
        try:
            import mlflow

            from tracking.store import connect

            sweep = Sweep(**json.loads((LAUNCH.sweep_dir / SWEEP_FILE).read_text()))
            connect(LAUNCH.tracking, must_exist=True)
            mlflow.MlflowClient().set_terminated(sweep.parent_run_id, status="KILLED")
        except Exception as error:  # the rerun reopens the parent anyway
            log.warning("could not mark the sweep's parent run KILLED (%s)", error)
    return f"interrupted by {signal_name}; run the same command again to resume"
