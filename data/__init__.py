"""CIFAR-100 loading (data.cifar100) and a generated stand-in for offline runs (data.synthetic)."""

from data.cifar100 import Cifar100, Split, load_cifar100
from data.synthetic import write_synthetic_cifar

__all__ = ["Cifar100", "Split", "load_cifar100", "write_synthetic_cifar"]
