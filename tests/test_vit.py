"""ViT: tiny transformers checkpoints of both layouts load through build_vit and agree with
transformers (features, logits, preprocessing); bad checkpoints fail with one UserError
line; random-init ViT trains a step on TensorFlow, JAX and PyTorch."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from errors import UserError  # noqa: E402
from models.vit import build_vit  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_SIZE = 64  # the tiny checkpoints' image_size; CIFAR's 32 px are upscaled to it
TINY_VIT = {
    "image_size": CHECKPOINT_SIZE,
    "patch_size": 16,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
TINY_SIZES = {"patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def _save_checkpoint(folder: Path, classifier: bool, processor: dict | None) -> Path:
    """A random tiny ViT saved by transformers, every parameter moved off its init.

    transformers initializes biases to 0 and LayerNorm scales to 1, which would hide a
    bias or a scale ported to the wrong place.
    """
    torch.manual_seed(1 if classifier else 0)
    if classifier:
        config = transformers.ViTConfig(**TINY_VIT, num_labels=100)
        model = transformers.ViTForImageClassification(config)
    else:
        model = transformers.ViTModel(transformers.ViTConfig(**TINY_VIT))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.eval()
    model.save_pretrained(folder)
    if processor is not None:
        size = {"height": CHECKPOINT_SIZE, "width": CHECKPOINT_SIZE}
        transformers.ViTImageProcessor(size=size, **processor).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """ViTModel layout (keys without `vit.`), the default ViTImageProcessor settings."""
    folder = _save_checkpoint(tmp_path_factory.mktemp("bare"), classifier=False, processor={})
    return folder, transformers.ViTModel.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """ViTForImageClassification layout (keys `vit.*` + `classifier.*`), ImageNet stats."""
    folder = tmp_path_factory.mktemp("classifier")
    _save_checkpoint(folder, classifier=True, processor=IMAGENET)
    return folder, transformers.ViTForImageClassification.from_pretrained(folder).eval()


def _build(checkpoint, num_classes=100, strategy="finetune") -> keras.Model:
    return build_vit(
        num_classes=num_classes,
        image_size=32,
        augment=None,
        checkpoint=str(checkpoint),
        pretrained=True,
        strategy=strategy,
        input_size=CHECKPOINT_SIZE,
        **TINY_SIZES,  # unused with pretrained=True: config.json sets the architecture
    )


def _pixel_values(seed=0, batch=2):
    return np.random.default_rng(seed).normal(size=(batch, 3, CHECKPOINT_SIZE, CHECKPOINT_SIZE))


def _uint8_images(seed=0, batch=3, size=32):
    # Noise, the worst case for interpolation differences; real images are smoother.
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _keras_features(model, pixel_values):
    nhwc = pixel_values.transpose(0, 2, 3, 1).astype("float32")
    return keras.ops.convert_to_numpy(model.get_layer("backbone")(nhwc))


def _processor_pixels(folder, images):
    processor = transformers.ViTImageProcessor.from_pretrained(folder)
    return processor(list(images), return_tensors="np")["pixel_values"]


def test_backbone_matches_transformers_bare_layout(bare):
    folder, reference = bare
    model = _build(folder)
    pixels = _pixel_values()
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(pixels).float()).last_hidden_state
    np.testing.assert_allclose(_keras_features(model, pixels), expected.numpy(), atol=1e-4)
    # No classifier in a bare ViTModel: the head is new, and frozen backbone as contracted.
    backbone = model.get_layer("backbone")
    assert backbone.layer_norm_epsilon == 1e-12
    assert not backbone.trainable
    assert model.get_layer("logits").dtype == "float32"


def test_classifier_layout_matches_transformers_features_and_logits(classifier):
    folder, reference = classifier
    model = _build(folder)
    pixels = _pixel_values(seed=1)
    inputs = torch.from_numpy(pixels).float()
    with torch.no_grad():
        hf_features = reference.vit(pixel_values=inputs).last_hidden_state.numpy()
        hf_logits = reference(pixel_values=inputs).logits.numpy()
    features = _keras_features(model, pixels)
    np.testing.assert_allclose(features, hf_features, atol=1e-4)
    # The classifier was ported: the head on the class token gives transformers' logits.
    logits = keras.ops.convert_to_numpy(model.get_layer("logits")(features[:, 0]))
    np.testing.assert_allclose(logits, hf_logits, atol=1e-4)


def test_classifier_with_another_label_count_gets_a_new_head(classifier):
    folder, reference = classifier
    model = _build(folder, num_classes=10)
    kernel = keras.ops.convert_to_numpy(model.get_layer("logits").kernel)
    assert kernel.shape == (TINY_VIT["hidden_size"], 10)
    pixels = _pixel_values(seed=2)
    with torch.no_grad():
        expected = reference.vit(pixel_values=torch.from_numpy(pixels).float()).last_hidden_state
    np.testing.assert_allclose(_keras_features(model, pixels), expected.numpy(), atol=1e-4)


# The processor resizes with PIL on uint8 images in two passes (horizontal, then vertical)
# and rounds to uint8 after each, so each pixel may differ from Keras' float bilinear
# resize by up to 1 gray level (measured: exactly 1.0 on noise). The interpolation itself
# agrees: both use half-pixel centers, and upscaling never widens PIL's filter. In
# normalized units the tolerance is that level divided by the std on the 0-255 scale.
RESIZE_TOLERANCE_LEVELS = 1.0 + 1e-3


def _check_preprocessing(model, folder, std):
    images = _uint8_images(seed=3)
    preprocess = keras.Model(model.input, model.get_layer("normalize").output)
    got = keras.ops.convert_to_numpy(preprocess(images))
    expected = _processor_pixels(folder, images).transpose(0, 2, 3, 1)
    assert got.shape == expected.shape
    levels = np.abs(got - expected) * np.asarray(std) * 255
    assert levels.max() <= RESIZE_TOLERANCE_LEVELS, levels.max()
    # Two independent roundings average ~1/3 level; a shifted grid would average tens.
    assert levels.mean() < 0.5, levels.mean()


def test_preprocessing_reads_the_checkpoint_processor(classifier):
    # ImageNet mean/std, not ViTImageProcessor's 0.5 defaults: read from the checkpoint.
    folder, _ = classifier
    _check_preprocessing(_build(folder), folder, IMAGENET["image_std"])


def test_preprocessing_defaults_match_vit_image_processor_at_224(tmp_path):
    """Random init uses ViTImageProcessor's defaults: compare 32 → 224 as in the study."""
    transformers.ViTImageProcessor().save_pretrained(tmp_path)
    model = build_vit(
        num_classes=100,
        image_size=32,
        augment=None,
        checkpoint=str(tmp_path),  # unused: pretrained=False never reads it
        pretrained=False,
        strategy="finetune",
        input_size=224,
        **{**TINY_SIZES, "patch_size": 16},
    )
    _check_preprocessing(model, tmp_path, [0.5, 0.5, 0.5])


def test_uint8_images_give_transformers_logits(classifier):
    folder, reference = classifier
    model = _build(folder)
    images = _uint8_images(seed=4, batch=4)
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(_processor_pixels(folder, images)))
    got = keras.ops.convert_to_numpy(model(images))
    # Only the <= 1 gray level resize difference above separates the inputs; through this
    # network it moves logits of size ~1 by ~5e-3. Normalizing with the wrong statistics
    # (0.5 instead of ImageNet's) moves them by ~0.3.
    np.testing.assert_allclose(got, expected.logits.numpy(), atol=2e-2)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_float32_logits_close(policy, classifier):
    folder, _ = classifier
    images = _uint8_images(seed=7)
    expected = keras.ops.convert_to_numpy(_build(folder)(images))
    keras.config.set_dtype_policy(policy)
    try:
        model = _build(folder)
        logits = model(images)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("backbone").compute_dtype == policy.removeprefix("mixed_")
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    # Measured: 1.7e-3 (bfloat16) and 2.2e-4 (float16) on logits of size ~1.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), expected, atol=1e-2)


def test_input_size_must_match_the_checkpoint(bare):
    folder, _ = bare
    with pytest.raises(UserError, match=f"model.input_size=32 .* model.input_size={64}"):
        build_vit(
            num_classes=100,
            image_size=32,
            augment=None,
            checkpoint=str(folder),
            pretrained=True,
            strategy="finetune",
            input_size=32,
            **TINY_SIZES,
        )


def _hub_cache(monkeypatch, tmp_path, endpoint="http://127.0.0.1:9"):
    """An empty Hugging Face cache and a Hub address that refuses connections.

    Port 9 (discard) on localhost refuses at once, on any machine, network or not: the
    test sees a real connection failure and never downloads.
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hub"


def test_unreachable_hub_fails_fast_with_one_line(monkeypatch, tmp_path):
    _hub_cache(monkeypatch, tmp_path)
    start = time.perf_counter()
    with pytest.raises(UserError) as error:
        _build("hf://google/vit-base-patch16-224-in21k")
    elapsed = time.perf_counter() - start
    message = str(error.value)
    assert "model.checkpoint=hf://google/vit-base-patch16-224-in21k" in message
    assert "model.pretrained=false" in message and "local" in message
    assert "\n" not in message
    # huggingface_hub alone retries five times with backoff (~25 s per file).
    assert elapsed < 10, elapsed


def test_hub_id_loads_from_the_cache_when_offline(monkeypatch, tmp_path, bare):
    """A cached hub checkpoint loads without the network, like a local folder."""
    folder, reference = bare
    cache = _hub_cache(monkeypatch, tmp_path)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny--vit"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = _build("hf://tiny/vit")
    pixels = _pixel_values(seed=5)
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(pixels).float()).last_hidden_state
    np.testing.assert_allclose(_keras_features(model, pixels), expected.numpy(), atol=1e-4)


def test_missing_folder_and_non_vit_folder(tmp_path):
    with pytest.raises(UserError, match=r"model\.checkpoint=.*no such folder.*pretrained=false"):
        _build(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    with pytest.raises(UserError, match=r"not a Hugging Face ViT checkpoint.*pretrained=false"):
        _build(tmp_path)


def test_weights_that_do_not_fit_the_config(tmp_path, bare):
    folder, _ = bare
    shutil.copytree(folder, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["hidden_size"] = 64
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"model\.checkpoint=.*weights do not load"):
        _build(tmp_path / "ckpt")


def test_scratch_requires_pretrained_false(bare):
    with pytest.raises(UserError, match="model.pretrained=false"):
        _build(bare[0], strategy="scratch")


TRAIN_STEP = """
import os
import keras, numpy as np
from models.vit import build_vit

model = build_vit(
    num_classes=100, image_size=32, augment={"crop_padding": 4, "flip": True},
    checkpoint="unused", pretrained=False, strategy="finetune", input_size=32,
    patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, dropout=0.1,
)
assert model.name == "vit" and not model.get_layer("backbone").trainable
model.get_layer("backbone").trainable = True  # what train.py does for finetune
model.compile(
    optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
labels = rng.integers(0, 100, (8,))
backbone = model.get_layer("backbone")
before = [keras.ops.convert_to_numpy(w).copy() for w in backbone.trainable_weights]
loss = model.fit(images, labels, batch_size=8, epochs=1, verbose=0).history["loss"][0]
after = [keras.ops.convert_to_numpy(w) for w in backbone.trainable_weights]
assert np.isfinite(loss), loss
assert sum(not np.allclose(a, b) for a, b in zip(before, after)) > len(before) // 2
assert model.predict(images, verbose=0).shape == (8, 100)

# A tiny checkpoint loads and matches the features transformers computed.
if os.environ.get("VIT_REFERENCE"):
    reference = np.load(os.environ["VIT_REFERENCE"])
    pretrained = build_vit(
        num_classes=100, image_size=32, augment=None, checkpoint=str(reference["folder"]),
        pretrained=True, strategy="freeze", input_size=64,
        patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
    )
    features = keras.ops.convert_to_numpy(
        pretrained.get_layer("backbone")(reference["pixels"].transpose(0, 2, 3, 1))
    )
    np.testing.assert_allclose(features, reference["features"], atol=1e-4)
print("ok", keras.backend.backend())
"""


def test_scratch_tiny_trains_one_step_and_round_trips(tmp_path):
    namespace = {}
    exec(compile(textwrap.dedent(TRAIN_STEP), "train_step", "exec"), namespace)
    model = namespace["model"]
    images = namespace["images"]
    path = tmp_path / "vit.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(
        restored.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_train_and_load(backend, bare, tmp_path):
    pytest.importorskip(backend)
    folder, reference = bare
    pixels = _pixel_values(seed=6).astype("float32")
    with torch.no_grad():
        features = reference(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    np.savez(tmp_path / "ref.npz", folder=str(folder), pixels=pixels, features=features)
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": str(ROOT),
        "VIT_REFERENCE": str(tmp_path / "ref.npz"),
    }
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_STEP],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ok {backend}" in result.stdout


def test_yaml_defaults_and_smoke_build():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=vit"])
        smoke = compose("config", overrides=["model=vit", "experiment=smoke"])
        compose("config", overrides=["model=vit", "experiment=paper"])  # composes
    model = cfg.model
    assert model.checkpoint == "hf://google/vit-base-patch16-224-in21k"
    assert (model.strategy, model.pretrained, model.head_epochs) == ("finetune", True, 0)
    assert (model.input_size, model.finetune_lr_scale) == (224, 1.0)
    assert dict(model.sizes.base) == {
        "patch_size": 16,
        "num_layers": 12,
        "num_heads": 12,
        "hidden_dim": 768,
        "mlp_dim": 3072,
    }
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.01, 0.9, 0)
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (10, 128)
    assert cfg.schedule._target_.endswith("cosine")
    net = instantiate(smoke.model.net, num_classes=100, image_size=32, augment=None)
    backbone = net.get_layer("backbone")
    assert backbone.output.shape == (None, (32 // 8) ** 2 + 1, 32)
