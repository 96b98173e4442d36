"""What the terminal shows: progress lines, the compact table, start-up noise, help, typos."""

import io
import logging
import re
import subprocess
import sys
from collections import Counter

import keras
import numpy as np
import pytest
from keras.src import utils as keras_utils
from rich.console import Console

from callbacks.progress import EpochProgress, clock
from cli.overrides import unknown_key_message
from cli.quiet import drop_known
from comparison.collect import RunRecord, SweepRecord
from comparison.report import print_table
from comparison.table import build_rows, compact_cells, varied_keys
from tests.conftest import MODELS, REPO, output

# -- the compact table ---------------------------------------------------------------------


def _run(name, seed, status="FINISHED", lr="0.1", top1=12.34, error=None):
    metrics = {}
    if status == "FINISHED":
        metrics = {  # accuracies in %, as train.py logs them
            "best_val_top1": top1 + 1,
            "test_top1": top1,
            "test_top5": min(100.0, top1 * 1.5),
            "train_seconds": 3725.0,
            "epochs_run": 30.0,
        }
    tags = {"overrides": f"model={name} seed={seed} optimizer.lr={lr}", "strategy": "finetune"}
    if error:
        tags["error"] = error
    return RunRecord(
        run_id=f"{name}-{seed}-{lr}-{status}",
        architecture=name,
        status=status,
        start_time=seed,
        tags=tags,
        params={"seed": str(seed), "optimizer.lr": lr},
        metrics=metrics,
        val_top1=(),
    )


def _sweep():
    """Five architectures x two learning rates x three seeds, and a failed run."""
    runs = [
        _run(name, seed, lr=lr, top1=50.0 + 10 * seed)
        for name in MODELS
        for lr in ("0.05", "0.1")
        for seed in (0, 1, 2)
    ]
    runs.append(_run("effnetv2", 3, status="FAILED", error="ValueError: loss is NaN " * 10))
    return SweepRecord("cifar100", "1", "3f2a9c0d1e2b", "parent", "FAILED", "", "sqlite://", runs)


@pytest.mark.parametrize("width", [80, 100])
def test_the_console_table_fits_and_cuts_no_key_cell(width):
    sweep = _sweep()
    varied = varied_keys(sweep.runs)
    rows = build_rows(sweep.runs, varied)
    console = Console(file=io.StringIO(), width=width, color_system=None)
    print_table(sweep, rows, varied, console)
    text = console.file.getvalue()
    table = text.split("accuracies in %")[0]
    assert max(len(line.rstrip()) for line in table.splitlines()) <= width, text
    assert "…" not in table, text
    lines = [line.split() for line in table.splitlines()]
    for row in rows:
        cells = compact_cells(row)
        # model, the varied value, test top-1 and status: each whole, on one line of the table
        key = [cells[0], cells[1], cells[-4], cells[-1]]
        assert any(all(cell in line for cell in key if cell) for line in lines), (key, text)
    assert sum(line[-1:] == ["FINISHED"] for line in lines) == 10
    assert "60.00±10.00" in table  # test top-1 over the seeds 50, 60, 70 (%)
    assert "1:02:05" in table  # the train time
    # The failed run's error stays in view, below the table.
    assert "FAILED effnetv2" in text and "ValueError: loss is NaN" in text


# -- progress ------------------------------------------------------------------------------


def _fit(progress, epochs=2):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    model.compile(
        "sgd",
        "sparse_categorical_crossentropy",
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1")],
    )
    x, y = np.random.rand(64, 4), np.random.randint(0, 3, 64)
    model.fit(
        x, y, batch_size=8, epochs=epochs, validation_data=(x, y), callbacks=[progress], verbose=0
    )


def test_progress_prints_one_plain_line_per_epoch_where_output_is_no_terminal():
    EpochProgress.sweep_epoch_seconds.clear()
    console = Console(file=io.StringIO(), width=100)
    progress = EpochProgress("[2/5] vgg13   ", 2, jobs_after=3, console=console)
    assert not progress.live  # a StringIO is no terminal
    _fit(progress)
    text = console.file.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 2, text
    clock_re = r"(\d+ s|\d+:\d\d(:\d\d)?)"  # 12 s, 1:05 or 1:02:03 on a slow machine
    pattern = (
        r"\[2/5\] vgg13 +epoch {e}/2  loss \d+\.\d\d  top-1 +\d+\.\d%  val top-1 +\d+\.\d%  "
        r"{clock}  {eta}"
    )
    first = pattern.format(e=1, clock=clock_re, eta=f"ETA {clock_re}, sweep {clock_re}")
    last = pattern.format(e=2, clock=clock_re, eta=f"done, sweep {clock_re}")
    assert re.fullmatch(first, lines[0]), lines[0]
    assert re.fullmatch(last, lines[1]), lines[1]
    assert all(len(line) <= 100 for line in lines)


def test_the_live_bar_leaves_the_epoch_lines_and_keeps_steps_asynchronous():
    console = Console(file=io.StringIO(), width=100, force_terminal=True)
    progress = EpochProgress("resnet18", 2, console=console)
    assert progress.live
    # Keras dispatches steps ahead of the device only while no callback has a batch-end hook.
    assert keras_utils.is_default(progress.on_train_batch_end)
    assert keras_utils.is_default(progress.on_test_batch_end)
    _fit(progress)
    text = console.file.getvalue()
    assert "resnet18  epoch 1/2  loss" in text and "resnet18  epoch 2/2  loss" in text
    assert progress._bar is None  # stopped at the end of fit


def test_eta_extrapolates_from_finished_epochs():
    EpochProgress.sweep_epoch_seconds[:] = [10.0, 30.0]  # an earlier job: 20 s an epoch
    progress = EpochProgress("[2/3] vit", 5, jobs_after=1, live=False)
    progress.job_epoch_seconds = [60.0, 120.0]  # this job: 90 s an epoch
    line = progress.line(1, {"loss": 1.0, "top1": 50.0, "val_top1": 25.0}, 120.0)  # in %
    # 3 epochs left here at 90 s; one more job of 5 epochs at the sweep's mean, 20 s
    assert line.endswith(f"ETA {clock(270)}, sweep {clock(270 + 5 * 20)}"), line
    assert "top-1 50.0%  val top-1 25.0%" in line
    EpochProgress.sweep_epoch_seconds.clear()


# -- start-up noise ------------------------------------------------------------------------

NOISE = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796141818.652762    7561 port.cc:153] oneDNN custom operations are on. You may see
I0000 00:00:1796141818.654532    7561 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
E0000 00:00:1796141833.674976    7561 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
E0000 00:00:1796141835.986083    7561 util.cc:131] oneDNN supports DT_INT64 only on platforms with AVX-512. Falling back to the default Eigen-based implementation if present.
E0000 00:00:1796141835.986083    7561 gpu_device.cc:2020] Out of memory allocating 1.2 GiB
/x/y.py:3: UserWarning: something real
"""  # noqa: E501


def test_only_the_known_startup_lines_are_dropped():
    kept = drop_known(NOISE).splitlines()
    assert kept == [NOISE.splitlines()[-2], NOISE.splitlines()[-1]]


# -- override typos ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trainer.epoch=3"], "unknown key trainer.epoch; did you mean trainer.epochs?"),
        (
            ["optimizer.learning_rate=0.1"],
            "unknown key optimizer.learning_rate; did you mean optimizer.lr?",
        ),  # noqa: E501
        (
            ["optimizer=adam", "optimizer.wd=0"],
            "unknown key optimizer.wd; did you mean optimizer.weight_decay?",
        ),  # noqa: E501
        (
            ["-m", "model=alexnet,vit", "trainr.epochs=2"],
            "unknown key trainr.epochs; did you mean trainer.epochs?",
        ),  # noqa: E501
        (["+new.key=1", "trainer.epochs=2"], None),
        (["++trainer.epoch=2"], None),
        (["-m", "model=alexnet,vit", "model.checkpoint=x"], None),  # vit has it
        (["totally.unrelated=1"], None),  # Hydra's own "+key" hint is the right one
        (["model=resnet50", "trainer.epoch=3"], None),  # Hydra names the model options
    ],
)
def test_a_key_close_to_a_known_one_gets_a_did_you_mean(args, message):
    assert unknown_key_message(args) == message


# -- the CLI in a subprocess ---------------------------------------------------------------

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
LOADED = "import sys; print(sorted({'keras', 'tensorflow', 'mlflow', 'jax'} & set(sys.modules)))"


def _train(*args: str) -> subprocess.CompletedProcess:
    """train.py as `python train.py ARGS`, printing the heavy modules it loaded on exit."""
    code = (
        "import atexit, runpy, sys\n"
        f"atexit.register(lambda: print('loaded:', end=' ') or exec({LOADED!r}))\n"
        f"sys.argv = ['train.py', *{list(args)!r}]\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_help_shows_groups_and_examples_without_loading_the_backend():
    result = _train("--help")
    assert result.returncode == 0, output(result)
    assert "loaded: []" in result.stdout
    assert "powered by Hydra" not in result.stdout
    assert "  model: alexnet, effnetv2, resnet18, vgg13, vit\n" in result.stdout
    assert result.stdout.count("\n  python train.py ") == 5
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert result.stderr == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("trainer.epoch=3",), "unknown key trainer.epoch; did you mean trainer.epochs?\n"),
        (("-m", "model=resnet50"), "Could not find 'model/resnet50'"),
    ],
)
def test_config_errors_answer_before_the_backend_loads(args, expected):
    result = _train(*args)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "loaded: []" in result.stdout
    if "unknown key" in expected:
        assert result.stderr == expected  # one line


@pytest.mark.slow
def test_an_added_key_still_composes():
    result = _train("+new.key=7", "--cfg", "job")
    assert result.returncode == 0, output(result)
    assert "new:\n  key: 7" in result.stdout


@pytest.mark.slow
def test_the_smoke_sweep_prints_progress_and_no_backend_noise(smoke_sweep):
    _, result = smoke_sweep
    text = output(result)
    lines = text.splitlines()
    assert not [line for line in lines if line.startswith(("E0000", "I0000", "W0000"))]
    assert "absl::InitializeLog" not in text and "\r" not in text
    warnings = [line for line in lines if "warning" in line.lower()]
    normalized = Counter(re.sub(r"0x[0-9a-f]+|\d+", "#", line) for line in warnings)
    assert [w for w, n in normalized.items() if n > 1] == [], warnings
    for number, name in enumerate(MODELS, 1):
        progress = [line for line in lines if line.startswith(f"[{number}/5] {name} ")]
        assert len(progress) == 1 and " epoch 1/1  loss " in progress[0], text[-3000:]
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["model", "strategy"])
    end = next(i for i, line in enumerate(lines) if line.startswith("accuracies in %"))
    table = lines[header:end]
    assert len(table) == 2 + len(MODELS) and all(
        line.split()[-1] == "FINISHED" for line in table[2:]
    )
    assert max(len(line.rstrip()) for line in table) <= 100
    assert re.search(r"^full table: .*comparison\.md$", text, re.M)
    # Where to read it in the MLflow UI: its Model training mode, the sweep's runs side by side.
    link = re.search(r"^  then open (http://127\.0\.0\.1:5000/#/experiments/\S+)$", text, re.M)
    assert link and "viewStateShareKey=" in link[1], text[-2000:]
    assert link[1].endswith("&workflowType=machine_learning")


def test_a_repeated_warning_shows_once_and_errors_always():
    from cli.quiet import OncePerWarning

    stream = io.StringIO()
    logger = logging.getLogger("test_terminal.once")
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(stream))
    logger.addFilter(OncePerWarning())
    for address in ("0x7ffb1ca52d40", "0x7ffb1ea93ce0"):
        logger.warning("5 out of the last 15 calls to <function f at %s> retraced", address)
        logger.error("a real error")
    assert stream.getvalue().splitlines() == [
        "5 out of the last 15 calls to <function f at 0x7ffb1ca52d40> retraced",
        "a real error",
        "a real error",
    ]


@pytest.mark.parametrize(
    ("sweeper", "task", "jobs"),
    [
        ({"_target_": BASIC, "params": None}, ["model=alexnet,vgg13,vit", "seed=0,1"], 6),
        ({"_target_": BASIC, "params": {"seed": "range(3)"}}, ["model=alexnet,vit"], 6),
        ({"_target_": BASIC, "params": None}, ["trainer.epochs=2"], 1),
        ({"_target_": "x.OptunaSweeper", "n_trials": 20}, ["model=vit"], 20),
        ({"_target_": "x.AnotherSweeper"}, ["model=vit"], None),
    ],
)
def test_the_sweep_knows_its_job_count(sweeper, task, jobs):
    from omegaconf import OmegaConf

    from tracking.sweep import count_jobs

    config = OmegaConf.create({"hydra": {"sweeper": sweeper, "overrides": {"task": task}}})
    assert count_jobs(config) == jobs
