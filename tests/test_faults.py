"""One table of bad inputs and faults, each through train.py (or compare.py) as a user meets it.

Every case asserts the exit code, the one line that says why (it names the key or path), and
what the store holds afterwards: no RUNNING run, no epoch step logged twice, no FINISHED run
turned FAILED. Cases run in process (`train.cli()`, the function `python train.py` exits
with) where that checks the same thing, and as real processes where the exit code, a signal
or a second copy of the command is the point. `pytest -rP -k table` prints the table.
"""

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir
from hydra.experimental.callback import Callback
from test_resilience import Server

import train
from data.cifar100 import load_cifar100
from data.synthetic import write_synthetic_cifar
from tracking.values import curve_key

# 100 classes x 2 training images: 100 to validate, 100 to train, 4 steps an epoch.
SMALL = (
    "experiment=smoke",
    "data.synthetic.train_per_class=2",
    "data.synthetic.test_per_class=1",
    "data.val_size=100",
)
ONE = ("model=alexnet", *SMALL, "trainer.epochs=2")
SWEEP = ("-m", *ONE)
PAIR = ("-m", "model=alexnet,resnet18", *SMALL, "trainer.epochs=2")
# The interrupted store's command: four epochs, stopped after two.
LONG = ("-m", "model=alexnet", *SMALL, "trainer.epochs=4")


# -- running train.py ----------------------------------------------------------------------------


def _where(root: Path, cache: Path, sweep: str = "multirun") -> list[str]:
    return [
        f"tracking.root={root}",
        f"data.cache_dir={cache}",
        f"hydra.run.dir={root}/outputs/run",
        f"hydra.sweep.dir={root}/{sweep}",
    ]


def _environment(env: dict | None = None) -> dict:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    environment.pop("PYTEST_CURRENT_TEST", None)  # MLflow changes behaviour under pytest
    return environment


def start(*args: str, root: Path, cache: Path, sweep: str = "multirun", log: str = "cli.log"):
    """`python train.py ARGS` as its own process group, not waited for."""
    handle = open(root / log, "w")  # noqa: SIM115 (closed by finish())
    process = subprocess.Popen(
        [sys.executable, "train.py", *args, *_where(root, cache, sweep)],
        cwd=REPO,
        env=_environment(),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    process.log, process.handle = root / log, handle
    return process


def finish(process, sig: int | None = None, timeout: float = 600) -> tuple[int, str]:
    if sig is not None and process.poll() is None:
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        process.handle.close()
    return process.returncode, process.log.read_text()


def wait_until(ready: Callable, what: str, process=None, timeout: float = 300, every=0.1):
    deadline = time.monotonic() + timeout
    while not (found := ready()):
        if process is not None and process.poll() is not None:
            raise AssertionError(f"train.py ended before {what}:\n{finish(process)[1][-3000:]}")
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(every)
    return found


def run_in_process(argv: list[str], env: dict | None = None) -> int:
    """`train.cli()`, the function `python train.py` exits with, on `argv`."""
    from absl import logging as absl_logging

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        # Hydra finds conf/ beside the file of a __main__ task, as for `python train.py`.
        patch.setenv("HYDRA_MAIN_MODULE", "__main__")
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        # Hydra's logging set-up closes the handlers there were; absl's (made when TensorFlow
        # was imported, under pytest's collection-time capture) would close that stream.
        patch.setattr(absl_logging.get_absl_handler().python_handler, "stream", sys.__stderr__)
        root = logging.getLogger()
        handlers = list(root.handlers)
        try:
            return train.cli()
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else 1
        finally:
            # Hydra pointed logging at this test's captured streams; the next test has others.
            for handler in list(root.handlers):
                if handler not in handlers:
                    root.removeHandler(handler)


@dataclass
class Ctx:
    """One case's world: its tracking root, the shared data cache, and how to run train.py."""

    root: Path
    cache: Path
    capfd: pytest.CaptureFixture
    monkeypatch: pytest.MonkeyPatch
    uri: str = ""
    experiment: str = "cifar100"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.uri = self.uri or f"sqlite:///{self.root}/mlflow.db"

    def train(self, *args: str, env: dict | None = None, sweep: str = "multirun"):
        """train.py in this process: `train.cli()` is what `python train.py` exits with."""
        self.capfd.readouterr()
        code = run_in_process(["train.py", *args, *_where(self.root, self.cache, sweep)], env)
        captured = self.capfd.readouterr()
        return code, captured.out + captured.err

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(tracking_uri=self.uri)

    def runs(self) -> list:
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return []
        return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])


# -- what the store holds ---------------------------------------------------------------------


def store_state(ctx: Ctx) -> dict:
    """Runs by status and model, each job's logged steps, and the invariants every case keeps."""
    path = Path(ctx.uri.removeprefix("sqlite:///")) if ctx.uri.startswith("sqlite") else None
    if path is not None and not path.is_file():
        return {"store": "none", "jobs": [], "parents": []}
    client = ctx.client()
    jobs, parents = [], []
    for run in ctx.runs():
        if run.data.tags.get("sweep_parent") == "true":
            parents.append(run.info.status)
            continue
        steps = sorted(
            m.step for m in client.get_metric_history(run.info.run_id, curve_key("loss"))
        )
        assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
        jobs.append((run.data.tags.get("model"), run.info.status, steps, run.info.run_id))
    assert "RUNNING" not in [status for _, status, _, _ in jobs] + parents
    return {"store": "ok", "jobs": jobs, "parents": parents}


def describe(state: dict) -> str:
    if state["store"] == "none":
        return "no store written"
    if not state["jobs"] and not state["parents"]:
        return "store untouched: no run"
    jobs = [
        f"{m} {s}" + (f" steps {s0[0]}-{s0[-1]}" if s0 else "") for m, s, s0, _ in state["jobs"]
    ]
    parent = f"; parent {'/'.join(state['parents'])}" if state["parents"] else ""
    return ", ".join(jobs) + parent


def finished(state: dict) -> dict[str, list[int]]:
    """FINISHED runs per model; exactly one each."""
    done = {}
    for model, status, steps, _ in state["jobs"]:
        if status == "FINISHED":
            assert model not in done, f"two FINISHED runs of {model}"
            done[model] = steps
    return done


def no_runs(state):
    assert state["jobs"] == [], state


def no_store(state):
    assert state["store"] == "none", state


def one_finished(*models, epochs=2):
    def check(state):
        assert finished(state) == {m: list(range(1, epochs + 1)) for m in models}, state

    return check


def one_sweep(*models, epochs=2):
    """One FINISHED run per model under one parent, however many copies of the sweep ran."""
    runs_done = one_finished(*models, epochs=epochs)

    def check(state):
        runs_done(state)
        assert state["parents"] == ["FINISHED"], state

    return check


# -- shared starting points ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("faults-cache")


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory, cache):
    """A store where `train.py -m ONE` FINISHED, made in process."""
    root = tmp_path_factory.mktemp("finished")
    ctx = Ctx(root, cache, None, None)
    assert run_in_process(["train.py", *SWEEP, *_where(root, cache)]) == 0
    (run,) = [r for r in ctx.runs() if r.data.tags.get("model") == "alexnet"]
    assert run.info.status == "FINISHED"
    return root


@pytest.fixture(scope="module")
def interrupted_store(tmp_path_factory, cache):
    """`python train.py -m ONE trainer.epochs=4` stopped by SIGTERM after its second epoch
    checkpoint: what SLURM or `timeout` leaves. Returns the root and the exit code and output."""
    root = tmp_path_factory.mktemp("interrupted")
    process = start(*LONG, root=root, cache=cache)
    wait_until(
        lambda: list(root.glob("checkpoints/*/epochs/epoch-0002.json")),
        "epoch 2's checkpoint",
        process,
    )
    code, text = finish(process, signal.SIGTERM)
    # Each name its own file: a damaged copy cannot spoil another.
    files = [p for p in root.glob("checkpoints/**/*") if p.is_file()]
    inodes = [p.stat().st_ino for p in files]
    assert len(inodes) == len(set(inodes)), files
    return root, code, text


def _copy_store(source: Path, ctx: Ctx) -> None:
    for item in source.iterdir():
        if item.is_dir():
            shutil.copytree(item, ctx.root / item.name, symlinks=True)
        elif item.suffix != ".log":
            shutil.copy2(item, ctx.root / item.name)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("faults-server"))
    yield running
    running.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- data folders with one defect each --------------------------------------------------------


def _data_folder(ctx: Ctx, change) -> Path:
    import datasets

    folder = write_synthetic_cifar(ctx.root / "data", train_per_class=2, test_per_class=1, seed=0)
    shard = folder / "train-00000-of-00001.parquet"
    table = datasets.Dataset.from_parquet(str(shard), cache_dir=str(ctx.root / "hf"))
    table = change(table)
    shard.unlink()
    table.to_parquet(str(shard))
    return folder


def _break_row_3(table):
    def broken(row, index):
        if index == 3:
            row["img"] = {"bytes": b"\x89PNG not really", "path": None}
        return row

    import datasets

    raw = table.cast_column("img", datasets.Image(decode=False))
    return raw.map(broken, with_indices=True).cast_column("img", datasets.Image())


def _drop_class_7(table):
    return table.filter(lambda row: row["fine_label"] != 7)


# -- holding an identity as another process would ----------------------------------------------


def _identity_of(ctx: Ctx, source: Path) -> str:
    (folder,) = [p for p in (source / "checkpoints").iterdir() if p.is_dir()]
    return folder.name


def _hold_lock(ctx: Ctx, identity: str, pid: int, host: str):
    """A real second process holding the identity's lock file, as a training copy would."""
    path = ctx.root / "locks" / f"{identity}.lock"
    path.parent.mkdir(exist_ok=True)
    owner = json.dumps({"host": host, "pid": pid, "job": "0_alexnet", "since": time.time()})
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "f.seek(0); f.truncate(); f.write(sys.argv[2]); f.flush()\n"
            "print('held', flush=True); time.sleep(600)",
            str(path),
            owner,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with open(path) as probe, pytest.raises(BlockingIOError):  # really held
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return holder


def _set_status(ctx: Ctx, status: str) -> str:
    (run,) = [r for r in ctx.runs() if r.data.tags.get("model") == "alexnet"]
    ctx.client().update_run(run.info.run_id, status=status)
    return run.info.run_id


# -- the cases -----------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    act: Callable[[Ctx], tuple[int, str]]
    code: int
    key: str  # the one line names this
    says: str  # and says this
    store: Callable[[dict], None]
    base: str | None = None  # "finished" or "interrupted": the store the case starts from
    kind: str = "in process"


def inproc(*args, **kw):
    return lambda ctx: ctx.train(*args, **kw)


def with_prep(prepare, *args, **kw):
    def act(ctx):
        prepare(ctx)
        return ctx.train(*args, **kw)

    return act


def _db(content: bytes | None = None, folder: bool = False):
    def prepare(ctx):
        path = ctx.root / "mlflow.db"
        if folder:
            path.mkdir()
        else:
            path.write_bytes(content)

    return prepare


def _damage_pages(ctx):
    path = ctx.root / "mlflow.db"
    data = bytearray(path.read_bytes())
    ctx.extra["db_size"] = len(data)
    page = 4096
    for start in range(2 * page, len(data) - page, 3 * page):  # keep the header page
        data[start + 8 : start + 200] = os.urandom(192)
    path.write_bytes(bytes(data))
    ctx.extra["damaged"] = bytes(data)


def act_http_dead(sweep: bool):
    def act(ctx):
        uri = f"http://127.0.0.1:{_free_port()}"
        args = SWEEP if sweep else ONE
        return ctx.train(*args, f"tracking.uri={uri}")

    return act


def act_cli(*args):
    def act(ctx):
        return finish(start(*args, root=ctx.root, cache=ctx.cache))

    return act


def _compose(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def act_damaged_cache(ctx):
    ctx.cache = ctx.root / "cache"  # its own: the shared one stays whole
    load_cifar100(_compose(*ONE, f"data.cache_dir={ctx.cache}").data, seed=0)
    (cached,) = ctx.cache.glob("cifar100-*.npz")
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])
    return ctx.train(*ONE)


def act_bad_image(ctx):
    folder = _data_folder(ctx, _break_row_3)
    return ctx.train(*ONE, f"data.path={folder}")


def act_empty_class(ctx):
    folder = _data_folder(ctx, _drop_class_7)
    return ctx.train(*ONE, f"data.path={folder}", "data.val_size=99", "trainer.epochs=1")


def act_vanish(ctx):
    return ctx.train(*PAIR, "+hydra.callbacks.vanish._target_=test_faults.DropStoreAfterFirstJob")


class DropStoreAfterFirstJob(Callback):
    """A Hydra callback that deletes the sqlite store once the first job has ended."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if config.hydra.job.num == 0:
            path = Path(config.tracking.uri.removeprefix("sqlite:///"))
            for file in path.parent.glob(path.name + "*"):
                file.unlink()


def act_compare_stray_parent(ctx):
    import compare

    client = ctx.client()
    experiment = client.get_experiment_by_name("cifar100").experiment_id
    stray = client.create_run(experiment, tags={"sweep_parent": "true"}, run_name="stray")
    client.set_terminated(stray.info.run_id)
    ctx.capfd.readouterr()
    code = compare.main(["--tracking-uri", ctx.uri, "--out", str(ctx.root / "report"), "--no-log"])
    captured = ctx.capfd.readouterr()
    return code, captured.out + captured.err


def resume_after(prepare):
    """The interrupted store, damaged by `prepare`, then the same command again."""

    def act(ctx):
        prepare(ctx)
        return ctx.train(*LONG)

    return act


def _newest_epoch(ctx) -> Path:
    return sorted(ctx.root.glob("checkpoints/*/epochs/epoch-*.json"))[-1]


def _damage_newest_best_snapshot(ctx):
    snapshot = _newest_epoch(ctx).with_suffix("").with_suffix(".best.keras")
    snapshot.write_bytes(snapshot.read_bytes()[:-4000] + os.urandom(4000))


def _damage_best(ctx):
    best = next(ctx.root.glob("checkpoints/*/best.keras"))
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])


def _truncate_newest_weights(ctx):
    weights = _newest_epoch(ctx).with_suffix("").with_suffix(".weights.h5")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])


def _stray_tmp_files(ctx):
    folder = _newest_epoch(ctx).parent
    (folder / ".tmp-epoch-0003.weights.h5").write_bytes(b"half")
    (folder.parent / ".tmp-best.keras").write_bytes(b"half")


def act_sigterm(ctx):
    """The interrupted fixture's own launch, then the same command again."""
    code, text = ctx.extra["interrupted"][1:]
    state = store_state(ctx)
    ((model, status, steps, run_id),) = state["jobs"]
    assert status == "KILLED" and state["parents"] == ["KILLED"], state
    newest = int(_newest_epoch(ctx).stem.removeprefix("epoch-"))
    assert newest >= 2 and set(steps) <= set(range(1, newest + 1)), (newest, steps)
    rerun, again = ctx.train(*LONG)
    assert rerun == 0 and f"resuming run {run_id}" in again, again[-3000:]
    return code, text


def act_dead_owner(ctx):
    """kill -9 of the owner: its lock goes with it, and the run resumes at once."""
    identity = _identity_of(ctx, ctx.root)
    run_id = _set_status(ctx, "RUNNING")  # as a kill -9 leaves it
    holder = _hold_lock(ctx, identity, pid=999999, host=socket.gethostname())
    holder.kill()
    holder.wait()
    code, text = ctx.train(*LONG)
    assert f"resuming run {run_id}" in text
    return code, text


def act_live_owner(ctx):
    identity = _identity_of(ctx, ctx.root)
    holder = _hold_lock(ctx, identity, pid=4242, host="node-a")
    try:
        return ctx.train(*LONG, "tracking.owner_wait_s=3")
    finally:
        holder.kill()
        holder.wait()


def untouched(state):
    ((model, status, steps, _),) = state["jobs"]
    assert (status, steps) == ("KILLED", [1, 2]), state


def _lease(ctx, host: str, slurm: str = "") -> None:
    from tracking.params import config_identity
    from training import device as devices

    cfg = _compose(*ONE)
    # As train.py does before it takes the identity: precision=auto becomes what runs here.
    cfg.trainer.precision = devices.resolve_precision(cfg.trainer.precision, devices.detect())
    client = ctx.client()
    experiment = client.create_experiment(ctx.experiment)
    lease = {"host": host, "pid": 4242, "slurm": slurm, "job": "0_alexnet", "since": time.time()}
    lease |= {"token": f"{host}:4242:1", "heartbeat": time.time()}
    client.set_experiment_tag(experiment, f"owner.{config_identity(cfg)}", json.dumps(lease))


def act_server_lease(slurm: str, env: dict | None = None, expiry: int = 30):
    def act(ctx):
        ctx.uri = ctx.extra["server"].wait_ready()
        ctx.experiment = f"lease-{slurm or 'expired'}"
        _lease(ctx, "node-b", slurm)
        started = time.monotonic()
        code, text = ctx.train(
            *SWEEP,
            f"tracking.uri={ctx.uri}",
            f"tracking.experiment={ctx.experiment}",
            f"tracking.owner_expiry_s={expiry}",
            env=env,
        )
        ctx.extra["waited"] = time.monotonic() - started
        return code, text

    return act


def act_copies(count: int, args, server: bool = False):
    """`count` copies of one command started together on one store whose database exists
    (as the README asks before parallel launches), each with its own sweep folder."""

    def act(ctx):
        extra = ()
        if server:
            ctx.uri = ctx.extra["server"].wait_ready()
            ctx.experiment = f"copies-{count}"
            extra = (f"tracking.uri={ctx.uri}", f"tracking.experiment={ctx.experiment}")
        ctx.client().create_experiment(ctx.experiment)
        copies = [
            start(*args, *extra, root=ctx.root, cache=ctx.cache, sweep=f"sweep-{i}", log=f"{i}.log")
            for i in range(count)
        ]
        results = [finish(p) for p in copies]
        failed = [
            f"copy {i} exited {code}:\n{out[-4000:]}"
            for i, (code, out) in enumerate(results)
            if code
        ]
        assert not failed, "\n".join(failed)
        text = "\n".join(text for _, text in results)
        assert "Traceback" not in text and "database is locked" not in text, text[-4000:]
        return 0, text

    return act


CASES = [
    # config: checked before anything is loaded or logged
    Case("seed=-1", inproc(*ONE, "seed=-1"), 1, "seed=-1", "must be an integer in", no_store),
    Case("seed=2**32", inproc(*ONE, "seed=4294967296"), 1, "seed=4294967296", r"2\*\*32", no_store),
    Case(
        "resnet18 input_size=0",
        inproc(*ONE, "model=resnet18", "model.input_size=0"),
        1,
        "model.input_size=0",
        "positive integer",
        no_store,
    ),
    Case(
        "vgg13 input_size=16",
        inproc(*ONE, "model=vgg13", "model.input_size=16"),
        1,
        "model.input_size=16",
        "below vgg13's minimum of 32",
        no_store,
    ),
    Case(
        "effnetv2 input_size=16",
        inproc(*ONE, "model=effnetv2", "model.input_size=16"),
        1,
        "model.input_size=16",
        "below effnetv2's minimum of 32",
        no_store,
    ),
    Case(
        "vit input_size=4",
        inproc(*ONE, "model=vit", "model.input_size=4"),
        1,
        "model.input_size=4",
        "below vit's minimum of 8",
        no_store,
    ),
    Case(
        "alexnet imagenet stem at 32 px",
        inproc(*ONE, "model.stem=imagenet", "model.input_size=32"),
        1,
        "model.input_size=32",
        "below alexnet's minimum of 63",
        no_store,
    ),
    Case("lr=-1", inproc(*ONE, "optimizer.lr=-1"), 1, "optimizer.lr=-1", "> 0", no_store),
    Case("epochs=0", inproc(*ONE, "trainer.epochs=0"), 1, "trainer.epochs=0", ">= 1", no_store),
    # the store's address and file
    Case(
        "uri sqlite:// (two slashes), sweep",
        inproc(*SWEEP, "tracking.uri=sqlite://mlflow.db"),
        1,
        "tracking.uri=sqlite://mlflow.db",
        "sweep failed: .*three slashes",
        no_store,
    ),
    Case(
        "uri a bare path",
        inproc(*ONE, "tracking.uri=mlruns/mlflow.db"),
        1,
        "tracking.uri=mlruns/mlflow.db",
        "not a store address",
        no_store,
    ),
    Case(
        "http port with no server",
        act_http_dead(sweep=False),
        1,
        "tracking.uri=http://127.0.0.1",
        "no MLflow server answers",
        no_store,
    ),
    Case(
        "http port with no server, sweep",
        act_http_dead(sweep=True),
        1,
        "tracking.uri=http://127.0.0.1",
        "sweep failed: .*no MLflow server answers",
        no_store,
    ),
    Case(
        "mlflow.db is a folder",
        with_prep(_db(folder=True), *ONE),
        1,
        "tracking.uri=sqlite:///",
        "is a folder, not a database file",
        lambda state: None,
    ),
    Case(
        "mlflow.db random bytes",
        with_prep(_db(os.urandom(8192)), *ONE),
        1,
        "tracking.uri=sqlite:///",
        "is not an SQLite database",
        lambda state: None,
    ),
    Case(
        "mlflow.db random bytes, sweep (CLI)",
        lambda ctx: (_db(os.urandom(8192))(ctx), act_cli(*SWEEP)(ctx))[1],
        1,
        "tracking.uri=sqlite:///",
        "sweep failed: .*is not an SQLite database",
        lambda state: None,
        kind="process",
    ),
    Case(
        "mlflow.db with damaged pages",
        with_prep(_damage_pages, *SWEEP, "seed=1"),
        1,
        "tracking.uri=sqlite:///",
        "is damaged",
        lambda state: None,
        base="finished",
    ),
    Case(
        "mlflow.db deleted after the first job",
        act_vanish,
        1,
        "tracking.uri=sqlite:///",
        "sweep failed: .*vanished mid-sweep",
        no_store,
    ),
    Case(
        "compare.py: a sweep_parent run without sweep_id",
        act_compare_stray_parent,
        0,
        "wrote",
        "files",
        one_finished("alexnet"),
        base="finished",
    ),
    # data
    Case(
        "truncated data cache",
        act_damaged_cache,
        0,
        "data.cache_dir=",
        "is damaged .*; rebuilding it",
        lambda state: None,
    ),
    Case(
        "undecodable image",
        act_bad_image,
        1,
        "data.path=",
        "row 3 of train-00000-of-00001.parquet .*cannot be decoded",
        lambda state: None,
    ),
    Case(
        "a class with no training images",
        act_empty_class,
        0,
        "data:",
        "1 of 100 classes have no training images .*class_07",
        one_finished("alexnet", epochs=1),
    ),
    # checkpoints on resume
    Case(
        "SIGTERM, then the same command (CLI)",
        act_sigterm,
        128 + signal.SIGTERM,
        "SIGTERM",
        "run the same command again to resume",
        one_finished("alexnet", epochs=4),
        base="interrupted",
        kind="process",
    ),
    Case(
        "damaged best snapshot of the newest epoch",
        resume_after(_damage_newest_best_snapshot),
        0,
        "epoch-0002.json",
        "unreadable .*epoch-0002.best.keras is missing or damaged",
        one_finished("alexnet", epochs=4),
        base="interrupted",
    ),
    Case(
        "damaged best.keras",
        resume_after(_damage_best),
        0,
        "resuming run",
        "resuming run",
        one_finished("alexnet", epochs=4),
        base="interrupted",
    ),
    Case(
        "truncated newest epoch weights",
        resume_after(_truncate_newest_weights),
        0,
        "epoch-0002.json",
        "is unreadable",
        one_finished("alexnet", epochs=4),
        base="interrupted",
    ),
    Case(
        "stray .tmp-* files",
        resume_after(_stray_tmp_files),
        0,
        "resuming run",
        "resuming run",
        one_finished("alexnet", epochs=4),
        base="interrupted",
    ),
    # owners
    Case(
        "owner killed -9 (lock released)",
        act_dead_owner,
        0,
        "resuming run",
        "resuming run",
        one_finished("alexnet", epochs=4),
        base="interrupted",
    ),
    Case(
        "live owner holds the lock",
        act_live_owner,
        1,
        "tracking.owner_wait_s=3",
        "owned by pid 4242 on node-a",
        untouched,
        base="interrupted",
    ),
    Case(
        "server: another machine's lease expires",
        act_server_lease(""),
        0,
        "owned by pid 4242 on node-b",
        "waiting",
        one_finished("alexnet"),
    ),
    Case(
        "server: a requeued SLURM task",
        act_server_lease("77_3", env={"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3"}),
        0,
        "requeued SLURM task 77_3",
        "takes over",
        one_finished("alexnet"),
    ),
    Case(
        "finished config run again",
        inproc(*SWEEP),
        0,
        "FINISHED earlier",
        "0_alexnet: FINISHED earlier as run",
        one_finished("alexnet"),
        base="finished",
    ),
    Case(
        "one job of a sweep fails its config",
        inproc("-m", *ONE, "seed=0,-1"),
        1,
        "1 of 2 jobs failed",
        "1_alexnet",
        one_finished("alexnet"),
        base="finished",
    ),
    Case(
        "two copies of one sweep (CLI)",
        act_copies(2, PAIR),
        0,
        "owned by pid",
        "waiting",
        one_finished("alexnet", "resnet18"),
        kind="process",
    ),
    Case(
        "four copies of one sweep (CLI)",
        act_copies(4, SWEEP),
        0,
        "owned by pid",
        "waiting",
        one_sweep("alexnet"),
        kind="process",
    ),
    Case(
        "two copies against an MLflow server (CLI)",
        act_copies(2, SWEEP, server=True),
        0,
        "owned by pid",
        "waiting",
        one_sweep("alexnet"),
        kind="process",
    ),
]


def _line(text: str, key: str) -> str:
    lines = [line for line in text.splitlines() if key in line]
    assert lines, f"no line names {key!r}:\n{text[-3000:]}"
    return re.sub(r"^(\[[^\]]*\])+( - )?", "", lines[-1]).strip()  # the log prefix goes


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_table(case, tmp_path, cache, capfd, monkeypatch, request):
    ctx = Ctx(tmp_path, cache, capfd, monkeypatch)
    if case.base == "finished":
        _copy_store(request.getfixturevalue("finished_store"), ctx)
    elif case.base == "interrupted":
        interrupted = request.getfixturevalue("interrupted_store")
        _copy_store(interrupted[0], ctx)
        ctx.extra["interrupted"] = interrupted
    if "server" in case.id:
        ctx.extra["server"] = request.getfixturevalue("server")
    before = store_state(ctx) if case.base else {"jobs": []}

    started = time.monotonic()
    code, text = case.act(ctx)
    seconds = time.monotonic() - started

    line = _line(text, case.key)
    assert re.search(case.says, line), (line, text[-3000:])
    assert code == case.code, (code, line, text[-3000:])
    if code:
        assert "Traceback" not in text, text[-3000:]
    if "damaged" in ctx.extra:  # a damaged store is left as it was
        assert (tmp_path / "mlflow.db").read_bytes() == ctx.extra["damaged"]
    state = {"store": "damaged", "jobs": [], "parents": []}
    if case.id.startswith("mlflow.db") and code:
        state["store"] = "left as it was"
    else:
        state = store_state(ctx)
        case.store(state)
        was_finished = {run_id for _, s, _, run_id in before["jobs"] if s == "FINISHED"}
        now = {run_id: s for _, s, _, run_id in state["jobs"]}
        assert all(now.get(run_id) == "FINISHED" for run_id in was_finished), (before, state)
    # A finished run leaves no temporary file anywhere under its root.
    assert not [p for p in tmp_path.rglob(".tmp-*")], list(tmp_path.rglob(".tmp-*"))
    if "db is a folder" in case.id:
        assert seconds < 5
    shown = state["store"] if state["store"] != "ok" else describe(state)
    print(f"\nROW | {case.id} | {code} | {line} | {shown} | {case.kind}, {seconds:.1f} s")


SET_TAGS_AT_ONCE = """
import sys, time
from pathlib import Path
import mlflow
from tracking.store import set_experiment_tag
uri, experiment_id, go, value = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
client = mlflow.MlflowClient(uri)
client.get_experiment(experiment_id)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
for key in ("first", "second", "third"):
    set_experiment_tag(client, experiment_id, key, value)
"""


@pytest.mark.parametrize("where", ["sqlite", "server"])
def test_copies_adding_one_new_experiment_tag_at_once_all_succeed(where, tmp_path, request):
    """MLflow's SQL store fails all but one of the processes that add the same new experiment
    tag together; the kind tag and the leaderboard view are such tags, set by every copy of a
    sweep (a CI run lost a copy to it). Four processes, three new tags each, one start signal."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    if where == "server":
        uri = request.getfixturevalue("server").wait_ready()
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment(f"tags-{where}")
    go = tmp_path / "go"
    copies = [
        subprocess.Popen(
            [sys.executable, "-c", SET_TAGS_AT_ONCE, uri, experiment_id, str(go), str(i)],
            cwd=REPO,
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(4)
    ]
    try:
        for copy in copies:  # each has MLflow loaded and the store open before the signal
            while (line := copy.stdout.readline()) and line.strip() != "ready":
                pass
            assert line, copy.communicate()[0][-3000:]
        go.touch()
        outputs = [copy.communicate(timeout=120)[0] for copy in copies]
    finally:  # none is left waiting for a signal that a failed assertion never sent
        for copy in copies:
            if copy.poll() is None:
                copy.kill()
    failed = [out[-2000:] for copy, out in zip(copies, outputs, strict=True) if copy.returncode]
    assert not failed, "\n".join(failed)
    tags = client.get_experiment(experiment_id).tags
    assert {tags.get(key) for key in ("first", "second", "third")} <= {"0", "1", "2", "3"}
    assert all(key in tags for key in ("first", "second", "third")), tags
