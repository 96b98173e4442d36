"""Accuracy in percent: the one unit of every accuracy the repo shows (console, MLflow,
comparison, README). Keras' own metrics give fractions; these scale them where they are made,
so the epoch logs, the checkpoint monitor and the stored curves all agree."""

import keras


@keras.saving.register_keras_serializable(package="cifar100")
class Top1Percent(keras.metrics.SparseCategoricalAccuracy):
    def result(self):
        return super().result() * 100.0


@keras.saving.register_keras_serializable(package="cifar100")
class TopKPercent(keras.metrics.SparseTopKCategoricalAccuracy):
    def result(self):
        return super().result() * 100.0


def accuracy_metrics() -> list[keras.metrics.Metric]:
    """top1 and top5, in %, as compile() takes them."""
    return [Top1Percent(name="top1"), TopKPercent(k=5, name="top5")]
