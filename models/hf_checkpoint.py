"""Hugging Face ViT checkpoints: found, fetched, read and ported into keras-hub's ViT.

`model.checkpoint` is `hf://<org>/<name>` or a local folder in Hugging Face format
(config.json + model.safetensors [+ preprocessor_config.json]); a hub id is first fetched
into the Hugging Face cache, then both load from a folder the same way. Both layouts load:
a bare `ViTModel` (weight keys `embeddings...`, how google/vit-*-in21k is saved) and a
`ViTForImageClassification` (keys `vit.embeddings...` plus `classifier.*`).
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from keras import layers

# keras-hub's transformers loader and safetensors reader are not public API; the version
# is pinned in pyproject.toml.
from keras_hub.models import ViTBackbone
from keras_hub.src.utils.transformers.preset_loader import TransformersPresetLoader
from keras_hub.src.utils.transformers.safetensor_utils import SafetensorLoader
from safetensors import SafetensorError

from errors import UserError, one_line
from hf_hub import hub_reachable

HF_SCHEME = "hf://"
CONFIG_FILE = "config.json"
PROCESSOR_FILE = "preprocessor_config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
# transformers' ViTConfig default; keras-hub's ViTBackbone defaults to 1e-6 instead.
HF_LAYER_NORM_EPS = 1e-12
# ViTImageProcessor's defaults, for checkpoints without a preprocessor_config.json.
PROCESSOR_DEFAULTS = {
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
}
# PIL resampling codes (what a preprocessor_config.json stores) → keras Resizing names.
PIL_INTERPOLATION = {0: "nearest", 1: "lanczos3", 2: "bilinear", 3: "bicubic"}
# What a checkpoint whose weights do not match its config.json raises while loading.
LOAD_ERRORS = (SafetensorError, KeyError, ValueError, OSError)
HINT = (
    "point model.checkpoint at a local Hugging Face ViT folder (config.json + "
    "model.safetensors), or set model.pretrained=false for random weights"
)


class ViTSafetensorLoader(SafetensorLoader):
    """keras-hub's safetensors reader that also reads a bare `ViTModel` checkpoint.

    keras-hub's ViT converter asks for `vit.`-prefixed keys, as ViTForImageClassification
    saves them; ViTModel saves the same tensors without the prefix.
    """

    def get_prefixed_key(self, hf_weight_key, dict_like):
        keys = dict_like.keys()
        bare = hf_weight_key.removeprefix("vit.")
        if bare != hf_weight_key and hf_weight_key not in keys and bare in keys:
            return bare
        return super().get_prefixed_key(hf_weight_key, dict_like)


@dataclass(frozen=True)
class ViTCheckpoint:
    """A Hugging Face ViT checkpoint in a local folder, with its parsed configs."""

    folder: Path
    config: dict
    processor: dict  # preprocessor_config.json over ViTImageProcessor's defaults

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def num_labels(self) -> int | None:
        """The classifier's label count, for a ViTForImageClassification checkpoint."""
        if "ViTForImageClassification" not in (self.config.get("architectures") or []):
            return None
        return len(self.config.get("id2label") or {}) or None


def _fetch_from_hub(checkpoint: str) -> Path:
    """Downloads (or finds in the cache) a hub checkpoint's files; returns their folder."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    repo_id = checkpoint.removeprefix(HF_SCHEME).strip("/")
    online = hub_reachable()

    def fetch(filename: str, required: bool) -> Path | None:
        try:
            return Path(hf_hub_download(repo_id, filename, local_files_only=not online))
        except HFValidationError as error:
            raise UserError(
                f"model.checkpoint={checkpoint} is not a Hugging Face model id "
                f"({one_line(error)}); use hf://<org>/<name>, or {HINT}"
            ) from error
        except RepositoryNotFoundError as error:
            raise UserError(
                f"model.checkpoint={checkpoint}: no such Hugging Face repository, or it is "
                f"gated or private (log in with `hf auth login`); or {HINT}"
            ) from error
        except LocalEntryNotFoundError as error:
            if not required:
                return None
            why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "it is unreachable"
            raise UserError(
                f"model.checkpoint={checkpoint}: {filename} is not in the local Hugging Face "
                f"cache and the Hub ({constants.ENDPOINT}) cannot be asked: {why}; {HINT}"
            ) from error
        except EntryNotFoundError as error:
            if not required:
                return None
            raise UserError(
                f"model.checkpoint={checkpoint} has no {filename} (keras-hub reads only "
                f"safetensors weights); {HINT}"
            ) from error
        except OSError as error:  # HTTP errors, a full disk
            raise UserError(
                f"model.checkpoint={checkpoint}: downloading {filename} failed "
                f"({one_line(error)}); {HINT}"
            ) from error

    config = fetch(CONFIG_FILE, required=True)
    fetch(PROCESSOR_FILE, required=False)
    index = fetch(WEIGHTS_INDEX_FILE, required=False)
    if index is None:
        fetch(WEIGHTS_FILE, required=True)
    else:
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            fetch(shard, required=True)
    # hf_hub_download puts every file of one revision in the same snapshot folder.
    return config.parent


def _read_json(path: Path, checkpoint: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(
            f"model.checkpoint={checkpoint}: cannot read {path.name} ({one_line(error)}); {HINT}"
        ) from error


def resolve_checkpoint(checkpoint: str) -> ViTCheckpoint:
    """Finds a ViT checkpoint (hf://<org>/<name> or a local folder) and reads its configs."""
    checkpoint = str(checkpoint or "")
    if checkpoint.startswith(HF_SCHEME):
        folder = _fetch_from_hub(checkpoint)
    elif "://" in checkpoint:
        raise UserError(f"model.checkpoint={checkpoint}: use hf://<org>/<name>, or {HINT}")
    else:
        folder = Path(checkpoint).expanduser()
        if not checkpoint or not folder.is_dir():
            raise UserError(f"model.checkpoint={checkpoint!r}: no such folder; {HINT}")
    if not (folder / CONFIG_FILE).is_file():
        raise UserError(f"model.checkpoint={checkpoint} has no {CONFIG_FILE}; {HINT}")
    config = _read_json(folder / CONFIG_FILE, checkpoint)
    if config.get("model_type") != "vit":
        raise UserError(
            f"model.checkpoint={checkpoint} is not a Hugging Face ViT checkpoint "
            f"(config.json model_type={config.get('model_type')!r}, expected 'vit'); {HINT}"
        )
    if not ((folder / WEIGHTS_FILE).is_file() or (folder / WEIGHTS_INDEX_FILE).is_file()):
        raise UserError(
            f"model.checkpoint={checkpoint} has no {WEIGHTS_FILE} (keras-hub reads only "
            f"safetensors weights); {HINT}"
        )
    processor = dict(PROCESSOR_DEFAULTS)
    if (folder / PROCESSOR_FILE).is_file():
        processor.update(_read_json(folder / PROCESSOR_FILE, checkpoint))
    return ViTCheckpoint(folder, config, processor)


def normalization(processor: Mapping) -> tuple[list[float], list[float], str]:
    """(mean, std, interpolation) for `preprocess`, from ViTImageProcessor settings.

    The processor computes ((x * rescale_factor) - mean) / std on 0-1 means; on the 0-255
    scale that `preprocess` normalizes, the same is (x - mean / rf) / (std / rf).
    """
    scale = float(processor["rescale_factor"]) if processor.get("do_rescale", True) else 1.0
    if processor.get("do_normalize", True):
        mean, std = processor["image_mean"], processor["image_std"]
        mean = [float(m) for m in mean] if isinstance(mean, list) else [float(mean)] * 3
        std = [float(s) for s in std] if isinstance(std, list) else [float(std)] * 3
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    interpolation = PIL_INTERPOLATION.get(processor.get("resample", 2), "bilinear")
    return [m / scale for m in mean], [s / scale for s in std], interpolation


def load_backbone(checkpoint: ViTCheckpoint, source: str) -> ViTBackbone:
    """ViTBackbone from the checkpoint's config, weights ported by keras-hub's converter."""
    config = checkpoint.config
    if config.get("hidden_act", "gelu") != "gelu" or config.get("num_channels", 3) != 3:
        raise UserError(
            f"model.checkpoint={source}: keras-hub's ViT needs hidden_act=gelu and 3 "
            f"channels, config.json has {config.get('hidden_act')} and "
            f"{config.get('num_channels')}; {HINT}"
        )
    preset = str(checkpoint.folder)
    loader = TransformersPresetLoader(preset, config)
    backbone = loader.load_backbone(
        ViTBackbone,
        load_weights=False,
        layer_norm_epsilon=config.get("layer_norm_eps", HF_LAYER_NORM_EPS),
        name="backbone",
    )
    try:
        with ViTSafetensorLoader(preset) as weights:
            loader.converter.convert_weights(backbone, weights, config)
    except LOAD_ERRORS as error:
        # A missing key or a tensor of the wrong shape: the weights do not match config.json.
        raise UserError(
            f"model.checkpoint={source}: its weights do not load into the ViT its config.json "
            f"describes ({one_line(error)}); {HINT}"
        ) from error
    return backbone


def port_classifier(logits: layers.Dense, checkpoint: ViTCheckpoint, source: str) -> None:
    try:
        with ViTSafetensorLoader(str(checkpoint.folder)) as weights:
            weights.port_weight(logits.kernel, "classifier.weight", hook_fn=lambda x, _: x.T)
            weights.port_weight(logits.bias, "classifier.bias")
    except LOAD_ERRORS as error:
        raise UserError(
            f"model.checkpoint={source}: its classifier does not load ({one_line(error)}); {HINT}"
        ) from error
