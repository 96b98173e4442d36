"""The one evaluation on the test split, from the best checkpoint as saved.

Loading the `.keras` file (in safe mode) rather than reusing the in-memory model checks the
artifact that the run publishes, and evaluates the epoch that validation chose.
"""

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from data.cifar100 import Cifar100, Split


@dataclass(frozen=True)
class Evaluation:
    top1: float  # accuracies in %, as everywhere in the repo
    top5: float
    superclass_top1: dict[str, float]  # fine-label accuracy on each superclass' images
    report: str
    confusion: np.ndarray  # rows: true class, columns: predicted


def predict_logits(model: keras.Model, split: Split, batch_size: int) -> np.ndarray:
    return np.asarray(model.predict(split.images, batch_size=batch_size, verbose=0))


def evaluate(checkpoint: Path, data: Cifar100, batch_size: int) -> Evaluation:
    model = keras.saving.load_model(checkpoint, compile=False, safe_mode=True)
    logits = predict_logits(model, data.test, batch_size)
    labels = data.test.labels
    top5 = np.argsort(logits, axis=1)[:, -5:]
    predicted = top5[:, -1]
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
    )
