"""Weight initialisations the from-scratch models offer.

`he_normal` is Keras' habit for ReLU nets. `torch` is PyTorch's default for conv and
linear layers (kaiming_uniform with a=sqrt(5): weights and biases U(+-1/sqrt(fan_in))),
which the CIFAR recipes the presets cite train with. Behind BatchNorm the scale of a
conv's weights sets its effective learning rate (the step is relative to the weight
norm), so he_normal's sqrt(6)-times larger weights learn several times slower at first.
"""

import math

import keras

from errors import UserError

INITS = ("he_normal", "torch")


def check(init: str, model: str) -> None:
    if init not in INITS:
        raise UserError(
            f"model.init={init!r} is not valid for {model}; use one of: he_normal, torch"
        )


def weights(init: str, fan_in: int, keras_kernel="he_normal") -> dict:
    """kernel_initializer and bias_initializer for a conv or dense layer with `fan_in` inputs.

    Under `he_normal` the kernel gets `keras_kernel` (the model's own choice for that layer,
    he_normal for convs) and the bias zeros, as before this option existed.
    """
    if init == "torch":
        bound = 1 / math.sqrt(fan_in)
        return {
            # Var = scale / fan_in, uniform: limit sqrt(3 * scale / fan_in) = 1 / sqrt(fan_in).
            "kernel_initializer": keras.initializers.VarianceScaling(
                1 / 3, mode="fan_in", distribution="uniform"
            ),
            "bias_initializer": keras.initializers.RandomUniform(-bound, bound),
        }
    return {"kernel_initializer": keras_kernel, "bias_initializer": "zeros"}
