"""Cross-entropy on integer labels with label smoothing.

keras.losses.SparseCategoricalCrossentropy has no label_smoothing, and one-hot labels
would leave the uint8/int data pipeline; this one-hots inside the graph instead.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cifar100")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    def __init__(self, label_smoothing=0.1, name="smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        one_hot = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def classification_loss(label_smoothing: float) -> keras.losses.Loss:
    if label_smoothing:
        return SmoothedSparseCrossentropy(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
