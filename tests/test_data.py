"""data.cifar100 and data.synthetic: layout, cache, stratified split, errors, the real copy.

Every dataset here is generated into tmp_path in the hub's parquet layout and read through
datasets.load_dataset, as the real one is; caches live in tmp_path, never in ~/.cache.
"""

import json
import os
import socket
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data.cifar100 import load_cifar100
from data.synthetic import fine_to_coarse, write_synthetic_cifar
from errors import UserError

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "cifar100"
SMALL = {"train_per_class": 10, "test_per_class": 3, "num_classes": 10, "num_superclasses": 5}


def _cfg(cache_dir, **overrides):
    cfg = {
        "hub_id": None,
        "path": None,
        "cache_dir": str(cache_dir),
        "val_size": 20,
        "num_classes": 10,
        "image_size": 32,
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """10 classes x (10 train, 3 test), read-only use: tests that change files copy it."""
    return write_synthetic_cifar(tmp_path_factory.mktemp("small") / "cifar", seed=0, **SMALL)


def _copy(folder, destination):
    destination.mkdir(parents=True)
    for file in folder.iterdir():
        (destination / file.name).write_bytes(file.read_bytes())
    return destination


def _raw(folder):
    """The stored splits, read straight from the parquet files with datasets."""
    splits = datasets.load_dataset(str(folder), cache_dir=str(folder.parent / "hf-raw"))
    return {name: splits[name].with_format("numpy")[:] for name in ("train", "test")}


def _one_line_error(cfg, seed=0):
    with pytest.raises(UserError) as caught:
        load_cifar100(cfg, seed)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- the generated dataset ------------------------------------------------------------------


def test_synthetic_writes_the_hub_parquet_layout(small_folder):
    names = sorted(file.name for file in small_folder.iterdir())
    assert names == ["README.md", "test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    assert (small_folder / "README.md").read_text().startswith("---\npretty_name:")

    schema = pq.read_schema(small_folder / "train-00000-of-00001.parquet")
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["img"] == {"_type": "Image"}
    assert features["fine_label"]["_type"] == "ClassLabel"
    assert len(features["fine_label"]["names"]) == 10
    assert features["coarse_label"]["names"][0] == "superclass_0"
    if REAL.is_dir():  # same columns and types as the real copy, metadata in the same form
        real = pq.read_schema(REAL / "test-00000-of-00001.parquet")
        assert real.remove_metadata().equals(schema.remove_metadata())
        real_features = json.loads(real.metadata[b"huggingface"])["info"]["features"]
        assert {key: value["_type"] for key, value in real_features.items()} == {
            key: value["_type"] for key, value in features.items()
        }

    splits = datasets.load_dataset(str(small_folder), cache_dir=str(small_folder.parent / "hf"))
    assert {name: len(split) for name, split in splits.items()} == {"train": 100, "test": 30}
    assert isinstance(splits["train"].features["img"], datasets.Image)
    assert splits["train"].features["fine_label"].names[:2] == ["class_0", "class_1"]
    first = splits["train"][0]["img"]
    assert (first.format, first.size, first.mode) == ("PNG", (32, 32), "RGB")
    table = splits["test"].with_format("numpy")[:]
    np.testing.assert_array_equal(table["coarse_label"], table["fine_label"] // 2)
    np.testing.assert_array_equal(table["fine_label"], np.repeat(np.arange(10), 3))  # grouped


def test_synthetic_mapping_and_determinism(tmp_path, small_folder):
    np.testing.assert_array_equal(fine_to_coarse(100, 20), np.arange(100) // 5)
    again = write_synthetic_cifar(tmp_path / "again", seed=0, **SMALL)
    other = write_synthetic_cifar(tmp_path / "other", seed=1, **SMALL)
    name = "train-00000-of-00001.parquet"
    assert pq.read_table(again / name).equals(pq.read_table(small_folder / name))
    assert not pq.read_table(other / name).equals(pq.read_table(small_folder / name))


def test_synthetic_classes_are_learnable(tmp_path):
    """A nearest-centroid classifier on colour and spectrum features beats chance (1%) by far."""
    folder = write_synthetic_cifar(tmp_path / "s", train_per_class=5, test_per_class=2, seed=3)
    raw = _raw(folder)

    def features(images):
        images = images.astype(np.float32)
        spectrum = np.abs(np.fft.fft2(images.mean(-1)))[:, :8, :8].reshape(len(images), -1)
        spectrum /= spectrum.max(axis=1, keepdims=True)
        return np.concatenate([images.mean((1, 2)) / 10, spectrum * 20], axis=1)

    train, test = features(raw["train"]["img"]), features(raw["test"]["img"])
    labels = raw["train"]["fine_label"]
    centroids = np.stack([train[labels == c].mean(0) for c in range(100)])
    distances = ((test[:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = (distances.argmin(1) == raw["test"]["fine_label"]).mean()
    assert accuracy > 0.5


# --- the loader ------------------------------------------------------------------------------


def test_load_local_folder_sizes_names_and_split(tmp_path, small_folder):
    data = load_cifar100(OmegaConf.create(_cfg(tmp_path, path=str(small_folder))), seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 30)
    assert (data.num_classes, data.image_size) == (10, 32)
    assert data.class_names == [f"class_{i}" for i in range(10)]
    assert data.superclass_names == [f"superclass_{i}" for i in range(5)]
    assert data.dataset_id == str(small_folder.resolve())
    assert len(data.fingerprint) == 16 and int(data.fingerprint, 16) >= 0
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (32, 32, 3)
        assert split.labels.dtype == np.int32 and split.coarse_labels.dtype == np.int32
        np.testing.assert_array_equal(split.coarse_labels, split.labels // 2)

    # Stratified: every class twice in val; val and train partition the stored train split.
    np.testing.assert_array_equal(np.bincount(data.val.labels, minlength=10), np.full(10, 2))
    raw = _raw(small_folder)
    stored = {image.tobytes() for image in raw["train"]["img"]}
    train = {image.tobytes() for image in data.train.images}
    val = {image.tobytes() for image in data.val.images}
    assert len(stored) == 100 and not train & val and train | val == stored
    # The test split is untouched, in its stored order.
    np.testing.assert_array_equal(data.test.images, raw["test"]["img"])
    np.testing.assert_array_equal(data.test.labels, raw["test"]["fine_label"])

    same = load_cifar100(_cfg(tmp_path, path=str(small_folder)), seed=0)
    other = load_cifar100(_cfg(tmp_path, path=str(small_folder)), seed=1)
    np.testing.assert_array_equal(same.val.images, data.val.images)
    assert same.fingerprint == data.fingerprint
    assert not np.array_equal(other.val.images, data.val.images)
    assert other.fingerprint != data.fingerprint


def test_relative_path_resolves_against_cwd(tmp_path, small_folder, monkeypatch):
    monkeypatch.chdir(small_folder.parent)
    data = load_cifar100(_cfg(tmp_path / "cache", path=small_folder.name), seed=0)
    assert data.dataset_id == str(small_folder.resolve())


def test_cache_is_used_and_invalidated(tmp_path, small_folder):
    folder = _copy(small_folder, tmp_path / "cifar")
    cfg = _cfg(tmp_path / "cache", path=str(folder))
    first = load_cifar100(cfg, seed=0)
    caches = list((tmp_path / "cache").glob("cifar100-*.npz"))
    assert len(caches) == 1
    assert not list((tmp_path / "cache").glob(".*"))  # no temp files or arrow copies left

    second = load_cifar100(cfg, seed=0)
    assert second.fingerprint == first.fingerprint
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(second, name).images, getattr(first, name).images)
        np.testing.assert_array_equal(getattr(second, name).labels, getattr(first, name).labels)

    # Proof that a hit reads the cache rather than the parquet files: mark the cached copy.
    with np.load(caches[0]) as stored:
        marked = dict(stored)
    marked["test_images"][0] = 7
    np.savez(caches[0], **marked)
    hit = load_cifar100(cfg, seed=0)
    assert (hit.test.images[0] == 7).all() and hit.fingerprint != first.fingerprint

    # A touched source file changes the key: decoded afresh from the parquet files.
    source = folder / "train-00000-of-00001.parquet"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    touched = load_cifar100(cfg, seed=0)
    assert len(list((tmp_path / "cache").glob("cifar100-*.npz"))) == 2
    assert touched.fingerprint == first.fingerprint

    # A replaced file (other images) gives other arrays.
    regenerated = write_synthetic_cifar(tmp_path / "seed1", seed=1, **SMALL)
    os.replace(regenerated / source.name, source)
    replaced = load_cifar100(cfg, seed=0)
    assert replaced.fingerprint != first.fingerprint
    assert not np.array_equal(replaced.train.images, first.train.images)


def test_synthetic_config_generates_once_and_loads(tmp_path):
    with initialize_config_dir(config_dir=str(REPO / "conf" / "data"), version_base="1.3"):
        cfg = compose(config_name="synthetic", overrides=[f"cache_dir={tmp_path}"])
    data = load_cifar100(cfg, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (800, 200, 200)
    assert (data.num_classes, len(data.superclass_names)) == (100, 20)
    np.testing.assert_array_equal(np.bincount(data.val.labels, minlength=100), np.full(100, 2))
    np.testing.assert_array_equal(data.test.coarse_labels, data.test.labels // 5)
    assert data.dataset_id == (
        "synthetic:train_per_class=10,test_per_class=2,seed=0,num_classes=100,num_superclasses=20"
    )
    folders = list(tmp_path.glob("synthetic-*"))
    assert len(folders) == 1
    written = folders[0].stat().st_mtime_ns

    again = load_cifar100(cfg, seed=0)
    assert again.fingerprint == data.fingerprint
    assert list(tmp_path.glob("synthetic-*")) == folders
    assert folders[0].stat().st_mtime_ns == written
    assert not list(tmp_path.glob(".*"))

    cfg.synthetic.seed = 1
    assert load_cifar100(cfg, seed=0).fingerprint != data.fingerprint
    assert len(list(tmp_path.glob("synthetic-*"))) == 2


# --- errors ---------------------------------------------------------------------------------


def _write_split(folder, split, table, features):
    folder.mkdir(parents=True, exist_ok=True)
    dataset = datasets.Dataset.from_dict(table, features=datasets.Features(features))
    dataset.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


def _png_table(count, size=32, label_key="fine_label"):
    from data.synthetic import encode_png

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
    return {
        "img": [{"bytes": encode_png(image), "path": None} for image in images],
        label_key: [index % 10 for index in range(count)],
        "coarse_label": [index % 10 // 2 for index in range(count)],
    }


LABELS = {
    "fine_label": datasets.ClassLabel(names=[f"c{i}" for i in range(10)]),
    "coarse_label": datasets.ClassLabel(names=[f"s{i}" for i in range(5)]),
}


def test_error_missing_folder(tmp_path):
    message = _one_line_error(_cfg(tmp_path, path=str(tmp_path / "nope")))
    assert message.startswith(f"data.path={tmp_path / 'nope'}: no such folder")
    assert "data.path=../shared/cifar100" in message


def test_error_no_parquet_files(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("hello")
    message = _one_line_error(_cfg(tmp_path, path=str(tmp_path / "empty")))
    assert "no .parquet files" in message and "data.path=" in message


def test_error_no_test_split(tmp_path):
    folder = tmp_path / "only-train"
    _write_split(folder, "train", _png_table(20), {"img": datasets.Image(), **LABELS})
    message = _one_line_error(_cfg(tmp_path, path=str(folder)))
    assert "no test split" in message and "test-*.parquet" in message


def test_error_wrong_columns(tmp_path):
    folder = tmp_path / "columns"
    features = {"img": datasets.Image(), "label": LABELS["fine_label"], **LABELS}
    del features["fine_label"]
    for split in ("train", "test"):
        _write_split(folder, split, _png_table(20, label_key="label"), features)
    message = _one_line_error(_cfg(tmp_path, path=str(folder)))
    assert "lacks column(s) fine_label" in message and "found img, label" in message


def test_error_labels_without_class_names(tmp_path):
    folder = tmp_path / "plain-labels"
    features = {"img": datasets.Image(), **LABELS, "fine_label": datasets.Value("int64")}
    for split in ("train", "test"):
        _write_split(folder, split, _png_table(20), features)
    message = _one_line_error(_cfg(tmp_path, path=str(folder)))
    assert "fine_label" in message and "not a ClassLabel" in message


def test_error_wrong_image_size(tmp_path):
    folder = tmp_path / "big"
    for split in ("train", "test"):
        _write_split(folder, split, _png_table(20, size=40), {"img": datasets.Image(), **LABELS})
    message = _one_line_error(_cfg(tmp_path, path=str(folder)))
    assert "(40, 40, 3), not 32x32 RGB" in message


def test_error_num_classes_mismatch(tmp_path, small_folder):
    message = _one_line_error(_cfg(tmp_path, path=str(small_folder), num_classes=100))
    assert message.startswith("data.num_classes=100") and "10 fine classes" in message


@pytest.mark.parametrize("val_size", [0, 5, 91, 100, 150, 2.5, "10", None])
def test_error_val_size(tmp_path, small_folder, val_size):
    message = _one_line_error(_cfg(tmp_path, path=str(small_folder), val_size=val_size))
    assert message.startswith(f"data.val_size={val_size!r}") or message.startswith(
        f"data.val_size={val_size}"
    )
    assert "[10, 90]" in message


def test_val_size_bounds_are_valid(tmp_path, small_folder):
    for val_size in (10, 90):
        data = load_cifar100(_cfg(tmp_path, path=str(small_folder), val_size=val_size), seed=0)
        assert len(data.val) == val_size and set(data.val.labels) == set(range(10))


def test_path_wins_over_synthetic(tmp_path, small_folder):
    # experiment=smoke selects generated data; data.path=... on top must read the real copy.
    cfg = _cfg(tmp_path, path=str(small_folder), synthetic={"train_per_class": 2})
    assert load_cifar100(cfg, seed=0).dataset_id == str(small_folder.resolve())


def test_error_synthetic_unknown_key(tmp_path):
    cfg = _cfg(tmp_path, synthetic={"train_per_klass": 2})
    assert "data.synthetic: unknown key(s) train_per_klass" in _one_line_error(cfg)


def _hub_answers() -> bool:
    from hf_hub import hub_reachable

    return hub_reachable(datasets.config.HF_ENDPOINT)


@pytest.mark.skipif(datasets.config.HF_HUB_OFFLINE, reason="HF_HUB_OFFLINE is set")
def test_error_hub_unreachable_fails_fast(tmp_path):
    if _hub_answers():
        pytest.skip("the hub is reachable here: this checks the offline failure")
    start = time.monotonic()
    message = _one_line_error(_cfg(tmp_path, hub_id="uoft-cs/cifar100", num_classes=100))
    assert time.monotonic() - start < 10
    assert message.startswith("data.hub_id=uoft-cs/cifar100: the Hugging Face Hub")
    assert "data.path=../shared/cifar100" in message


@pytest.fixture
def silent_hub(monkeypatch):
    """An endpoint that accepts connections and never answers, like a firewalled network."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    monkeypatch.setattr(
        datasets.config, "HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}"
    )
    yield
    server.close()


def test_hub_silent_endpoint_fails_fast_then_uses_a_prepared_cache(tmp_path, silent_hub):
    start = time.monotonic()
    message = _one_line_error(_cfg(tmp_path, hub_id="uoft-cs/cifar100"))
    assert time.monotonic() - start < 10  # huggingface_hub's own retries take minutes here
    assert "unreachable" in message and "data.path=../shared/cifar100" in message

    # A copy prepared by an earlier (online) load_dataset still loads offline. It is laid out
    # as datasets lays out a hub dataset: <cache>/hf/uoft-cs___cifar100/default/0.0.0/<hash>.
    folder = write_synthetic_cifar(tmp_path / "src" / "cifar100", seed=0, **SMALL)
    datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf"))
    (tmp_path / "hf" / "cifar100").rename(tmp_path / "hf" / "uoft-cs___cifar100")
    data = load_cifar100(_cfg(tmp_path, hub_id="uoft-cs/cifar100"), seed=0)
    assert data.dataset_id == "uoft-cs/cifar100"
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 30)
    local = load_cifar100(_cfg(tmp_path, path=str(folder)), seed=0)
    assert local.fingerprint == data.fingerprint  # the same content, whatever the source


# --- the real copy ----------------------------------------------------------------------------


@pytest.mark.slow  # decodes or reads 60,000 real images
@pytest.mark.skipif(not REAL.is_dir(), reason="no real CIFAR-100 at ../shared/cifar100")
def test_real_cifar100(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = _cfg(tmp_path, path="../shared/cifar100", val_size=5000, num_classes=100)
    data = load_cifar100(cfg, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (45_000, 5_000, 10_000)
    assert data.dataset_id == str(REAL.resolve())
    assert len(data.class_names) == 100 and len(data.superclass_names) == 20
    assert data.class_names[:3] == ["apple", "aquarium_fish", "baby"]
    assert data.class_names[-1] == "worm"
    assert data.superclass_names[0] == "aquatic_mammals"
    all_train = np.concatenate([data.train.labels, data.val.labels])
    np.testing.assert_array_equal(np.bincount(all_train, minlength=100), np.full(100, 500))
    np.testing.assert_array_equal(np.bincount(data.test.labels, minlength=100), np.full(100, 100))
    np.testing.assert_array_equal(np.bincount(data.val.labels, minlength=100), np.full(100, 50))
    coarse = np.concatenate([data.train.coarse_labels, data.val.coarse_labels])
    np.testing.assert_array_equal(np.bincount(coarse, minlength=20), np.full(20, 2_500))
    assert (np.diff(data.test.labels) >= 0).all()  # stored order: grouped by fine class
    assert data.train.images.shape == (45_000, 32, 32, 3)
    assert data.train.images.dtype == np.uint8


def test_train_size_keeps_a_stratified_subset_and_the_same_val(tmp_path, small_folder):
    full = load_cifar100(_cfg(tmp_path, path=str(small_folder)), seed=0)
    subset = load_cifar100(_cfg(tmp_path, path=str(small_folder), train_size=40), seed=0)
    assert len(subset.train) == 40 and len(full.train) == 80
    assert np.bincount(subset.train.labels).tolist() == [4] * 10
    assert np.array_equal(subset.val.labels, full.val.labels)
    assert subset.fingerprint != full.fingerprint  # a subset is another dataset for identity
    message = _one_line_error(_cfg(tmp_path, path=str(small_folder), train_size=5))
    assert message.startswith("data.train_size=5: must lie in [10, 79]")
