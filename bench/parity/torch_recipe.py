"""The from-scratch CIFAR recipe in plain PyTorch, the reference the Keras runs are held to.

SGD with Nesterov momentum and PyTorch's coupled weight decay (wd * w added to the
gradient), none on biases and BatchNorm; a per-step linear warmup then cosine decay;
cross-entropy with label smoothing; pad-and-crop plus horizontal flip drawn per image;
ImageNet mean/std on the 0-255 scale. Images arrive as the repo's uint8 arrays, so both
frameworks see the same split.
"""

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bench.parity import torch_models

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class Recipe:
    model: str
    model_kwargs: dict
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float  # coupled, PyTorch's form
    warmup_epochs: float
    warmup_start: float  # the warmup starts at lr * warmup_start
    final_scale: float  # cosine ends at lr * final_scale
    label_smoothing: float
    crop_padding: int
    flip: bool
    init: str = "torch"


def lr_at(step: int, recipe: Recipe, steps_per_epoch: int) -> float:
    """Linear warmup from lr * warmup_start to lr, then cosine to lr * final_scale, per step."""
    total = steps_per_epoch * recipe.epochs
    # Short runs still get a decay phase, as the Keras schedule does.
    warmup = min(int(round(recipe.warmup_epochs * steps_per_epoch)), max(total - 1, 0))
    if step < warmup:
        start = recipe.lr * recipe.warmup_start
        return start + (recipe.lr - start) * step / warmup
    decay_steps = max(total - warmup, 1)
    fraction = min(step - warmup, decay_steps) / decay_steps
    cosine = 0.5 * (1 + math.cos(math.pi * fraction))
    return recipe.lr * ((1 - recipe.final_scale) * cosine + recipe.final_scale)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalized float32 (N, 3, H, W)."""
    x = images.permute(0, 3, 1, 2).float()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    # NHWC in memory: oneDNN's CPU convolutions run faster on it.
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def augment(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Pad with zeros (black) and crop back at a random offset per image; flip half of them."""
    n, height, width, _ = images.shape
    if padding:
        padded = F.pad(images, (0, 0, padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
        rows = offsets[:, :1] + torch.arange(height)  # (n, height)
        cols = offsets[:, 1:] + torch.arange(width)  # (n, width)
        index = torch.arange(n)[:, None, None]
        images = padded[index, rows[:, :, None], cols[:, None, :]]
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        images = torch.where(flipped[:, None, None, None], images.flip(2), images)
    return images


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            is_norm = isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            (no_decay if is_norm or name == "bias" else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.SGD:
    """The recipe's SGD: Nesterov momentum, coupled decay on all but biases and BatchNorm."""
    return torch.optim.SGD(
        _param_groups(model, recipe.weight_decay),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
    )


def train_step(model, optimizer, x, y, lr: float, label_smoothing: float):
    """One update at `lr` on the batch (x, y); returns (loss, logits)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


@torch.no_grad()
def top1(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch=1000) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch):
        x = to_input(torch.from_numpy(images[start : start + batch]))
        predicted = model(x).argmax(1).numpy()
        correct += int((predicted == labels[start : start + batch]).sum())
    return correct / len(labels)


def train(recipe: Recipe, data, seed: int, log=print) -> dict:
    """Trains on data.train, evaluates val and test top-1 after every epoch.

    Returns {"epochs": [per-epoch dicts], "test_top1": last epoch's,
    "test_top1_at_best_val": at the best val epoch (what train.py evaluates)}.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = torch_models.build(
        recipe.model,
        num_classes=data.num_classes,
        init=recipe.init,
        **recipe.model_kwargs,
    ).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    images = torch.from_numpy(data.train.images)
    labels = torch.from_numpy(data.train.labels.astype(np.int64))
    n = len(labels)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    step, history = 0, []
    for epoch in range(recipe.epochs):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = 0.0, 0
        for start in range(0, n, recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            x = augment(images[batch], recipe.crop_padding, recipe.flip, generator)
            y = labels[batch]
            lr = lr_at(step, recipe, steps_per_epoch)
            loss, logits = train_step(model, optimizer, to_input(x), y, lr, recipe.label_smoothing)
            step += 1
            loss_sum += loss.item() * len(batch)
            correct += int((logits.argmax(1) == y).sum())
        seconds = time.perf_counter() - started
        row = {
            "epoch": epoch + 1,
            "loss": loss_sum / n,
            "top1": correct / n,
            "val_top1": top1(model, data.val.images, data.val.labels),
            "test_top1": top1(model, data.test.images, data.test.labels),
            "lr": lr_at(step - 1, recipe, steps_per_epoch),
            "epoch_seconds": seconds,
        }
        history.append(row)
        log(
            f"torch epoch {row['epoch']}/{recipe.epochs}: loss {row['loss']:.4f} "
            f"top1 {row['top1']:.4f} val_top1 {row['val_top1']:.4f} "
            f"test_top1 {row['test_top1']:.4f} ({seconds:.0f} s)"
        )
        if not math.isfinite(row["loss"]):
            break
    best = max(history, key=lambda r: r["val_top1"])
    return {
        "epochs": history,
        "test_top1": history[-1]["test_top1"],
        "test_top1_at_best_val": best["test_top1"],
        "best_epoch": best["epoch"],
    }
