"""The check to run whenever a GPU is at hand: speed, a PyTorch reference, a real training run.

    python bench/gpu_check.py ../shared/cifar100                    # about 8 minutes
    KERAS_BACKEND=jax python bench/gpu_check.py /data/cifar100 --minutes 8 --out /tmp/check
    python bench/gpu_check.py /data/cifar100 --quick               # the CI test, on a CPU

In order, each step in a subprocess of its own (so one backend's GPU memory is free for the
next), every result appended to `<out>/results.jsonl` as it comes and `<out>/summary.md`
rewritten after it:
1. environment: nvidia-smi, and what each installed Keras backend computes on;
2. throughput: bench/throughput.py's train step for the five architectures (pretrained
   ones with random weights) on JAX, and on TensorFlow where it sees a GPU (its CUDA build
   is installed), at precision=auto, with MFU against the card's bf16 peak;
3. torch_reference: bench/torch_reference.py, PyTorch eager, for ResNet-18 and ViT-B/16 at
   the same batch and precision, where torch sees a GPU; the summary gives the ratio;
4. train: `train.py experiment=resnet18_cifar` on the dataset folder, with as many epochs
   as the time left allows, into its own MLflow store; test top-1 and wall time.

No network: the dataset is a local folder in the Hugging Face parquet layout, the hubs are
set offline. A step that outlives its share of `--minutes` is stopped and the check goes
on. `--wheels DIR` installs, before anything else, those wheels in DIR whose distribution
is not installed yet (into `<work>/site`, no index, no dependencies), for machines where
nothing can be fetched. `--out` gets only results.jsonl and summary.md; the MLflow store,
Hydra folders and installed wheels go under `--work` (default: --out). Output is unbuffered
and goes straight to the terminal.
"""

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("alexnet", "vgg13", "resnet18", "effnetv2", "vit")
QUICK_MODELS = ("resnet18", "vit")
BACKENDS = ("jax", "tensorflow")
NOTHING_TO_RUN_ON = 3  # bench/torch_reference.py --require-cuda without a GPU
# Dense bf16/fp16 tensor-core peaks in TFLOP/s (vendor data sheets), for MFU; the first
# name found in the device name wins, so the longer names come first.
PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,
    "H200": 989.4,
    "GH200": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
}
# Shares of --minutes: what a step may take at most (the training run gets what is left).
THROUGHPUT_SHARE, TORCH_SHARE = 0.45, 0.10
# train.py's fixed costs besides its epochs (imports, decoding, compiling, the test split).
TRAIN_OVERHEAD_SECONDS = 75
TRAIN_IMAGES = 45_000  # CIFAR-100's 50,000 minus the 5,000 validation images
# Keras fit() around the train step: the input pipeline, validation, callbacks.
FIT_OVERHEAD = 1.3

DETECT = """
import json
from training import device as d
x = d.detect()
print("DEVICE " + json.dumps({
    "kind": x.kind, "name": x.name, "count": x.count, "label": x.label,
    "compute_capability": x.compute_capability, "precision": d.auto_precision(x),
    **d.software_versions()}))
"""


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.started = time.monotonic()
        self.deadline = self.started + args.minutes * 60
        self.out: Path = args.out
        self.work: Path = args.work or args.out  # installed wheels, MLflow store, Hydra dirs
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.results = self.out / "results.jsonl"
        self.summary = self.out / "summary.md"
        self.results.write_text("")
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        self.env.pop("KERAS_BACKEND", None)

    # -- records -------------------------------------------------------------------------------

    def record(self, check: str, **fields) -> dict:
        record = {"check": check, "at": datetime.datetime.now(datetime.UTC).isoformat(), **fields}
        with self.results.open("a") as file:
            file.write(json.dumps(record) + "\n")
        print(f"[gpu_check] {json.dumps(record)}", flush=True)
        self.write_summary()
        return record

    def records(self) -> list[dict]:
        lines = self.results.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, share: float) -> float:
        """A step's time: its share of the budget; in --quick, all that is left."""
        return self.left() if self.args.quick else min(self.args.minutes * 60 * share, self.left())

    # -- subprocesses --------------------------------------------------------------------------

    def run(self, step: str, command: list[str], timeout: float, backend: str | None = None):
        """Runs a step with its output straight on the terminal; its exit code, None if stopped.

        Exit code 3 means the step found nothing to run on (recorded as skipped)."""
        env = dict(self.env)
        if backend:
            env["KERAS_BACKEND"] = backend
        print(f"[gpu_check] {step}: {' '.join(command)}", flush=True)
        started = time.monotonic()
        try:
            code = subprocess.run(command, cwd=REPO, env=env, timeout=max(timeout, 1)).returncode
        except subprocess.TimeoutExpired:
            self.record("stopped", step=step, after_seconds=round(time.monotonic() - started))
            return None
        if code == NOTHING_TO_RUN_ON:
            self.record("skipped", step=step, why="no GPU for it")
        elif code != 0:
            self.record("failed", step=step, returncode=code)
        return code

    def detect(self, backend: str) -> dict | None:
        try:
            result = subprocess.run(
                [sys.executable, "-c", DETECT],
                cwd=REPO,
                env={**self.env, "KERAS_BACKEND": backend},
                capture_output=True,
                text=True,
                timeout=min(300, max(self.left(), 1)),
            )
        except subprocess.TimeoutExpired:
            self.record("environment", backend=backend, available=False, error="timed out")
            return None
        found = [line for line in result.stdout.splitlines() if line.startswith("DEVICE ")]
        if result.returncode or not found:
            error = (result.stderr.strip().splitlines() or ["no output"])[-1]
            self.record("environment", backend=backend, available=False, error=error)
            return None
        device = json.loads(found[0].removeprefix("DEVICE "))
        self.record("environment", backend=backend, available=True, **device)
        return device

    # -- steps ---------------------------------------------------------------------------------

    def install_wheels(self, folder: Path) -> None:
        missing = []
        for wheel in sorted(folder.glob("*.whl")):
            name = wheel.name.split("-")[0]
            try:
                importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(wheel)
        site = self.work / "site"
        if missing:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                 "--no-compile", "--target", str(site), *map(str, missing)],
                check=True,
            )  # fmt: skip
            path = os.pathsep.join(p for p in (str(site), self.env.get("PYTHONPATH")) if p)
            self.env["PYTHONPATH"] = path
            sys.path.insert(0, str(site))
        installed = [w.name.split("-")[0] for w in missing]
        self.record("wheels", folder=str(folder), installed=installed)

    def environment(self) -> dict[str, dict]:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"],
            capture_output=True,
            text=True,
        ) if _on_path("nvidia-smi") else None  # fmt: skip
        self.record("nvidia-smi", output=smi.stdout.strip() if smi else None)
        devices = {}
        for backend in self.args.backends:
            if importlib.util.find_spec(backend) is None:
                self.record("environment", backend=backend, available=False, error="not installed")
                continue
            device = self.detect(backend)
            if device is not None:
                devices[backend] = device
        return devices

    def throughput(self, devices: dict[str, dict], precision: str, peak: float | None) -> None:
        benched = [b for b in self.args.backends if b in devices]
        # The first backend always runs (on a CPU too, for --quick); the others only on a GPU.
        benched = benched[:1] + [b for b in benched[1:] if devices[b]["kind"] != "cpu"]
        for backend in self.args.backends:
            if backend in devices and backend not in benched:
                self.record("skipped", step=f"throughput {backend}", why="sees no GPU")
        budget = self.args.minutes * 60 * THROUGHPUT_SHARE
        for index, backend in enumerate(benched):
            command = [
                sys.executable,
                "-u",
                "bench/throughput.py",
                "-m",
                f"model={'resnet18' if self.args.quick else ','.join(MODELS)}",
                "model.pretrained=false",
                f"trainer.precision={precision}",
                "bench.measure=[train]",
                f"bench.out={self.results}",
                f"bench.label=throughput {backend}",
                f"bench.peak_tflops={'null' if peak is None else peak}",
                f"hydra.sweep.dir={self.work / 'throughput' / backend}",
            ]
            if self.args.quick:
                command += ["experiment=smoke", "bench.steps=2", "bench.warmup=1"]
            share = (budget - (time.monotonic() - self.started)) / (len(benched) - index)
            timeout = self.left() if self.args.quick else min(share, self.left())
            self.run(f"throughput {backend}", command, timeout, backend)
            self.write_summary()

    def torch_reference(self, precision: str) -> None:
        if importlib.util.find_spec("torch") is None:
            self.record("skipped", step="torch_reference", why="torch is not installed")
            return
        command = [sys.executable, "-u", "bench/torch_reference.py", *QUICK_MODELS]
        command += [f"--precision={precision}", f"--out={self.results}"]
        if self.args.quick:  # the tiny sizes, on whatever torch finds
            command += ["--batch-size=32", "--steps=2", "--warmup=1", "--image-size=32"]
            command += ["--width=8", "--patch-size=8", "--num-layers=2", "--num-heads=2"]
            command += ["--hidden-dim=32", "--mlp-dim=64"]
        else:
            command += ["--require-cuda"]
        self.run("torch_reference", command, self.timeout(TORCH_SHARE))
        self.write_summary()

    def epochs_that_fit(self, backend: str) -> int:
        rates = [
            r["images_per_second"]
            for r in self.records()
            if r.get("label") == f"throughput {backend}" and r.get("model") == "resnet18"
        ]
        if self.args.quick or not rates:
            return 1
        epoch_seconds = TRAIN_IMAGES / rates[0] * FIT_OVERHEAD
        return max(1, min(200, int((self.left() - TRAIN_OVERHEAD_SECONDS) / epoch_seconds)))

    def train(self, backend: str, precision: str) -> bool:
        epochs = self.epochs_that_fit(backend)
        store = self.work / "mlruns"
        command = [
            sys.executable,
            "-u",
            "train.py",
            "experiment=resnet18_cifar",
            f"data.path={self.args.data.resolve()}",
            f"trainer.epochs={epochs}",
            f"trainer.precision={precision}",
            f"tracking.root={store}",
            f"hydra.run.dir={self.work / 'train'}",
            "resume=false",
        ]
        if self.args.quick:
            command += ["model.size=tiny", "trainer.batch_size=32", "data.val_size=100"]
        self.record("train_started", backend=backend, epochs=epochs, seconds_left=int(self.left()))
        started = time.monotonic()
        code = self.run("train", command, max(self.left(), 60), backend)
        wall = round(time.monotonic() - started, 1)
        result = _result(store)
        self.record("train", backend=backend, epochs=epochs, wall_seconds=wall, **result)
        return code == 0

    # -- the summary ---------------------------------------------------------------------------

    def write_summary(self) -> None:
        self.summary.write_text(summary(self.records(), self.args))


def _on_path(program: str) -> bool:
    return any((Path(p) / program).is_file() for p in os.environ.get("PATH", "").split(os.pathsep))


def _result(store: Path) -> dict:
    """The training run's final metrics and tags, read back from its MLflow store."""
    if not (store / "mlflow.db").is_file():
        return {"status": "no store"}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("cifar100")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    if not runs:
        return {"status": "no run"}
    run = runs[0]
    metrics = run.data.metrics
    return {
        "status": run.info.status,
        "run_id": run.info.run_id,
        "device": run.data.tags.get("device"),
        "precision": run.data.tags.get("precision"),
        **{
            key: metrics.get(key)
            for key in ("test_top1", "test_top5", "best_val_top1", "epochs_run", "train_seconds")
        },
        "images_per_second": metrics.get("train_images_per_second"),
    }


def peak_tflops(device_name: str, precision: str) -> float | None:
    if precision not in ("mixed_bfloat16", "mixed_float16", "bfloat16"):
        return None
    for name, peak in PEAK_TFLOPS.items():
        if name in device_name:
            return peak
    return None


def _num(value, digits: int = 0) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def summary(records: list[dict], args: argparse.Namespace) -> str:
    """The Markdown summary of what has been measured so far."""
    lines = [f"# GPU check{' (--quick)' if args.quick else ''}", ""]
    lines += [f"Dataset `{args.data}`, budget {args.minutes} min. Results: `results.jsonl`.", ""]
    for r in records:
        if r.get("check") == "nvidia-smi":
            lines += ["nvidia-smi: " + (r["output"] or "not found").replace("\n", "; "), ""]
        if r.get("check") == "environment":
            seen = r.get("label") if r.get("available") else f"unavailable ({r.get('error')})"
            lines.append(f"- {r['backend']}: {seen}")
    bench = [r for r in records if str(r.get("label", "")).startswith("throughput ")]
    if bench:
        lines += ["", "## Train-step throughput (synthetic data, bench/throughput.py)", ""]
        lines += ["| backend | model | precision | batch | XLA | images/s | step ms | MFU |"]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for r in bench:
            mfu = "" if r.get("mfu") is None else f"{100 * r['mfu']:.1f} %"
            lines.append(
                f"| {r['backend']} | {r['model']} | {r['precision']} | {r['batch_size']} | "
                f"{r['jit_compile']} | {_num(r['images_per_second'])} | "
                f"{_num(r['step_ms_mean'], 1)} | {mfu} |"
            )
    torch_runs = [r for r in records if r.get("check") == "torch_reference"]
    if torch_runs:
        lines += ["", "## PyTorch eager reference (same batch and precision, no augmentation)"]
        lines += [
            "",
            "| model | device | precision | batch | images/s | Keras images/s | Keras/torch |",
        ]
        lines += ["|---|---|---|---|---|---|---|"]
        for r in torch_runs:
            keras_rate = next(
                (b["images_per_second"] for b in bench if b["model"] == r["model"]), None
            )
            ratio = "" if keras_rate is None else f"{keras_rate / r['images_per_second']:.2f}"
            lines.append(
                f"| {r['model']} | {r['device']} | {r['precision']} | {r['batch_size']} | "
                f"{_num(r['images_per_second'])} | {_num(keras_rate)} | {ratio} |"
            )
    for r in records:
        if r.get("check") == "train":
            top1 = r.get("test_top1")
            lines += ["", "## Training: experiment=resnet18_cifar on the dataset folder", ""]
            lines += [
                "| backend | device | epochs | test top-1 (%) | train s | wall s | images/s "
                "| status |"
            ]
            lines += ["|---|---|---|---|---|---|---|---|"]
            lines.append(
                f"| {r['backend']} | {r.get('device') or ''} | {r['epochs']} | "
                f"{'' if top1 is None else f'{top1:.2f}'} | {_num(r.get('train_seconds'))} | "
                f"{_num(r['wall_seconds'])} | {_num(r.get('images_per_second'))} | "
                f"{r.get('status')} |"
            )
    problems = [r for r in records if r.get("check") in ("failed", "stopped", "skipped")]
    if problems:
        lines += ["", "## Failed, stopped or skipped", ""]
        lines += [
            f"- {r['step']}: {r['check']}"
            + (f" ({r['why']})" if "why" in r else "")
            + (f", exit {r['returncode']}" if "returncode" in r else "")
            + (f" after {r['after_seconds']} s" if "after_seconds" in r else "")
            for r in problems
        ]
    return "\n".join(lines) + "\n"


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="CIFAR-100 in the Hugging Face parquet layout")
    parser.add_argument("--out", type=Path, default=None, help="default outputs/gpu_check/<time>")
    parser.add_argument(
        "--work", type=Path, default=None, help="for the bulky rest (store, wheels); default --out"
    )
    parser.add_argument("--minutes", type=float, default=8.0, help="the whole check's budget")
    parser.add_argument("--quick", action="store_true", help="tiny models, 1 epoch: for CI")
    parser.add_argument("--backends", default="jax,tensorflow", help="Keras backends, in order")
    parser.add_argument("--peak-tflops", type=float, default=None, help="else from the name")
    parser.add_argument("--wheels", type=Path, default=None, help="install missing wheels")
    args = parser.parse_args(argv)
    if not (args.data / "README.md").is_file() and not list(args.data.glob("*.parquet")):
        parser.error(f"{args.data}: no CIFAR-100 parquet files there; give the dataset folder")
    args.backends = [b for b in re.split(r"[,\s]+", args.backends) if b]
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        parser.error(f"--backends {','.join(sorted(unknown))}: choose from {','.join(BACKENDS)}")
    if args.out is None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        args.out = REPO / "outputs" / "gpu_check" / stamp
    return args


def main(argv=None) -> int:
    args = parse(argv)
    check = Check(args)
    if args.wheels is not None:
        check.install_wheels(args.wheels)
    devices = check.environment()
    first = next((b for b in args.backends if b in devices), None)
    if first is None:
        check.record("failed", step="environment", returncode=1)
        print("[gpu_check] no Keras backend could start: see results.jsonl", file=sys.stderr)
        return 1
    precision = devices[first]["precision"]
    peak = args.peak_tflops or peak_tflops(devices[first]["name"], precision)
    check.throughput(devices, precision, peak)
    check.torch_reference(precision)
    check.train(first, precision)
    print(f"[gpu_check] done in {time.monotonic() - check.started:.0f} s: {check.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
