"""EfficientNetV2 (Tan & Le, 2021) from keras.applications, with a new classification head.

The backbone is `keras.applications.EfficientNetV2<variant>` without its top, average
pooled, as a nested layer named "backbone"; a Dropout and the "logits" Dense follow.
keras.applications rescales 0-255 inputs itself, so `preprocess` only augments and
resizes. Both strategies return the backbone frozen (`trainable=False`, which also puts
its BatchNorm layers in inference mode) and called with training=False; for `finetune`,
training/fit.py unfreezes it after `model.head_epochs`. Keras 3's Functional lets the training
flag of `fit` override a nested call's training=False (keras-team/keras#20285), so after
the unfreeze it is the BatchNorm layers' own trainable=False that keeps them in
inference mode.
"""

import os
import warnings
from collections.abc import Mapping

import keras
from keras import layers

from errors import UserError, one_line
from models.preprocessing import image_input, preprocess

VARIANTS = {
    "B0": keras.applications.EfficientNetV2B0,
    "B1": keras.applications.EfficientNetV2B1,
    "B2": keras.applications.EfficientNetV2B2,
    "B3": keras.applications.EfficientNetV2B3,
    "S": keras.applications.EfficientNetV2S,
    "M": keras.applications.EfficientNetV2M,
    "L": keras.applications.EfficientNetV2L,
}
STRATEGIES = ("freeze", "finetune")


def _backbone_weights(pretrained: bool, weights: str | None) -> str | None:
    """What keras.applications' `weights` gets: None, "imagenet" or a local file."""
    if not pretrained:
        return None
    if weights in (None, "", "imagenet"):
        return "imagenet"
    path = os.path.expanduser(str(weights))
    if not os.path.isfile(path):
        raise UserError(
            f"model.weights={weights!r}: no such file; give a weights file of the same "
            "variant (include_top=False), or model.weights=imagenet"
        )
    return path


def _is_download_failure(error: Exception) -> bool:
    # keras.utils.get_file turns HTTP and URL errors into a bare Exception with this text.
    return isinstance(error, OSError) or "URL fetch failure" in str(error)


# keras.applications' EfficientNetV2 refuses a smaller input_shape without its top.
MIN_INPUT = 32


def min_input_size(**_) -> int:
    """The smallest model.input_size this network takes (check_config asks before a run)."""
    return MIN_INPUT


def build_effnetv2(
    *,
    num_classes: int,
    image_size: int,
    augment: Mapping | None,
    variant: str = "S",
    input_size: int = 224,
    pretrained: bool = True,
    weights: str | None = "imagenet",
    strategy: str = "freeze",
    dropout: float = 0.2,
) -> keras.Model:
    """EfficientNetV2-<variant> with a `num_classes` head returning float32 logits.

    `pretrained=True` loads `weights`: "imagenet" downloads the keras.applications
    notop checkpoint; a path loads a local `.weights.h5` / `.h5` / `.keras` file saved
    from the same variant built with include_top=False. `pretrained=False` is random init.
    """
    variant_key = str(variant).upper()
    if variant_key not in VARIANTS:
        raise UserError(
            f"model.variant={variant!r} is not an EfficientNetV2 variant; "
            f"use one of: {', '.join(VARIANTS)}"
        )
    if strategy not in STRATEGIES:
        raise UserError(
            f"model.strategy={strategy!r} is not valid for effnetv2; "
            f"use one of: {', '.join(STRATEGIES)}"
        )
    source = _backbone_weights(pretrained, weights)

    inputs = image_input(image_size)
    x = preprocess(inputs, input_size=input_size, augment=augment, mean=None, std=None)

    application = VARIANTS[variant_key]
    try:
        with warnings.catch_warnings():
            # A `.weights.h5` saved with another `pooling` also indexes the functional
            # graph's depths differently; Keras warns about that mirror while the `layers`
            # collection, which holds every variable, loads (a real mismatch raises).
            warnings.filterwarnings("ignore", message="Skipping nested container")
            backbone = application(
                include_top=False,
                weights=source,
                input_shape=(input_size, input_size, 3),
                pooling="avg",
                include_preprocessing=True,
            )
    except Exception as error:
        reason = one_line(error)
        if source == "imagenet" and _is_download_failure(error):
            raise UserError(
                f"could not download the ImageNet weights of EfficientNetV2-{variant_key} "
                f"({reason}); set model.pretrained=false, or download the file elsewhere "
                "and set model.weights=<local file>"
            ) from error
        if source not in (None, "imagenet") and isinstance(error, ValueError | OSError):
            raise UserError(
                f"model.weights={weights!r} does not load into EfficientNetV2-{variant_key} "
                f"without its top ({reason}); save it from the same variant with "
                "include_top=False"
            ) from error
        raise
    # Renamed after the fact: keras.applications derives the checkpoint's file name from
    # `name`, so passing name="backbone" would download a file that does not exist.
    backbone.name = "backbone"
    backbone.trainable = False
    x = backbone(x, training=False)

    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name="effnetv2")
