"""The MLflow tracking store: open it once, fail with one line when it is unusable."""

import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from errors import UserError, one_line

SQLITE_PREFIX = "sqlite:///"


def _probe_folder(folder: Path, key: str) -> None:
    """Writes and removes a file: os.access says yes to root even on read-only mounts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(
            f"{key}: cannot write to {folder} ({error.strerror or error}); "
            "point tracking.root at a writable folder"
        ) from None


def server_silence(uri: str) -> str | None:
    """Why the MLflow server at `uri` does not answer its /health probe; None when it does."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):
            return None
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))


def _probe_server(uri: str) -> None:
    reason = server_silence(uri)
    if reason is not None:
        raise UserError(
            f"tracking.uri={uri}: no MLflow server answers ({reason}); start one with "
            "`mlflow server --host 127.0.0.1 --port 5000` or use the default sqlite store"
        )


def local_path(location: str | None) -> Path | None:
    """The folder behind a local artifact location, None for remote ones."""
    if not location:
        return None
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    return None if "://" in location else Path(location)


def connect(tracking: DictConfig) -> str:
    """Points MLflow at `tracking.uri` and returns the id of `tracking.experiment`.

    Creates the sqlite database and the experiment on first use. Sweeps call this once
    before launching parallel jobs, so the jobs never race to create the schema.
    """
    uri = tracking.uri
    if uri.startswith(SQLITE_PREFIX):
        _probe_folder(Path(uri.removeprefix(SQLITE_PREFIX)).parent, f"tracking.uri={uri}")
    elif uri.startswith(("http://", "https://")):
        _probe_server(uri)
    location = tracking.artifact_location
    if location is None and uri.startswith(SQLITE_PREFIX):
        location = str(Path(uri.removeprefix(SQLITE_PREFIX)).parent / "artifacts")
    artifacts = local_path(location)
    if artifacts is not None:
        artifacts = artifacts.resolve()
        _probe_folder(artifacts, f"tracking.artifact_location={location}")
    _probe_folder(
        Path(tracking.checkpoint_dir), f"tracking.checkpoint_dir={tracking.checkpoint_dir}"
    )

    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(tracking.experiment)
        if experiment is not None:
            return experiment.experiment_id
        if artifacts is not None:
            location = artifacts.as_uri()
        try:
            return mlflow.create_experiment(tracking.experiment, artifact_location=location)
        except MlflowException:
            # A parallel job created it between our lookup and our create.
            experiment = mlflow.get_experiment_by_name(tracking.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id
    except MlflowException as error:
        raise UserError(f"tracking.uri={uri}: the store refused ({one_line(error)})") from None
