"""bench/throughput.py through its real CLI, its FLOP counter against hand counts, and the
recipe presets. No timing assertions: speed targets belong to benchmark runs, not tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from keras import layers

from bench.throughput import count_forward_flops
from models.preprocessing import RandomShift
from models.resnet18 import build_resnet18
from models.vit import build_vit
from training.fit import plan_stages
from training.validation import check_config

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TINY_RESNET = ("model=resnet18", "model.size=tiny", "trainer.precision=float32")
PRESETS = {
    "resnet18_cifar": "resnet18",
    "vgg13_cifar": "vgg13",
    "alexnet_cifar": "alexnet",
    "vit_finetune": "vit",
    "effnetv2_finetune": "effnetv2",
}


def resnet18_cifar_macs(width: int, num_classes: int = 100, size: int = 32) -> int:
    """Multiply-accumulates of ResNet-18 with the CIFAR stem, counted by hand."""
    macs = size * size * 3 * 3 * 3 * width  # stem conv
    channels = width
    for stage in range(4):
        out = width * 2**stage
        if stage:
            size //= 2
        positions = size * size
        macs += positions * 9 * channels * out  # first conv (strided after stage 1)
        macs += 3 * positions * 9 * out * out  # the other three 3x3 convs
        if channels != out:
            macs += positions * channels * out  # 1x1 projection shortcut
        channels = out
    return macs + channels * num_classes


def vit_macs(size, patch, layers_, hidden, mlp, num_classes=100) -> int:
    tokens = (size // patch) ** 2 + 1
    patch_embedding = (size // patch) ** 2 * patch * patch * 3 * hidden
    projections = 4 * tokens * hidden * hidden  # query, key, value, output
    attention = 2 * tokens * tokens * hidden  # scores + weighted values, over all heads
    feed_forward = 2 * tokens * hidden * mlp
    return (
        patch_embedding
        + layers_ * (projections + attention + feed_forward)
        + (hidden * num_classes)
    )


def bench_cli(*args, tmp_path: Path, backend: str = "tensorflow", timeout: int = 600):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [
        sys.executable,
        "bench/throughput.py",
        *args,
        f"hydra.run.dir={tmp_path}/run",
    ]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def check_record(record: dict, *, backend: str, peak_tflops: float) -> None:
    assert record["schema"] == 1
    assert record["backend"] == backend
    assert record["model"] == "resnet18" and record["size"] == "tiny"
    assert record["images_per_second"] > 0 and record["step_ms_mean"] > 0
    forward = 2 * resnet18_cifar_macs(width=8)
    assert record["forward_flops_per_image"] == forward
    assert sum(record["forward_flops_by_layer_type"].values()) == forward
    multiple = 1 if record["measurement"] == "inference" else 3
    assert record["flops_per_image"] == multiple * forward
    achieved = record["images_per_second"] * record["flops_per_image"] / 1e12
    assert record["achieved_tflops"] == pytest.approx(achieved, rel=1e-3)
    assert record["mfu"] == pytest.approx(achieved / peak_tflops, rel=1e-3)
    assert record["host_peak_rss_bytes"] > 0
    if record["device_kind"] == "cpu":  # no device memory counter on a CPU
        assert record["device_peak_memory_bytes"] is None
        assert record["device_peak_memory_source"] is None
    else:
        assert record["device_peak_memory_bytes"] > 0 and record["device_peak_memory_source"]


def test_flops_match_hand_counts_for_resnet18_and_vit():
    resnet = build_resnet18(num_classes=100, image_size=32, augment=None, width=8)
    assert count_forward_flops(resnet).flops == 2 * resnet18_cifar_macs(width=8)
    assert resnet18_cifar_macs(width=8) == 8_878_336  # the formula, checked once on paper

    vit = build_vit(
        num_classes=100,
        image_size=32,
        augment=None,
        pretrained=False,
        strategy="scratch",
        input_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
    )
    count = count_forward_flops(vit)
    assert count.flops == 2 * vit_macs(32, 8, 2, 32, 64)
    assert set(count.macs_by_type) == {"Conv2D", "EinsumDense", "MultiHeadAttention", "Dense"}


def test_flops_of_every_conv_kind():
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, strides=2, padding="same")(inputs)  # 8x8x4
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)  # 8x8x8
    x = layers.SeparableConv2D(6, 3)(x)  # 6x6x6
    x = layers.Conv2DTranspose(2, 2, strides=2)(x)  # 12x12x2
    x = layers.Flatten()(x)
    outputs = layers.Dense(5)(x)
    count = count_forward_flops(keras.Model(inputs, outputs))
    assert dict(count.macs_by_type) == {
        "Conv2D": 64 * 3 * 3 * 3 * 4,
        "DepthwiseConv2D": 64 * 3 * 3 * 4 * 2,
        "SeparableConv2D": 36 * (3 * 3 * 8 + 8 * 6),
        "Conv2DTranspose": 36 * 2 * 2 * 6 * 2,
        "Dense": 12 * 12 * 2 * 5,
    }


@pytest.mark.slow
def test_cli_on_tensorflow_writes_json_lines(tmp_path):
    out = tmp_path / "bench.jsonl"
    result = bench_cli(
        *TINY_RESNET,
        "trainer.batch_size=8",
        "bench.steps=2",
        "bench.warmup=1",
        "bench.peak_tflops=0.5",
        "bench.measure=[train,fit,inference]",
        "bench.label=test",
        f"bench.out={out}",
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = json_lines(result.stdout)
    assert [r["measurement"] for r in records] == ["train", "fit", "inference"]
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    for record in records:
        check_record(record, backend="tensorflow", peak_tflops=0.5)
        assert record["label"] == "test" and record["batch_size"] == 8
        # auto: TensorFlow compiles with XLA only on GPUs.
        assert record["jit_compile"] is (record["device_kind"] != "cpu")
    train, fit, inference = records
    assert train["step_ms_median"] > 0 and fit["step_ms_median"] is None
    assert inference["trainable_params"] == train["trainable_params"] < train["params"]


@pytest.mark.slow
def test_cli_on_jax_compiles_and_appends(tmp_path):
    out = tmp_path / "bench.jsonl"
    out.write_text('{"earlier": true}\n')
    result = bench_cli(
        *TINY_RESNET,
        "trainer.batch_size=8",
        "bench.steps=2",
        "bench.warmup=1",
        "bench.peak_tflops=2",
        f"bench.out={out}",
        tmp_path=tmp_path,
        backend="jax",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = json_lines(result.stdout)
    assert [r["measurement"] for r in records] == ["train", "fit", "inference"]  # the default
    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": True} and len(lines) == 4
    for record in records:
        check_record(record, backend="jax", peak_tflops=2)
        assert record["jit_compile"] is True and record["jit_blockers"] == []


@pytest.mark.slow
def test_keras_random_translation_turns_xla_off(tmp_path):
    """Keras' RandomTranslation has supports_jit=False, so Keras compiles nothing with
    XLA, even on request: on JAX the whole train step then runs op by op."""
    result = bench_cli(
        *TINY_RESNET,
        "trainer.batch_size=4",
        "trainer.jit_compile=true",
        "bench.augment_layers=keras",
        "bench.steps=1",
        "bench.warmup=1",
        "bench.measure=[inference]",
        "bench.out=null",
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = json_lines(result.stdout)
    assert record["augment_layers"] == "keras"
    assert record["jit_compile_requested"] is True and record["jit_compile"] is False
    assert record["jit_blockers"] == ["keras_translation"]
    # The same network underneath: the wrapper adds no counted FLOPs.
    assert record["forward_flops_per_image"] == 2 * resnet18_cifar_macs(width=8)


@pytest.mark.slow
def test_bad_bench_setting_is_one_line(tmp_path):
    result = bench_cli(*TINY_RESNET, "bench.steps=0", tmp_path=tmp_path)
    assert result.returncode == 1
    assert "bench.steps=0 must be an integer >= 1" in result.stderr
    assert "Traceback" not in result.stderr and not json_lines(result.stdout)


def test_random_shift_crops_the_zero_padded_image_at_an_offset_per_image():
    """The behaviour the benchmark times: pad 4 with zeros, crop back at a random offset."""
    images = 1 + np.arange(16 * 8 * 8 * 3, dtype="float32").reshape(16, 8, 8, 3)
    shift = RandomShift(4, seed=1)
    shifted = keras.ops.convert_to_numpy(shift(images, training=True))
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    offsets = set()
    for image, window in zip(padded, shifted, strict=True):
        # Every pixel value is unique, so exactly one window of the padded image matches.
        (offset,) = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if np.array_equal(window, image[dy : dy + 8, dx : dx + 8])
        ]
        offsets.add(offset)
    assert len(offsets) > 4  # drawn per image, not once per batch
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(shift(images)), images)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_selects_its_model_and_passes_checks(preset):
    cfg = _compose(f"experiment={preset}")
    check_config(cfg)
    assert cfg.model.name == PRESETS[preset]
    text = (CONF / "experiment" / f"{preset}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert "not yet measured on a GPU" in text
    assert cfg.trainer.precision == "mixed_bfloat16"
    assert cfg.schedule._target_.endswith(".cosine") and cfg.schedule.warmup_epochs > 0
    assert plan_stages(cfg)[-1].end_epoch == cfg.trainer.epochs
    # The command line still wins over the preset, e.g. for a smoke run.
    smoke = _compose(f"experiment={preset}", "model.size=tiny", "data=synthetic")
    assert smoke.model.size == "tiny" and smoke.data.name == "synthetic"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_with_every_optimizer_and_schedule(preset):
    """A preset sets only keys every group takes, so swapping a group still builds."""
    for optimizer in _options("optimizer"):
        for schedule in _options("schedule"):
            cfg = _compose(f"experiment={preset}", f"optimizer={optimizer}", f"schedule={schedule}")
            built = instantiate(cfg.schedule, lr=cfg.optimizer.lr, steps_per_epoch=10, epochs=3)
            optimizer_ = instantiate(cfg.optimizer, lr=built.learning_rate)
            assert isinstance(optimizer_, keras.optimizers.Optimizer), (optimizer, schedule)


@pytest.mark.parametrize("preset", ["resnet18_cifar", "vgg13_cifar", "alexnet_cifar"])
def test_from_scratch_presets_are_the_sgd_cifar_recipe(preset):
    cfg = _compose(f"experiment={preset}")
    assert cfg.model.strategy == "scratch" and cfg.model.stem == "cifar"
    assert cfg.model.input_size == 32
    assert cfg.optimizer._target_.endswith(".sgd")
    assert cfg.optimizer.momentum == 0.9 and cfg.optimizer.nesterov
    # The recipes' weight decay as printed, in PyTorch's coupled form.
    assert cfg.optimizer.weight_decay == pytest.approx(5e-4)
    assert cfg.optimizer.weight_decay_form == "coupled"
    assert cfg.optimizer.momentum_form == "torch"
    # The PyTorch recipes' default init; AlexNet keeps he_normal convs (not measured).
    assert cfg.model.init == ("he_normal" if preset == "alexnet_cifar" else "torch")
    assert cfg.schedule.warmup_epochs == 5 and cfg.schedule.final_scale == 0
    assert cfg.trainer.label_smoothing == 0.1
    assert cfg.trainer.batch_size == 128 and cfg.trainer.epochs == 200
    assert dict(cfg.data.augment) == {"crop_padding": 4, "flip": True}
    assert {"resnet18_cifar": 0.1, "vgg13_cifar": 0.05, "alexnet_cifar": 0.02}[
        preset
    ] == cfg.optimizer.lr
    if preset != "resnet18_cifar":  # VGG-13-BN; AlexNet without BatchNorm, as the original
        assert cfg.model.batch_norm is (preset == "vgg13_cifar")


def test_finetune_presets():
    vit = _compose("experiment=vit_finetune")
    assert vit.model.strategy == "finetune" and vit.model.pretrained
    assert vit.optimizer._target_.endswith(".sgd") and vit.optimizer.momentum == 0.9
    assert vit.optimizer.weight_decay == 0 and vit.optimizer.lr == 0.03
    assert vit.trainer.batch_size == 512
    steps = vit.trainer.epochs * -(-45_000 // vit.trainer.batch_size)
    assert 9_500 <= steps <= 10_500  # the paper's 10k fine-tuning steps
    assert [s.unfreeze for s in plan_stages(vit)] == [True]
    assert instantiate(vit.optimizer, lr=0.03).global_clipnorm == 1.0

    effnet = _compose("experiment=effnetv2_finetune")
    assert effnet.model.strategy == "finetune" and effnet.model.variant == "S"
    assert effnet.model.input_size == 384 and effnet.trainer.label_smoothing == 0.1
    head, whole = plan_stages(effnet)
    assert (head.unfreeze, whole.unfreeze) == (False, True)
    # RMSProp as EfficientNetV2 fine-tunes; the reference's 0.001 at batch 512, at 128.
    rmsprop = instantiate(effnet.optimizer, lr=effnet.optimizer.lr)
    assert isinstance(rmsprop, keras.optimizers.RMSprop)
    assert (rmsprop.rho, rmsprop.momentum, rmsprop.epsilon) == (0.9, 0.9, 1e-3)
    assert whole.lr == pytest.approx(1e-3 * effnet.trainer.batch_size / 512)
