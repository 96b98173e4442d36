"""The best checkpoint as an MLflow logged model: the Models tab, and the Model Registry
with `tracking.register=true`."""

import importlib.metadata
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

REPO = Path(__file__).resolve().parent.parent
BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def _requirements() -> list[str]:
    """Pinned from this environment: inferring them would load the model once more."""
    names = ["mlflow", "keras", "keras-hub", "numpy", BACKEND_PACKAGES[keras.backend.backend()]]
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def log_best_model(checkpoint: Path, data, name: str, register: bool) -> str:
    """Logs `checkpoint` as the run's model named `name`; returns its model id."""
    size = data.image_size
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, data.num_classes))]),
    )
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(REPO / "tracking" / "keras_pyfunc.py"),
        artifacts={"checkpoint": str(checkpoint)},
        code_paths=[str(REPO / "models")],
        signature=signature,
        input_example=data.test.images[:2],
        pip_requirements=_requirements(),
        registered_model_name=name if register else None,
        tags={"architecture": name, "dataset_fingerprint": data.fingerprint},
    )
    return info.model_id
