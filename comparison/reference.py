"""The reference study's CIFAR-100 top-1 accuracies, the yardstick of the comparison.

Cited in reports as "the reference study". Architectures it did not test get no number.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    top1: float  # test top-1, in %
    setting: str  # how the reference study trained it
    strategy: str | None  # our strategy that matches that setting; None when unclear


# In the order the reference study presents them: from scratch, then transfer learning.
REFERENCE: dict[str, Reference] = {
    "alexnet": Reference(56.97, "from scratch", "scratch"),
    "vgg13": Reference(57.03, "from scratch", "scratch"),
    "resnet18": Reference(63.16, "from scratch", "scratch"),
    "effnetv2": Reference(77.39, "transfer learning, frozen feature extractor", "freeze"),
    "vit": Reference(90.54, "Transformer, pretrained (Hugging Face)", None),
}


def reference_top1(architecture: str) -> float | None:
    """The reported top-1 in %, None for an architecture the reference study did not test."""
    reference = REFERENCE.get(architecture)
    return reference.top1 if reference else None


def architecture_order(architecture: str) -> tuple[int, str]:
    """Sort key: the reference study's order first, then any other name alphabetically."""
    names = list(REFERENCE)
    index = names.index(architecture) if architecture in REFERENCE else len(names)
    return index, architecture
