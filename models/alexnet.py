"""AlexNet (Krizhevsky et al., 2012), trained from scratch.

Channel plan of the single-tower version torchvision ships (64, 192, 384, 256, 256 at
width 64); no local response normalization, which later work found unnecessary.

`stem="imagenet"` is the original: an 11x11 stride-4 conv, three overlapping 3x3/2
max-pools and a 6x6x256 flatten at input_size 224 into two 4096-unit dropout FCs.
`stem="cifar"` is the usual 32 px variant: a 3x3 stride-1 first conv and "same" 3x3/2
pools (32 -> 16 -> 8 -> 4), so the classifier sees 4x4 features.
"""

from collections.abc import Mapping

import keras
from keras import layers

from errors import UserError
from models.preprocessing import image_input, preprocess

STEMS = ("cifar", "imagenet")
# The smallest input the imagenet stem's valid convs and pools reduce to 1x1, not 0x0.
MIN_IMAGENET_INPUT = 63
# Channels of conv1..conv5 as multiples of `width`.
CONV_MULTIPLIERS = (1, 3, 6, 4, 4)
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _classifier_init():
    # torchvision's N(0, 0.01) for the FC layers: He-normal FCs on max-pooled features
    # start CIFAR-100 at a loss near 25 (BN-free AlexNet) instead of ln(100) = 4.6.
    return keras.initializers.RandomNormal(stddev=0.01)


def _conv_block(x, filters, kernel_size, strides, padding, batch_norm, name):
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=not batch_norm,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    if batch_norm:
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(
            x
        )
    return layers.ReLU(name=f"{name}_relu")(x)


def min_input_size(stem: str = "cifar", **_) -> int:
    """The smallest model.input_size this network takes (check_config asks before a run)."""
    return MIN_IMAGENET_INPUT if stem == "imagenet" else 1


def build_alexnet(
    *,
    num_classes: int,
    image_size: int,
    augment: Mapping | None,
    stem: str = "cifar",
    input_size: int = 32,
    width: int = 64,
    classifier_width: int = 4096,
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> keras.Model:
    """AlexNet returning float32 logits for uint8 images of `image_size` px.

    `width` is conv1's channel count (conv2..5 scale from it), `classifier_width` the
    units of both hidden FC layers. `batch_norm=True` adds BatchNorm after every conv
    (not in the original; it makes higher learning rates safe).
    """
    if stem not in STEMS:
        raise UserError(
            f"model.stem={stem!r} is not valid for alexnet; use one of: cifar, imagenet"
        )
    if stem == "imagenet" and input_size < MIN_IMAGENET_INPUT:
        raise UserError(
            f"model.input_size={input_size} is too small for alexnet's imagenet stem; "
            f"use at least {MIN_IMAGENET_INPUT} (224 is the original)"
        )

    inputs = image_input(image_size)
    x = preprocess(inputs, input_size=input_size, augment=augment)
    c1, c2, c3, c4, c5 = (width * m for m in CONV_MULTIPLIERS)

    if stem == "imagenet":
        # Padding 2 then a valid 11x11/4 conv: 224 -> 55, as in the original.
        x = layers.ZeroPadding2D(2, name="conv1_pad")(x)
        x = _conv_block(x, c1, 11, 4, "valid", batch_norm, "conv1")
        pool_padding = "valid"  # 55 -> 27 -> 13 -> 6
    else:
        x = _conv_block(x, c1, 3, 1, "same", batch_norm, "conv1")
        pool_padding = "same"  # 32 -> 16 -> 8 -> 4
    x = layers.MaxPooling2D(3, strides=2, padding=pool_padding, name="pool1")(x)
    x = _conv_block(x, c2, 5, 1, "same", batch_norm, "conv2")
    x = layers.MaxPooling2D(3, strides=2, padding=pool_padding, name="pool2")(x)
    x = _conv_block(x, c3, 3, 1, "same", batch_norm, "conv3")
    x = _conv_block(x, c4, 3, 1, "same", batch_norm, "conv4")
    x = _conv_block(x, c5, 3, 1, "same", batch_norm, "conv5")
    x = layers.MaxPooling2D(3, strides=2, padding=pool_padding, name="pool5")(x)

    x = layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
        x = layers.Dense(
            classifier_width,
            activation="relu",
            kernel_initializer=_classifier_init(),
            name=f"fc{i}",
        )(x)
    outputs = layers.Dense(
        num_classes,
        kernel_initializer=_classifier_init(),
        dtype="float32",
        name="logits",
    )(x)
    return keras.Model(inputs, outputs, name="alexnet")
