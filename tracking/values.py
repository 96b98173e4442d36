"""Metric values as the MLflow UI shows them: Python floats without float32 noise."""

from collections.abc import Mapping

# Six significant digits: 0.10000000149 (float32 0.1) reads 0.1, 43.2099991 reads 43.21,
# and nothing a comparison needs is lost (a test top-1 on 10 000 images steps by 0.01 %).
SIGNIFICANT_DIGITS = 6


def clean(value) -> float:
    return float(f"{float(value):.{SIGNIFICANT_DIGITS}g}")


def clean_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    return {key: clean(value) for key, value in metrics.items()}


# Per-epoch values go under a prefix, one per kind: the MLflow UI makes a chart section of each
# prefix, sorted by name, and shows them before its "Model metrics" section of single values
# (test top-1 and the like), so the chart view opens on the accuracy curves.
CURVE_SECTIONS = {
    "loss": "loss",
    "val_loss": "loss",
    "lr": "schedule",
    "epoch_seconds": "speed",
    "images_per_second": "speed",
    "train_eval_seconds": "speed",
    "train_eval_images": "speed",  # the size of the pass train_eval_seconds times
}


def curve_key(name: str) -> str:
    """The store's name of a per-epoch value: `val_top1` -> `accuracy/val_top1`."""
    return f"{CURVE_SECTIONS.get(name, 'accuracy')}/{name}"


def stored_curve_keys(name: str) -> tuple[str, str]:
    """Where a per-epoch value may be in the store, in the order to look: under its section,
    then under the bare name that runs logged before the sections used."""
    return curve_key(name), name


def latest_curve_value(metrics: Mapping[str, float], name: str) -> float | None:
    """A run's last value of a per-epoch metric, from either of its stored keys."""
    return next((metrics[key] for key in stored_curve_keys(name) if key in metrics), None)


def clean_curves(logs: Mapping[str, object]) -> dict[str, float]:
    return {curve_key(key): value for key, value in clean_metrics(logs).items()}
