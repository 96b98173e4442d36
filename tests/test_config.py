"""Every config group composes, and what it names can be built."""

from pathlib import Path

import keras
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from training.fit import plan_stages
from training.validation import check_config

CONF = Path(__file__).resolve().parents[1] / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("experiment", [None, *_options("experiment")])
@pytest.mark.parametrize("model", _options("model"))
def test_model_and_experiment_compose_and_pass_checks(model, experiment):
    overrides = [f"model={model}"] + ([f"experiment={experiment}"] if experiment else [])
    cfg = _compose(*overrides)
    check_config(cfg)
    assert cfg.model.name == model
    assert cfg.model.net._target_ == f"models.{model}.build_{model}"
    assert plan_stages(cfg)[-1].end_epoch == cfg.trainer.epochs


def test_every_model_sets_its_own_defaults():
    for model in _options("model"):
        text = (CONF / "model" / f"{model}.yaml").read_text()
        assert text.startswith("# @package _global_"), model
        for key in ("input_size:", "batch_size:", "epochs:", "lr:", "pretrained:"):
            assert key in text, (model, key)


def test_paper_preset_reproduces_the_study_setup():
    for model in _options("model"):
        cfg = _compose(f"model={model}", "experiment=paper")
        assert cfg.model.input_size == 224
        assert cfg.trainer.precision == "mixed_float16"
        assert cfg.trainer.early_stopping.enabled
        assert cfg.schedule._target_.endswith(".plateau")
    assert _compose("model=effnetv2", "experiment=paper").model.strategy == "freeze"
    assert _compose("model=resnet18", "experiment=paper").model.stem == "imagenet"


@pytest.mark.parametrize("schedule", _options("schedule"))
@pytest.mark.parametrize("optimizer", _options("optimizer"))
def test_optimizer_and_schedule_instantiate(optimizer, schedule):
    cfg = _compose(f"optimizer={optimizer}", f"schedule={schedule}")
    built = instantiate(cfg.schedule, lr=cfg.optimizer.lr, steps_per_epoch=10, epochs=3)
    opt = instantiate(cfg.optimizer, lr=built.learning_rate)
    assert isinstance(opt, keras.optimizers.Optimizer)
    rate = built.learning_rate
    rates = [float(rate(step)) if callable(rate) else rate for step in (0, 15, 29)]
    assert all(0 < r <= cfg.optimizer.lr * (1 + 1e-6) for r in rates), rates


def _weights_after(optimizer: str, gradients, *overrides: str) -> list[np.ndarray]:
    """The weights (zeros at first) after each gradient, applied by the composed optimizer."""
    cfg = _compose(f"optimizer={optimizer}", "optimizer.weight_decay=0", *overrides)
    opt = instantiate(cfg.optimizer, lr=0.1)
    weights = keras.Variable(keras.ops.zeros((len(gradients[0]),)))
    seen = []
    for gradient in gradients:
        opt.apply([keras.ops.convert_to_tensor(gradient)], [weights])
        seen.append(keras.ops.convert_to_numpy(weights).copy())
    return seen


@pytest.mark.parametrize("optimizer", _options("optimizer"))
def test_every_optimizer_clips_when_asked(optimizer):
    """Clipped to norm 1, an absurd gradient takes the step its unit-norm direction takes."""
    absurd, unit = [3e4, 4e4, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0]
    assert _compose(f"optimizer={optimizer}").optimizer.global_clipnorm is None
    (clipped,) = _weights_after(optimizer, [absurd], "optimizer.global_clipnorm=1.0")
    (unit_step,) = _weights_after(optimizer, [unit])
    assert clipped == pytest.approx(unit_step, rel=1e-4, abs=1e-7)
    if optimizer == "sgd":  # where the step scales with the gradient, unclipped is huge
        (unclipped,) = _weights_after(optimizer, [absurd])
        assert abs(unclipped).max() > 1e4 * abs(clipped).max()


@pytest.mark.parametrize("optimizer", _options("optimizer"))
def test_every_optimizer_accumulates_when_asked(optimizer):
    """With 2 accumulation steps, two batches make the one update their mean gradient makes."""
    assert _compose(f"optimizer={optimizer}").optimizer.gradient_accumulation_steps == 1
    first, second = _weights_after(
        optimizer, [[1.0, -2.0], [3.0, 0.0]], "optimizer.gradient_accumulation_steps=2"
    )
    assert first == pytest.approx([0.0, 0.0])  # no update after the first batch
    (one_update,) = _weights_after(optimizer, [[2.0, -1.0]])
    assert second == pytest.approx(one_update, rel=1e-5)
    assert abs(one_update).max() > 0


def test_schedules_shape_the_learning_rate():
    lr = 0.1

    def rates(name, **kwargs):
        s = instantiate(
            _compose(f"schedule={name}").schedule, lr=lr, steps_per_epoch=10, epochs=10, **kwargs
        )
        return [float(s.learning_rate(step)) for step in range(100)]

    cosine = rates("cosine")
    assert cosine[0] == pytest.approx(lr * 0.01) and max(cosine) == pytest.approx(lr)
    assert cosine[-1] < 0.01 * lr
    step = rates("step")
    assert step[0] == pytest.approx(lr) and step[-1] == pytest.approx(lr * 0.2**3)
    onecycle = rates("onecycle")
    assert onecycle[0] == pytest.approx(lr / 25) and onecycle.index(max(onecycle)) == 30
    plateau = instantiate(
        _compose("schedule=plateau").schedule, lr=lr, steps_per_epoch=10, epochs=10
    )
    assert plateau.learning_rate == lr
    assert isinstance(plateau.callbacks[0], keras.callbacks.ReduceLROnPlateau)


def test_optuna_search_composes():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.sampler.seed == 0
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "schedule"}
