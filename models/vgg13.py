"""VGG-13 (Simonyan & Zisserman, 2014, configuration B), trained from scratch.

Ten 3x3 stride-1 convs in five blocks, each closed by a 2x2 max-pool, then two dropout
FC layers and the logits. Every conv is already 3x3 stride 1, so both stems share the
convolutions and differ in what reaches the classifier: `stem="cifar"` runs at native
32 px, where the five pools end at 1x1 (the common CIFAR VGG, e.g. pytorch-cifar100's
VGG-13-BN); `stem="imagenet"` at input_size 224 flattens the original 7x7 map, so the
first FC has 25088 inputs. `batch_norm=True` (the default) is VGG-13-BN.
"""

from collections.abc import Mapping

import keras
from keras import layers

from errors import UserError
from models.preprocessing import image_input, preprocess

STEMS = ("cifar", "imagenet")
# (convs, channels as a multiple of `width`) per block; 64-64-128-128-256-256-512x4 at 64.
BLOCKS = ((2, 1), (2, 2), (2, 4), (2, 8), (2, 8))
# Five 2x2 pools: a smaller input would pool below 1 px.
MIN_INPUT = 32
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _classifier_init():
    # torchvision's N(0, 0.01) for the FC layers, as in alexnet.py: He-normal FCs on
    # max-pooled features start CIFAR-100 far above a loss of ln(100) = 4.6.
    return keras.initializers.RandomNormal(stddev=0.01)


def min_input_size(**_) -> int:
    """The smallest model.input_size this network takes (check_config asks before a run)."""
    return MIN_INPUT


def build_vgg13(
    *,
    num_classes: int,
    image_size: int,
    augment: Mapping | None,
    stem: str = "cifar",
    input_size: int = 32,
    width: int = 64,
    classifier_width: int = 4096,
    dropout: float = 0.5,
    batch_norm: bool = True,
) -> keras.Model:
    """VGG-13 returning float32 logits for uint8 images of `image_size` px.

    `width` is the first block's channel count (64 in the paper); later blocks use 2, 4
    and 8 times it. `classifier_width` is the units of both hidden FC layers.
    """
    if stem not in STEMS:
        raise UserError(f"model.stem={stem!r} is not valid for vgg13; use one of: cifar, imagenet")
    if input_size < MIN_INPUT:
        raise UserError(f"model.input_size={input_size} is too small for vgg13; use at least 32")

    inputs = image_input(image_size)
    x = preprocess(inputs, input_size=input_size, augment=augment)

    for b, (convs, multiplier) in enumerate(BLOCKS, start=1):
        for c in range(1, convs + 1):
            name = f"block{b}_conv{c}"
            x = layers.Conv2D(
                width * multiplier,
                3,
                padding="same",
                use_bias=not batch_norm,  # BatchNorm's beta is the bias
                kernel_initializer="he_normal",
                name=name,
            )(x)
            if batch_norm:
                x = layers.BatchNormalization(
                    momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn"
                )(x)
            x = layers.ReLU(name=f"{name}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)

    x = layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        x = layers.Dense(
            classifier_width,
            activation="relu",
            kernel_initializer=_classifier_init(),
            name=f"fc{i}",
        )(x)
        x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
    outputs = layers.Dense(
        num_classes,
        kernel_initializer=_classifier_init(),
        dtype="float32",
        name="logits",
    )(x)
    return keras.Model(inputs, outputs, name="vgg13")
