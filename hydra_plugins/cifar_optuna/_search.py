"""One invocation of a search: open the study, run trials until it holds n_trials, report.

Each of `n_jobs` workers asks the study for a trial, launches it as one Hydra job, tells the
study how it ended, and asks again at once (ask/tell, no batches). A worker first takes over
a trial whose owner died (a killed search), so the same command goes on where it stopped.
"""

import json
import logging
import math
import threading
import time
from pathlib import Path

import optuna
from hydra.core.utils import JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from callbacks.trial_pruning import PRUNED_AT
from errors import UserError, one_line
from hydra_plugins.cifar_optuna._space import as_override, parse_space
from hydra_plugins.cifar_optuna._study import (
    OWNER,
    VOID,
    Heartbeat,
    counted,
    is_orphan,
    is_surplus,
    masked,
    me,
    open_storage,
    trial_id,
)
from hydra_plugins.cifar_optuna.trial import RUN_ID
from tracking.sweep import SWEEP_FILE, Sweep

log = logging.getLogger(__name__)


class Search:
    def __init__(self, sweeper, arguments: list[str]):
        self.settings = sweeper.settings
        self.config = sweeper.config
        self.launcher = sweeper.launcher
        self.sweeper = sweeper
        self.space = parse_space(
            arguments,
            _plain(self.settings.get("params")),
            _plain(self.settings.get("conditional")),
        )
        if not self.space.distributions:
            raise UserError(
                "hydra.sweeper.params: the search space is empty; add e.g. "
                "optimizer.lr: tag(log, interval(0.01, 0.4))"
            )
        self.sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_file = self.sweep_dir / SWEEP_FILE
        if not sweep_file.exists():
            raise UserError(
                "hydra.callbacks.sweep: the Optuna sweeper needs the sweep callback "
                "(tracking.sweep.SweepCallback) that conf/config.yaml configures"
            )
        self.sweep = Sweep(**json.loads(sweep_file.read_text()))
        self.study_name = self.settings.get("study_name") or f"sweep-{self.sweep.sweep_id}"
        self.storage_url = str(self.settings["storage"])
        self.n_trials = int(self.settings["n_trials"])
        self.n_jobs = int(self.settings["n_jobs"])
        self.grace_period_s = float(self.settings["grace_period_s"])
        self.lock = threading.Lock()

    # -- the study ------------------------------------------------------------------------------

    def _open_study(self) -> optuna.Study:
        sampler_cfg = self.settings["sampler"]
        if sampler_cfg["_target_"].endswith("GridSampler"):
            grid = self.space.grid()
            sampler = instantiate(sampler_cfg, search_space=grid)
            size = math.prod(len(values) for values in grid.values())
            if self.n_trials > size:
                log.info("the grid has %d points: n_trials %d -> %d", size, self.n_trials, size)
                self.n_trials = size
        else:
            sampler = instantiate(sampler_cfg)
        self.storage = open_storage(self.storage_url)
        try:
            study = optuna.create_study(
                storage=self.storage,
                study_name=self.study_name,
                sampler=sampler,
                pruner=instantiate(self.settings["pruner"]),
                direction=self.settings["direction"],
                load_if_exists=True,
            )
        except ValueError as error:
            raise UserError(f"hydra.sweeper.direction: {error}") from None
        if study.get_trials(deepcopy=False):
            # A worker joining (or reopening) the study must not draw what the first drew from
            # the same seed; a fresh study keeps the configured seed, so it reproduces.
            study.sampler.reseed_rng()
        return study

    def _workers(self) -> int:
        if self.n_jobs <= 1:
            return 1
        launcher = type(self.launcher).__name__
        if launcher == "BasicLauncher":
            raise UserError(
                f"hydra.sweeper.n_jobs={self.n_jobs}: the basic launcher runs one job at a time "
                "in this process; add hydra/launcher=local_parallel (or slurm), or set "
                "hydra.sweeper.n_jobs=1"
            )
        pool = getattr(self.launcher, "joblib", None)
        if pool is not None:
            size = int(pool.get("n_jobs") or 1)
            if 0 < size < self.n_jobs:
                # One trial per worker process: the pool must hold every worker's job.
                log.info(
                    "hydra.launcher.n_jobs %d -> %d for the sweeper's workers", size, self.n_jobs
                )
                pool["n_jobs"] = self.n_jobs
        return self.n_jobs

    # -- the workers ----------------------------------------------------------------------------

    def run(self) -> list:
        study = self._open_study()
        self.study = study
        workers = self._workers()
        done = len([t for t in counted(study.get_trials(deepcopy=False)) if t.state.is_finished()])
        log.info(
            "study %s in %s: %d of %d trials done; %d worker(s)",
            self.study_name,
            masked(self.storage_url),
            done,
            self.n_trials,
            workers,
        )
        self.heartbeat = Heartbeat(self.storage, float(self.settings["heartbeat_s"]))
        self.returns: list = []
        try:
            if workers == 1:
                self._work()
            else:
                threads = [
                    threading.Thread(target=self._work, name=f"optuna-worker-{i}")
                    for i in range(workers)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        finally:
            self.heartbeat.stop()
        from hydra_plugins.cifar_optuna._report import report

        report(self, study)
        return self.returns

    def _work(self) -> None:
        while True:
            with self.lock:
                picked = self._next_trial()
            if picked is None:
                return
            number, params = picked
            self._run_trial(number, params)

    def _next_trial(self) -> tuple[int, dict] | None:
        """A trial to run: an orphan first, else a new one while the study has room."""
        trials = self.study.get_trials(deepcopy=False)
        for trial in trials:
            if is_orphan(trial, self.grace_period_s) and self._claim(trial):
                taken = self._take_over(trial)
                if taken is not None:
                    return taken
        if len(counted(trials)) >= self.n_trials:
            return None
        trial = self.study.ask()
        tid = trial_id(self.storage, self.study_name, trial.number)
        if is_surplus(self.study, trial.number, self.n_trials):
            self.storage.set_trial_system_attr(tid, VOID, "asked past n_trials")
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        self.heartbeat.own(tid)
        return trial.number, self.space.suggest(trial)

    def _claim(self, trial: FrozenTrial) -> bool:
        """Owns an orphan unless another worker got there first. A claim is a write, then a
        read half a second later; a worker that reads a live owner just before writing backs
        off, so two never both see their own claim."""
        tid = trial_id(self.storage, self.study_name, trial.number)
        if not is_orphan(self.storage.get_trial(tid), self.grace_period_s):
            return False
        self.heartbeat.own(tid)
        time.sleep(0.5)
        if self.storage.get_trial(tid).system_attrs.get(OWNER) == me():
            return True
        self.heartbeat.release(tid)
        return False

    def _take_over(self, trial: FrozenTrial) -> tuple[int, dict] | None:
        tid = trial_id(self.storage, self.study_name, trial.number)
        if PRUNED_AT in trial.user_attrs:  # pruned, but the search died before telling
            self.heartbeat.release(tid)
            self._tell(trial.number, TrialState.PRUNED, None)
            return None
        if set(self.space.distributions) - set(trial.params):
            # Killed between ask and launch: no job ever ran it.
            self.heartbeat.release(tid)
            self.storage.set_trial_system_attr(tid, VOID, "killed before it started")
            self.study.tell(trial.number, state=TrialState.FAIL)
            log.info("trial %d never started; failed, not counted, replaced", trial.number)
            return None
        log.info("trial %d was interrupted; running it again (its run resumes)", trial.number)
        return trial.number, dict(trial.params)

    def _run_trial(self, number: int, params: dict) -> None:
        overrides = [
            *self.space.fixed,
            *(as_override(name, value) for name, value in params.items()),
            f"search.study={self.study_name}",
            f"search.trial={number}",
        ]
        tid = trial_id(self.storage, self.study_name, number)
        try:
            self.sweeper.validate_batch_is_legal([overrides])
            (result,) = self.launcher.launch([overrides], initial_job_idx=number)
        except Exception as error:
            self.heartbeat.release(tid)
            self._tell(number, TrialState.FAIL, None)
            log.error("trial %d could not be launched: %s", number, one_line(error))
            return
        self.heartbeat.release(tid)
        with self.lock:
            self.returns.append(result)
        frozen = self.storage.get_trial(tid)
        if PRUNED_AT in frozen.user_attrs:
            self._tell(number, TrialState.PRUNED, None)
            return
        value = math.nan
        if result.status == JobStatus.COMPLETED:
            value = float(result.return_value)
        if math.isfinite(value):
            self._tell(number, TrialState.COMPLETE, value)
        else:
            self._tell(number, TrialState.FAIL, None)

    def _tell(self, number: int, state: TrialState, value: float | None) -> None:
        try:
            self.study.tell(number, value, state=state)
        except Exception as error:  # e.g. another worker told it first
            log.warning("trial %d: could not record %s (%s)", number, state.name, error)
            return
        frozen = self.study.get_trials(deepcopy=False)[number]
        log.info("trial %d %s %s", number, state.name, "" if value is None else f"{value:.4f}")
        run_id = frozen.user_attrs.get(RUN_ID)
        if run_id:
            from hydra_plugins.cifar_optuna._report import tag_trial_run

            tag_trial_run(self.config, run_id, state, frozen.user_attrs.get(PRUNED_AT))


def _plain(node):
    if node is None:
        return None
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
