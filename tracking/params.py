"""What of a composed config identifies a run, and what is logged as its params."""

import fnmatch
import hashlib
import json

import keras
from omegaconf import DictConfig, OmegaConf

# Keys that say where or how verbosely a run is recorded, not what it computes (model.sizes
# lists the sizes a model can take; the chosen one shows resolved under model.net). Two
# configs that differ only here are the same experiment, so resume and skip treat them as one.
NOT_IDENTITY = (
    "tracking",
    "resume",
    "trainer.verbose",
    "trainer.train_eval_size",  # what is measured each epoch, not what is trained
    "trainer.progress",
    "data.cache_dir",
    "model.sizes",
)

# Values that must never reach a tracking server that others can read.
SECRET_PATTERNS = ("*token*", "*password*", "*secret*", "*key*")


def _drop(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.get(part)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


def config_identity(cfg: DictConfig, backend: str | None = None) -> str:
    """A stable 16-hex hash of the resolved config minus NOT_IDENTITY, plus the Keras backend.

    The backend is in because it changes the numbers (kernels, random streams), so a JAX run
    of a config that FINISHED on TensorFlow is a run of its own, not a skip.
    """
    tree = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_IDENTITY:
        _drop(tree, key)
    tree["keras_backend"] = backend or keras.backend.backend()
    blob = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], tree


def is_secret(key: str) -> bool:
    return any(
        fnmatch.fnmatch(part.lower(), pattern)
        for part in key.split(".")
        for pattern in SECRET_PATTERNS
    )


def flatten_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted MLflow params, without secret-looking keys."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    _drop(tree, "model.sizes")
    return {key: str(value)[:6000] for key, value in _flatten(tree) if not is_secret(key)}


def _mask(tree):
    if isinstance(tree, dict):
        return {key: "***" if is_secret(str(key)) else _mask(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_mask(value) for value in tree]
    return tree


def public_config(cfg: DictConfig) -> dict:
    """The resolved config with secret-looking values masked: what config.yaml may show."""
    return _mask(OmegaConf.to_container(cfg, resolve=True))


def public_overrides(overrides) -> list[str]:
    """Hydra override strings (`+tracking.api_token=...`) with secret-looking values masked."""
    masked = []
    for override in overrides:
        key, equals, _ = override.partition("=")
        secret = equals and is_secret(key.lstrip("+~"))
        masked.append(f"{key}=***" if secret else override)
    return masked
