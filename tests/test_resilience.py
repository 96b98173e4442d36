"""Sweeps that survive: kills at the worst moments, failing jobs, parallel launches, data
parallelism and secrets, through the real train.py CLI into real MLflow stores (a sqlite
file, or an `mlflow server` on 127.0.0.1 that the tests start and stop).

Each kill test prints what the kill left in the store (`pytest -rP` shows it).
"""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import CURVES, REPO, Store, output, train_cli
from hydra import compose, initialize_config_dir

from callbacks.checkpoints import BestCheckpoint, EpochCheckpoint
from tracking.params import config_identity, flatten_params, public_config, public_overrides
from tracking.values import curve_key

EPOCHS = 3
FINALS = ("test_top1", "test_top5", "best_val_top1", "epochs_run", "param_count")
SMOKE = ("experiment=smoke", f"trainer.epochs={EPOCHS}")


# -- helpers -----------------------------------------------------------------------------------


def launch(*args: str, root: Path, cache: Path, log: str, env: dict | None = None):
    """`python train.py ARGS` like conftest.train_cli, but started in its own process group
    (so a signal reaches every process of it) and without waiting; output goes to root/log."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    environment.pop("PYTEST_CURRENT_TEST", None)
    command = [
        sys.executable,
        "train.py",
        *args,
        f"tracking.root={root}",
        f"data.cache_dir={cache}",
        f"hydra.run.dir={root}/outputs/run",
        f"hydra.sweep.dir={root}/multirun",
    ]
    handle = open(root / log, "w")  # noqa: SIM115 (closed by stop())
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=environment,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    process.log_path = root / log
    process.log_handle = handle
    return process


def stop(process, sig=signal.SIGKILL, timeout: float = 60) -> str:
    """Signals the whole process group, waits for it, and returns its output."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        process.log_handle.close()
    return process.log_path.read_text()


def wait_for(process, ready, what: str, timeout: float = 300, every: float = 0.2):
    """Polls `ready()` until it returns something truthy; fails if train.py ends first."""
    deadline = time.monotonic() + timeout
    while True:
        found = ready()
        if found:
            return found
        if process.poll() is not None:
            raise AssertionError(f"train.py ended before {what}:\n{stop(process)[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s:\n{stop(process)[-4000:]}")
        time.sleep(every)


def store_ready(store: Store) -> bool:
    # The sweep callback writes this once the database and the parent run exist; asking the
    # store earlier would race train.py to create the schema.
    return (store.root / "multirun" / "mlflow_sweep.json").exists()


def run_of(store: Store, model: str):
    if not store_ready(store):
        return None
    runs = [r for r in store.jobs() if r.data.tags.get("model") == model]
    return runs[-1] if runs else None


def steps(client, run_id: str, key: str = curve_key("loss")) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def record(store: Store) -> dict:
    """What is in the store and the checkpoint folder right now (for the report)."""
    client = store.client()
    runs = store.jobs() if store_ready(store) else []
    names = {r.data.tags.get("identity"): r.data.tags.get("model") for r in runs}
    folder = store.root / "checkpoints"
    files = []
    for path in sorted(folder.rglob("*")) if folder.exists() else []:
        if path.is_file():
            relative = str(path.relative_to(folder))
            identity = relative.split("/")[0]
            files.append(relative.replace(identity, names.get(identity, identity), 1))
    return {
        "runs": [
            {
                "model": r.data.tags.get("model"),
                "run_id": r.info.run_id,
                "status": r.info.status,
                "loss_steps": steps(client, r.info.run_id),
                "finals": sorted(k for k in FINALS if k in r.data.metrics),
            }
            for r in runs
        ],
        "parents": [p.info.status for p in store.runs("tags.sweep_parent = 'true'")]
        if store_ready(store)
        else [],
        "checkpoint_files": files,
    }


def report(title: str, snapshot: dict) -> None:
    print(f"\n== {title}\n{json.dumps(snapshot, indent=1)}")


def assert_complete(store: Store, models, epochs: int = EPOCHS) -> dict:
    """One FINISHED run per model, every curve at steps 1..epochs exactly once, finals set."""
    client = store.client()
    runs = store.jobs()
    finished = {}
    for run in runs:
        if run.info.status == "FINISHED":
            model = run.data.tags["model"]
            assert model not in finished, f"two FINISHED runs of {model}"
            finished[model] = run
    assert sorted(finished) == sorted(models), [(r.data.tags, r.info.status) for r in runs]
    for model, run in finished.items():
        for key in CURVES:
            assert steps(client, run.info.run_id, key) == list(range(1, epochs + 1)), (model, key)
        for key in FINALS:
            assert key in run.data.metrics, (model, key)
        assert run.data.metrics["epochs_run"] == epochs
    return finished


def table(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# -- epoch checkpoints, in process -------------------------------------------------------------


def _tiny_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,), name="x")
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.Dense(8, name="hidden")(inputs))
    model = keras.Model(inputs, outputs, name="tiny")
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=100)
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1")],
    )
    return model


def _values(variables) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in variables]


def test_epoch_checkpoint_restores_weights_optimizer_and_best_model(tmp_path, caplog):
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0)
    trained = _tiny_model(0)
    best = BestCheckpoint(tmp_path / "best.keras", "val_loss")
    epochs = EpochCheckpoint(tmp_path / "epochs", best)
    trained.fit(
        x, y, batch_size=16, epochs=3, validation_data=(x, y), callbacks=[best, epochs], verbose=0
    )
    names = sorted(p.name for p in (tmp_path / "epochs").iterdir())
    files = (".best.keras", ".json", ".weights.h5")
    assert names == [f"epoch-000{epoch}{suffix}" for epoch in (2, 3) for suffix in files]

    def restored(expect_epochs):
        model = _tiny_model(1)  # other initial weights
        new_best = BestCheckpoint(tmp_path / "best.keras", "val_loss")
        checkpoint = EpochCheckpoint(tmp_path / "epochs", new_best)
        assert checkpoint.restore(model) == expect_epochs
        return model, checkpoint, new_best

    model, checkpoint, new_best = restored(3)
    for saved, loaded in zip(_values(trained.variables), _values(model.variables), strict=True):
        np.testing.assert_array_equal(saved, loaded)
    optimizer = _values(trained.optimizer.variables)
    for saved, loaded in zip(optimizer, _values(model.optimizer.variables), strict=True):
        np.testing.assert_array_equal(saved, loaded)  # iterations (so the LR schedule), momenta
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3 * 4
    history = [h["loss"] for h in checkpoint.history]
    assert history == pytest.approx(trained.history.history["loss"])
    assert (new_best.best, new_best.best_epoch) == (pytest.approx(best.best), best.best_epoch)

    # The newest weights truncated (a disk that filled up): one clear line, the epoch before.
    newest = tmp_path / "epochs" / "epoch-0003.weights.h5"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    (tmp_path / "epochs" / ".tmp-epoch-0004.weights.h5").write_bytes(b"half a write")
    caplog.clear()
    model, _, new_best = restored(2)
    assert new_best.best_epoch in (0, 1)  # the best as of epoch 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("epoch-0003.json is unreadable" in w for w in warnings), warnings
    assert any("older checkpoint" in w and "epoch-0002.json" in w for w in warnings), warnings
    assert not list((tmp_path / "epochs").glob(".tmp-*"))
    # best.keras is the best model as of epoch 2, whatever epoch 3 wrote.
    snapshot = tmp_path / "epochs" / "epoch-0002.best.keras"
    assert (tmp_path / "best.keras").read_bytes() == snapshot.read_bytes()

    # Nothing readable: a fresh start with the model's own initial weights.
    (tmp_path / "epochs" / "epoch-0002.json").write_text("{not json")
    fresh = _values(_tiny_model(1).variables)
    caplog.clear()
    model, checkpoint, new_best = restored(0)
    assert checkpoint.history == [] and new_best.best is None
    assert any("no readable checkpoint" in r.getMessage() for r in caplog.records)
    for initial, now in zip(fresh, _values(model.variables), strict=True):
        np.testing.assert_array_equal(initial, now)
    assert not (tmp_path / "best.keras").exists()


# -- identity, secrets and launcher configs, composed in process ------------------------------


def _compose(*overrides: str, hydra: bool = False):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def test_identity_ignores_where_and_how_a_run_is_recorded_and_nothing_else():
    base = config_identity(_compose("model=alexnet"))
    assert base == config_identity(_compose("model=alexnet"))  # stable
    recorded = _compose(
        "model=alexnet",
        "tracking.root=/elsewhere",
        "trainer.verbose=0",
        "data.cache_dir=/tmp/x",
        "resume=false",
        "+tracking.api_token=abc",
    )
    assert config_identity(recorded) == base
    for override in ("optimizer.lr=0.5", "seed=1", "model.size=tiny", "trainer.epochs=7"):
        assert config_identity(_compose("model=alexnet", override)) != base, override
    # The same config on another Keras backend computes other numbers: a run of its own.
    assert config_identity(_compose("model=alexnet"), backend="jax") != base


def test_secret_looking_keys_are_never_logged():
    cfg = _compose("model=alexnet", "+tracking.api_token=abc", "+data.hub_password=pw")
    params = flatten_params(cfg)
    assert "model.name" in params and "tracking.uri" not in params  # a machine's path: no param
    assert not [key for key in params if "token" in key or "password" in key]
    shown = public_config(cfg)
    assert shown["tracking"]["api_token"] == "***" and shown["data"]["hub_password"] == "***"
    assert public_overrides(["+tracking.api_token=abc", "model=vit", "++x.secret_key=k"]) == [
        "+tracking.api_token=***",
        "model=vit",
        "++x.secret_key=***",
    ]


def test_launcher_configs_compose_with_gpu_defaults(tmp_path, monkeypatch):
    from training import gpus

    slurm = _compose("hydra/launcher=slurm", hydra=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.gpus_per_node, slurm.tasks_per_node) == (1, 1) and slurm.max_num_timeout > 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(gpus, "_claimed", None)
    cfg = _compose("hydra/launcher=local_parallel", f"hydra.sweep.dir={tmp_path}", hydra=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 2  # one job per visible GPU
    assert cfg.hydra.job.env_set.CUDA_VISIBLE_DEVICES == "0"
    assert (tmp_path / ".gpu-0.lock").exists()


# -- SIGKILL at the worst moments, then the same command again ---------------------------------

CHAIN = ("-m", "model=alexnet,resnet18", *SMOKE, "schedule=cosine", "schedule.warmup_epochs=0")


@pytest.fixture(scope="module")
def kill_chain(tmp_path_factory, data_cache):
    """One sweep killed twice: during the first model (after an epoch was logged), then between
    the models (the first FINISHED, the second not started or just started); then the same
    command runs to the end. Returns the store, the records and each launch's output."""
    store = Store(tmp_path_factory.mktemp("kill-chain"))
    records, logs = {}, {}

    process = launch(*CHAIN, root=store.root, cache=data_cache, log="a.log")

    def first_epoch_logged():
        run = run_of(store, "alexnet")
        return run is not None and steps(store.client(), run.info.run_id) != []

    wait_for(process, first_epoch_logged, "an epoch of alexnet logged")
    logs["a"] = stop(process)
    records["during the first model"] = record(store)

    process = launch(*CHAIN, root=store.root, cache=data_cache, log="b.log")

    def first_finished():
        run = run_of(store, "alexnet")
        return run is not None and run.info.status == "FINISHED"

    wait_for(process, first_finished, "alexnet FINISHED", every=0.05)
    logs["b"] = stop(process)
    records["between the models"] = record(store)

    result = train_cli(*CHAIN, root=store.root, cache=data_cache)
    logs["c"] = output(result)
    assert result.returncode == 0, logs["c"][-4000:]
    records["after the rerun"] = record(store)
    for title, snapshot in records.items():
        report(f"kill chain: {title}", snapshot)
    return store, records, logs


@pytest.mark.slow
def test_killed_sweep_reruns_to_one_complete_run_per_model(kill_chain):
    store, records, logs = kill_chain
    first = records["during the first model"]
    (alexnet,) = first["runs"]
    assert alexnet["status"] == "RUNNING" and alexnet["loss_steps"][0] == 1
    assert any(f.startswith("alexnet/epochs/epoch-0001") for f in first["checkpoint_files"])
    assert f"resuming run {alexnet['run_id']}" in logs["b"]

    finished = assert_complete(store, ["alexnet", "resnet18"])
    # Resumed in the same MLflow run, and no other run of either model.
    assert finished["alexnet"].info.run_id == alexnet["run_id"]
    assert len(store.jobs()) == 2
    between = {r["model"]: r for r in records["between the models"]["runs"]}
    assert between["alexnet"]["status"] == "FINISHED"
    if "resnet18" in between:  # killed just after its run started: resumed, not duplicated
        assert finished["resnet18"].info.run_id == between["resnet18"]["run_id"]
    assert "alexnet: FINISHED earlier" in logs["c"]

    parents = store.runs("tags.sweep_parent = 'true'")
    assert [p.info.status for p in parents] == ["FINISHED"]  # the same sweep, reopened
    rows = table(store.root / "multirun" / "comparison" / "comparison.csv")
    assert sorted((r["architecture"], r["status"]) for r in rows) == [
        ("alexnet", "FINISHED"),
        ("resnet18", "FINISHED"),
    ]
    # Finished runs leave no resume checkpoints behind.
    assert records["after the rerun"]["checkpoint_files"] == []


@pytest.mark.slow
def test_resumed_run_continues_the_lr_schedule(kill_chain):
    store, _, _ = kill_chain
    client = store.client()
    for run in store.jobs():
        lr = float(run.data.params["optimizer.lr"])
        logged = [
            m.value
            for m in sorted(
                client.get_metric_history(run.info.run_id, curve_key("lr")), key=lambda m: m.step
            )
        ]
        # Cosine without warmup, read at the end of each epoch: restarting the optimizer's
        # step count on resume would repeat 0.75 * lr.
        assert logged == pytest.approx([0.75 * lr, 0.25 * lr, 0.0], abs=1e-7), run.info.run_name


@pytest.mark.slow
def test_finished_runs_are_reused_by_another_sweep(kill_chain, data_cache):
    store, _, _ = kill_chain
    before = {r.info.run_id for r in store.jobs()}
    # Same configs, another command line (seed=0 is the default): a new sweep, no training.
    result = train_cli(*CHAIN, "seed=0", root=store.root, cache=data_cache)
    text = output(result)
    assert result.returncode == 0, text[-3000:]
    assert text.count("FINISHED earlier") == 2
    assert not re.search(r"run \w+ started|resuming run", text)
    assert {r.info.run_id for r in store.jobs()} == before
    parent = store.runs("tags.sweep_parent = 'true'", "tags.sweep_overrides LIKE '%seed=0%'")[0]
    sweep_id = parent.data.tags["sweep_id"]
    members = store.runs(f"tags.`sweep.{sweep_id}` = 'true'")
    assert {r.info.run_id for r in members} == before
    rows = table(store.root / "multirun" / "comparison" / "comparison.csv")
    assert sorted(r["status"] for r in rows) == ["FINISHED", "FINISHED"]


@pytest.mark.slow
def test_resume_false_starts_a_fresh_run_beside_the_finished_one(kill_chain, data_cache):
    store, _, _ = kill_chain
    (old,) = [r for r in store.jobs() if r.data.tags["model"] == "alexnet"]
    result = train_cli(
        "-m", "model=alexnet", *CHAIN[2:], "resume=false", root=store.root, cache=data_cache
    )
    text = output(result)
    assert result.returncode == 0, text[-3000:]
    assert "FINISHED earlier" not in text
    runs = [r for r in store.jobs() if r.data.tags["model"] == "alexnet"]
    (new,) = [r for r in runs if r.info.run_id != old.info.run_id]
    assert new.info.status == "FINISHED" and new.data.tags["identity"] == old.data.tags["identity"]
    assert steps(store.client(), new.info.run_id) == list(range(1, EPOCHS + 1))
    assert new.data.tags["sweep_id"] != old.data.tags["sweep_id"]


@pytest.mark.slow
def test_the_same_sweep_on_another_backend_is_a_sweep_and_runs_of_its_own(tmp_path, data_cache):
    command = ("-m", "model=alexnet", "experiment=smoke", "trainer.epochs=1")
    for backend in ("tensorflow", "jax", "jax"):
        result = train_cli(*command, root=tmp_path, cache=data_cache, backend=backend)
        assert result.returncode == 0, output(result)[-3000:]
    store = Store(tmp_path)
    # The JAX launch trained rather than skipping the TensorFlow run; its rerun skipped.
    assert "FINISHED earlier" in output(result)
    runs = store.jobs()
    assert sorted(r.data.tags["backend"] for r in runs) == ["jax", "tensorflow"]
    assert all(r.info.status == "FINISHED" for r in runs)
    parents = store.runs("tags.sweep_parent = 'true'")
    assert sorted(p.data.tags["backend"] for p in parents) == ["jax", "tensorflow"]
    for parent in parents:
        members = store.runs(f"tags.`sweep.{parent.data.tags['sweep_id']}` = 'true'")
        assert [m.data.tags["backend"] for m in members] == [parent.data.tags["backend"]]


# Big weights (AlexNet at its base size, 36 M parameters) on very few images: a short epoch
# and a checkpoint write of a second or more, long enough to kill in the middle of.
SLOW_WRITE = (
    "-m",
    "model=alexnet",
    "experiment=smoke",
    "trainer.epochs=2",
    "model.size=base",
    "data.synthetic.train_per_class=2",
    "data.val_size=100",
)


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_resumes_from_the_epoch_before(tmp_path, data_cache):
    store = Store(tmp_path)
    process = launch(*SLOW_WRITE, root=tmp_path, cache=data_cache, log="a.log")
    checkpoints = tmp_path / "checkpoints"

    def second_epoch_writing():
        # The moment epoch 2's first file appears under its temporary name.
        first = next(checkpoints.glob("*/epochs/epoch-0001.json"), None)
        if first is None:
            return None
        folder = first.parent.parent
        return next((p for f in (folder, folder / "epochs") for p in f.glob(".tmp-*")), None)

    caught = wait_for(process, second_epoch_writing, "epoch 2's checkpoint write", every=0.002)
    stop(process)
    left = record(store)
    report("kill during a checkpoint write", left)
    # Still there after the kill: the write was cut short, not finished and renamed.
    assert caught.exists(), f"the kill came after {caught.name} was complete"
    (run,) = left["runs"]
    assert run["status"] == "RUNNING" and run["loss_steps"] == [1]
    assert "alexnet/epochs/epoch-0001.json" in left["checkpoint_files"]
    assert not any(f.startswith("alexnet/epochs/epoch-0002.") for f in left["checkpoint_files"])

    result = train_cli(*SLOW_WRITE, root=tmp_path, cache=data_cache)
    text = output(result)
    assert result.returncode == 0, text[-4000:]
    assert f"resuming run {run['run_id']}" in text
    finished = assert_complete(store, ["alexnet"], epochs=2)
    assert finished["alexnet"].info.run_id == run["run_id"]
    assert len(store.jobs()) == 1


@pytest.mark.slow
def test_interrupted_run_with_a_truncated_checkpoint_falls_back(tmp_path, data_cache):
    store = Store(tmp_path)
    args = ("-m", "model=alexnet", *SMOKE)
    process = launch(*args, root=tmp_path, cache=data_cache, log="a.log")

    def two_epochs_logged():
        run = run_of(store, "alexnet")
        return run is not None and len(steps(store.client(), run.info.run_id)) >= 2

    wait_for(process, two_epochs_logged, "two epochs of alexnet logged", every=0.05)
    stop(process, signal.SIGINT)  # Ctrl-C: the run ends KILLED
    left = record(store)
    (run,) = left["runs"]
    assert run["status"] == "KILLED"
    # Truncate the newest epoch checkpoint's weights, as a full disk would.
    newest = sorted(tmp_path.glob("checkpoints/*/epochs/epoch-*.json"))[-1]
    weights = newest.with_suffix("").with_suffix(".weights.h5")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    left["truncated"] = weights.name
    report("SIGINT, then a truncated checkpoint", left)

    result = train_cli(*args, root=tmp_path, cache=data_cache)
    text = output(result)
    assert result.returncode == 0, text[-4000:]
    assert f"resuming run {run['run_id']}" in text  # a KILLED twin resumes like a RUNNING one
    assert f"{newest.name} is unreadable" in text and "resuming from the older checkpoint" in text
    finished = assert_complete(store, ["alexnet"])["alexnet"]
    others = [r for r in store.jobs() if r.info.run_id != finished.info.run_id]
    restored = int(newest.stem.removeprefix("epoch-")) - 1
    if max(run["loss_steps"]) > restored:
        # The store held an epoch the surviving checkpoint lacks: MLflow cannot unlog it, so
        # a new run took over and the interrupted one stays KILLED, pointing at it.
        assert "takes over" in text
        assert [(r.info.status, r.data.tags["superseded_by"]) for r in others] == [
            ("KILLED", finished.info.run_id)
        ]
        rows = table(tmp_path / "multirun" / "comparison" / "comparison.csv")
        assert [(r["architecture"], r["status"]) for r in rows] == [("alexnet", "FINISHED")]
    else:
        assert others == [] and finished.info.run_id == run["run_id"]


# -- failing jobs --------------------------------------------------------------------------------


@pytest.mark.slow
def test_failing_jobs_are_isolated_recorded_and_summarized(tmp_path, data_cache):
    # lr=1e30 diverges to NaN (StopOnDivergence); val_nope never appears in the logs;
    # val_size=100000 fails while loading the data, before any training. Only the last job,
    # which comes after all the failures, is sound.
    result = train_cli(
        "-m",
        "model=alexnet",
        "experiment=smoke",
        "optimizer.lr=1e30,0.02",
        "data.val_size=100000,200",
        "trainer.checkpoint_monitor=val_nope,val_top1",
        root=tmp_path,
        cache=data_cache,
    )
    text = output(result)
    assert result.returncode != 0
    store = Store(tmp_path)
    client = store.client()
    runs = store.jobs()
    assert len(runs) == 8, text[-4000:]
    outcomes = (json.loads(p.read_text()) for p in tmp_path.glob("multirun/*/outcome.json"))
    jobs = {outcome["run_id"]: outcome["job"] for outcome in outcomes}
    failed_jobs = []
    for run in runs:
        params = run.data.params
        sound = (params["optimizer.lr"], params["data.val_size"]) == ("0.02", "200")
        if sound and params["trainer.checkpoint_monitor"] == "val_top1":
            assert run.info.status == "FINISHED" and "error" not in run.data.tags
            assert "test_top1" in run.data.metrics
            continue
        assert run.info.status == "FAILED", params
        error = run.data.tags["error"]
        if params["data.val_size"] == "100000":
            assert "data.val_size=100000" in error
        elif params["optimizer.lr"] == "1e+30":
            assert "loss became nan" in error
        else:
            assert "trainer.checkpoint_monitor=val_nope never appeared" in error
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert "traceback.txt" in artifacts
        trace = client.download_artifacts(run.info.run_id, "traceback.txt", str(tmp_path))
        assert "Traceback (most recent call last)" in Path(trace).read_text()
        # One clear line per failed job, naming the job and the error.
        job = jobs[run.info.run_id]
        lines = [line for line in text.splitlines() if f" {job} failed: " in line]
        assert len(lines) == 1 and " error: " in lines[0] and error in lines[0], (job, lines)
        failed_jobs.append(job)
    assert "Traceback" not in text
    summary = next(line for line in text.splitlines() if "7 of 8 jobs failed:" in line)
    assert sorted(summary.split("failed: ")[1].split(", ")) == sorted(failed_jobs)
    rows = table(tmp_path / "multirun" / "comparison" / "comparison.csv")
    assert sorted(r["status"] for r in rows) == ["FAILED"] * 7 + ["FINISHED"]


# -- parallel jobs into one store ----------------------------------------------------------------

PARALLEL = ("-m", "model=alexnet", "seed=0,1,2,3", "experiment=smoke", "trainer.epochs=2")
SECRET = "s3cr3t-abc-123"


def assert_parallel_sweep(store: Store, text: str) -> None:
    assert "database is locked" not in text and "Traceback" not in text, text[-4000:]
    runs = store.jobs()
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2", "3"]
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in CURVES:
            assert steps(store.client(), run.info.run_id, key) == [1, 2], key
        for key in FINALS:
            assert key in run.data.metrics, key
    # The jobs really overlapped in time.
    assert max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs)
    (parent,) = store.runs("tags.sweep_parent = 'true'")
    assert parent.info.status == "FINISHED"
    (row,) = table(store.root / "multirun" / "comparison" / "comparison.csv")
    assert row["n"] == "4" and row["status"] == "FINISHED"


@pytest.mark.slow
def test_joblib_jobs_share_a_fresh_sqlite_store(tmp_path, data_cache):
    result = train_cli(
        *PARALLEL,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        root=tmp_path,
        cache=data_cache,
    )
    text = output(result)
    assert result.returncode == 0, text[-4000:]
    assert "Joblib.Parallel(n_jobs=4" in text
    assert_parallel_sweep(Store(tmp_path), text)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1: its own sqlite store, artifacts served through it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.uri = f"http://127.0.0.1:{_free_port()}"
        self.log = open(folder / "server.log", "w")  # noqa: SIM115 (closed by close())
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                self.uri.rsplit(":", 1)[1],
                "--backend-store-uri",
                f"sqlite:///{folder}/server.db",
                "--artifacts-destination",
                str(folder / "artifacts"),
                "--workers",
                "1",
            ],
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.folder / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5):
                    return self.uri
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"mlflow server not up in {timeout} s")

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(request, tmp_path_factory):
    """Started with the module's first test, so its slow start overlaps the others' work
    (only when the test that uses it was selected)."""
    if not any("mlflow_server" in item.name for item in request.session.items):
        yield None
        return
    server = Server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.close()


@dataclass
class ServerStore(Store):
    server_uri: str = ""

    @property
    def uri(self) -> str:
        return self.server_uri


@pytest.mark.slow
def test_parallel_jobs_against_a_local_mlflow_server_leak_no_secret(
    mlflow_server, tmp_path, data_cache
):
    uri = mlflow_server.wait_ready()
    result = train_cli(
        *PARALLEL,
        "hydra/launcher=local_parallel",
        "hydra.launcher.n_jobs=4",
        f"tracking.uri={uri}",
        f"+tracking.api_token={SECRET}",
        root=tmp_path,
        cache=data_cache,
    )
    text = output(result)
    assert result.returncode == 0, text[-4000:]
    store = ServerStore(tmp_path, uri)
    assert_parallel_sweep(store, text)
    client = store.client()
    for run in store.jobs():
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "checkpoints", "confusion_matrix.csv"} <= artifacts
        assert not any("token" in key for key in run.data.params)
        assert "+tracking.api_token=***" in run.data.tags["overrides"]
        config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
        assert "api_token: '***'" in Path(config).read_text()
    # Artifacts went through the server into its own folder, none into the local root.
    served = mlflow_server.folder / "artifacts"
    checkpoints = list(served.rglob("best.keras"))
    # Each run's checkpoints/best.keras, and its logged model's copy.
    assert len([p for p in checkpoints if p.parent.name == "checkpoints"]) == 4
    assert len(checkpoints) == 8
    assert not (tmp_path / "artifacts").exists()
    # The secret is nowhere the server keeps anything: database, artifacts, comparison.
    for path in mlflow_server.folder.rglob("*"):
        if path.is_file() and path.name != "server.log":
            assert SECRET.encode() not in path.read_bytes(), path


# -- data parallel -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "env", "replicas"),
    [
        ("jax", {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, 2),
        ("tensorflow", {}, 1),
    ],
)
def test_data_parallel_trains_on_every_local_device(backend, env, replicas, tmp_path, data_cache):
    if backend == "jax":
        pytest.importorskip("jax")
    result = train_cli(
        "model=alexnet",
        "experiment=smoke",
        "trainer.distribution=data_parallel",
        root=tmp_path,
        cache=data_cache,
        backend=backend,
        env=env,
    )
    text = output(result)
    assert result.returncode == 0, text[-4000:]
    assert f"data_parallel: {replicas} replicas on" in text
    (run,) = Store(tmp_path).jobs()
    assert run.info.status == "FINISHED" and run.data.tags["backend"] == backend
    assert run.data.params["trainer.distribution"] == "data_parallel"


# -- one GPU per parallel worker -----------------------------------------------------------------


def test_each_worker_process_claims_its_own_gpu(tmp_path, monkeypatch, caplog):
    from training import gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(gpus, "_claimed", None)
    first = gpus.worker_gpu(str(tmp_path))
    assert gpus.worker_gpu(str(tmp_path)) == first == "3"  # a process keeps its GPU
    held = gpus._claimed
    # Other workers (a second lock file handle stands for another process) get the next free
    # GPU; with more workers than GPUs they share, saying so.
    monkeypatch.setattr(gpus, "_claimed", None)
    assert gpus.worker_gpu(str(tmp_path)) == "5"
    monkeypatch.setattr(gpus, "_claimed", None)
    assert gpus.worker_gpu(str(tmp_path)) in ("3", "5")
    assert "more parallel jobs than GPUs" in caplog.text
    # A worker that ends frees its GPU.
    held[1].close()
    monkeypatch.setattr(gpus, "_claimed", None)
    assert gpus.worker_gpu(str(tmp_path)) == "3"
