"""The persistent study: its storage, who runs which trial, and how many trials count.

A trial's owner is the sweeper process that runs it (`host:pid`), recorded as a system
attribute with a heartbeat. A RUNNING trial whose owner is gone (its pid is dead on this host,
or its heartbeat is older than the grace period on another) is taken over and run again with
the same parameters and number: the job then resumes its interrupted MLflow run from its last
epoch checkpoint, so the trial is never counted twice.
"""

import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from errors import UserError, one_line

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:"
SQLITE_PREFIX = "sqlite:///"
OWNER = "cifar_optuna:owner"
HEARTBEAT = "cifar_optuna:heartbeat"
# A trial failed before any job ran it, and not counted: asked past the study's total by two
# workers at once, or asked by a search killed before it launched the job.
VOID = "cifar_optuna:void"


def masked(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> BaseStorage:
    """sqlite:///path (one machine), journal:<path> (a shared filesystem), or any SQLAlchemy
    URL of a database server."""
    try:
        if url.startswith(JOURNAL_PREFIX):
            path = Path(url.removeprefix(JOURNAL_PREFIX))
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        engine_kwargs = {}
        if url.startswith(SQLITE_PREFIX):
            Path(url.removeprefix(SQLITE_PREFIX)).parent.mkdir(parents=True, exist_ok=True)
            # Parallel jobs report epochs at once; wait for the lock rather than fail.
            engine_kwargs = {"connect_args": {"timeout": 60}}
        return _rdb_storage(url, engine_kwargs)
    except Exception as error:
        raise UserError(
            f"hydra.sweeper.storage={masked(url)}: cannot open it ({one_line(error)}); use "
            "sqlite:///<path>/optuna.db, journal:<path>, or a database URL"
        ) from None


def _rdb_storage(url: str, engine_kwargs: dict) -> RDBStorage:
    # Two workers opening a new database at once both create its schema; the loser of that
    # race finds it complete on a second look.
    for attempt in range(3):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs)
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == 2:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def trial_id(storage: BaseStorage, study_name: str, number: int) -> int:
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


# -- owners and heartbeats ---------------------------------------------------------------------


def me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_orphan(trial: FrozenTrial, grace_period_s: float) -> bool:
    """A RUNNING trial nobody runs any more."""
    if trial.state != TrialState.RUNNING:
        return False
    owner = trial.system_attrs.get(OWNER)
    if owner is None:  # asked outside this sweeper: judge by age
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0
        return time.time() - started > grace_period_s
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname():
        return not _pid_alive(int(pid))
    return time.time() - trial.system_attrs.get(HEARTBEAT, 0) > grace_period_s


class Heartbeat:
    """Marks this process's trials alive every `interval_s` seconds, from one thread."""

    def __init__(self, storage: BaseStorage, interval_s: float):
        self.storage, self.interval_s = storage, interval_s
        self.trials: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)
        self.thread.start()

    def own(self, trial_id: int) -> None:
        with self.lock:
            self.storage.set_trial_system_attr(trial_id, OWNER, me())
            self.storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
            self.trials.add(trial_id)

    def release(self, trial_id: int) -> None:
        with self.lock:
            self.trials.discard(trial_id)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            with self.lock:
                for trial_id in list(self.trials):
                    try:
                        self.storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
                    except Exception as error:  # a storage hiccup must not end the search
                        log.warning("heartbeat of trial id %s failed: %s", trial_id, error)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


# -- the budget --------------------------------------------------------------------------------


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials n_trials counts: every one asked, except void ones."""
    return [t for t in trials if VOID not in t.system_attrs]


def is_surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """True when `n_trials` counted trials precede trial `number` (another worker asked at the
    same moment)."""
    before = [t for t in counted(study.get_trials(deepcopy=False)) if t.number < number]
    return len(before) >= n_trials
