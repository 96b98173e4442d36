"""The MLflow tracking store: open it once, fail with one line when it is unusable.

Everything cheap is checked before MLflow touches the store, since MLflow would otherwise
create a missing database, retry a locked or misplaced one for minutes, or raise raw SQL.
"""

import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from errors import UserError, one_line

SQLITE_PREFIX = "sqlite:///"
SQLITE_HEADER = b"SQLite format 3\x00"
URI_FIX = "use sqlite:///<path>/mlflow.db (three slashes) or http://host:port of an MLflow server"


def check_uri(uri: str) -> None:
    """The URI's form: an sqlite file path or an http(s) server, nothing MLflow half-accepts."""
    if uri.startswith(SQLITE_PREFIX) and uri.removeprefix(SQLITE_PREFIX).strip("/"):
        return
    if uri.startswith(("http://", "https://")) and uri.split("://", 1)[1].strip("/"):
        return
    raise UserError(f"tracking.uri={uri}: not a store address; {URI_FIX}")


def sqlite_path(uri: str) -> Path | None:
    """The database file behind an sqlite URI, None for a server."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    return Path(uri.removeprefix(SQLITE_PREFIX).split("?", 1)[0])


def check_sqlite_file(uri: str, must_exist: bool = False) -> None:
    """Refuses a database path that is a folder, not SQLite, or damaged, in well under a second
    for any store a laptop holds. `must_exist`: a sweep's store that vanished mid-sweep must
    not be silently re-created empty."""
    path = sqlite_path(uri)
    fix = "point tracking.root at a folder with a good mlflow.db, or at an empty one"
    if path.is_dir():
        raise UserError(f"tracking.uri={uri}: {path} is a folder, not a database file; {fix}")
    if not path.exists():
        if must_exist:
            raise UserError(
                f"tracking.uri={uri}: the store vanished mid-sweep ({path} is gone); restore it "
                "and run the same command again"
            )
        return
    if path.stat().st_size == 0:
        return  # a new, empty database: MLflow creates the schema
    with open(path, "rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise UserError(f"tracking.uri={uri}: {path} is not an SQLite database; {fix}")
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30) as db:
            verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.Error as error:
        verdict = str(error)
    if verdict != "ok":
        raise UserError(
            f"tracking.uri={uri}: {path} is damaged ({verdict}); restore it from a backup or {fix}"
        )


# MLflow 3's UI opens an experiment on its GenAI pages unless this tag says otherwise.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


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


def connect(tracking: DictConfig, must_exist: bool = False) -> str:
    """Points MLflow at `tracking.uri` and returns the id of `tracking.experiment`.

    Creates the sqlite database and the experiment on first use. Sweeps call this once
    before launching parallel jobs, so the jobs never race to create the schema; their jobs
    pass `must_exist`, so a store deleted mid-sweep fails them instead of starting afresh.
    """
    uri = tracking.uri
    check_uri(uri)
    if uri.startswith(SQLITE_PREFIX):
        _probe_folder(sqlite_path(uri).parent, f"tracking.uri={uri}")
        check_sqlite_file(uri, must_exist)
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
            _tag_kind(experiment)
            return experiment.experiment_id
        if must_exist:
            raise UserError(
                f"tracking.uri={uri}: experiment {tracking.experiment} vanished mid-sweep; "
                "restore the store and run the same command again"
            )
        if artifacts is not None:
            location = artifacts.as_uri()
        try:
            return mlflow.create_experiment(
                tracking.experiment, artifact_location=location, tags=EXPERIMENT_KIND
            )
        except MlflowException:
            # A parallel job created it between our lookup and our create.
            experiment = mlflow.get_experiment_by_name(tracking.experiment)
            if experiment is None:
                raise
            _tag_kind(experiment)
            return experiment.experiment_id
    except MlflowException as error:
        raise UserError(f"tracking.uri={uri}: the store refused ({one_line(error)})") from None


def _tag_kind(experiment) -> None:
    """Tags an experiment that an earlier version of the repo created without the kind."""
    for key, value in EXPERIMENT_KIND.items():
        if key not in experiment.tags:
            set_experiment_tag(mlflow.MlflowClient(), experiment.experiment_id, key, value)


def set_experiment_tag(client, experiment_id: str, key: str, value: str, tries: int = 5) -> None:
    """`client.set_experiment_tag`, safe when copies of a sweep set the same new tag at once.

    MLflow's SQL store looks for the tag, then inserts it: of processes that add one key
    together, all but one fail on the unique key. Once the row exists a retry updates it.
    """
    for attempt in range(tries):
        try:
            client.set_experiment_tag(experiment_id, key, value)
            return
        except MlflowException as error:
            text = str(error).lower()
            clash = "integrityerror" in text or "unique constraint" in text
            if not clash or attempt == tries - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
