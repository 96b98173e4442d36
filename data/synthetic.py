"""A generated CIFAR-shaped dataset in the hub's parquet layout, for offline smoke runs and tests.

`write_synthetic_cifar` writes the same files the hub serves for `uoft-cs/cifar100`
(train/test parquet shards, a PNG-encoded `img` Image column, `fine_label`/`coarse_label`
ClassLabel columns, the Hugging Face features in the parquet schema metadata), so
`datasets.load_dataset(folder)` and `data.cifar100.load_cifar100` read it exactly like the
real copy: the smoke runs exercise the real loading path.

Each class is learnable: a colour (hue spread over the classes), one of four patterns that
survive horizontal flips and pad-and-crop shifts (horizontal stripes, vertical stripes, a
checkerboard, rings) and a stripe period; every image gets a random phase, a brightness
jitter and pixel noise. The fine→coarse mapping is fixed: fine * num_superclasses //
num_classes (fine // 5 for 100 classes and 20 superclasses).
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 32
# Bump when the generated images change, so cached copies keyed on it are regenerated.
GENERATOR_VERSION = 1

_PATTERNS = 4  # horizontal stripes, vertical stripes, checkerboard, rings
_PERIODS = (4, 5, 6, 7, 8)


def fine_to_coarse(num_classes: int, num_superclasses: int) -> np.ndarray:
    """The fixed superclass of each fine class: contiguous blocks of fine classes."""
    return (np.arange(num_classes) * num_superclasses // num_classes).astype(np.int64)


def class_names(num_classes: int) -> list[str]:
    return [f"class_{index:0{len(str(num_classes - 1))}d}" for index in range(num_classes)]


def superclass_names(num_superclasses: int) -> list[str]:
    width = len(str(num_superclasses - 1))
    return [f"superclass_{index:0{width}d}" for index in range(num_superclasses)]


def render_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 32, 32, 3) uint8 images of the given fine labels, with per-image randomness."""
    labels = np.asarray(labels)
    count = len(labels)
    rows, cols = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    half = np.asarray(_PERIODS, np.float32)[(labels // _PATTERNS) % len(_PERIODS)] / 2
    phase = rng.uniform(0, 8, size=count).astype(np.float32)

    def bands(coordinate):  # 0/1 stripes of width `half`, shifted by the image's phase
        shifted = coordinate[None] + phase[:, None, None]
        return (np.floor(shifted / half[:, None, None]) % 2).astype(np.float32)

    centre = (IMAGE_SIZE - 1) / 2
    radius = np.sqrt((rows - centre) ** 2 + (cols - centre) ** 2)
    patterns = np.stack(
        [bands(rows), bands(cols), (bands(rows) + bands(cols)) % 2, bands(radius)], axis=1
    )
    pattern = patterns[np.arange(count), labels % _PATTERNS]  # (N, 32, 32)

    # Hues spread evenly over the classes; classes sharing a pattern and period are 72° apart.
    colour = _hue_to_rgb(labels / num_classes) * 255  # (N, 3)
    brightness = rng.uniform(0.8, 1.1, size=(count, 1, 1, 1))
    images = colour[:, None, None, :] * (0.3 + 0.7 * pattern[..., None]) * brightness
    images += rng.normal(0, 12, size=images.shape)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def _hue_to_rgb(hue: np.ndarray, saturation: float = 0.8, value: float = 0.95) -> np.ndarray:
    """HSV → RGB in [0, 1] for an array of hues in [0, 1)."""
    channel = (np.asarray(hue)[:, None] * 6 + np.array([5, 3, 1])) % 6
    return value - value * saturation * np.clip(np.minimum(channel, 4 - channel), 0, 1)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 image, as the hub stores CIFAR-100."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_synthetic_cifar(
    folder,
    *,
    train_per_class: int,
    test_per_class: int,
    seed: int,
    num_classes: int = 100,
    num_superclasses: int = 20,
) -> Path:
    """Write a CIFAR-shaped dataset in the hub's parquet layout into `folder`; return it.

    train-00000-of-00001.parquet holds train_per_class images of every class in a random
    order, test-00000-of-00001.parquet test_per_class images grouped by class (like the
    stored CIFAR-100 test split), plus a README.md. The same arguments give the same images.
    """
    # datasets is imported here: it is slow to import and only needed when writing.
    import datasets

    for name, value in (
        ("train_per_class", train_per_class),
        ("test_per_class", test_per_class),
        ("num_classes", num_classes),
        ("num_superclasses", num_superclasses),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_superclasses > num_classes:
        raise ValueError(f"num_superclasses={num_superclasses} exceeds num_classes={num_classes}")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=class_names(num_classes)),
            "coarse_label": datasets.ClassLabel(names=superclass_names(num_superclasses)),
        }
    )
    coarse_of = fine_to_coarse(num_classes, num_superclasses)
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(num_classes), per_class)
        if split == "train":
            rng.shuffle(labels)
        images = render_images(labels, num_classes, rng)
        table = {
            "img": [{"bytes": encode_png(image), "path": None} for image in images],
            "fine_label": labels.tolist(),
            "coarse_label": coarse_of[labels].tolist(),
        }
        # Dataset.to_parquet stores the features in the schema metadata, as the hub's files do.
        dataset = datasets.Dataset.from_dict(table, features=features)
        dataset.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))

    total = num_classes * (train_per_class + test_per_class)
    (folder / "README.md").write_text(
        _README.format(
            size=_size_category(total),
            train=num_classes * train_per_class,
            test=num_classes * test_per_class,
            train_per_class=train_per_class,
            test_per_class=test_per_class,
            seed=seed,
            num_classes=num_classes,
            num_superclasses=num_superclasses,
        )
    )
    return folder


def _size_category(total: int) -> str:
    for limit, category in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if total < limit:
            return category
    return "100K<n<1M"


_README = """\
---
pretty_name: Synthetic CIFAR-shaped data
task_categories:
- image-classification
size_categories:
- {size}
---

# Synthetic CIFAR-shaped data

Generated by `data/synthetic.py` (train_per_class={train_per_class},
test_per_class={test_per_class}, seed={seed}): {train} training and {test} test images,
32×32 RGB, {num_classes} fine classes in {num_superclasses} superclasses, in the Hugging Face
hub's parquet layout (`img`: Image, `fine_label` / `coarse_label`: ClassLabel). Each class is
a colour and a stripe pattern with noise: learnable, but not CIFAR-100. For smoke runs and
tests only.
"""
