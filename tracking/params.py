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


def _data_that_ran(data: dict) -> None:
    """Leaves only the data source that wins: data.path, else data.synthetic, else the hub id.

    A smoke preset swaps in the synthetic group; with data.path set the run still trains on
    that folder, and its params must not say `synthetic`.
    """
    if data.get("path"):
        data.pop("synthetic", None)
        data.pop("hub_id", None)
        data["name"] = "cifar100"
    elif data.get("synthetic"):
        data.pop("hub_id", None)
    # The folder is where this machine keeps it, not what the experiment is: a tag.
    data.pop("path", None)


def flatten_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted MLflow params: what the run computes, on what data.

    Where and how verbosely a run is recorded (NOT_IDENTITY), the local data folder and
    secret-looking keys are left out; `machine_tags` keeps what a user may need of them.
    """
    tree = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_IDENTITY:
        _drop(tree, key)
    _data_that_ran(tree.get("data", {}))
    return {key: str(value)[:6000] for key, value in _flatten(tree) if not is_secret(key)}


def machine_tags(cfg: DictConfig) -> dict[str, str]:
    """Where this machine found the data: a tag, since another machine's folder differs."""
    return {"data.path": str(cfg.data.path)} if cfg.data.get("path") else {}


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
