"""CIFAR-100 through `datasets.load_dataset`, decoded once to uint8 arrays and cached.

The source is, in order of precedence: `data.path` (a local folder in the hub's parquet
layout, e.g. ../shared/cifar100), `data.synthetic` (a generated dataset, written once under
`data.cache_dir`) or `data.hub_id` (default uoft-cs/cifar100). All three go through
`datasets.load_dataset` and the same layout checks. The decoded train and test arrays are
cached as one .npz under `data.cache_dir`:

- a local folder is keyed on its files' names, sizes and mtimes, so a hit never calls
  load_dataset and a changed or replaced file decodes afresh;
- a hub id is keyed on the datasets fingerprint of the prepared splits (it changes with
  the hub revision), so a hit calls load_dataset on its own cache but skips the decode.

The validation split is a stratified hold-out of `data.val_size` training images drawn
with the run's seed; the test split keeps its stored order.
"""

import hashlib
import io
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data import synthetic
from errors import UserError, one_line
from hf_hub import hub_reachable

log = logging.getLogger(__name__)

DEFAULT_HUB_ID = "uoft-cs/cifar100"
DEFAULT_CACHE_DIR = "~/.cache/cifar100-keras"
SHARED_HINT = "data.path=../shared/cifar100"
COLUMNS = ("img", "fine_label", "coarse_label")
# Bump when the cached arrays change meaning, so old cache files are ignored.
CACHE_VERSION = 1

_ARRAY_KEYS = (
    "train_images",
    "train_labels",
    "train_coarse_labels",
    "test_images",
    "test_labels",
    "test_coarse_labels",
    "class_names",
    "superclass_names",
)


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy fields elementwise is ambiguous
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) int32 fine labels 0..99
    coarse_labels: np.ndarray  # (N,) int32 superclass labels 0..19

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, eq=False)
class Cifar100:
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    superclass_names: list[str]
    dataset_id: str  # hub id, resolved local path, or "synthetic:<params>"
    fingerprint: str  # sha256 (16 hex) of every array and name, for an MLflow tag

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[1])


def load_cifar100(cfg: Mapping, seed: int) -> Cifar100:
    """Load the dataset the `data` config node names, split off a stratified validation set."""
    cache_dir = _cache_dir(cfg)
    synthetic_params = cfg.get("synthetic")
    path = cfg.get("path")
    hub_id = cfg.get("hub_id")
    if path:
        # An explicit local copy wins, also over experiment=smoke's generated data.
        folder = _resolve(path)
        if not folder.is_dir():
            shown = f"{path} (= {folder})" if str(folder) != str(path) else str(path)
            raise UserError(
                f"data.path={shown}: no such folder; point it at a CIFAR-100 copy in the "
                f"hub's parquet layout, e.g. {SHARED_HINT}"
            )
        dataset_id = str(folder)
        arrays = _load_local(folder, cache_dir, key_name=f"data.path={path}")
    elif synthetic_params:
        folder, dataset_id = _synthetic_folder(synthetic_params, cfg, cache_dir)
        arrays = _load_local(folder, cache_dir, key_name="data.synthetic")
    elif hub_id:
        dataset_id = str(hub_id)
        arrays = _load_hub(dataset_id, cache_dir)
    else:
        raise UserError(
            f"data.path and data.hub_id are both unset; set data.hub_id={DEFAULT_HUB_ID} "
            f"or {SHARED_HINT}"
        )

    _check_config(arrays, cfg, dataset_id)
    _warn_empty_classes(arrays, dataset_id)
    train, val = _stratified_split(arrays, cfg.get("val_size"), seed)
    test = Split(arrays["test_images"], arrays["test_labels"], arrays["test_coarse_labels"])
    class_names = [str(name) for name in arrays["class_names"]]
    superclass_names = [str(name) for name in arrays["superclass_names"]]
    return Cifar100(
        train=train,
        val=val,
        test=test,
        class_names=class_names,
        superclass_names=superclass_names,
        dataset_id=dataset_id,
        fingerprint=_fingerprint((train, val, test), class_names, superclass_names),
    )


# --- sources ------------------------------------------------------------------------------


def _resolve(path) -> Path:
    """Expand ~ and resolve a relative path against the current working directory."""
    return (Path.cwd() / Path(str(path)).expanduser()).resolve()


def _cache_dir(cfg: Mapping) -> Path:
    folder = _resolve(cfg.get("cache_dir") or DEFAULT_CACHE_DIR)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError("not writable")
    except OSError as error:
        raise UserError(
            f"data.cache_dir={folder}: cannot write there ({error}); point it at a writable "
            "folder, e.g. data.cache_dir=/tmp/cifar100-cache"
        ) from None
    return folder


def _load_local(folder: Path, cache_dir: Path, key_name: str) -> dict[str, np.ndarray]:
    """Decoded arrays of a local folder in the hub's parquet layout, through the cache."""
    files = _source_files(folder)
    if not any(file.suffix == ".parquet" for file in files):
        raise UserError(
            f"{key_name}: {folder} holds no .parquet files; point it at a CIFAR-100 copy in "
            f"the hub's parquet layout (train-*.parquet, test-*.parquet), e.g. {SHARED_HINT}"
        )
    listing = [(str(file.relative_to(folder)), *_size_mtime(file)) for file in files]
    key = _hash("local", CACHE_VERSION, str(folder), listing)
    cache_file = cache_dir / f"cifar100-{key}.npz"
    arrays = _read_cache(cache_file)
    if arrays is None:
        import datasets  # slow to import; a cache hit never needs it

        # datasets converts the parquet files to arrow before reading them: do it in a
        # throwaway folder, since the decoded .npz is all we keep.
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".hf-") as hf_cache:
            try:
                splits = datasets.load_dataset(str(folder), cache_dir=hf_cache)
            except (datasets.exceptions.DatasetsError, FileNotFoundError, ValueError) as error:
                raise UserError(
                    f"{key_name}: datasets cannot read {folder} ({one_line(error)}); "
                    f"point it at a CIFAR-100 copy in the hub's parquet layout, e.g. {SHARED_HINT}"
                ) from None
            arrays = _decode(splits, f"{key_name} ({folder})", shards=files)
            del splits
        _write_cache(cache_file, arrays)
    return arrays


def _source_files(folder: Path) -> list[Path]:
    """The files datasets may read: everything but hidden files and folders."""
    return sorted(
        file
        for file in folder.rglob("*")
        if file.is_file()
        and not any(part.startswith(".") for part in file.relative_to(folder).parts)
    )


def _size_mtime(file: Path) -> tuple[int, int]:
    stat = file.stat()
    return stat.st_size, stat.st_mtime_ns


def _load_hub(hub_id: str, cache_dir: Path) -> dict[str, np.ndarray]:
    """Decoded arrays of a hub dataset; fails within seconds when the hub is unreachable."""
    import datasets

    hf_cache = cache_dir / "hf"
    local = f"use a local copy: {SHARED_HINT}"
    # Offline mode still finds a copy prepared earlier in the cache, and fails at once otherwise.
    offline = datasets.config.HF_HUB_OFFLINE or not hub_reachable(datasets.config.HF_ENDPOINT)
    previous = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = offline
    try:
        splits = datasets.load_dataset(hub_id, cache_dir=str(hf_cache))
    except ConnectionError:
        raise UserError(
            f"data.hub_id={hub_id}: the Hugging Face Hub ({datasets.config.HF_ENDPOINT}) is "
            f"unreachable and no copy is cached in {hf_cache}; connect to the network or {local}"
        ) from None
    except datasets.exceptions.DatasetNotFoundError as error:
        raise UserError(
            f"data.hub_id={hub_id}: {one_line(error)}; set data.hub_id={DEFAULT_HUB_ID} or {local}"
        ) from None
    except (datasets.exceptions.DatasetsError, FileNotFoundError, ValueError) as error:
        raise UserError(f"data.hub_id={hub_id}: {one_line(error)}; {local}") from None
    finally:
        datasets.config.HF_HUB_OFFLINE = previous

    # The builder's fingerprints change with the hub revision; _decode checks the layout.
    key = _hash(
        "hub", CACHE_VERSION, hub_id, [(name, split._fingerprint) for name, split in splits.items()]
    )
    cache_file = cache_dir / f"cifar100-{key}.npz"
    arrays = _read_cache(cache_file)
    if arrays is None:
        arrays = _decode(splits, f"data.hub_id={hub_id}")
        _write_cache(cache_file, arrays)
    return arrays


def _synthetic_folder(params: Mapping, cfg: Mapping, cache_dir: Path) -> tuple[Path, str]:
    """The generated dataset's folder under cache_dir, written once (atomically) per params."""
    allowed = ("train_per_class", "test_per_class", "seed", "num_superclasses")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise UserError(
            f"data.synthetic: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    kwargs = {
        "train_per_class": params.get("train_per_class", 10),
        "test_per_class": params.get("test_per_class", 2),
        "seed": params.get("seed", 0),
        "num_classes": cfg.get("num_classes") or 100,
        "num_superclasses": params.get("num_superclasses", 20),
    }
    for name, value in kwargs.items():
        lowest = 0 if name == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            key = f"data.{name}" if name == "num_classes" else f"data.synthetic.{name}"
            raise UserError(f"{key}={value!r}: must be an integer >= {lowest}")
    if kwargs["num_superclasses"] > kwargs["num_classes"]:
        raise UserError(
            f"data.synthetic.num_superclasses={kwargs['num_superclasses']}: must not exceed "
            f"data.num_classes={kwargs['num_classes']}"
        )
    dataset_id = "synthetic:" + ",".join(f"{name}={value}" for name, value in kwargs.items())
    folder = cache_dir / f"synthetic-{_hash(synthetic.GENERATOR_VERSION, dataset_id)}"
    if not folder.is_dir():
        staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".synthetic-"))
        try:
            synthetic.write_synthetic_cifar(staging, **kwargs)
            os.chmod(staging, 0o755)  # mkdtemp makes it owner-only; the cache may be shared
            os.replace(staging, folder)
        except OSError:
            # A parallel job renamed its copy first: theirs is identical, use it.
            if not folder.is_dir():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder, dataset_id


# --- decoding and checks --------------------------------------------------------------------


def _undecodable(split, split_name: str, where: str, shards, error: Exception) -> str:
    """Names the shard and row of the first image that fails to decode."""
    import datasets
    from PIL import Image

    raw = split.cast_column("img", datasets.Image(decode=False))
    index, reason = None, one_line(error)
    for index, row in enumerate(raw):  # noqa: B007 (index is read after the loop)
        try:
            with Image.open(io.BytesIO(row["img"]["bytes"])) as image:
                image.convert("RGB")
        except Exception as bad:
            reason = one_line(bad)
            break
    else:
        index = None
    if index is None:
        return f"{where}: the {split_name} images do not decode ({reason})"
    place = f"row {index} of the {split_name} split"
    files = [file for file in shards or [] if file.name.startswith(f"{split_name}-")]
    if files:
        import pyarrow.parquet as pq

        first = 0
        for file in files:
            rows = pq.read_metadata(file).num_rows
            if index < first + rows:
                place = f"row {index - first} of {file.name} ({place})"
                break
            first += rows
    return f"{where}: the image at {place} cannot be decoded ({reason}); replace or remove that row"


def _decode(splits, where: str, shards: list[Path] | None = None) -> dict[str, np.ndarray]:
    """Check a DatasetDict has the CIFAR-100 layout and decode it to uint8/int32 arrays."""
    import datasets

    fix = f"point it at a CIFAR-100 copy in the hub's parquet layout, e.g. {SHARED_HINT}"
    missing = [name for name in ("train", "test") if name not in splits]
    if missing:
        raise UserError(
            f"{where}: no {'/'.join(missing)} split (found {', '.join(splits) or 'none'}; the "
            f"files must be named train-*.parquet and test-*.parquet); {fix}"
        )
    arrays = {}
    names = {}
    for split_name in ("train", "test"):
        split = splits[split_name]
        features = split.features
        absent = [column for column in COLUMNS if column not in features]
        if absent:
            raise UserError(
                f"{where}: the {split_name} split lacks column(s) {', '.join(absent)} "
                f"(found {', '.join(features)}); {fix}"
            )
        if not isinstance(features["img"], datasets.Image):
            raise UserError(
                f"{where}: column img of the {split_name} split is {features['img']!r}, not an "
                f"Image feature; {fix}"
            )
        for column in ("fine_label", "coarse_label"):
            if not isinstance(features[column], datasets.ClassLabel):
                raise UserError(
                    f"{where}: column {column} of the {split_name} split is "
                    f"{features[column]!r}, not a ClassLabel with names (the parquet schema "
                    f"lacks the Hugging Face features); {fix}"
                )
            names.setdefault(column, features[column].names)
            if features[column].names != names[column]:
                raise UserError(f"{where}: train and test disagree on the {column} names; {fix}")

        # Mode RGB turns a stray grayscale or RGBA image into 3 channels; real CIFAR is RGB.
        try:
            table = split.cast_column("img", datasets.Image(mode="RGB")).with_format("numpy")[:]
        except Exception as error:
            raise UserError(_undecodable(split, split_name, where, shards, error)) from None
        images = table["img"]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            shape = images.shape[1:] if images.dtype != object else "mixed sizes"
            raise UserError(
                f"{where}: the {split_name} images decode to {shape}, not 32x32 RGB; {fix}"
            )
        arrays[f"{split_name}_images"] = np.ascontiguousarray(images)
        for column, key in (("fine_label", "labels"), ("coarse_label", "coarse_labels")):
            labels = np.asarray(table[column])
            count = len(names[column])
            if len(labels) and (labels.min() < 0 or labels.max() >= count):
                raise UserError(
                    f"{where}: {split_name} {column} values lie outside 0..{count - 1}; {fix}"
                )
            arrays[f"{split_name}_{key}"] = labels.astype(np.int32)
    arrays["class_names"] = np.asarray(names["fine_label"], dtype=str)
    arrays["superclass_names"] = np.asarray(names["coarse_label"], dtype=str)
    return arrays


def _check_config(arrays: Mapping, cfg: Mapping, dataset_id: str) -> None:
    """The dataset must match what the config declares (the models are built from it)."""
    num_classes = len(arrays["class_names"])
    if cfg.get("num_classes") not in (None, num_classes):
        raise UserError(
            f"data.num_classes={cfg.get('num_classes')} but {dataset_id} has {num_classes} "
            f"fine classes; set data.num_classes={num_classes} or point data.path at CIFAR-100"
        )
    image_size = arrays["train_images"].shape[1]
    if cfg.get("image_size") not in (None, image_size):
        raise UserError(
            f"data.image_size={cfg.get('image_size')} but {dataset_id} holds {image_size}px "
            f"images; set data.image_size={image_size} (models resize via model.input_size)"
        )


def _warn_empty_classes(arrays: Mapping, dataset_id: str) -> None:
    names = arrays["class_names"]
    counts = np.bincount(arrays["train_labels"], minlength=len(names))
    empty = [str(names[index]) for index in np.flatnonzero(counts == 0)]
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        log.warning(
            "data: %d of %d classes have no training images in %s (%s); no model can learn them",
            len(empty),
            len(names),
            dataset_id,
            shown,
        )


def _stratified_split(arrays: Mapping, val_size, seed: int) -> tuple[Split, Split]:
    """Hold out val_size training images, every class in proportion; both keep stored order."""
    from sklearn.model_selection import train_test_split

    labels = arrays["train_labels"]
    counts = np.bincount(labels)
    present = int((counts > 0).sum())
    low, high = present, len(labels) - present
    if isinstance(val_size, bool) or not isinstance(val_size, int | np.integer):
        raise UserError(
            f"data.val_size={val_size!r}: must be an integer number of training images in "
            f"[{low}, {high}]"
        )
    if low > high or counts[counts > 0].min() < 2:
        raise UserError(
            f"data.val_size={val_size}: the training split ({len(labels)} images) has a class "
            "with fewer than 2 images, too few to stratify; use a larger dataset"
        )
    if not low <= val_size <= high:
        raise UserError(
            f"data.val_size={val_size}: must lie in [{low}, {high}] (at least one image per "
            f"class in each of val and train, out of {len(labels)} training images)"
        )
    train_index, val_index = train_test_split(
        np.arange(len(labels)), test_size=int(val_size), stratify=labels, random_state=seed
    )

    def subset(index):
        index = np.sort(index)
        return Split(
            arrays["train_images"][index],
            labels[index],
            arrays["train_coarse_labels"][index],
        )

    return subset(train_index), subset(val_index)


# --- cache ----------------------------------------------------------------------------------


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent or damaged (then they are rebuilt).

    Reading every member checks its zip CRC, so a truncated or bit-flipped file is caught
    here, not as a crash later; the arrays must also agree with each other."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in _ARRAY_KEYS}
        for split in ("train", "test"):
            count = len(arrays[f"{split}_images"])
            if {len(arrays[f"{split}_labels"]), len(arrays[f"{split}_coarse_labels"])} != {count}:
                raise ValueError(f"{split} images and labels differ in length")
        return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        log.warning(
            "data.cache_dir=%s: %s is damaged (%s); rebuilding it", path.parent, path.name, reason
        )
        return None


def _write_cache(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write to a temporary file and rename: parallel jobs never see a partial cache."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.chmod(temporary, 0o644)  # mkstemp makes it owner-only; the cache may be shared
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


# --- hashing ------------------------------------------------------------------------------


def _hash(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _fingerprint(splits, class_names, superclass_names) -> str:
    digest = hashlib.sha256()
    for split in splits:
        for array in (split.images, split.labels, split.coarse_labels):
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).data)
    digest.update(repr((list(class_names), list(superclass_names))).encode())
    return digest.hexdigest()[:16]
