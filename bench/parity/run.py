"""Train the repo's Keras recipe and its PyTorch reference on the same split; compare curves.

    python -m bench.parity.run --out parity/resnet18 --seeds 0 1 -- \
        experiment=resnet18_cifar model.size=tiny trainer.epochs=15 \
        trainer.precision=float32 data.path=../shared/cifar100

Everything after `--` is a Hydra override for train.py; the PyTorch side reads the same
composed config (model, width, lr, momentum, schedule, epochs, batch, label smoothing,
augmentation) and the same data split. Its weight decay is the recipe's coupled PyTorch
value (`--torch-weight-decay`, 5e-4), since the Keras config may state it in another form.
`--train-images N` trains both on a class-balanced subset of the first N training images
(and `--test-images` of the test set), written once as a parquet copy under --out.

Per seed, OUT/keras-seed{S}.json and OUT/torch-seed{S}.json hold the per-epoch curves;
OUT/curves.csv, OUT/summary.json and OUT/curves.png the comparison (mean over seeds).
`--frameworks torch` (or keras) runs one side, e.g. in two processes; `--frameworks none`
only rebuilds the comparison from the JSON files already in OUT.
"""

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("keras", "torch")
BACKEND_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}


def absolute_data_path(override: str) -> str:
    """A data.path override made absolute: train.py runs from the repo root, not the caller's
    directory."""
    key, _, value = override.partition("=")
    if key == "data.path" and value and value != "null":
        return f"{key}={Path(value).expanduser().resolve()}"
    return override


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def write_subset(source: Path, folder: Path, train_images: int, test_images: int | None) -> Path:
    """A class-balanced parquet copy of the first images of each class, in the hub layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for split, wanted in (("train", train_images), ("test", test_images)):
        files = sorted(source.glob(f"{split}-*.parquet"))
        if not files:
            sys.exit(f"--data-path={source}: no {split}-*.parquet files; point it at CIFAR-100")
        table = pa.concat_tables([pq.read_table(f) for f in files])
        if wanted:
            labels = np.asarray(table.column("fine_label").to_numpy())
            classes = int(labels.max()) + 1
            per_class = -(-wanted // classes)
            keep = np.sort(
                np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(classes)])
            )
            table = table.take(pa.array(keep))
        pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")
    (folder / "done").write_text("")
    return folder


def _run_child(command: list[str], env: dict, log) -> int:
    """Runs train.py to the end; if this harness is stopped (Ctrl-C, SIGTERM), stops it too,
    which train.py takes as an interruption, instead of leaving it training alone."""
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        child.wait()
        raise


def run_keras(overrides: list[str], seed: int, out: Path) -> dict:
    """train.py in a subprocess with its own MLflow store; the curves read back from it."""
    import mlflow

    from tracking.values import curve_key

    root = out / f"keras-seed{seed}"
    log_file = out / f"keras-seed{seed}.log"
    command = [
        sys.executable,
        "train.py",
        *overrides,
        f"seed={seed}",
        "resume=false",
        f"tracking.root={root}",
        f"hydra.run.dir={root}/outputs",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    print("keras:", " ".join(command[1:]), f"> {log_file}", flush=True)
    with open(log_file, "w") as log:
        returncode = _run_child(command, env, log)
    if returncode:
        sys.exit(f"train.py failed (exit {returncode}); see {log_file}")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("cifar100")
    (run,) = client.search_runs([experiment.experiment_id])
    # The store counts epochs from 1 and holds accuracies in %; the comparison uses fractions.
    curves: dict[int, dict] = {}
    for key in ("loss", "top1", "val_top1", "val_loss", "epoch_seconds"):
        scale = 0.01 if key.endswith("top1") else 1.0
        for metric in client.get_metric_history(run.info.run_id, curve_key(key)):
            curves.setdefault(metric.step, {"epoch": metric.step})[key] = metric.value * scale
    return {
        "epochs": [curves[e] for e in sorted(curves)],
        "test_top1": run.data.metrics["test_top1"] / 100,
        "command": " ".join(command[1:]),
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
    }


def recipe_from_config(cfg, weight_decay: float, init: str = "torch"):
    """The PyTorch recipe of a composed train.py config. `weight_decay` is PyTorch's coupled
    value, which the config may state in another form."""
    from bench.parity.torch_recipe import Recipe

    model = cfg.model
    size = model.sizes[model.size]
    kwargs = {"width": size.width}
    if model.name in ("vgg13", "alexnet"):
        kwargs |= {
            "classifier_width": size.classifier_width,
            "dropout": model.dropout,
            "batch_norm": model.batch_norm,
        }
    return Recipe(
        model=model.name,
        model_kwargs=kwargs,
        epochs=cfg.trainer.epochs,
        batch_size=cfg.trainer.batch_size,
        lr=cfg.optimizer.lr,
        momentum=cfg.optimizer.momentum,
        nesterov=cfg.optimizer.nesterov,
        weight_decay=weight_decay,
        warmup_epochs=cfg.schedule.warmup_epochs,
        warmup_start=cfg.schedule.warmup_start,
        final_scale=cfg.schedule.final_scale,
        label_smoothing=cfg.trainer.label_smoothing,
        crop_padding=cfg.data.augment.crop_padding,
        flip=cfg.data.augment.flip,
        init=init,
    )


def run_torch(cfg, overrides: list[str], seed: int, args) -> dict:
    import torch

    from bench.parity.torch_recipe import train
    from data.cifar100 import load_cifar100

    torch.set_num_threads(args.threads or os.cpu_count())
    recipe = recipe_from_config(cfg, args.torch_weight_decay, args.torch_init)
    data = load_cifar100(cfg.data, seed=seed)
    print(f"torch: {recipe} seed={seed}", flush=True)
    result = train(recipe, data, seed, log=lambda line: print(line, flush=True))
    result["recipe"] = recipe.__dict__
    result["command"] = " ".join(overrides) + f" seed={seed}"
    return result


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def compare(out: Path, gap_from: int) -> dict:
    """Mean curves over the seeds both frameworks finished, written as CSV, JSON and PNG."""
    results = {f: {} for f in FRAMEWORKS}
    for framework in FRAMEWORKS:
        for file in sorted(out.glob(f"{framework}-seed*.json")):
            results[framework][int(file.stem.split("seed")[1])] = json.loads(file.read_text())
    seeds = sorted(set(results["keras"]) & set(results["torch"]))
    if not seeds:
        print(f"no seed finished by both frameworks in {out} yet")
        return {}
    epochs = min(len(results[f][s]["epochs"]) for f in FRAMEWORKS for s in seeds)
    rows = []
    for e in range(epochs):
        row = {"epoch": e + 1}
        for framework in FRAMEWORKS:
            for key in ("val_top1", "test_top1", "loss"):
                row[f"{framework}_{key}"] = _mean(
                    [results[framework][s]["epochs"][e].get(key) for s in seeds]
                )
        rows.append(row)
    with open(out / "curves.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    late = [r for r in rows if r["epoch"] >= gap_from]
    summary = {
        "seeds": seeds,
        "epochs": epochs,
        "keras_test_top1": {s: results["keras"][s]["test_top1"] for s in seeds},
        "torch_test_top1": {s: results["torch"][s]["test_top1"] for s in seeds},
        "torch_test_top1_at_best_val": {
            s: results["torch"][s]["test_top1_at_best_val"] for s in seeds
        },
        f"val_gap_from_epoch_{gap_from}": _mean(
            [r["keras_val_top1"] - r["torch_val_top1"] for r in late]
        ),
        "curves": rows,
    }
    gaps = [summary["keras_test_top1"][s] - summary["torch_test_top1"][s] for s in seeds]
    summary["final_test_gap"] = _mean(gaps)
    summary["final_test_gap_per_seed"] = dict(zip(seeds, gaps, strict=True))
    # The seed-to-seed spread of the gap: the noise two frameworks' runs differ by anyway.
    summary["final_test_gap_standard_error"] = (
        float(np.std(gaps, ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else None
    )
    # Runs from before the field was recorded ran on TensorFlow, the default.
    backends = sorted({results["keras"][s].get("backend", "tensorflow") for s in seeds})
    summary["keras_backends"] = backends
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    shown = ", ".join(BACKEND_NAMES.get(b, b) for b in backends)
    print(
        f"\nseeds {seeds}, Keras on {shown}: top-1 in %, mean over seeds "
        "(val: the same held-out images)"
    )
    print(f"{'epoch':>5} {'keras val':>10} {'torch val':>10} {'torch test':>10} {'diff val':>9}")
    for r in rows:
        diff = r["keras_val_top1"] - r["torch_val_top1"]
        print(
            f"{r['epoch']:>5} {100 * r['keras_val_top1']:>10.2f} {100 * r['torch_val_top1']:>10.2f}"
            f" {100 * r['torch_test_top1']:>10.2f} {100 * diff:>+9.2f}"
        )
    for s in seeds:
        print(
            f"seed {s}: final test top-1 keras {100 * summary['keras_test_top1'][s]:.2f} "
            f"(best val), torch {100 * summary['torch_test_top1'][s]:.2f} (last epoch), "
            f"{100 * summary['torch_test_top1_at_best_val'][s]:.2f} (best val)"
        )
    spread = summary["final_test_gap_standard_error"]
    print(
        f"final test gap (keras - torch) {100 * summary['final_test_gap']:+.2f} points"
        + (f", standard error over seeds {100 * spread:.2f}" if spread is not None else "")
    )
    if late:
        gap = summary[f"val_gap_from_epoch_{gap_from}"]
        print(f"val gap (keras - torch) over epochs {gap_from}-{epochs} {100 * gap:+.2f} points")
    _plot(rows, seeds, shown, out / "curves.png")
    return summary


def _plot(rows: list[dict], seeds: list[int], backend: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    figure, axis = plt.subplots(figsize=(6, 4))
    for key, label, style in (
        ("keras_val_top1", f"this repo (Keras on {backend}), val", "-o"),
        ("torch_val_top1", "PyTorch reference, val", "-s"),
        ("torch_test_top1", "PyTorch reference, test", ":"),
    ):
        axis.plot(epochs, [100 * r[key] for r in rows], style, label=label, markersize=4)
    axis.set_xlabel("epoch")
    axis.set_ylabel("top-1 (%)")
    axis.set_title(f"CPU-scale parity check, mean of seeds {', '.join(map(str, seeds))}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--frameworks", default="keras,torch", help="keras,torch | keras | torch | none"
    )
    parser.add_argument("--train-images", type=int, help="a class-balanced training subset")
    parser.add_argument("--test-images", type=int, help="a class-balanced test subset")
    parser.add_argument("--torch-weight-decay", type=float, default=5e-4)
    parser.add_argument("--torch-init", default="torch", help="torch | he_normal")
    parser.add_argument("--threads", type=int, help="PyTorch threads (default: all cores)")
    parser.add_argument("--gap-from", type=int, default=5, help="first epoch of the mean gap")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for train.py")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so a running train.py child is stopped with the harness.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = [absolute_data_path(o) for o in args.overrides]
    if args.train_images:
        source = compose(overrides).data.path
        if not source:
            sys.exit("--train-images needs data.path=<a CIFAR-100 parquet folder>")
        subset = write_subset(
            Path(source),
            out / f"data-{args.train_images}-{args.test_images}",
            args.train_images,
            args.test_images,
        )
        overrides = [o for o in overrides if o.partition("=")[0] != "data.path"]
        overrides.append(f"data.path={subset}")

    frameworks = [f for f in args.frameworks.split(",") if f in FRAMEWORKS]
    for seed in args.seeds:
        if "keras" in frameworks:
            result = run_keras(overrides, seed, out)
            (out / f"keras-seed{seed}.json").write_text(json.dumps(result, indent=2))
        if "torch" in frameworks:
            cfg = compose([*overrides, f"seed={seed}"])
            result = run_torch(cfg, overrides, seed, args)
            (out / f"torch-seed{seed}.json").write_text(json.dumps(result, indent=2))
    compare(out, args.gap_from)


if __name__ == "__main__":
    main()
