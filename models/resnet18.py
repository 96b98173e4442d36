"""ResNet-18 (He et al., 2015), trained from scratch.

`stem="cifar"` is the common CIFAR adaptation: a 3x3 stride-1 first conv and no max-pool,
so the four stages see 32, 16, 8 and 4 px. `stem="imagenet"` is the original 7x7/2 conv
and 3x3/2 max-pool, meant for input_size 224 (the in-graph resize takes 32 px there).
"""

from collections.abc import Mapping

import keras
from keras import layers

from errors import UserError
from models.preprocessing import image_input, preprocess

STEMS = ("cifar", "imagenet")
# BasicBlocks per stage; stage i has width * 2**i channels.
BLOCKS_PER_STAGE = (2, 2, 2, 2)
# Keras' BatchNormalization momentum is the PyTorch 0.1 of the reference recipes.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _conv(filters, kernel_size, strides, name):
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,  # the BatchNorm that follows has the bias
        kernel_initializer="he_normal",
        name=name,
    )


def _bn(name):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _basic_block(x, filters, strides, name):
    shortcut = x
    x = _conv(filters, 3, strides, f"{name}_conv1")(x)
    x = _bn(f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = _conv(filters, 3, 1, f"{name}_conv2")(x)
    x = _bn(f"{name}_bn2")(x)
    if strides != 1 or shortcut.shape[-1] != filters:
        # Projection shortcut (option B): the identity cannot change shape.
        shortcut = _conv(filters, 1, strides, f"{name}_proj_conv")(shortcut)
        shortcut = _bn(f"{name}_proj_bn")(shortcut)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


def min_input_size(**_) -> int:
    """The smallest model.input_size this network takes (check_config asks before a run):
    'same' padding keeps every stride at 1 px or more."""
    return 1


def build_resnet18(
    *,
    num_classes: int,
    image_size: int,
    augment: Mapping | None,
    stem: str = "cifar",
    input_size: int = 32,
    width: int = 64,
) -> keras.Model:
    """ResNet-18 returning float32 logits for uint8 images of `image_size` px.

    `width` is the first stage's channel count (64 in the paper); the stages use
    width, 2*width, 4*width and 8*width.
    """
    if stem not in STEMS:
        raise UserError(
            f"model.stem={stem!r} is not valid for resnet18; use one of: cifar, imagenet"
        )

    inputs = image_input(image_size)
    x = preprocess(inputs, input_size=input_size, augment=augment)

    if stem == "cifar":
        x = _conv(width, 3, 1, "stem_conv")(x)
        x = _bn("stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
    else:
        x = _conv(width, 7, 2, "stem_conv")(x)
        x = _bn("stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)

    for stage, blocks in enumerate(BLOCKS_PER_STAGE):
        filters = width * 2**stage
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, strides, name=f"stage{stage + 1}_block{block + 1}")

    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet18")
