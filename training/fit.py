"""Build, compile and fit a model for a composed config.

A run has one stage, or two for `model.strategy=finetune`: the head alone for
`model.head_epochs`, then the whole network (BatchNorm kept frozen) at
`optimizer.lr * model.finetune_lr_scale`. Each stage gets its own schedule over its own
epochs. Every epoch is checkpointed, so a resumed job picks up mid-stage.
"""

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from callbacks.checkpoints import BestCheckpoint, EpochCheckpoint
from callbacks.epoch_stats import EpochStats, StopOnDivergence
from callbacks.monitor import monitor_mode
from data.batches import ShuffledBatches
from data.cifar100 import Cifar100
from errors import UserError
from training.losses import classification_loss
from training.metrics import accuracy_metrics

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
        metrics=accuracy_metrics(),
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
            mode=monitor_mode(early.monitor),
        )
    ]


def fit(
    model: keras.Model,
    data: Cifar100,
    cfg: DictConfig,
    checkpoint_dir: Path,
    *,
    resume: bool = False,
    on_resume: Callable[[int, list[dict]], None] | None = None,
    epoch_metrics: Sequence[keras.callbacks.Callback] = (),
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> FitResult:
    """Trains through every stage, checkpointing each epoch under `checkpoint_dir`.

    `resume` continues from the newest readable checkpoint there; `on_resume(epochs_done,
    history)` then hears where training picks up. `epoch_metrics` (train.py's train-images
    top-1) add values to each epoch's logs before the checkpoint records them, so a resumed
    run's history holds them too. The extra `callbacks` (train.py's MLflow logger, a search's
    pruning) run after each epoch's checkpoint is written; one that stops training ends every
    stage.
    """
    trainer = cfg.trainer
    steps_per_epoch = math.ceil(len(data.train.labels) / trainer.batch_size)
    best = BestCheckpoint(checkpoint_dir / "best.keras", trainer.checkpoint_monitor)
    epochs = EpochCheckpoint(checkpoint_dir / "epochs", best)
    stages = plan_stages(cfg)
    if resume:
        # Stages finished before the interruption are skipped; the one the checkpoint was
        # taken in is compiled, so its optimizer state loads back.
        done = epochs.latest_epochs_done()
        stages = [stage for stage in stages if stage.end_epoch >= done]
    for index, stage in enumerate(stages):
        schedule = compile_stage(model, cfg, stage, steps_per_epoch)
        early_stopping = _early_stopping(cfg)
        epochs.track([*schedule.callbacks, *early_stopping])
        initial_epoch = stage.first_epoch
        if resume and index == 0:
            initial_epoch = _restore(model, epochs, stage)
            if on_resume is not None:
                on_resume(initial_epoch, epochs.history)
        if initial_epoch >= stage.end_epoch:
            continue
        train = data.train
        batches = ShuffledBatches(
            train.images, train.labels, trainer.batch_size, cfg.seed, initial_epoch, stage.end_epoch
        )
        model.fit(
            batches,
            steps_per_epoch=batches.steps_per_epoch,
            shuffle=False,  # the batches are shuffled already
            epochs=stage.end_epoch,
            initial_epoch=initial_epoch,
            validation_data=(data.val.images, data.val.labels),
            callbacks=[
                EpochStats(len(data.train.labels)),
                *schedule.callbacks,
                *early_stopping,
                StopOnDivergence(),
                *epoch_metrics,
                best,
                epochs,
                *callbacks,
            ],
            verbose=trainer.verbose,
        )
        _check_finite(epochs.history, cfg)
        if model.stop_training:  # early stopping, or an extra callback (a pruned trial)
            break
    history = epochs.history
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


def _restore(model: keras.Model, epochs: EpochCheckpoint, stage: Stage) -> int:
    """The epoch to go on from, once the checkpoint is back in the compiled model."""
    initial_epoch = epochs.restore(model)
    if initial_epoch < stage.first_epoch:
        raise RuntimeError(
            f"no readable checkpoint in {epochs.directory} from epoch {stage.first_epoch} "
            "(this stage's start) on; run the same command again to start this job afresh"
        )
    return initial_epoch


def _check_finite(history: list[dict], cfg: DictConfig) -> None:
    last = history[-1]
    if not math.isfinite(last.get("loss", math.nan)):
        raise UserError(
            f"loss became {last.get('loss')} in epoch {len(history)}: training diverged; "
            f"lower optimizer.lr (now {cfg.optimizer.lr}) or use trainer.precision=float32"
        )
