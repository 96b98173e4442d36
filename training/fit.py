"""Build, compile and fit a model for a composed config.

A run has one stage, or two for `model.strategy=finetune`: the head alone for
`model.head_epochs`, then the whole network (BatchNorm kept frozen) at
`optimizer.lr * model.finetune_lr_scale`. Each stage gets its own schedule over its own
epochs. Every epoch is checkpointed, so a resumed job picks up mid-stage.
"""

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from callbacks.checkpoints import BestCheckpoint, EpochCheckpoint
from callbacks.epoch_stats import EpochStats, StopOnDivergence
from callbacks.mlflow_metrics import MlflowMetrics
from data.cifar100 import Cifar100
from errors import UserError
from training.losses import classification_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    first_epoch: int
    end_epoch: int  # exclusive
    lr: float
    unfreeze: bool


@dataclass(frozen=True)
class FitResult:
    best_checkpoint: Path
    best_val_top1: float
    best_epoch: int
    epochs_run: int
    train_seconds: float
    images_per_second: float


def build_model(cfg: DictConfig, data: Cifar100) -> keras.Model:
    return instantiate(
        cfg.model.net,
        num_classes=data.num_classes,
        image_size=data.image_size,
        augment=OmegaConf.to_container(cfg.data.augment),
        _convert_="all",
    )


def plan_stages(cfg: DictConfig) -> list[Stage]:
    epochs, lr = cfg.trainer.epochs, cfg.optimizer.lr
    if cfg.model.strategy != "finetune":
        return [Stage(0, epochs, lr, unfreeze=False)]
    head = cfg.model.head_epochs
    finetune = Stage(head, epochs, lr * cfg.model.finetune_lr_scale, unfreeze=True)
    return [Stage(0, head, lr, unfreeze=False), finetune] if head else [finetune]


def _layers(layer: keras.layers.Layer):
    yield layer
    for child in getattr(layer, "layers", []):
        yield from _layers(child)


def unfreeze_backbone(model: keras.Model) -> None:
    """Makes the pretrained backbone trainable, except its BatchNorm layers."""
    backbone = model.get_layer("backbone")
    backbone.trainable = True
    for layer in _layers(backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def compile_stage(model: keras.Model, cfg: DictConfig, stage: Stage, steps_per_epoch: int):
    """Compiles for one stage and returns its schedule (whose callbacks fit() needs)."""
    if stage.unfreeze:
        unfreeze_backbone(model)
    schedule = instantiate(
        cfg.schedule,
        lr=stage.lr,
        steps_per_epoch=steps_per_epoch,
        epochs=stage.end_epoch - stage.first_epoch,
    )
    model.compile(
        optimizer=instantiate(cfg.optimizer, lr=schedule.learning_rate),
        loss=classification_loss(cfg.trainer.label_smoothing),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
        ],
        jit_compile=cfg.trainer.jit_compile,
        steps_per_execution=cfg.trainer.steps_per_execution,
    )
    if cfg.trainer.jit_compile is True and not model.jit_compile:
        blockers = [layer.name for layer in _layers(model) if not layer.supports_jit]
        log.warning("trainer.jit_compile=true, but XLA is off: %s cannot compile", blockers)
    return schedule


def _early_stopping(cfg: DictConfig) -> list[keras.callbacks.Callback]:
    early = cfg.trainer.early_stopping
    if not early.enabled:
        return []
    return [
        keras.callbacks.EarlyStopping(
            monitor=early.monitor,
            patience=early.patience,
            min_delta=early.min_delta,
            mode="min" if early.monitor.endswith("loss") else "max",
        )
    ]


def fit(
    model: keras.Model,
    data: Cifar100,
    cfg: DictConfig,
    job,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> FitResult:
    """Trains through every stage, resuming from `job.checkpoint_dir` when the job resumes.

    The extra `callbacks` (train.py's) add to each epoch's logs before they are recorded.
    """
    trainer = cfg.trainer
    steps_per_epoch = math.ceil(len(data.train.labels) / trainer.batch_size)
    best = BestCheckpoint(job.checkpoint_dir / "best.keras", trainer.checkpoint_monitor)
    epochs = EpochCheckpoint(job.checkpoint_dir / "epochs")
    resume_at = epochs.latest_epochs_done() if job.resuming else 0
    restored = not job.resuming
    for stage in plan_stages(cfg):
        if resume_at > stage.end_epoch:
            continue  # finished before the interruption
        schedule = compile_stage(model, cfg, stage, steps_per_epoch)
        early_stopping = _early_stopping(cfg)
        epochs.track([*schedule.callbacks, *early_stopping, best])
        initial_epoch = stage.first_epoch
        if not restored:
            restored = True
            state = epochs.restore(model)
            initial_epoch = state.epochs_done if state else 0
            if initial_epoch < stage.first_epoch:
                raise RuntimeError(
                    f"no readable checkpoint in {epochs.directory} from epoch "
                    f"{stage.first_epoch} (this stage's start) on; run the same command again "
                    "to start this job afresh"
                )
            job.continue_from(initial_epoch, state.history if state else [])
        if initial_epoch >= stage.end_epoch:
            # A later stage starts its callbacks afresh; only the best value carries over.
            epochs.pending = {k: v for k, v in epochs.pending.items() if k == "BestCheckpoint"}
            continue
        model.fit(
            data.train.images,
            data.train.labels,
            batch_size=trainer.batch_size,
            epochs=stage.end_epoch,
            initial_epoch=initial_epoch,
            validation_data=(data.val.images, data.val.labels),
            callbacks=[
                EpochStats(len(data.train.labels)),
                *schedule.callbacks,
                *early_stopping,
                StopOnDivergence(),
                *callbacks,
                best,
                epochs,
                MlflowMetrics(),
            ],
            verbose=trainer.verbose,
        )
        _check_finite(epochs.state.history, cfg)
        if early_stopping and early_stopping[0].stopped_epoch:
            break
    history = epochs.state.history
    if best.best is None:
        raise UserError(f"trainer.checkpoint_monitor={best.monitor} never appeared in the logs")
    speeds = [h["images_per_second"] for h in history[1:] or history]
    return FitResult(
        best_checkpoint=best.path,
        best_val_top1=best.best,
        best_epoch=best.best_epoch,
        epochs_run=len(history),
        train_seconds=sum(h["epoch_seconds"] for h in history),
        images_per_second=float(np.median(speeds)),
    )


def _check_finite(history: list[dict], cfg: DictConfig) -> None:
    last = history[-1]
    if not math.isfinite(last.get("loss", math.nan)):
        raise UserError(
            f"loss became {last.get('loss')} in epoch {len(history)}: training diverged; "
            f"lower optimizer.lr (now {cfg.optimizer.lr}) or use trainer.precision=float32"
        )
