"""The four non-ViT architectures: build at tiny size, train a step, honour their knobs.

Runs on the default (TensorFlow) backend in-process; JAX and PyTorch each get one
subprocess, since the backend is fixed per process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from errors import UserError
from models.alexnet import build_alexnet
from models.effnetv2 import build_effnetv2
from models.resnet18 import build_resnet18
from models.vgg13 import build_vgg13

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 5
AUGMENT = {"crop_padding": 4, "flip": True}
MODELS = ("alexnet", "vgg13", "resnet18", "effnetv2")


def _images(n=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, (n,))
    return x, y


def _tiny_net_config(name, **overrides):
    """`model.net` of conf/model/<name>.yaml as experiment=smoke resolves it."""
    cfg = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
    cfg.model.size = "tiny"
    cfg.model.input_size = 32
    cfg.model.pretrained = False
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return OmegaConf.to_container(cfg.model.net, resolve=True)


def _build_tiny(name, augment=AUGMENT, **overrides):
    net = _tiny_net_config(name, **overrides)
    return hydra.utils.instantiate(net, num_classes=NUM_CLASSES, image_size=32, augment=augment)


def _compile(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


@pytest.mark.parametrize("name", MODELS)
def test_tiny_model_trains_a_step(name):
    model = _compile(_build_tiny(name))
    assert model.name == name
    assert model.get_layer("logits").dtype_policy.compute_dtype == "float32"
    x, y = _images()
    before = [w.numpy().copy() for w in model.trainable_weights]

    loss = model.train_on_batch(x, y)

    assert np.isfinite(loss)
    after = [w.numpy() for w in model.trainable_weights]
    assert any(not np.array_equal(b, a) for b, a in zip(before, after, strict=True))
    logits = model.predict_on_batch(x)
    assert logits.shape == (4, NUM_CLASSES)
    assert logits.dtype == np.float32


@pytest.mark.parametrize("name", MODELS)
def test_logits_stay_float32_under_mixed_precision(name):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _build_tiny(name)
    finally:
        keras.config.set_dtype_policy("float32")
    x, _ = _images(n=2)
    assert keras.ops.convert_to_numpy(model(x)).dtype == np.float32


def test_model_yamls_compose_with_their_recipes():
    from hydra import compose, initialize_config_dir

    expected = {
        "alexnet": ("training.optimizers.sgd", 0.02, 128),
        "vgg13": ("training.optimizers.sgd", 0.05, 128),
        "resnet18": ("training.optimizers.sgd", 0.1, 128),
        "effnetv2": ("training.optimizers.adamw", 1e-3, 64),
    }
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        for name, (optimizer, lr, batch_size) in expected.items():
            cfg = compose("config", overrides=[f"model={name}"])
            assert cfg.model.name == name
            assert cfg.model.net._target_ == f"models.{name}.build_{name}"
            assert cfg.optimizer._target_ == optimizer
            assert cfg.optimizer.lr == pytest.approx(lr)
            assert cfg.trainer.batch_size == batch_size
        cfg = compose("config", overrides=["model=effnetv2", "model.size=tiny"])
        assert cfg.model.net.variant == "B0"
        assert cfg.model.head_epochs >= 0 and cfg.model.finetune_lr_scale > 0


def test_augmentation_only_in_training():
    model = build_resnet18(num_classes=NUM_CLASSES, image_size=32, augment=AUGMENT, width=8)
    x, _ = _images(n=8)
    infer = [keras.ops.convert_to_numpy(model(x, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(infer[0], infer[1])
    # ResNet has no dropout and BatchNorm uses batch statistics deterministically, so
    # two training-mode calls differ only through the random shift and flip.
    train = [keras.ops.convert_to_numpy(model(x, training=True)) for _ in range(2)]
    assert not np.allclose(train[0], train[1])


def test_resnet18_stems():
    cifar = build_resnet18(num_classes=NUM_CLASSES, image_size=32, augment=None, width=8)
    assert cifar.get_layer("stem_conv").kernel.shape == (3, 3, 3, 8)
    assert cifar.get_layer("stem_conv").strides == (1, 1)
    assert cifar.get_layer("stage1_block1_out").output.shape[1:3] == (32, 32)
    assert cifar.get_layer("stage4_block2_out").output.shape[1:] == (4, 4, 64)

    imagenet = build_resnet18(
        num_classes=NUM_CLASSES,
        image_size=32,
        augment=None,
        stem="imagenet",
        input_size=64,
        width=8,
    )
    assert imagenet.get_layer("stem_conv").kernel.shape == (7, 7, 3, 8)
    assert imagenet.get_layer("stem_pool").output.shape[1:3] == (16, 16)
    x, _ = _images(n=2)
    assert imagenet.predict_on_batch(x).shape == (2, NUM_CLASSES)

    # 18 weight layers: the stem, 16 block convs and the logits; projections only where
    # the shape changes (stages 2-4).
    convs = [layer.name for layer in cifar.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len([c for c in convs if "proj" not in c]) == 17
    assert sorted(c for c in convs if "proj" in c) == [
        "stage2_block1_proj_conv",
        "stage3_block1_proj_conv",
        "stage4_block1_proj_conv",
    ]


def test_resnet18_imagenet_stem_at_224_matches_the_paper():
    model = build_resnet18(
        num_classes=NUM_CLASSES,
        image_size=32,
        augment=None,
        stem="imagenet",
        input_size=224,
        width=8,
    )
    assert model.get_layer("resize").output.shape[1:3] == (224, 224)
    assert model.get_layer("stem_conv").output.shape[1:3] == (112, 112)
    assert model.get_layer("stem_pool").output.shape[1:3] == (56, 56)
    assert model.get_layer("stage4_block2_out").output.shape[1:3] == (7, 7)


def test_alexnet_stems():
    cifar = build_alexnet(
        num_classes=NUM_CLASSES, image_size=32, augment=None, width=8, classifier_width=32
    )
    assert cifar.get_layer("conv1_conv").kernel.shape == (3, 3, 3, 8)
    assert cifar.get_layer("pool5").output.shape[1:] == (4, 4, 32)

    imagenet = build_alexnet(
        num_classes=NUM_CLASSES,
        image_size=32,
        augment=None,
        stem="imagenet",
        input_size=64,
        width=8,
        classifier_width=32,
    )
    conv1 = imagenet.get_layer("conv1_conv")
    assert conv1.kernel.shape == (11, 11, 3, 8) and conv1.strides == (4, 4)
    x, _ = _images(n=2)
    assert imagenet.predict_on_batch(x).shape == (2, NUM_CLASSES)

    # At 224 px: 55 -> 27 -> 13 -> 6, a 6x6x256 flatten at width 64, 4096-unit FCs.
    full = build_alexnet(
        num_classes=NUM_CLASSES,
        image_size=32,
        augment=None,
        stem="imagenet",
        input_size=224,
        width=8,
        classifier_width=32,
    )
    assert full.get_layer("conv1_conv").output.shape[1:3] == (55, 55)
    assert full.get_layer("pool5").output.shape[1:3] == (6, 6)
    assert [full.get_layer(f"fc{i}_dropout").rate for i in (1, 2)] == [0.5, 0.5]

    with pytest.raises(UserError, match="model.input_size"):
        build_alexnet(
            num_classes=NUM_CLASSES, image_size=32, augment=None, stem="imagenet", input_size=32
        )


def test_vgg13_stems_and_batch_norm_switch():
    kwargs = dict(
        num_classes=NUM_CLASSES, image_size=32, augment=None, width=8, classifier_width=32
    )
    with_bn = build_vgg13(**kwargs)
    without_bn = build_vgg13(**kwargs, batch_norm=False)

    def count(model, kind):
        return sum(isinstance(layer, kind) for layer in model.layers)

    assert count(with_bn, keras.layers.Conv2D) == count(without_bn, keras.layers.Conv2D) == 10
    assert count(with_bn, keras.layers.BatchNormalization) == 10
    assert count(without_bn, keras.layers.BatchNormalization) == 0
    assert with_bn.get_layer("block1_conv1").bias is None
    assert without_bn.get_layer("block1_conv1").bias is not None
    # Five pools take 32 px to 1x1.
    assert with_bn.get_layer("flatten").output.shape[1:] == (64,)

    # The imagenet stem at 224 flattens the original 7x7 map.
    imagenet = build_vgg13(**kwargs, stem="imagenet", input_size=224)
    assert imagenet.get_layer("block5_pool").output.shape[1:] == (7, 7, 64)
    small = build_vgg13(**kwargs, stem="imagenet", input_size=64)
    x, _ = _images(n=2)
    assert small.predict_on_batch(x).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("build", [build_alexnet, build_vgg13, build_resnet18])
def test_invalid_stem_is_a_user_error(build):
    with pytest.raises(UserError, match=r"model\.stem.*cifar, imagenet"):
        build(num_classes=NUM_CLASSES, image_size=32, augment=None, stem="tiny")


@pytest.mark.parametrize("name", ["alexnet", "vgg13", "resnet18"])
def test_scratch_models_use_he_normal_convs_and_bn_momentum(name):
    model = _build_tiny(name, **{"model.batch_norm": True} if name != "resnet18" else {})
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert isinstance(layer.kernel_initializer, keras.initializers.HeNormal)
            assert layer.kernel_regularizer is None
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.momentum == 0.9


# --- EfficientNetV2 ---------------------------------------------------------------------


def _effnet(**kwargs):
    kwargs = {"variant": "B0", "input_size": 32, "pretrained": False, **kwargs}
    return build_effnetv2(num_classes=NUM_CLASSES, image_size=32, augment=AUGMENT, **kwargs)


def test_effnetv2_download_failure_is_a_user_error(tmp_path, monkeypatch):
    # An empty Keras cache, so a checkpoint cached by some earlier run cannot answer:
    # keras.utils.get_file really tries the network.
    monkeypatch.setattr(keras.src.backend.config, "_KERAS_DIR", str(tmp_path))
    try:
        _effnet(pretrained=True, weights="imagenet")
    except UserError as error:
        message = str(error)
        assert "\n" not in message
        assert "model.pretrained=false" in message
        assert "model.weights=<local file>" in message
    else:
        pytest.skip("the Keras weight bucket is reachable from here")


def test_effnetv2_missing_local_weights_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"model\.weights="):
        _effnet(pretrained=True, weights=str(tmp_path / "missing.weights.h5"))


def test_effnetv2_loads_a_local_weights_file(tmp_path):
    source = keras.applications.EfficientNetV2B0(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    # Shifted away from any random init, so equality below means the file was read.
    source.set_weights([w + 0.5 for w in source.get_weights()])
    path = tmp_path / "b0_notop.weights.h5"
    source.save_weights(path)

    model = _effnet(pretrained=True, weights=str(path))

    loaded = model.get_layer("backbone").get_weights()
    expected = source.get_weights()
    assert len(loaded) == len(expected)
    for got, want in zip(loaded, expected, strict=True):
        np.testing.assert_array_equal(got, want)

    # A file of another variant does not fit: one line naming the key.
    with pytest.raises(UserError, match=r"model\.weights=.*B1") as error:
        _effnet(variant="B1", pretrained=True, weights=str(path))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "scratch"}, r"model\.strategy='scratch'.*freeze, finetune"),
        ({"variant": "XL"}, r"model\.variant='XL'.*B0, B1, B2, B3, S, M, L"),
    ],
)
def test_effnetv2_invalid_choice_is_a_user_error(kwargs, message):
    with pytest.raises(UserError, match=message):
        _effnet(**kwargs)


@pytest.mark.slow  # two compiled training stages of EfficientNetV2
def test_effnetv2_trains_head_then_unfreezes_with_batchnorm_in_inference_mode():
    model = _compile(_effnet(strategy="finetune"))
    backbone = model.get_layer("backbone")
    stem_kernel = backbone.get_layer("stem_conv").kernel.numpy().copy()
    moving_mean = backbone.get_layer("stem_bn").moving_mean.numpy().copy()
    x, y = _images()

    # Built frozen: only the head trains, and the backbone's statistics stay put.
    assert not backbone.trainable
    assert sorted(w.path for w in model.trainable_weights) == ["logits/bias", "logits/kernel"]
    assert np.isfinite(model.train_on_batch(x, y))
    np.testing.assert_array_equal(stem_kernel, backbone.get_layer("stem_conv").kernel.numpy())
    np.testing.assert_array_equal(moving_mean, backbone.get_layer("stem_bn").moving_mean.numpy())

    # The unfreeze train.py does after head_epochs: the backbone trains, its BatchNorm
    # layers stay frozen and so in inference mode.
    backbone.trainable = True
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    _compile(model)
    assert np.isfinite(model.train_on_batch(x, y))
    assert not np.array_equal(stem_kernel, backbone.get_layer("stem_conv").kernel.numpy())
    np.testing.assert_array_equal(moving_mean, backbone.get_layer("stem_bn").moving_mean.numpy())


# --- Other backends ---------------------------------------------------------------------

BACKEND_SCRIPT = """
import importlib, json, sys
try:
    importlib.import_module(sys.argv[1])
except ImportError:
    sys.exit(77)
import keras, numpy as np
from models.effnetv2 import build_effnetv2
from models.resnet18 import build_resnet18

assert keras.backend.backend() == sys.argv[1]
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
y = rng.integers(0, 5, (4,))
augment = {"crop_padding": 4, "flip": True}
builds = {
    "resnet18": lambda: build_resnet18(num_classes=5, image_size=32, augment=augment, width=8),
    "effnetv2": lambda: build_effnetv2(
        num_classes=5, image_size=32, augment=augment, variant="B0", input_size=32,
        pretrained=False,
    ),
}
losses = {}
for name, build in builds.items():
    model = build()
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    losses[name] = float(model.train_on_batch(x, y))
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    assert logits.shape == (4, 5) and logits.dtype == np.float32, (logits.shape, logits.dtype)
print(json.dumps(losses))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_models_train_a_step_on_other_backends(backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = subprocess.run(
        [sys.executable, "-c", BACKEND_SCRIPT, backend],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode == 77:
        pytest.skip(f"{backend} is not importable")
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(losses) == {"resnet18", "effnetv2"}
    assert all(np.isfinite(loss) for loss in losses.values())
