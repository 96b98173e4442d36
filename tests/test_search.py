"""The Optuna search (hparams_search=optuna) through the real CLI: pruning, a killed search
that the same command, run by two workers at once, finishes, and the search-space syntax."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from conftest import REPO, Store, output, train_cli
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.cifar_optuna._space import parse_space
from tracking.values import curve_key

# Tiny trials (a few seconds of CPU each): AlexNet, the fastest to build, on ten generated
# classes it learns within three epochs; the median pruner judges from the first epoch once
# two trials have finished.
EPOCHS = 3
SEARCH = (
    "-m",
    "hparams_search=optuna",
    "model=alexnet",
    "experiment=smoke",
    f"trainer.epochs={EPOCHS}",
    "data.num_classes=10",
    "+data.synthetic.num_superclasses=5",
    "data.synthetic.train_per_class=20",
    "data.synthetic.test_per_class=5",
    "data.val_size=50",
    # From learning nothing to learning fast: the slow end trails the median and is pruned.
    "optimizer.lr=tag(log, interval(1e-5, 0.3))",
    "hydra.sweeper.pruner.n_startup_trials=2",
    "hydra.sweeper.pruner.n_warmup_steps=0",
    "hydra.sweeper.sampler.n_startup_trials=8",
)


def _study(root: Path) -> optuna.Study:
    if not (root / "optuna.db").exists():  # opening it would create it
        raise LookupError(f"no study in {root} yet")
    storage = f"sqlite:///{root}/optuna.db"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def _counted(study: optuna.Study) -> list:
    return [t for t in study.get_trials() if "cifar_optuna:void" not in t.system_attrs]


def _trial_runs(store: Store) -> list:
    return [run for run in store.jobs() if "trial" in run.data.tags]


def _assert_one_run_per_trial(store: Store, study: optuna.Study) -> None:
    runs = _trial_runs(store)
    numbers = sorted(int(run.data.tags["trial"]) for run in runs)
    assert numbers == sorted(t.number for t in _counted(study)), numbers
    for trial in _counted(study):
        (run,) = [r for r in runs if r.data.tags["trial"] == str(trial.number)]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["trial_state"] == trial.state.name


@pytest.mark.slow
def test_median_pruner_stops_trials_early_and_reports(tmp_path, data_cache):
    result = train_cli(*SEARCH, "hydra.sweeper.n_trials=8", root=tmp_path, cache=data_cache)
    assert result.returncode == 0, output(result)[-4000:]
    study = _study(tmp_path)
    trials = _counted(study)
    states = [t.state for t in trials]
    assert len(trials) == 8 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [t.intermediate_values for t in trials]

    store = Store(tmp_path)
    _assert_one_run_per_trial(store, study)
    epochs = 0
    for run in _trial_runs(store):
        logged = store.client().get_metric_history(run.info.run_id, curve_key("val_top1"))
        epochs += len(logged)
        if run.data.tags["trial_state"] == "PRUNED":
            # Stopped on purpose, not failed; the tag says where.
            assert run.info.status == "KILLED" and run.data.tags["pruned"] == "true"
            assert int(run.data.tags["pruned_at_epoch"]) == len(logged) < EPOCHS
        else:
            assert run.info.status == "FINISHED" and len(logged) == EPOCHS
    assert epochs < 8 * EPOCHS

    (parent,) = store.runs("tags.sweep_parent = 'true'")
    assert parent.data.metrics["epochs_saved_by_pruning"] == 8 * EPOCHS - epochs
    assert parent.data.metrics["trials_pruned"] == len(pruned)
    best = study.best_trial
    assert parent.data.tags["best_trial"] == str(best.number)
    command = parent.data.tags["best_command"]
    assert command.startswith("python train.py model=alexnet experiment=smoke")
    assert f"optimizer.lr={best.params['optimizer.lr']}" in command
    assert "hparams_search" not in command
    assert f"Reproduce it: {command}" in output(result)
    artifacts = {a.path for a in store.client().list_artifacts(parent.info.run_id, "search")}
    for plot in ("optimization_history", "intermediate_values", "param_importances"):
        assert f"search/{plot}.png" in artifacts

    # The comparison tables the best trial and counts the pruned ones.
    markdown = (tmp_path / "multirun" / "comparison" / "comparison.md").read_text()
    summary = f"alexnet: best of 8 trials, {len(pruned)} pruned, 0 failed is trial {best.number}"
    assert summary in markdown
    rows = (tmp_path / "multirun" / "comparison" / "comparison.csv").read_text().splitlines()
    assert len(rows) == 2  # header and the one best trial


def _popen_search(root: Path, cache: Path, *extra: str, tracking_root: Path | None = None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    command = [
        sys.executable,
        "train.py",
        *SEARCH,
        *extra,
        f"tracking.root={tracking_root or root}",
        f"data.cache_dir={cache}",
        f"hydra.sweep.dir={root}/multirun",
    ]
    log = open(root / "search.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _wait_for(condition, process, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the search ended early with {process.returncode}")
        try:
            if condition():
                return
        except (LookupError, ValueError, sqlalchemy.exc.SQLAlchemyError):
            pass  # no study, trial or owner yet; the database busy or its schema half-made
        time.sleep(1)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_killed_search_is_finished_by_two_workers_without_duplicates(tmp_path, data_cache):
    """SIGKILL after 3 trials; the same command, started twice at once on the shared store,
    resumes the interrupted trial's run and finishes the study's n_trials between the two."""
    store_root = tmp_path / "store"
    folders = [tmp_path / name for name in ("killed", "first", "second")]
    for folder in folders:
        folder.mkdir()
    args = ("hydra.sweeper.n_trials=6",)
    killed = _popen_search(folders[0], data_cache, *args, tracking_root=store_root)

    def three_done_and_fourth_training():
        trials = _study(store_root).get_trials()
        done = [t for t in trials if t.state.is_finished()]
        # A job that has started its MLflow run (it trains for seconds from there on).
        running = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs]
        return len(done) >= 3 and running

    try:
        _wait_for(three_done_and_fourth_training, killed)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    (interrupted,) = [t for t in _study(store_root).get_trials() if t.state == TrialState.RUNNING]
    interrupted_run = interrupted.user_attrs["mlflow_run_id"]

    # Both at once: they race for the interrupted trial; one takes it over, the other asks anew.
    workers = [
        _popen_search(folder, data_cache, *args, tracking_root=store_root) for folder in folders[1:]
    ]
    try:
        for worker, folder in zip(workers, folders[1:], strict=True):
            assert worker.wait(timeout=900) == 0, (folder / "search.log").read_text()[-4000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
    logs = [(folder / "search.log").read_text() for folder in folders[1:]]
    (resumer,) = [log for log in logs if f"trial {interrupted.number} was interrupted" in log]
    assert f"resuming run {interrupted_run}" in resumer

    study = _study(store_root)
    trials = _counted(study)
    assert sorted(t.number for t in trials) == list(range(6))
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert study.trials[interrupted.number].user_attrs["mlflow_run_id"] == interrupted_run
    owners = {t.system_attrs["cifar_optuna:owner"].rpartition(":")[2] for t in trials}
    assert {str(worker.pid) for worker in workers} <= owners  # both workers ran trials
    _assert_one_run_per_trial(Store(store_root), study)


def test_hydra_optuna_sweeper_syntax_composes():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["hparams_search=optuna", "hydra/sweeper/pruner=hyperband"],
            return_hydra_config=True,
        )
    sweeper = cfg.hydra.sweeper
    assert sweeper.pruner._target_ == "optuna.pruners.HyperbandPruner"
    assert sweeper.sampler.constant_liar is True and sweeper.sampler.seed == 0
    space = parse_space(
        ["model=vgg13", "trainer.epochs=range(1, 4)", "model.dropout=tag(int, interval(1, 8))"],
        sweeper.params,
        sweeper.conditional,
    )
    dists = space.distributions
    assert dists["optimizer.lr"] == FloatDistribution(0.01, 0.4, log=True)
    assert dists["optimizer.weight_decay"] == FloatDistribution(1e-4, 2e-2, log=True)
    assert dists["schedule"] == CategoricalDistribution(
        ["cosine", "step", "onecycle", "plateau", "constant"]
    )
    assert dists["trainer.epochs"] == CategoricalDistribution([1, 2, 3])
    assert dists["model.dropout"] == IntDistribution(1, 8)
    assert space.fixed == ["model=vgg13"]
    assert space.conditional["schedule"]["cosine"]["schedule.final_scale"] == (
        FloatDistribution(0.0, 0.1)
    )
    assert "constant" not in space.conditional["schedule"]

    # A trial samples a schedule's own parameters only under that schedule.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        params = space.suggest(study.ask())
        branch = space.conditional["schedule"].get(params["schedule"], {})
        own = {k for k in params if k.startswith("schedule.")}
        assert own == set(branch), params

    # Every conditional parameter is a real key of its schedule, which the factory accepts.
    for value, branch in space.conditional["schedule"].items():
        overrides = [f"schedule={value}", *(f"{k}={d.low}" for k, d in branch.items())]
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        instantiate(cfg.schedule, lr=0.1, steps_per_epoch=10, epochs=3)
