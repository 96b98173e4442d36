"""Ready for a GPU, checked on a CPU: precision per device, where a run ran, the silent-CPU trap.

nvidia-smi is a real executable script on PATH that prints what the real one prints for an
8-GPU H100 machine; the backend (on this CPU machine) sees no GPU, which is the trap.
"""

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import keras
import pytest
from conftest import REPO, Store, output, train_cli
from hydra import compose, initialize_config_dir
from test_comparison import Store as ComparisonStore
from test_comparison import finals

from comparison import build_report
from training import device as devices
from training.validation import check_config

H100 = "NVIDIA H100 80GB HBM3"
FAKE_NVIDIA_SMI = f"""#!/bin/sh
case "$1" in
  --query-gpu=*)
    i=0
    while [ $i -lt 8 ]; do echo "{H100}, 550.54.15, 9.0"; i=$((i + 1)); done ;;
  -L)
    i=0
    while [ $i -lt 8 ]; do echo "GPU $i: {H100} (UUID: GPU-$i)"; i=$((i + 1)); done ;;
  *)
    echo "+-----------------------------------------------------------------------------+"
    echo "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |"
    echo "+-----------------------------------------------------------------------------+" ;;
esac
"""


@pytest.fixture
def fake_smi_dir(tmp_path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(FAKE_NVIDIA_SMI)
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


@pytest.fixture
def with_fake_smi(fake_smi_dir, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_smi_dir}{os.pathsep}{os.environ['PATH']}")


# -- nvidia-smi and the backend's devices ------------------------------------------------------


def test_nvidia_smi_is_read_for_names_driver_cuda_and_capability(with_fake_smi):
    smi = devices.nvidia_smi()
    assert smi.names == (H100,) * 8
    assert (smi.driver, smi.cuda, smi.compute_capability) == ("550.54.15", "12.4", 9.0)


def test_without_nvidia_smi_there_are_no_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-smi
    assert devices.nvidia_smi() == devices.NvidiaSmi()
    device = devices.detect()
    assert device.kind == "cpu" and not device.gpus_unused
    assert devices.silent_cpu_warning(device) is None
    assert "device.gpus_unused" not in device.tags()


def test_gpus_the_backend_cannot_use_are_flagged_with_the_fix(with_fake_smi, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    device = devices.detect()  # this machine's backend sees only its CPU
    assert device.kind == "cpu" and device.gpus_unused
    assert device.label == f"cpu ×{devices.cpu_cores()} cores"
    tags = device.tags()
    assert tags["device"] == device.label and tags["device.kind"] == "cpu"
    assert tags["device.gpus_unused"] == f"{H100} ×8"
    assert (tags["device.driver"], tags["device.cuda"]) == ("550.54.15", "12.4")
    warning = devices.silent_cpu_warning(device)
    assert "8 GPUs" in warning and H100 in warning and keras.backend.backend() in warning
    assert '".[cuda]"' in warning and "CUDA_VISIBLE_DEVICES" not in warning
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "CUDA_VISIBLE_DEVICES=''" in devices.silent_cpu_warning(device)


def test_software_versions_name_keras_its_backend_and_keras_hub():
    versions = devices.software_versions()
    assert versions["version.keras"] == keras.__version__
    assert versions["version.keras_backend"] == keras.backend.backend()
    assert versions["version.keras-hub"]
    assert f"version.{keras.backend.backend()}" in versions


# -- precision ---------------------------------------------------------------------------------


def gpu(capability: float | None) -> devices.Device:
    return devices.Device("gpu", "some GPU", 1, capability)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (gpu(9.0), "mixed_bfloat16"),  # H100
        (gpu(8.0), "mixed_bfloat16"),  # A100
        (gpu(7.5), "mixed_float16"),  # T4
        (gpu(7.0), "mixed_float16"),  # V100
        (gpu(None), "mixed_float16"),  # unknown: fp16 runs on every CUDA GPU
        (devices.Device("tpu", "TPU v4", 4), "mixed_bfloat16"),
        (devices.Device("cpu", "cpu", 2), "float32"),
    ],
)
def test_auto_precision_follows_the_device(device, expected):
    assert devices.resolve_precision("auto", device) == expected


@pytest.mark.parametrize("explicit", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_an_explicit_precision_wins_over_the_device(explicit):
    for device in (gpu(9.0), gpu(7.0), devices.Device("cpu", "cpu", 2)):
        assert devices.resolve_precision(explicit, device) == explicit


def test_auto_is_the_default_and_passes_the_checks():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        default = compose("config")
        smoke = compose("config", overrides=["experiment=smoke"])
    assert default.trainer.precision == "auto" and smoke.trainer.precision == "auto"
    check_config(default)


# -- the comparison says where each speed was measured ----------------------------------------


def test_comparison_shows_the_device_and_never_averages_speeds_across_devices(tmp_path):
    store = ComparisonStore(tmp_path)
    sweep = "cccccccccccc"
    store.parent(sweep, "model=alexnet,resnet18 seed=0,1", 1_000_000, "FINISHED")
    ran = [
        ("alexnet", 0, H100 + " ×1", 100.0, 1000.0),
        ("alexnet", 1, "cpu ×2 cores", 900.0, 90.0),
        ("resnet18", 0, H100 + " ×1", 200.0, 500.0),
        ("resnet18", 1, H100 + " ×1", 220.0, 450.0),
    ]
    for index, (model, seed, device, seconds, ips) in enumerate(ran):
        run_id = store.child(
            f"{model}-{seed}",
            sweep,
            model,
            seed,
            1_000_100 + index,
            "FINISHED",
            metrics=finals(0.5, 0.75, 0.5, seconds, ips, 1e6),
        )
        store.client.set_tag(run_id, "device", device)
    report = build_report(store.uri, "cifar100", sweep, tmp_path / "report")
    alexnet, resnet18 = report.rows
    assert alexnet.mixed_devices and alexnet.device == f"{H100} ×1 / cpu ×2 cores"
    assert alexnet.train_seconds is None and alexnet.images_per_second is None
    assert alexnet.test_top1.mean == 50.0  # accuracy (%) still averages over the seeds
    assert resnet18.device == f"{H100} ×1" and resnet18.images_per_second.mean == 475.0

    markdown = report.markdown.read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| strategy"))
    assert "| epochs | device | train time (s) | images/s |" in header
    assert f"| 3 ± 0 | {H100} ×1 | 210 ± 14 | 475 ± 35 |" in markdown
    assert "| mixed devices | mixed devices |" in markdown
    assert "seeds ran on different devices" in markdown


# -- the real CLI -------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_warns_before_training_and_tags_where_it_ran(fake_smi_dir, tmp_path, data_cache):
    env = {"PATH": f"{fake_smi_dir}{os.pathsep}{os.environ['PATH']}"}
    result = train_cli(
        "model=alexnet", "experiment=smoke", root=tmp_path, cache=data_cache, env=env
    )
    text = output(result)
    assert result.returncode == 0, text[-3000:]
    lines = text.splitlines()
    (warning,) = [i for i, line in enumerate(lines) if "nvidia-smi lists 8 GPUs" in line]
    assert '".[cuda]"' in lines[warning]
    started = next(i for i, line in enumerate(lines) if "run " in line and " started" in line)
    assert warning < started

    (run,) = Store(tmp_path).jobs()
    tags, params = run.data.tags, run.data.params
    assert tags["device"].startswith("cpu ×") and tags["device.kind"] == "cpu"
    assert tags["device.gpus_unused"] == f"{H100} ×8"
    assert (tags["device.driver"], tags["device.cuda"]) == ("550.54.15", "12.4")
    # precision=auto is logged as what it resolved to on this device.
    assert tags["precision"] == params["trainer.precision"] == "float32"
    for library in ("keras", "keras-hub", "tensorflow", "mlflow"):
        assert tags[f"version.{library}"], library
    assert tags["version.keras_backend"] == "tensorflow"


# -- bench/gpu_check.py --quick ----------------------------------------------------------------


@pytest.mark.slow
def test_gpu_check_quick_runs_every_step_and_writes_results_as_it_goes(tmp_path, data_cache):
    from data.synthetic import write_synthetic_cifar

    dataset = write_synthetic_cifar(tmp_path / "cifar", train_per_class=3, test_per_class=1, seed=0)
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "CIFAR100_CACHE_DIR": str(data_cache), "KERAS_BACKEND": "jax"}
    env.pop("PYTEST_CURRENT_TEST", None)  # MLflow changes behaviour under pytest
    command = [sys.executable, "bench/gpu_check.py", str(dataset), "--quick"]
    command += ["--backends", "jax", "--out", str(out), "--work", str(work)]
    command += ["--minutes", "30"]  # a budget no loaded CI machine runs out of
    # Its own process group, so a time-out also ends the steps it started.
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=PIPE, stderr=PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=1800)  # as --minutes
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert result.returncode == 0, output(result)[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["results.jsonl", "summary.md"]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    checks = [r.get("check") for r in records]
    assert "failed" not in checks and "stopped" not in checks, records
    (environment,) = [r for r in records if r.get("check") == "environment"]
    assert environment["kind"] == "cpu" and environment["precision"] == "float32"
    (bench,) = [r for r in records if r.get("label") == "throughput jax"]
    assert bench["model"] == "resnet18" and bench["backend"] == "jax"
    assert bench["images_per_second"] > 0 and bench["device_kind"] == "cpu"
    torch_models = [r["model"] for r in records if r.get("check") == "torch_reference"]
    assert torch_models == ["resnet18", "vit"]
    (train,) = [r for r in records if r.get("check") == "train"]
    assert train["status"] == "FINISHED" and train["epochs"] == 1
    assert 0 <= train["test_top1"] <= 100 and train["precision"] == "float32"
    # Results were written in the order they came: environment, speed, reference, training.
    assert checks.index("environment") < checks.index("torch_reference") < checks.index("train")

    summary = (out / "summary.md").read_text()
    assert "| jax | resnet18 | float32 | 32 |" in summary
    assert "## PyTorch eager reference" in summary and "| vit | cpu | float32 | 32 |" in summary
    assert "| jax | cpu ×" in summary and "| FINISHED |" in summary
    assert "[gpu_check]" in result.stdout  # progress goes straight to the terminal
