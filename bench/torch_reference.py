"""A PyTorch-eager reference for bench/throughput.py: the same network, batch and precision.

    python bench/torch_reference.py resnet18 vit --batch-size 128 --precision mixed_bfloat16

ResNet-18 with the CIFAR stem (3x3 stride-1 first conv, no max-pool) and ViT-B/16 (class
token, pre-norm encoder, GELU), as models/ builds them, trained on random data with SGD:
the train step of plain PyTorch, eager (no torch.compile), channels_last, autocast at the
run's precision. No augmentation, so it is the network's speed alone. Prints one JSON line
per model and appends it to --out.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

# Run as a script from the repo root: the parity harness's ResNet-18 is the same network.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.parity.torch_models import ResNet18  # noqa: E402

MODELS = ("resnet18", "vit")
AUTOCAST = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16, "float32": None}


class ViT(nn.Module):
    def __init__(self, image_size, patch, layers, heads, hidden, mlp, num_classes):
        super().__init__()
        tokens = (image_size // patch) ** 2 + 1
        self.patches = nn.Conv2d(3, hidden, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.position = nn.Parameter(torch.zeros(1, tokens, hidden))
        layer = nn.TransformerEncoderLayer(
            hidden, heads, mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.patches(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(len(x), -1, -1), x], dim=1) + self.position
        return self.head(self.norm(self.encoder(x))[:, 0])


def build(args) -> nn.Module:
    if args.model == "resnet18":
        return ResNet18(num_classes=args.num_classes, width=args.width)
    return ViT(
        args.image_size,
        args.patch_size,
        args.num_layers,
        args.num_heads,
        args.hidden_dim,
        args.mlp_dim,
        args.num_classes,
    )


def measure(args, model_name: str) -> dict:
    args = argparse.Namespace(**{**vars(args), "model": model_name})
    if args.image_size is None:
        args.image_size = 32 if args.model == "resnet18" else 224
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build(args).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    dtype = AUTOCAST[args.precision]
    # fp16 needs loss scaling, as Keras' LossScaleOptimizer does.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def wait():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    wait()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        wait()
        seconds.append(time.perf_counter() - start)
    total = sum(seconds)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    return {
        "check": "torch_reference",
        "model": args.model,
        "framework": f"torch {torch.__version__} eager",
        "device": name,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": args.steps,
        "step_ms_mean": round(1000 * total / len(seconds), 4),
        "images_per_second": round(args.batch_size * len(seconds) / total, 2),
    }


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=None, help="32 ResNet, 224 ViT")
    parser.add_argument("--precision", choices=sorted(AUTOCAST), default="mixed_bfloat16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--width", type=int, default=64, help="ResNet-18's first width")
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--num-layers", type=int, default=12)
    parser.add_argument("--num-heads", type=int, default=12)
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument("--mlp-dim", type=int, default=3072)
    parser.add_argument("--out", type=Path, default=None, help="append the JSON line here")
    parser.add_argument("--require-cuda", action="store_true", help="exit 3 without a GPU")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.require_cuda and not torch.cuda.is_available():
        print(f"torch {torch.__version__} sees no CUDA GPU", file=sys.stderr)
        return 3
    for model in args.models:
        record = json.dumps(measure(args, model))
        print(record, flush=True)
        if args.out is not None:
            with args.out.open("a") as file:
                file.write(record + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
