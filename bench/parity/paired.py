"""Keras and PyTorch trained side by side from the same weights on the same batches.

    python -m bench.parity.paired --out reports/paired --seed 0 --epochs 4 -- \
        experiment=resnet18_cifar model.size=tiny trainer.epochs=15 \
        trainer.precision=float32 data.path=../shared/cifar100

The two runs of bench/parity/run.py differ in their initial weights, batch order and
augmentation draws, each equal only in distribution, so a gap between them takes many
seeds to see. Here those are shared: both start from the Keras-drawn weights, PyTorch draws
each batch and its augmentation (as bench/parity/torch_recipe.py does), and the Keras
preset, compiled as train.py compiles it, trains on the same normalized images (its
in-graph augmentation skipped). What is left between the two loss curves is the training
step in float32. With --keras-augments Keras gets the raw uint8 batch instead and draws
its own crops and flips in its graph, as train.py does: then the two differ only in the
augmentation's random draws (equal in distribution, if the in-graph augmentation is
right). ResNet-18 only: VGG-13 and AlexNet have dropout, whose masks cannot be shared.
Prints each epoch's mean training loss and validation and test top-1 on both sides (so
`--epochs 15` says where the two end with every random draw shared); writes
OUT/paired-seed{S}.json.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np


def copy_weights(keras_model, torch_model, flatten_side: int = 1) -> None:
    """Conv and dense weights from Keras into the PyTorch network, layer by layer in order.

    `flatten_side` is the feature map's side at the flatten: Keras flattens (h, w, c),
    PyTorch (c, h, w), so the first dense kernel's rows are reordered.
    """
    import keras
    import torch

    ours = [
        layer
        for layer in keras_model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    theirs = [
        module
        for module in torch_model.modules()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    first_dense = True
    with torch.no_grad():
        for layer, module in zip(ours, theirs, strict=True):
            kernel, *bias = layer.get_weights()
            if kernel.ndim == 4:
                weight = kernel.transpose(3, 2, 0, 1)
            else:
                weight = kernel.T
                if first_dense:
                    side, out = flatten_side, weight.shape[0]
                    weight = weight.reshape(out, side, side, -1).transpose(0, 3, 1, 2)
                    weight = weight.reshape(out, -1)
                    first_dense = False
            module.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            if bias:
                module.bias.copy_(torch.from_numpy(bias[0]))


def train_paired(
    cfg, seed: int, epochs: int, keras_augments: bool = False, log=print
) -> tuple[list[dict], list[dict]]:
    """Per step {"step", "keras_loss", "torch_loss"}, and per epoch its mean losses and
    both sides' validation and test top-1 (fractions, as run.py records them)."""
    import keras
    import torch
    from hydra.utils import instantiate

    from bench.parity import torch_models
    from bench.parity.run import recipe_from_config
    from bench.parity.torch_recipe import (
        augment,
        lr_at,
        make_optimizer,
        to_input,
        top1,
        train_step,
    )
    from data.cifar100 import load_cifar100
    from training.evaluate import predict_logits
    from training.fit import Stage, build_model, compile_stage

    data = load_cifar100(cfg.data, seed=seed)
    keras.utils.set_random_seed(seed)
    if keras_augments:
        model = trained = build_model(cfg, data)  # as train.py builds it
    else:
        model = instantiate(
            cfg.model.net, num_classes=data.num_classes, image_size=data.image_size, augment=None
        )
        # Keras trains from the normalized images PyTorch made.
        trained = keras.Model(model.get_layer("normalize").output, model.output)
    recipe = recipe_from_config(cfg, weight_decay=cfg.optimizer.weight_decay)
    reference = torch_models.build(
        recipe.model, num_classes=data.num_classes, **recipe.model_kwargs
    )
    copy_weights(model, reference)
    steps_per_epoch = math.ceil(len(data.train.labels) / recipe.batch_size)
    stage = Stage(0, cfg.trainer.epochs, cfg.optimizer.lr, unfreeze=False)
    compile_stage(trained, cfg, stage, steps_per_epoch)
    optimizer = make_optimizer(reference, recipe)
    images = torch.from_numpy(data.train.images)
    labels = torch.from_numpy(data.train.labels.astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    reference.train()
    inputs = "Keras augments in its graph" if keras_augments else "the same augmented images"
    log(
        f"paired, seed {seed}: resnet18 width {recipe.model_kwargs['width']}, "
        f"{len(labels):,} training images, epochs 1-{epochs} of {cfg.trainer.epochs} "
        f"({steps_per_epoch} steps each)"
    )
    log(f"inputs: {inputs}")
    log(f"{'':7}{'mean training loss':^28}{'val top-1 %':^16}{'test top-1 %':^16}")
    log(f"{'epoch':7}{'keras':>8}{'torch':>8}{'keras-torch':>12}" + f"{'keras':>8}{'torch':>8}" * 2)
    rows, epoch_rows = [], []
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            x = to_input(augment(images[batch], recipe.crop_padding, recipe.flip, generator))
            y = labels[batch]
            if keras_augments:
                keras_input = images[batch].numpy()
            else:
                keras_input = x.permute(0, 2, 3, 1).contiguous().numpy()
            keras_loss = trained.train_on_batch(keras_input, y.numpy(), return_dict=True)["loss"]
            lr = lr_at(len(rows), recipe, steps_per_epoch)
            loss, _ = train_step(reference, optimizer, x, y, lr, recipe.label_smoothing)
            rows.append(
                {"step": len(rows), "keras_loss": float(keras_loss), "torch_loss": loss.item()}
            )
        last = rows[-steps_per_epoch:]
        row = {
            "epoch": epoch + 1,
            "keras_loss": float(np.mean([r["keras_loss"] for r in last])),
            "torch_loss": float(np.mean([r["torch_loss"] for r in last])),
        }
        for split in ("val", "test"):
            held_out = getattr(data, split)
            # The full model takes the raw images; its augmentation is off at inference.
            predicted = predict_logits(model, held_out, batch_size=1000).argmax(axis=1)
            row[f"keras_{split}_top1"] = float((predicted == held_out.labels).mean())
            row[f"torch_{split}_top1"] = top1(reference, held_out.images, held_out.labels)
        reference.train()  # top1 left it in eval mode
        epoch_rows.append(row)
        log(
            f"{f'{epoch + 1}/{epochs}':7}{row['keras_loss']:8.4f}{row['torch_loss']:8.4f}"
            f"{row['keras_loss'] - row['torch_loss']:+12.4f}"
            + "".join(
                f"{100 * row[f'{side}_{split}_top1']:8.2f}"
                for split in ("val", "test")
                for side in ("keras", "torch")
            )
        )
    return rows, epoch_rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4, help="epochs to train (of the schedule)")
    parser.add_argument("--threads", type=int, help="PyTorch threads (default: all cores)")
    parser.add_argument(
        "--keras-augments",
        action="store_true",
        help="Keras draws its own crops and flips in its graph from the raw batch",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    args = parser.parse_args(argv)

    import torch

    from bench.parity.run import absolute_data_path, compose
    from errors import UserError

    cfg = compose([absolute_data_path(o) for o in args.overrides] + [f"seed={args.seed}"])
    if cfg.model.name != "resnet18":
        sys.exit(f"model={cfg.model.name}: paired runs take resnet18 only (dropout masks differ)")
    optimizer = cfg.optimizer
    if (optimizer._target_, optimizer.weight_decay_form, optimizer.momentum_form) != (
        "training.optimizers.sgd",
        "coupled",
        "torch",
    ):
        sys.exit(
            "optimizer: paired runs need PyTorch's SGD update; use optimizer=sgd with "
            "optimizer.weight_decay_form=coupled optimizer.momentum_form=torch (as the preset)"
        )
    if cfg.trainer.precision != "float32":
        sys.exit("trainer.precision: paired runs compare float32; add trainer.precision=float32")
    torch.set_num_threads(args.threads or os.cpu_count())
    try:
        rows, epoch_rows = train_paired(
            cfg,
            args.seed,
            args.epochs,
            keras_augments=args.keras_augments,
            log=lambda line: print(line, flush=True),
        )
    except UserError as error:  # bad config or data: one line, as train.py says it
        sys.exit(f"error: {error}")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "overrides": args.overrides,
        "seed": args.seed,
        "keras_augments": args.keras_augments,
        "epochs": epoch_rows,
        "steps": rows,
    }
    path = args.out / f"paired-seed{args.seed}.json"
    path.write_text(json.dumps(record))
    print(f"wrote {path} (the loss of every step, and each epoch's top-1, on both sides)")


if __name__ == "__main__":
    main()
