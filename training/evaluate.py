"""The one evaluation on the test split, from the best checkpoint as saved.

Loading the `.keras` file (in safe mode) rather than reusing the in-memory model checks the
artifact that the run publishes, and evaluates the epoch that validation chose.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from scipy.special import softmax
from sklearn.metrics import classification_report, confusion_matrix

from data.cifar100 import Cifar100, Split


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy fields elementwise is ambiguous
class Predictions:
    """What the model said about each test image, in the test split's stored order.

    Small enough to keep with every run (float16 probabilities: 2 MB for CIFAR-100's test
    split), and all the comparison needs for intervals, paired tests and calibration.
    """

    labels: np.ndarray  # (N,) true fine labels
    predicted: np.ndarray  # (N,) the top-1 class
    top5: np.ndarray  # (N, 5) classes, most probable first
    probabilities: np.ndarray  # (N, classes) softmax, float16
    test_fingerprint: str  # sha256 (16 hex) of the test images and labels: same images?

    def arrays(self) -> dict[str, np.ndarray]:
        """The fields as arrays, for np.savez_compressed."""
        return {
            "labels": self.labels,
            "predicted": self.predicted,
            "top5": self.top5,
            "probabilities": self.probabilities,
            "test_fingerprint": np.array(self.test_fingerprint),
        }


@dataclass(frozen=True)
class Evaluation:
    top1: float  # accuracies in %, as everywhere in the repo
    top5: float
    superclass_top1: dict[str, float]  # fine-label accuracy on each superclass' images
    report: str
    confusion: np.ndarray  # rows: true class, columns: predicted
    predictions: Predictions


def predict_logits(model: keras.Model, split: Split, batch_size: int) -> np.ndarray:
    return np.asarray(model.predict(split.images, batch_size=batch_size, verbose=0))


def split_fingerprint(split: Split) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(split.images).tobytes())
    digest.update(np.ascontiguousarray(split.labels).astype(np.int64).tobytes())
    return digest.hexdigest()[:16]


def predictions_from_logits(logits: np.ndarray, split: Split) -> Predictions:
    classes = logits.shape[1]
    label_dtype = np.uint8 if classes <= 256 else np.int32
    top5 = np.argsort(logits, axis=1)[:, ::-1][:, : min(5, classes)].astype(label_dtype)
    return Predictions(
        labels=split.labels.astype(label_dtype),
        predicted=top5[:, 0],
        top5=top5,
        probabilities=softmax(logits.astype(np.float64), axis=1).astype(np.float16),
        test_fingerprint=split_fingerprint(split),
    )


def evaluate(checkpoint: Path, data: Cifar100, batch_size: int) -> Evaluation:
    model = keras.saving.load_model(checkpoint, compile=False, safe_mode=True)
    logits = predict_logits(model, data.test, batch_size)
    labels = data.test.labels
    predictions = predictions_from_logits(logits, data.test)
    predicted, top5 = predictions.predicted, predictions.top5
    correct = predicted == labels
    classes = np.arange(data.num_classes)
    return Evaluation(
        top1=100 * float(correct.mean()),
        top5=100 * float((top5 == labels[:, None]).any(axis=1).mean()),
        superclass_top1={
            name: 100 * float(correct[data.test.coarse_labels == index].mean())
            for index, name in enumerate(data.superclass_names)
            if (data.test.coarse_labels == index).any()
        },
        report=classification_report(
            labels,
            predicted,
            labels=classes,
            target_names=data.class_names,
            digits=4,
            zero_division=0,
        ),
        confusion=confusion_matrix(labels, predicted, labels=classes),
        predictions=predictions,
    )
