"""In-graph preprocessing shared by every architecture.

Images enter each model as uint8 at their stored size, so the data pipeline never copies
floats around: augmentation, resizing and normalization run on the accelerator as part of
the model. The layers compute in float32 whatever the global dtype policy, so a bfloat16
run resizes and normalizes at full precision and casts once at the first weight layer.
"""

from collections.abc import Mapping, Sequence

import keras
from keras import layers, ops

# ImageNet statistics on the 0-255 scale, for the from-scratch networks. CIFAR-100's own
# (129.3, 124.1, 112.4) / (68.2, 65.4, 70.4) differ by a few units: BatchNorm absorbs it.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@keras.saving.register_keras_serializable(package="cifar100")
class RandomShift(layers.Layer):
    """Pad by `padding` pixels and crop back at a random offset, drawn per image.

    The classic CIFAR "pad 4, random crop" augmentation, gathering rows and columns by
    index. keras.layers.RandomCrop draws one offset for the whole batch, and
    RandomTranslation warps through an affine transform with supports_jit=False, which turns
    XLA off for the whole model (bench/throughput.py measured 7x slower steps on JAX).
    Identity at inference.
    """

    def __init__(self, padding=4, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.padding = padding
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or self.padding == 0:
            return images
        pad = self.padding
        batch = ops.shape(images)[0]
        height, width, channels = images.shape[1], images.shape[2], images.shape[3]
        padded = ops.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        offsets = keras.random.randint(
            (batch, 2), 0, 2 * pad + 1, seed=self.seed_generator, dtype="int32"
        )
        rows = offsets[:, :1] + ops.arange(height, dtype="int32")[None, :]
        cols = offsets[:, 1:] + ops.arange(width, dtype="int32")[None, :]
        row_index = ops.broadcast_to(
            rows[:, :, None, None], (batch, height, width + 2 * pad, channels)
        )
        images = ops.take_along_axis(padded, row_index, axis=1)
        col_index = ops.broadcast_to(cols[:, None, :, None], (batch, height, width, channels))
        return ops.take_along_axis(images, col_index, axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "padding": self.padding, "seed": self.seed}


def image_input(image_size: int) -> keras.KerasTensor:
    """The model input: a batch of uint8 RGB images as stored on disk."""
    return keras.Input((image_size, image_size, 3), dtype="uint8", name="image")


def preprocess(
    images,
    *,
    input_size: int,
    augment: Mapping | None,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    interpolation: str = "bilinear",
):
    """uint8 images → augmented (training only), resized, normalized float32 tensors.

    Augmentation runs before the resize, on the small image, where it is cheapest.
    `mean`/`std` are on the 0-255 scale; pass None for both when the network rescales
    its own input (keras.applications EfficientNetV2).
    """
    augment = augment or {}
    x = ops.cast(images, "float32")
    if augment.get("crop_padding", 0):
        x = RandomShift(augment["crop_padding"], dtype="float32", name="augment_shift")(x)
    if augment.get("flip", False):
        x = layers.RandomFlip("horizontal", dtype="float32", name="augment_flip")(x)
    if input_size != images.shape[1]:
        x = layers.Resizing(
            input_size, input_size, interpolation=interpolation, dtype="float32", name="resize"
        )(x)
    if mean is not None:
        variance = [s * s for s in std]
        x = layers.Normalization(mean=mean, variance=variance, dtype="float32", name="normalize")(x)
    return x
