"""Each run's test predictions, read back from its `predictions.npz` artifact.

train.py logs the file (tracking/results.py) from what training/evaluate.py computed: the
true label, the top-1 class, the top-5 classes and the float16 softmax of every test image,
in the test split's stored order, with a fingerprint of the test images.
"""

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from comparison.collect import RunRecord, no_progress_bars

PREDICTIONS_FILE = "predictions.npz"


@dataclass(frozen=True, eq=False)
class Predictions:
    labels: np.ndarray  # (N,)
    predicted: np.ndarray  # (N,)
    top5: np.ndarray  # (N, 5), most probable first
    probabilities: np.ndarray  # (N, classes) float16
    test_fingerprint: str

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    @property
    def confidence(self) -> np.ndarray:
        """The probability the model gave its top-1 class."""
        rows = np.arange(len(self.predicted))
        return self.probabilities[rows, self.predicted].astype(np.float64)


def read_predictions(path: Path) -> Predictions:
    with np.load(path, allow_pickle=False) as arrays:
        return Predictions(
            labels=arrays["labels"].astype(np.int64),
            predicted=arrays["predicted"].astype(np.int64),
            top5=arrays["top5"].astype(np.int64),
            probabilities=arrays["probabilities"],
            test_fingerprint=str(arrays["test_fingerprint"]),
        )


def load_predictions(tracking_uri: str, runs: Iterable[RunRecord]) -> dict[str, Predictions]:
    """run id -> predictions, for the FINISHED runs that logged them (older runs did not)."""
    client = MlflowClient(tracking_uri)
    found = {}
    with tempfile.TemporaryDirectory() as folder, no_progress_bars():
        for run in runs:
            if run.status != "FINISHED":
                continue
            try:
                path = client.download_artifacts(run.run_id, PREDICTIONS_FILE, folder)
            except (MlflowException, OSError):
                continue
            found[run.run_id] = read_predictions(Path(path))
    return found
