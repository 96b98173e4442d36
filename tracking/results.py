"""What a run records beyond its params and curves: provenance tags and final results."""

import subprocess
import tempfile
from pathlib import Path

import keras
import mlflow
import numpy as np
from omegaconf import DictConfig

from tracking.values import clean, clean_metrics

REPO = Path(__file__).resolve().parent.parent
PREDICTIONS_FILE = "predictions.npz"


def git_commit() -> str:
    """HEAD's hash, marked `-dirty` when the tree has uncommitted changes; `unknown` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def run_tags(cfg: DictConfig, data, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Provenance tags; `extra` carries what the caller found out (device, library versions)."""
    return {
        "strategy": cfg.model.strategy,
        "backend": keras.backend.backend(),
        "precision": cfg.trainer.precision,
        "git_commit": git_commit(),
        "dataset_id": data.dataset_id,
        "dataset_fingerprint": data.fingerprint,
        "version.mlflow": mlflow.__version__,
        **(extra or {}),
    }


def log_model_summary(model: keras.Model) -> None:
    lines = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), expand_nested=False)
    mlflow.log_text("\n".join(lines), "model_summary.txt")
    mlflow.log_metric("param_count", model.count_params())


# The per-superclass test top-1 of a run: one table (the UI shows it under Artifacts and
# in Evaluation), not 20 single-point metrics that crowd the chart view.
SUPERCLASS_TABLE = "superclass_top1.json"


def log_results(fit_result, evaluation, data, model_id=None, test_dataset=None) -> None:
    """Final metrics (in %, linked to the logged model and the test split), the best
    checkpoint, the per-superclass table, the test predictions, and scikit-learn's report and
    confusion matrix."""
    mlflow.log_metrics(
        clean_metrics(
            {
                "best_val_top1": fit_result.best_val_top1,
                "best_epoch": fit_result.best_epoch + 1,  # 1-based, as Keras prints it
                "epochs_run": fit_result.epochs_run,
                "train_seconds": fit_result.train_seconds,
                "train_images_per_second": fit_result.images_per_second,
            }
        ),
        model_id=model_id,
    )
    mlflow.log_metrics(
        clean_metrics({"test_top1": evaluation.top1, "test_top5": evaluation.top5}),
        model_id=model_id,
        dataset=test_dataset,
    )
    superclasses = sorted(evaluation.superclass_top1.items())
    mlflow.log_table(
        {
            "superclass": [name for name, _ in superclasses],
            "test_top1": [clean(value) for _, value in superclasses],
        },
        SUPERCLASS_TABLE,
    )
    mlflow.log_artifact(str(fit_result.best_checkpoint), "checkpoints")
    mlflow.log_text(evaluation.report, "classification_report.txt")
    with tempfile.TemporaryDirectory() as folder:
        # What the comparison's intervals, paired tests and calibration are computed from.
        predictions = Path(folder) / PREDICTIONS_FILE
        np.savez_compressed(predictions, **evaluation.predictions.arrays())
        mlflow.log_artifact(str(predictions))
        csv = Path(folder) / "confusion_matrix.csv"
        header = ",".join(["true\\predicted", *data.class_names])
        rows = [
            ",".join([name, *map(str, row)])
            for name, row in zip(data.class_names, evaluation.confusion, strict=True)
        ]
        csv.write_text("\n".join([header, *rows]) + "\n")
        mlflow.log_artifact(str(csv))
        _plot_confusion(
            evaluation.confusion, data.class_names, Path(folder) / "confusion_matrix.png"
        )
        mlflow.log_artifact(str(Path(folder) / "confusion_matrix.png"))


def _plot_confusion(confusion: np.ndarray, names: list[str], path: Path) -> None:
    # The figure API on the Agg canvas, as in comparison/plots.py: no pyplot backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = Figure(figsize=(16, 16), layout="tight")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ConfusionMatrixDisplay(confusion, display_labels=names).plot(
        ax=ax, include_values=False, xticks_rotation="vertical", colorbar=False
    )
    ax.tick_params(labelsize=5)
    fig.savefig(path, dpi=120)
