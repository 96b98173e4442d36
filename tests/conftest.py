"""Shared helpers: the real train.py CLI in a subprocess, against a temporary MLflow store."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from tracking.values import curve_key

REPO = Path(__file__).resolve().parents[1]
MODELS = ("alexnet", "vgg13", "resnet18", "effnetv2", "vit")
# What every run logs per epoch, with step=epoch, as `<section>/<name>` in the store.
CURVES = tuple(
    curve_key(name)
    for name in (
        "loss",
        "top1",
        "top5",
        "val_loss",
        "val_top1",
        "val_top5",
        "lr",
        "epoch_seconds",
        "images_per_second",
    )
)


@dataclass
class Store:
    """A tracking root as train.py lays it out: mlflow.db, artifacts/, checkpoints/."""

    root: Path

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.root}/mlflow.db"

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(tracking_uri=self.uri)

    def runs(self, *filters: str) -> list:
        client = self.client()
        experiment = client.get_experiment_by_name("cifar100")
        if experiment is None:
            return []
        return client.search_runs(
            [experiment.experiment_id], " and ".join(filters), order_by=["attributes.start_time"]
        )

    def jobs(self) -> list:
        """The training runs (sweep parents left out)."""
        return [r for r in self.runs() if r.data.tags.get("sweep_parent") != "true"]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One generated dataset for the whole session, never the user's ~/.cache."""
    return tmp_path_factory.mktemp("data-cache")


def train_cli(
    *args: str,
    root: Path,
    cache: Path,
    backend: str | None = None,
    timeout: int = 900,
    env: dict | None = None,
    tracking_root: Path | None = None,
) -> subprocess.CompletedProcess:
    """Runs `python train.py ARGS` with every output folder under `root`."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    environment.pop("PYTEST_CURRENT_TEST", None)  # MLflow changes behaviour under pytest
    if backend:
        environment["KERAS_BACKEND"] = backend
    command = [
        sys.executable,
        "train.py",
        *args,
        f"tracking.root={tracking_root or root}",
        f"data.cache_dir={cache}",
        f"hydra.run.dir={root}/outputs/run",
        f"hydra.sweep.dir={root}/multirun",
    ]
    return subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout
    )


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory, data_cache):
    """The README's smoke sweep of all five architectures, run once for the session."""
    root = tmp_path_factory.mktemp("smoke-sweep")
    result = train_cli(
        "-m", f"model={','.join(MODELS)}", "experiment=smoke", root=root, cache=data_cache
    )
    assert result.returncode == 0, output(result)[-4000:]
    return Store(root), result


@pytest.fixture(scope="session")
def seeded_sweep(tmp_path_factory, data_cache):
    """Two cheap architectures with seeds 0 and 1: rows of n=2, run once for the session."""
    root = tmp_path_factory.mktemp("seeded-sweep")
    result = train_cli(
        "-m", "model=alexnet,vgg13", "experiment=smoke", "seed=0,1", root=root, cache=data_cache
    )
    assert result.returncode == 0, output(result)[-4000:]
    return Store(root), result
