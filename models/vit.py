"""Vision Transformer (Dosovitskiy et al., 2021) from a Hugging Face checkpoint, via keras-hub.

The backbone is `keras_hub.models.ViTBackbone` (a nested layer named "backbone"), built
from the checkpoint's config.json and filled from its model.safetensors by keras-hub's
transformers converter. Its output sequence ends in the final LayerNorm; the head takes
the class token → Dropout → the "logits" Dense. Images are rescaled and normalized with
the checkpoint's own preprocessor_config.json (ViTImageProcessor's defaults without one)
and resized to the checkpoint's image_size, whose position embeddings fix the input size.

`model.checkpoint` is `hf://<org>/<name>` or a local Hugging Face folder, read by
models/hf_checkpoint.py. A `ViTForImageClassification` checkpoint's classifier becomes the
"logits" layer when its label count equals `num_classes`.

`pretrained=False` builds the same architecture from the explicit size arguments with
random weights and never touches the network. `freeze` and `finetune` return the backbone
frozen (training/fit.py unfreezes it for finetune after `model.head_epochs`); `scratch` returns
it trainable and needs `pretrained=False`.
"""

from collections.abc import Mapping

import keras
from keras import layers
from keras_hub.models import ViTBackbone

from errors import UserError
from models.hf_checkpoint import (
    HF_LAYER_NORM_EPS,
    PROCESSOR_DEFAULTS,
    load_backbone,
    normalization,
    port_classifier,
    resolve_checkpoint,
)
from models.layers import ClassToken
from models.preprocessing import image_input, preprocess

DEFAULT_CHECKPOINT = "hf://google/vit-base-patch16-224-in21k"
STRATEGIES = ("finetune", "freeze", "scratch")


def min_input_size(patch_size: int = 16, **_) -> int:
    """The smallest model.input_size this network takes (check_config asks before a run):
    one patch."""
    return patch_size


def build_vit(
    *,
    num_classes: int,
    image_size: int,
    augment: Mapping | None,
    checkpoint: str = DEFAULT_CHECKPOINT,
    pretrained: bool = True,
    strategy: str = "finetune",
    input_size: int = 224,
    patch_size: int = 16,
    num_layers: int = 12,
    num_heads: int = 12,
    hidden_dim: int = 768,
    mlp_dim: int = 3072,
    dropout: float = 0.0,
) -> keras.Model:
    """ViT with a `num_classes` head returning float32 logits.

    `pretrained=True` takes the whole architecture from `checkpoint`'s config.json (the
    size arguments are unused) and requires `input_size` to equal its image_size.
    `pretrained=False` builds ViT from `patch_size`, `num_layers`, `num_heads`,
    `hidden_dim`, `mlp_dim` at `input_size` with random weights.
    """
    if strategy not in STRATEGIES:
        raise UserError(
            f"model.strategy={strategy!r} is not valid for vit; use one of: {', '.join(STRATEGIES)}"
        )
    if pretrained and strategy == "scratch":
        raise UserError(
            "model.strategy=scratch trains from random weights; set model.pretrained=false, "
            "or model.strategy=finetune to start from model.checkpoint"
        )

    source = None
    if pretrained:
        source = resolve_checkpoint(checkpoint)
        if input_size != source.image_size:
            raise UserError(
                f"model.input_size={input_size} differs from the checkpoint's image_size "
                f"{source.image_size}, which its position embeddings fix; set "
                f"model.input_size={source.image_size}"
            )
        backbone = load_backbone(source, checkpoint)
        mean, std, interpolation = normalization(source.processor)
    else:
        if input_size % patch_size or hidden_dim % num_heads:
            raise UserError(
                f"model.input_size={input_size} must be a multiple of patch_size={patch_size} "
                f"and hidden_dim={hidden_dim} of num_heads={num_heads}; change model.input_size "
                "or the model.sizes entry"
            )
        backbone = ViTBackbone(
            image_shape=(input_size, input_size, 3),
            patch_size=patch_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            mlp_dim=mlp_dim,
            layer_norm_epsilon=HF_LAYER_NORM_EPS,
            name="backbone",
        )
        mean, std, interpolation = normalization(PROCESSOR_DEFAULTS)

    inputs = image_input(image_size)
    x = preprocess(
        inputs,
        input_size=input_size,
        augment=augment,
        mean=mean,
        std=std,
        interpolation=interpolation,
    )
    if strategy == "scratch":
        x = backbone(x)
    else:
        # Frozen and in inference mode as the builder contract asks; ViT has no BatchNorm,
        # so this only turns off the checkpoint's own dropout (0.0 in Google's ViTs).
        backbone.trainable = False
        x = backbone(x, training=False)
    x = ClassToken(name="cls_token")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    logits = layers.Dense(num_classes, dtype="float32", name="logits")
    outputs = logits(x)
    if source is not None and source.num_labels == num_classes:
        port_classifier(logits, source, checkpoint)
    return keras.Model(inputs, outputs, name="vit")
