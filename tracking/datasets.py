"""The data a run trained, validated and tested on, as MLflow dataset inputs.

Each split is one `mlflow.log_input` with context train, val or test: the runs table's
Datasets column then names what each run really used. The source is whichever one won in
data.cifar100 (a local folder, the generator and its parameters, or the hub id); the digest
is the data's own fingerprint, so two runs on the same arrays show the same digest.
"""

import mlflow
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
from mlflow.data.numpy_dataset import NumpyDataset
from mlflow.data.sources import LocalArtifactDatasetSource

SYNTHETIC_PREFIX = "synthetic:"
SPLITS = ("train", "val", "test")


def _source(dataset_id: str, split: str) -> tuple[str, DatasetSource]:
    """(dataset name, source) for the id data.cifar100 resolved: path, generator or hub id."""
    if dataset_id.startswith(SYNTHETIC_PREFIX):
        generator = {"generator": "data.synthetic.write_synthetic_cifar"}
        return "synthetic", CodeDatasetSource({**generator, "parameters": dataset_id[10:]})
    if dataset_id.startswith("/"):
        return "cifar100", LocalArtifactDatasetSource(dataset_id)
    # The val split is held out of the hub's train split.
    hub_split = "train" if split == "val" else split
    return "cifar100", HuggingFaceDatasetSource(dataset_id, split=hub_split)


def split_datasets(data) -> dict[str, NumpyDataset]:
    """One MLflow dataset per split: uint8 images as features, fine labels as targets."""
    datasets = {}
    for split in SPLITS:
        arrays = getattr(data, split)
        name, source = _source(data.dataset_id, split)
        datasets[split] = mlflow.data.from_numpy(
            arrays.images,
            source=source,
            targets=arrays.labels,
            name=f"{name}-{split}",
            digest=data.fingerprint,
        )
    return datasets


def log_datasets(data) -> dict[str, NumpyDataset]:
    """Logs the three splits as inputs of the active run; returns them for metric links."""
    datasets = split_datasets(data)
    for split, dataset in datasets.items():
        mlflow.log_input(dataset, context=split)
    return datasets
