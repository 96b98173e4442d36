"""One Hydra job's life in MLflow.

`TrackedJob` finds the job's twin (a run of the same config identity), decides whether to
skip, resume or start afresh, opens the run, and records how the job ended: a FAILED run
with the error as a tag and the traceback as an artifact, a one-line log message, and an
outcome file the sweep summary reads. In a sweep a failed job lets the next one run; a
single run exits non-zero. While the job lives it owns its config identity (tracking/owner.py):
another copy of the command waits rather than resume or log into the same run.
"""

import logging
import math
import os
import shutil
import traceback
from pathlib import Path

import mlflow
from hydra.core.hydra_config import HydraConfig
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from errors import UserError
from tracking.owner import Ownership
from tracking.params import (
    config_identity,
    flatten_params,
    machine_tags,
    public_config,
    public_overrides,
)
from tracking.results import log_model_summary
from tracking.store import connect
from tracking.sweep import current_sweep, write_outcome
from tracking.values import clean_curves, clean_metrics, curve_key

log = logging.getLogger("train")

UNFINISHED = ("RUNNING", "KILLED", "SCHEDULED")


class TrackedJob:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        hydra = HydraConfig.get()
        self.name = hydra.runtime.choices.get("model", cfg.model.name)
        self.job = f"{hydra.job.num}_{self.name}" if hydra.mode.name == "MULTIRUN" else self.name
        self.output_dir = Path(hydra.runtime.output_dir)
        self.run_id: str | None = None
        self.identity: str | None = None
        self.resuming = False
        self.finished_twin: Run | None = None
        self.owner: Ownership | None = None
        # What the task returns: best val top-1, NaN for a failed job (Optuna fails the trial).
        self.objective = math.nan
        # Replaced when the job ends; a job whose process dies first leaves this one, and the
        # sweep counts it as failed.
        self._outcome("started")

    # -- the run ---------------------------------------------------------------------------

    def open(self) -> None:
        """Connects the store, owns the config identity and looks for a run of it."""
        self.sweep = current_sweep()
        self.experiment_id = connect(self.cfg.tracking, must_exist=self.sweep is not None)
        if self.sweep is not None:
            self._check_parent()
        self.identity = config_identity(self.cfg)
        self.checkpoint_dir = Path(self.cfg.tracking.checkpoint_dir) / self.identity
        owner = Ownership(self.cfg.tracking, self.identity, self.job, self.experiment_id)
        owner.acquire()
        self.owner = owner
        twin = self._latest_twin()
        if twin is not None and self.cfg.resume:
            if twin.info.status == "FINISHED":
                self.finished_twin = twin
                return
            if twin.info.status in UNFINISHED:
                self.run_id, self.resuming = twin.info.run_id, True
                return
        # A fresh run must not pick up a crashed or forced-over twin's epochs.
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def _check_parent(self) -> None:
        try:
            mlflow.MlflowClient().get_run(self.sweep.parent_run_id)
        except MlflowException:
            raise UserError(
                f"tracking.uri={self.cfg.tracking.uri}: the store lost this sweep's parent run "
                f"{self.sweep.parent_run_id} (replaced mid-sweep?); restore it and run the same "
                "command again"
            ) from None

    def _latest_twin(self) -> Run | None:
        runs = mlflow.search_runs(
            [self.experiment_id],
            f"tags.identity = '{self.identity}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
        return runs[0] if runs else None

    @property
    def finished(self) -> bool:
        return self.finished_twin is not None

    def reuse_finished(self) -> float:
        """Skips the job: its twin already finished. Joins this sweep and returns its score."""
        twin = self.finished_twin
        if self.sweep is not None:
            mlflow.MlflowClient().set_tag(twin.info.run_id, f"sweep.{self.sweep.sweep_id}", "true")
        self.objective = twin.data.metrics.get("best_val_top1", math.nan)
        log.info("%s: FINISHED earlier as run %s; skipped", self.job, twin.info.run_id)
        self._outcome("skipped", run_id=twin.info.run_id)
        return self.objective

    def start(self, tags: dict[str, str], model) -> None:
        """Opens the MLflow run (new, or the interrupted twin) and logs what defines it."""
        self.tags, self.model = tags, model  # for a run that takes over (continue_from)
        if self.resuming:
            run = mlflow.start_run(run_id=self.run_id, log_system_metrics=self._system_metrics())
            if self.sweep is not None:
                mlflow.set_tag(f"sweep.{self.sweep.sweep_id}", "true")
            log.info("%s: resuming run %s", self.job, self.run_id)
            # A kill right after the run started can leave it without params or summary.
            params = flatten_params(self.cfg)
            mlflow.log_params({k: v for k, v in params.items() if k not in run.data.params})
            if "param_count" not in run.data.metrics:
                mlflow.log_text(OmegaConf.to_yaml(public_config(self.cfg)), "config.yaml")
                log_model_summary(model)
        else:
            self._new_run(tags)
            log.info("%s: run %s started", self.job, self.run_id)
            log_model_summary(model)

    def _new_run(self, tags: dict[str, str]) -> None:
        sweep_tags = {}
        if self.sweep is not None:
            sweep_tags = {
                "sweep_id": self.sweep.sweep_id,
                f"sweep.{self.sweep.sweep_id}": "true",
            }
        run = mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=self.name,
            parent_run_id=self.sweep.parent_run_id if self.sweep else None,
            tags={
                "identity": self.identity,
                "model": self.name,
                "overrides": " ".join(public_overrides(HydraConfig.get().overrides.task)),
                **sweep_tags,
                **machine_tags(self.cfg),
                **tags,
            },
            log_system_metrics=self._system_metrics(),
        )
        self.run_id = run.info.run_id
        mlflow.log_params(flatten_params(self.cfg))
        mlflow.log_text(OmegaConf.to_yaml(public_config(self.cfg)), "config.yaml")

    def _system_metrics(self) -> bool:
        """CPU, memory (psutil) and GPU (nvidia-ml-py, where present) beside the curves."""
        settings = self.cfg.tracking.get("system_metrics")
        if not settings or not settings.enabled:
            return False
        mlflow.set_system_metrics_sampling_interval(settings.interval_seconds)
        return True

    def continue_from(self, epochs_done: int, history: list[dict]) -> None:
        """Makes a resumed run's curves hold epochs 1..epochs_done once each, then trains on.

        Epochs the checkpoint holds but the store lost with the kill are logged again. Epochs
        the store holds past the checkpoint (its newer ones were unreadable) cannot be taken
        back in MLflow, so a new run of the same identity takes over and the old one is KILLED.
        """
        client = mlflow.MlflowClient()
        logged = {m.step for m in client.get_metric_history(self.run_id, curve_key("loss"))}
        if any(step > epochs_done for step in logged):
            old_run_id = self.run_id
            mlflow.end_run("KILLED")
            self.resuming = False
            self.start(self.tags, self.model)
            client.set_tag(old_run_id, "superseded_by", self.run_id)
            log.warning(
                "%s: run %s logged %d epochs but the checkpoint holds %d; run %s takes over",
                self.job,
                old_run_id,
                max(logged),
                epochs_done,
                self.run_id,
            )
            logged = set()
        for epoch, logs in enumerate(history[:epochs_done], start=1):
            if epoch not in logged:
                mlflow.log_metrics(clean_curves(logs), step=epoch)

    def finish(self, objective: float) -> None:
        metrics = mlflow.get_run(self.run_id).data.metrics
        log.info(
            "%s: test top-1 %.2f %%, top-5 %.2f %% (run %s)",
            self.job,
            metrics["test_top1"],
            metrics["test_top5"],
            self.run_id,
        )
        mlflow.end_run("FINISHED")
        self.objective = objective
        self._outcome("finished", run_id=self.run_id)
        # Only an unfinished run resumes; the best model is the run's artifact now.
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def prune(self, fit_result, epochs_run: int) -> None:
        """Ends a trial its search pruned: KILLED (stopped early on purpose, not a failure),
        tagged `pruned`, with the epochs it reached; no test evaluation."""
        mlflow.set_tags({"pruned": "true", "pruned_at_epoch": str(epochs_run)})
        mlflow.log_metrics(
            clean_metrics(
                {
                    "best_val_top1": fit_result.best_val_top1,
                    "best_epoch": fit_result.best_epoch + 1,  # 1-based, as in log_results
                    "epochs_run": fit_result.epochs_run,
                    "train_seconds": fit_result.train_seconds,
                }
            )
        )
        mlflow.end_run("KILLED")
        self.objective = fit_result.best_val_top1
        log.info("%s: pruned after %d epochs (run %s)", self.job, epochs_run, self.run_id)
        self._outcome("pruned", run_id=self.run_id)
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    # -- how the job ends --------------------------------------------------------------------

    def __enter__(self) -> "TrackedJob":
        return self

    def __exit__(self, exc_type, error, tb) -> bool:
        try:
            return self._end(exc_type, error)
        finally:
            if self.owner is not None:
                self.owner.release()

    def _end(self, exc_type, error) -> bool:
        if error is None:
            return False
        if not isinstance(error, Exception):  # Ctrl-C, SystemExit: not this job's failure
            if mlflow.active_run():
                mlflow.end_run("KILLED")
            return False
        message = str(error) if isinstance(error, UserError) else f"{exc_type.__name__}: {error}"
        message = " ".join(message.split())
        try:
            self._record_failure(message, "".join(traceback.format_exception(error)))
        except Exception as store_error:  # a store gone away must not end the whole sweep
            log.warning("%s: could not record the failure in MLflow (%s)", self.job, store_error)
        log.error("%s failed: %s", self.job, message)
        self._outcome("failed", run_id=self.run_id, error=message)
        if HydraConfig.get().mode.name == "MULTIRUN":
            return True  # the sweep goes on; its summary and exit code report this job
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            return False
        raise SystemExit(1)

    def _record_failure(self, message: str, trace: str) -> None:
        trace_file = self.output_dir / "traceback.txt"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        trace_file.write_text(trace)
        if not mlflow.active_run():
            if self.owner is None or self.resuming or self.finished:
                return  # no store yet, another's run, or a twin a rerun resumes or reuses
            self._new_run({})  # failed before training: still a FAILED row in the sweep
        try:
            mlflow.set_tag("error", message[:5000])
            mlflow.log_artifact(str(trace_file))
        finally:
            mlflow.end_run("FAILED")

    def _outcome(self, status: str, **details) -> None:
        write_outcome(self.output_dir, job=self.job, status=status, **details)
