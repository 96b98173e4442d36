"""Small layers that saved models reference by name, importable without keras-hub."""

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="cifar100")
class ClassToken(layers.Layer):
    """The first token of a (batch, tokens, dim) sequence: ViT's classification feature."""

    def call(self, sequence):
        return sequence[:, 0, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])
