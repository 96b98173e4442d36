"""The Keras recipe against its PyTorch reference, piece by piece, and the parity harness.

Unit-level comparisons on identical inputs (seconds each): the SGD update, the weight
initialisation, the augmentation's distribution, the loss and the lr schedule, then the
whole compiled training step in float64. The slow test runs bench/parity/run.py end to end
on a few hundred real-format images.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import torch

from bench.parity import torch_models
from bench.parity.torch_recipe import Recipe, augment, lr_at, to_input
from errors import UserError
from models.preprocessing import RandomShift
from models.resnet18 import build_resnet18
from training.losses import classification_loss
from training.optimizers import adamw, rmsprop, sgd
from training.schedules import cosine

REPO = Path(__file__).resolve().parents[1]


def _sgd_steps(keras_optimizer, torch_weight_decay, lr, steps=60):
    """Runs both optimizers on the same weights and gradients; returns (keras, torch) weights.

    `lr` is a float or a list of one lr per step (set on both before each step)."""
    rng = np.random.default_rng(0)
    start = rng.normal(size=(40,)).astype("float32")
    grads = rng.normal(size=(steps, 40)).astype("float32")
    rates = lr if isinstance(lr, list) else [lr] * steps
    variable = keras.Variable(start.copy(), name="kernel")
    for g, rate in zip(grads, rates, strict=True):
        keras_optimizer.learning_rate = rate
        keras_optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
    parameter = torch.nn.Parameter(torch.tensor(start.copy()))
    reference = torch.optim.SGD(
        [parameter], lr=rates[0], momentum=0.9, nesterov=True, weight_decay=torch_weight_decay
    )
    for g, rate in zip(grads, rates, strict=True):
        reference.param_groups[0]["lr"] = rate
        parameter.grad = torch.tensor(g)
        reference.step()
    return keras.ops.convert_to_numpy(variable), parameter.detach().numpy(), start


def test_sgd_nesterov_step_equals_pytorch_at_a_constant_lr():
    ours, theirs, start = _sgd_steps(sgd(0.1, weight_decay=0.0), 0.0, 0.1)
    assert np.abs(theirs - start).max() > 1  # the weights did move
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_torch_momentum_form_follows_a_changing_lr_as_pytorch_and_keras_form_lags():
    warmup = [0.001 + 0.099 * step / 59 for step in range(60)]  # a 60-step warmup to 0.1
    ours, theirs, start = _sgd_steps(sgd(0.1, momentum_form="torch"), 0.0, warmup)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    lagging, theirs, _ = _sgd_steps(sgd(0.1), 0.0, warmup)
    # Keras' buffer holds the smaller lrs of earlier steps: its weights moved less.
    assert np.linalg.norm(lagging - start) < 0.95 * np.linalg.norm(theirs - start)
    ours, theirs, _ = _sgd_steps(
        sgd(0.1, weight_decay=5e-4, weight_decay_form="coupled", momentum_form="torch"),
        5e-4,
        warmup,
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    with pytest.raises(UserError, match="optimizer.momentum_form='pytorch'"):
        sgd(0.1, momentum_form="pytorch")


def test_rmsprop_torch_momentum_form_equals_pytorch_under_a_changing_lr():
    rng = np.random.default_rng(0)
    start = rng.normal(size=(40,)).astype("float32")
    grads = rng.normal(size=(30, 40)).astype("float32")
    rates = [1e-3 * (step + 1) for step in range(30)]
    # A tiny epsilon: Keras adds it under the square root, PyTorch after it.
    optimizer = rmsprop(rates[0], rho=0.9, momentum=0.9, epsilon=1e-12, momentum_form="torch")
    variable = keras.Variable(start.copy(), name="kernel")
    parameter = torch.nn.Parameter(torch.tensor(start.copy()))
    reference = torch.optim.RMSprop([parameter], lr=rates[0], alpha=0.9, eps=1e-12, momentum=0.9)
    for g, rate in zip(grads, rates, strict=True):
        optimizer.learning_rate = rate
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
        reference.param_groups[0]["lr"] = rate
        parameter.grad = torch.tensor(g)
        reference.step()
    theirs = parameter.detach().numpy()
    assert np.abs(theirs - start).max() > 0.1
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), theirs, atol=1e-4)


def test_coupled_weight_decay_equals_pytorch_and_decoupled_does_not():
    coupled = sgd(0.1, weight_decay=5e-4, weight_decay_form="coupled")
    ours, theirs, _ = _sgd_steps(coupled, 5e-4, 0.1)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    # Keras' decoupled form at 10x the value decays about as much, but not step for step.
    decoupled, theirs, _ = _sgd_steps(sgd(0.1, weight_decay=5e-3), 5e-4, 0.1)
    assert np.abs(decoupled - theirs).max() > 1e-3
    assert np.linalg.norm(decoupled) == pytest.approx(np.linalg.norm(theirs), rel=0.02)


def test_coupled_decay_skips_biases_and_rejects_unknown_forms():
    optimizer = sgd(0.1, momentum=0.0, weight_decay=0.5, weight_decay_form="coupled")
    kernel, bias = (
        keras.Variable(np.ones(3, "float32"), name="kernel"),
        keras.Variable(np.ones(3, "float32"), name="bias"),
    )
    zero = keras.ops.zeros(3)
    optimizer.apply([zero, zero], [kernel, bias])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), 0.95)  # 1 - 0.1 * 0.5
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), 1.0)
    with pytest.raises(UserError, match="optimizer.weight_decay_form='l2'"):
        sgd(0.1, weight_decay_form="l2")
    assert isinstance(adamw(1e-3, weight_decay_form="coupled"), keras.optimizers.Adam)


def test_torch_init_matches_pytorch_defaults_and_he_normal_is_larger():
    def conv_std(init):
        model = build_resnet18(num_classes=100, image_size=32, augment=None, width=8, init=init)
        return float(np.std(model.get_layer("stage4_block2_conv2").get_weights()[0]))

    keras.utils.set_random_seed(0)
    torch.manual_seed(0)
    fan_in = 3 * 3 * 64  # 36,864 weights: their std is within 1 % of the init's
    reference = torch_models.ResNet18(100, width=8).blocks[7].conv2.weight.detach()
    assert float(reference.std()) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.05)
    assert conv_std("torch") == pytest.approx(float(reference.std()), rel=0.05)
    # Keras' he_normal starts sqrt(6) times larger: BatchNorm makes that a 6x smaller step.
    assert conv_std("he_normal") / conv_std("torch") == pytest.approx(math.sqrt(6), rel=0.05)
    with pytest.raises(UserError, match="model.init='xavier'"):
        build_resnet18(num_classes=100, image_size=32, augment=None, width=8, init="xavier")


def _position_images(n):
    """Images whose pixels hold their own row and column (+1, so padding reads 0)."""
    images = np.zeros((n, 32, 32, 3), "float32")
    images[..., 0] = np.arange(32)[None, :, None] + 1
    images[..., 1] = np.arange(32)[None, None, :] + 1
    return images


def _offset_histogram(shifted):
    rows = shifted[:, 16, 16, 0] - 17 + 4
    cols = shifted[:, 16, 16, 1] - 17 + 4
    return np.bincount((rows * 9 + cols).astype(int), minlength=81)


def test_crop_offsets_are_drawn_per_image_as_in_pytorch():
    n = 8192
    images = _position_images(n)
    ours = _offset_histogram(np.asarray(RandomShift(4, seed=1)(images, training=True)))
    generator = torch.Generator().manual_seed(1)
    theirs = _offset_histogram(augment(torch.tensor(images), 4, False, generator).numpy())
    for histogram in (ours, theirs):
        assert len(histogram) == 81  # offsets 0..8 on both axes, nothing else
        # Uniform over the 81 offsets: each expected ~101 times, sd ~10.
        assert histogram.min() > 60 and histogram.max() < 145


def test_flip_is_per_image_and_fair_as_in_pytorch():
    images = _position_images(2048)
    ours = np.asarray(keras.layers.RandomFlip("horizontal", seed=2)(images, training=True))
    generator = torch.Generator().manual_seed(2)
    theirs = augment(torch.tensor(images), 0, True, generator).numpy()
    for flipped in (ours[:, 0, 0, 1] == 32, theirs[:, 0, 0, 1] == 32):
        assert flipped.mean() == pytest.approx(0.5, abs=0.05)


def test_label_smoothed_loss_equals_pytorch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 100)).astype("float32") * 3
    labels = rng.integers(0, 100, 16)
    ours = float(classification_loss(0.1)(labels, logits))
    theirs = float(
        torch.nn.functional.cross_entropy(
            torch.tensor(logits), torch.tensor(labels), label_smoothing=0.1
        )
    )
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_reference_schedule_equals_the_repo_schedule_per_step():
    steps_per_epoch, epochs = 20, 8
    schedule = cosine(lr=0.1, steps_per_epoch=steps_per_epoch, epochs=epochs).learning_rate
    recipe = Recipe(
        model="resnet18",
        model_kwargs={"width": 8},
        epochs=epochs,
        batch_size=128,
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        warmup_epochs=5,
        warmup_start=0.01,
        final_scale=0.0,
        label_smoothing=0.1,
        crop_padding=4,
        flip=True,
    )
    for step in range(steps_per_epoch * epochs):
        assert lr_at(step, recipe, steps_per_epoch) == pytest.approx(
            float(schedule(step)), rel=1e-4, abs=1e-7
        )


@pytest.mark.parametrize("name", ["vgg13", "alexnet"])
def test_torch_versions_of_the_presets_have_the_keras_parameter_count(name):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", [f"experiment={name}_cifar", "model.size=tiny"])
    keras_model = instantiate(cfg.model.net, num_classes=100, image_size=32, augment=None)
    size = cfg.model.sizes.tiny
    torch_model = torch_models.build(
        name,
        num_classes=100,
        width=size.width,
        classifier_width=size.classifier_width,
        dropout=cfg.model.dropout,
        batch_norm=cfg.model.batch_norm,
    )
    # BatchNorm's moving statistics are buffers in PyTorch, weights in Keras.
    moving = sum(
        int(np.prod(w.shape)) for w in keras_model.non_trainable_weights if "moving" in w.path
    )
    trainable = sum(p.numel() for p in torch_model.parameters())
    assert keras_model.count_params() - moving == trainable


@pytest.mark.slow
def test_parity_harness_runs_both_frameworks_end_to_end(tmp_path, data_cache):
    """One epoch of tiny ResNet-18 in each framework on a few hundred real-format images."""
    from data.synthetic import write_synthetic_cifar

    source = write_synthetic_cifar(tmp_path / "cifar", train_per_class=4, test_per_class=2, seed=0)
    out = tmp_path / "parity"
    command = [
        sys.executable,
        "-m",
        "bench.parity.run",
        f"--out={out}",
        "--train-images=300",
        "--threads=1",
        "--",
        "experiment=resnet18_cifar",
        "model.size=tiny",
        "trainer.epochs=1",
        "trainer.batch_size=32",
        "trainer.precision=float32",
        "trainer.verbose=0",
        f"data.path={source}",
        f"data.cache_dir={data_cache}",
        "data.val_size=100",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0] and summary["epochs"] == 1
    (row,) = summary["curves"]
    for key in ("keras_val_top1", "torch_val_top1", "torch_test_top1"):
        assert 0 <= row[key] <= 1
    assert 0 <= summary["keras_test_top1"]["0"] <= 1
    keras_run = json.loads((out / "keras-seed0.json").read_text())
    assert [e["epoch"] for e in keras_run["epochs"]] == [1]  # the store's steps count from 1
    torch_run = json.loads((out / "torch-seed0.json").read_text())
    assert torch_run["recipe"]["weight_decay"] == 5e-4 and torch_run["recipe"]["lr"] == 0.1
    assert (out / "curves.csv").read_text().startswith("epoch,keras_val_top1")
    assert (out / "curves.png").stat().st_size > 0
    assert "final test gap" in result.stdout


@pytest.mark.parametrize("keras_augments", [False, True], ids=["same images", "keras augments"])
def test_paired_run_trains_both_frameworks_from_the_same_weights_on_the_same_batches(
    keras_augments, tmp_path, data_cache
):
    """bench/parity/paired.py: identical starts and batches, so the float32 losses agree;
    with --keras-augments Keras crops and flips the same raw batch itself, so they part."""
    from data.synthetic import write_synthetic_cifar

    source = write_synthetic_cifar(tmp_path / "cifar", train_per_class=3, test_per_class=1, seed=0)
    out = tmp_path / "paired"
    command = [sys.executable, "-m", "bench.parity.paired", f"--out={out}", "--epochs=1"]
    command += ["--keras-augments"] if keras_augments else []
    command += ["--threads=1", "--", "experiment=resnet18_cifar", "model.size=tiny"]
    command += ["trainer.epochs=2", "trainer.batch_size=64", "trainer.precision=float32"]
    # 192 training images: three full batches (one of a few images makes BatchNorm jumpy).
    command += [f"data.path={source}", f"data.cache_dir={data_cache}", "data.val_size=108"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    record = json.loads((out / "paired-seed0.json").read_text())
    steps = record["steps"]
    assert record["keras_augments"] is keras_augments and len(steps) == 3
    assert "mean training loss" in result.stdout
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("1/1 ")]
    assert float(line.split()[1]) == pytest.approx(
        np.mean([row["keras_loss"] for row in steps]), abs=1e-4
    )
    (epoch,) = record["epochs"]
    for side in ("keras", "torch"):
        for split in ("val", "test"):
            assert 0 <= epoch[f"{side}_{split}_top1"] <= 1
    if keras_augments:
        assert "Keras augments in its graph" in result.stdout
        # The same start: near-uniform predictions either way; other crops part the losses.
        assert steps[0]["keras_loss"] == pytest.approx(steps[0]["torch_loss"], rel=0.02)
        assert max(abs(r["keras_loss"] - r["torch_loss"]) for r in steps) > 1e-4
        return
    # float32 round-off grows from step to step (here 3e-7, 3e-6, 2e-4); a wrong weight copy
    # or input parts the losses at the first step.
    for row, tolerance in zip(steps, (1e-5, 1e-4, 1e-3), strict=True):
        assert row["keras_loss"] == pytest.approx(row["torch_loss"], rel=tolerance)
    # Same weights after the same steps: the two nets mostly agree on 108 held-out images.
    assert epoch["keras_val_top1"] == pytest.approx(epoch["torch_val_top1"], abs=0.05)


def _processes_running(needle: str) -> list[int]:
    """Live pids whose command line holds `needle` (Linux /proc; zombies count as gone)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                continue
            if needle in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                pids.append(int(proc.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


def test_stopping_the_harness_stops_its_train_py(tmp_path):
    """SIGTERM to the harness (a scheduler's kill) ends its train.py child too, instead of
    leaving it training on the cores the next runs need."""
    import signal
    import time

    out = tmp_path / "parity"
    harness = subprocess.Popen(
        [sys.executable, "-m", "bench.parity.run", f"--out={out}", "--frameworks=keras"]
        + ["--", "experiment=smoke", "trainer.epochs=50"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    child = f"tracking.root={out}/keras-seed0"
    deadline = time.monotonic() + 60
    while not _processes_running(child) and harness.poll() is None:
        assert time.monotonic() < deadline, "train.py never started"
        time.sleep(0.1)
    assert _processes_running(child)
    harness.send_signal(signal.SIGTERM)
    assert harness.wait(timeout=120) == 128 + signal.SIGTERM
    assert _processes_running(child) == []


def test_comparison_reports_each_seeds_gap_and_its_standard_error(tmp_path, capsys):
    """Fabricated per-seed results with known gaps: -2, 0 and +0.5 points."""
    from bench.parity.run import compare

    for seed, (ours, theirs) in enumerate([(0.50, 0.52), (0.53, 0.53), (0.515, 0.51)]):
        epochs = [{"epoch": e, "val_top1": ours, "loss": 2.0} for e in (1, 2)]
        (tmp_path / f"keras-seed{seed}.json").write_text(
            json.dumps({"epochs": epochs, "test_top1": ours})
        )
        epochs = [{"epoch": e, "val_top1": theirs, "test_top1": theirs} for e in (1, 2)]
        (tmp_path / f"torch-seed{seed}.json").write_text(
            json.dumps({"epochs": epochs, "test_top1": theirs, "test_top1_at_best_val": theirs})
        )
    summary = compare(tmp_path, gap_from=2)
    assert summary["keras_backends"] == ["tensorflow"]  # runs that predate the field
    gaps = [-0.02, 0.0, 0.005]
    assert summary["final_test_gap_per_seed"] == pytest.approx(dict(enumerate(gaps)))
    assert summary["final_test_gap"] == pytest.approx(np.mean(gaps))
    assert summary["final_test_gap_standard_error"] == pytest.approx(np.std(gaps, ddof=1) / 3**0.5)
    printed = capsys.readouterr().out
    assert "final test gap (keras - torch) -0.50 points, standard error over seeds 0.76" in printed
    assert "Keras on TensorFlow:" in printed


def _copy_keras_weights(keras_model, torch_model, flatten_side=1):
    """Keras weights into the PyTorch network (paired.copy_weights); BN stats made random."""
    from bench.parity.paired import copy_weights

    copy_weights(keras_model, torch_model, flatten_side)
    rng = np.random.default_rng(0)
    norms = [
        layer for layer in keras_model.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    modules = [m for m in torch_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for layer, module in zip(norms, modules, strict=True):
            shape = layer.get_weights()[0].shape
            values = [
                rng.uniform(0.5, 1.5, shape),
                rng.normal(0, 0.1, shape),
                rng.normal(0, 0.1, shape),
                rng.uniform(0.5, 1.5, shape),
            ]
            layer.set_weights(values)
            names = ("weight", "bias", "running_mean", "running_var")
            for name, value in zip(names, values, strict=True):
                getattr(module, name).copy_(torch.tensor(value))


def _both_networks(name, init):
    """The tiny Keras network of conf/model/<name>.yaml and its PyTorch version; `init`
    None keeps each side's default (the yaml's for Keras, PyTorch's for the reference)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = [f"model={name}", "model.size=tiny"] + ([f"model.init={init}"] if init else [])
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides)
    keras_model = instantiate(cfg.model.net, num_classes=100, image_size=32, augment=None)
    size = cfg.model.sizes.tiny
    kwargs = {"width": size.width} | ({"init": init} if init else {})
    if name != "resnet18":
        kwargs |= {
            "classifier_width": size.classifier_width,
            "dropout": cfg.model.dropout,
            "batch_norm": cfg.model.batch_norm,
        }
    return keras_model, torch_models.build(name, num_classes=100, **kwargs)


@pytest.mark.parametrize("name", ["resnet18", "vgg13", "alexnet"])
def test_keras_network_computes_what_the_pytorch_one_does_on_the_same_weights(name):
    """Same weights in, same logits out: the same layers, strides, padding and flatten."""
    keras_model, torch_model = _both_networks(name, init=None)
    torch_model.eval()
    _copy_keras_weights(keras_model, torch_model, flatten_side=4 if name == "alexnet" else 1)
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    ours = keras.ops.convert_to_numpy(keras_model(images, training=False))
    with torch.no_grad():
        theirs = torch_model(to_input(torch.tensor(images))).numpy()
    assert np.abs(theirs).max() > 1e-3
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet18", "vgg13", "alexnet"])
def test_he_normal_reference_starts_every_layer_as_the_keras_model_does(name):
    """Under he_normal each conv and dense layer starts at the Keras model's scale: AlexNet's
    and VGG's classifiers at N(0, 0.01), not He's (which starts AlexNet at a loss near 25)."""
    keras.utils.set_random_seed(0)
    torch.manual_seed(0)
    keras_model, torch_model = _both_networks(name, init="he_normal")
    ours = [
        layer.get_weights()[0]
        for layer in keras_model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)
    ]
    theirs = [
        module.weight.detach().numpy()
        for kind in (torch.nn.Conv2d, torch.nn.Linear)
        for module in torch_model.modules()
        if isinstance(module, kind)
    ]
    assert len(ours) == len(theirs)
    for keras_weights, torch_weights in zip(ours, theirs, strict=True):
        assert keras_weights.size == torch_weights.size
        # Small layers (a few hundred weights) scatter; 25 % still tells 0.01 from He's 0.1+.
        assert float(np.std(torch_weights)) == pytest.approx(float(np.std(keras_weights)), rel=0.25)


@pytest.fixture
def float64_keras():
    """Float64 layers: in float32 each framework's own round-off moves the early convs'
    gradients by up to 1 % (PyTorch's own float32 against float64), hiding real differences."""
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_dtype_policy("float32")
    keras.config.set_floatx("float32")


def test_compiled_preset_trains_step_for_step_as_pytorch(float64_keras):
    """The whole training step of experiment=resnet18_cifar, as train.py compiles it, against
    the reference on the same weights and batches: train-mode BatchNorm and its moving
    statistics, backprop, the smoothed loss, coupled decay on the right variables, Nesterov
    with PyTorch's buffer, and the per-step warmup (from 0.001 to 0.1 in 7 steps here)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from bench.parity.run import recipe_from_config
    from bench.parity.torch_recipe import make_optimizer, train_step
    from training.fit import Stage, compile_stage

    overrides = ["experiment=resnet18_cifar", "model.size=tiny", "trainer.epochs=2"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides)
    keras.utils.set_random_seed(0)
    model = instantiate(cfg.model.net, num_classes=100, image_size=32, augment=None)
    reference = torch_models.build("resnet18", num_classes=100, width=8).double()
    _copy_keras_weights(model, reference)
    # Both sides train on the same normalized floats: the frameworks round the uint8 ->
    # float32 normalization differently, enough to flip a ReLU at a near-zero input.
    normalize = keras.Model(model.input, model.get_layer("normalize").output)
    body = keras.Model(model.get_layer("normalize").output, model.output)
    stage = Stage(0, cfg.trainer.epochs, cfg.optimizer.lr, unfreeze=False)
    compile_stage(body, cfg, stage, steps_per_epoch=4)
    recipe = recipe_from_config(cfg, weight_decay=cfg.optimizer.weight_decay)
    optimizer = make_optimizer(reference, recipe)
    start = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(0)
    reference.train()
    for step in range(4):
        images = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 100, 32)
        x = keras.ops.convert_to_numpy(normalize(images)).astype("float64")
        ours = body.train_on_batch(x, labels, return_dict=True)["loss"]
        lr = lr_at(step, recipe, steps_per_epoch=4)
        x, y = torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(labels)
        loss, _ = train_step(reference, optimizer, x, y, lr, cfg.trainer.label_smoothing)
        assert ours == pytest.approx(loss.item(), rel=1e-6)

    bn_names = ("weight", "bias", "running_mean", "running_var")
    for ours, theirs in (
        (keras.layers.Conv2D, torch.nn.Conv2d),
        (keras.layers.BatchNormalization, torch.nn.BatchNorm2d),
        (keras.layers.Dense, torch.nn.Linear),
    ):
        modules = [m for m in reference.modules() if isinstance(m, theirs)]
        layers = [layer for layer in model.layers if isinstance(layer, ours)]
        for layer, module in zip(layers, modules, strict=True):
            if ours is keras.layers.BatchNormalization:
                expected = [getattr(module, name).detach().numpy() for name in bn_names]
                # PyTorch's running variance takes the unbiased batch variance, Keras' the
                # biased one: n / (n - 1) apart, 0.2 % at the 4x4 stage of 32 images.
                tolerances = (1e-5, 1e-5, 1e-5, 3e-3)
            else:
                kernel, *bias = [module.weight.detach().numpy()] + (
                    [module.bias.detach().numpy()] if module.bias is not None else []
                )
                kernel = kernel.transpose(2, 3, 1, 0) if kernel.ndim == 4 else kernel.T
                expected = [kernel, *bias]
                tolerances = (1e-5,) * len(expected)
            for value, want, rtol in zip(layer.get_weights(), expected, tolerances, strict=True):
                np.testing.assert_allclose(value, want, rtol=rtol, atol=1e-6, err_msg=layer.name)
    moved = [np.abs(a - b).max() for a, b in zip(model.get_weights(), start, strict=True)]
    assert min(moved) > 1e-4  # every weight and moving statistic moved, 100x the tolerance
