"""PyTorch versions of the CIFAR presets' networks: ResNet-18, VGG-13(-BN) and AlexNet.

Written from the recipes, not from the Keras code: PyTorch's default initialisation
(kaiming_uniform with a=sqrt(5): U(+-1/sqrt(fan_in)) for weights and biases), its
BatchNorm (momentum 0.1, eps 1e-5) and symmetric padding. `init="he_normal"` gives each
layer what the Keras model does under model.init=he_normal: he_normal convs, and for the
linear layers glorot_uniform (ResNet-18) or N(0, 0.01) (VGG-13, AlexNet), zero biases.
"""

import math

import torch
from torch import nn

INITS = ("torch", "he_normal")


def _reinit(module: nn.Module, init: str, linear: str = "normal") -> nn.Module:
    """`linear`: the Keras model's own dense init under he_normal, "normal" or "glorot"."""
    if init not in INITS:
        raise ValueError(f"init={init!r}: use one of {', '.join(INITS)}")
    if init == "he_normal":
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d):
                # Keras' he_normal: a normal truncated at 2 std, std sqrt(2 / fan_in).
                fan_in = layer.weight[0].numel()
                std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
                nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            elif isinstance(layer, nn.Linear) and linear == "glorot":
                nn.init.xavier_uniform_(layer.weight)
            elif isinstance(layer, nn.Linear):
                # torchvision's classifier init, as models/vgg13.py and alexnet.py use it.
                nn.init.normal_(layer.weight, 0.0, 0.01)
            else:
                continue
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:
            # Projection shortcut (option B).
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, stages at 32, 16, 8 and 4 px."""

    def __init__(self, num_classes: int = 100, width: int = 64, init: str = "torch"):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks, in_channels = [], width
        for stage in range(4):
            channels = width * 2**stage
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_channels, channels, stride))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_channels, num_classes)
        _reinit(self, init, linear="glorot")

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _classifier(in_features, classifier_width, num_classes, dropout, dropout_first):
    layers = []
    for i in range(2):
        linear = nn.Linear(in_features if i == 0 else classifier_width, classifier_width)
        if dropout_first:  # torchvision's AlexNet
            layers += [nn.Dropout(dropout), linear, nn.ReLU()]
        else:  # torchvision's VGG
            layers += [linear, nn.ReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(classifier_width, num_classes))
    return nn.Sequential(*layers)


class VGG13(nn.Module):
    """CIFAR VGG-13 (-BN): ten 3x3 convs in five pooled blocks to 1x1, two dropout FCs."""

    BLOCKS = ((2, 1), (2, 2), (2, 4), (2, 8), (2, 8))

    def __init__(
        self,
        num_classes: int = 100,
        width: int = 64,
        classifier_width: int = 4096,
        dropout: float = 0.5,
        batch_norm: bool = True,
        init: str = "torch",
    ):
        super().__init__()
        layers, in_channels = [], 3
        for convs, multiplier in self.BLOCKS:
            for _ in range(convs):
                channels = width * multiplier
                layers.append(nn.Conv2d(in_channels, channels, 3, 1, 1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(channels))
                layers.append(nn.ReLU())
                in_channels = channels
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = _classifier(
            in_channels, classifier_width, num_classes, dropout, dropout_first=False
        )
        _reinit(self, init)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class AlexNet(nn.Module):
    """CIFAR AlexNet: 3x3 stride-1 conv1, three 3x3/2 pools (32 -> 16 -> 8 -> 4), dropout FCs."""

    MULTIPLIERS = (1, 3, 6, 4, 4)

    def __init__(
        self,
        num_classes: int = 100,
        width: int = 64,
        classifier_width: int = 4096,
        dropout: float = 0.5,
        batch_norm: bool = False,
        init: str = "torch",
    ):
        super().__init__()
        c1, c2, c3, c4, c5 = (width * m for m in self.MULTIPLIERS)

        def conv(cin, cout, kernel):
            block = [nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=not batch_norm)]
            block += [nn.BatchNorm2d(cout)] if batch_norm else []
            return [*block, nn.ReLU()]

        def pool():
            return [nn.MaxPool2d(3, 2, padding=1)]

        self.features = nn.Sequential(
            *conv(3, c1, 3),
            *pool(),
            *conv(c1, c2, 5),
            *pool(),
            *conv(c2, c3, 3),
            *conv(c3, c4, 3),
            *conv(c4, c5, 3),
            *pool(),
        )
        self.classifier = _classifier(
            c5 * 16, classifier_width, num_classes, dropout, dropout_first=True
        )
        _reinit(self, init)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def build(name: str, *, num_classes: int, init: str = "torch", **kwargs) -> nn.Module:
    """The network for a model config name (resnet18, vgg13, alexnet)."""
    if name == "resnet18":
        return ResNet18(num_classes, width=kwargs["width"], init=init)
    if name == "vgg13":
        return VGG13(num_classes, init=init, **kwargs)
    if name == "alexnet":
        return AlexNet(num_classes, init=init, **kwargs)
    raise ValueError(f"model {name!r} has no PyTorch version; use resnet18, vgg13 or alexnet")
