"""Checks of the composed config that Hydra's schema cannot express.

They run before anything is loaded or logged, so a bad value costs a second and leaves no
MLflow run behind. Each names the key and a fix on one line.
"""

import importlib

import keras
from omegaconf import DictConfig, OmegaConf

from errors import UserError
from training.session import PRECISIONS

STRATEGIES = ("scratch", "freeze", "finetune")
DISTRIBUTIONS = (None, "data_parallel")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _number(cfg: DictConfig, key: str):
    value = cfg
    for part in key.split("."):
        value = value[part]
    _require(
        isinstance(value, int | float) and not isinstance(value, bool),
        f"{key}={value!r} must be a number",
    )
    return value


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_input_size(cfg: DictConfig) -> None:
    """model.input_size against the architecture's own minimum, which its module states."""
    size = cfg.model.get("input_size")
    if size is None:
        return
    _require(
        _integer(size) and size >= 1,
        f"model.input_size={size!r} must be a positive integer, e.g. model.input_size=32",
    )
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    module = importlib.import_module(net.pop("_target_").rsplit(".", 1)[0])
    if not hasattr(module, "min_input_size"):
        return
    minimum = module.min_input_size(**net)
    _require(
        size >= minimum,
        f"model.input_size={size} is below {cfg.model.name}'s minimum of {minimum}; "
        f"use model.input_size={max(minimum, 32)} or more",
    )


def check_config(cfg: DictConfig) -> None:
    seed = cfg.get("seed")
    _require(
        _integer(seed) and 0 <= seed < 2**32,
        f"seed={seed!r} must be an integer in [0, 2**32 - 1], e.g. seed=0",
    )
    _check_input_size(cfg)
    lr = _number(cfg, "optimizer.lr")
    _require(lr > 0, f"optimizer.lr={lr} must be > 0, e.g. optimizer.lr=0.1")
    if cfg.optimizer.get("global_clipnorm") is not None:
        clipnorm = _number(cfg, "optimizer.global_clipnorm")
        _require(
            clipnorm > 0,
            f"optimizer.global_clipnorm={clipnorm} must be > 0, or null for no clipping",
        )
    accumulation = cfg.optimizer.get("gradient_accumulation_steps", 1)
    _require(
        isinstance(accumulation, int) and not isinstance(accumulation, bool) and accumulation >= 1,
        f"optimizer.gradient_accumulation_steps={accumulation} must be an integer >= 1 "
        "(1: update every batch)",
    )
    batch_size = _number(cfg, "trainer.batch_size")
    _require(
        batch_size > 0 and batch_size == int(batch_size),
        f"trainer.batch_size={batch_size} must be a positive integer, e.g. trainer.batch_size=128",
    )
    train_eval_size = cfg.trainer.get("train_eval_size", 0)
    _require(
        isinstance(train_eval_size, int)
        and not isinstance(train_eval_size, bool)
        and train_eval_size >= 0,
        f"trainer.train_eval_size={train_eval_size!r} must be an integer >= 0 "
        "(training images predicted each epoch; 0: none)",
    )
    epochs = _number(cfg, "trainer.epochs")
    _require(
        epochs >= 1 and epochs == int(epochs),
        f"trainer.epochs={epochs} must be an integer >= 1, e.g. trainer.epochs=30",
    )
    _require(
        cfg.trainer.precision in PRECISIONS,
        f"trainer.precision={cfg.trainer.precision} must be one of {', '.join(PRECISIONS)}",
    )
    _require(
        0 <= _number(cfg, "trainer.label_smoothing") < 1,
        f"trainer.label_smoothing={cfg.trainer.label_smoothing} must be in [0, 1)",
    )
    _require(
        cfg.model.strategy in STRATEGIES,
        f"model.strategy={cfg.model.strategy} must be one of {', '.join(STRATEGIES)}",
    )
    head_epochs = cfg.model.get("head_epochs", 0)
    _require(
        cfg.model.strategy != "finetune" or 0 <= head_epochs < epochs,
        f"model.head_epochs={head_epochs} must be in [0, trainer.epochs={epochs}) to leave "
        "epochs for fine-tuning",
    )
    _require(
        cfg.trainer.distribution in DISTRIBUTIONS,
        f"trainer.distribution={cfg.trainer.distribution} must be null or data_parallel",
    )
    _require(
        not cfg.trainer.distribution or keras.backend.backend() in ("jax", "tensorflow"),
        "trainer.distribution=data_parallel needs KERAS_BACKEND=jax or tensorflow",
    )
