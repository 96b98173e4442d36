"""One live owner per config identity, so two copies of a command never train one run.

A job owns its identity from before it looks for a twin run until it ends:

- On one machine (any store): an exclusive `fcntl` lock on `<tracking.root>/locks/<identity>
  .lock`, held by the process. The kernel drops it when the process dies, kill -9 included,
  so a dead owner's run is resumable at once. The file names the owner for the waiting line.
- Across machines (an MLflow server): a lease, the experiment tag `owner.<identity>` holding
  the owner's host, pid, SLURM task and a heartbeat time, renewed every `owner_expiry_s / 4`
  seconds. A lease whose heartbeat is older than `tracking.owner_expiry_s` (default 120 s)
  belongs to a dead owner (a lost node) and is taken over. A lease is written, then read back
  after a short settle: of two machines claiming at once the later write wins and the other
  waits. A requeued SLURM task (same job and array task id) takes over its own lease at once.

Another process that reaches an owned identity waits, with one line naming the owner, for
at most `tracking.owner_wait_s` seconds (null: as long as it takes), then finds the run
FINISHED (and reuses it) or unfinished (and resumes it).
"""

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

from errors import UserError
from tracking.store import set_experiment_tag

log = logging.getLogger("train")

POLL_SECONDS = 2.0
SETTLE_SECONDS = 2.0


def _slurm_task() -> str:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job:
        return ""
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if task else job


def _describe(owner: dict) -> str:
    slurm = f", SLURM task {owner['slurm']}" if owner.get("slurm") else ""
    since = time.strftime("%H:%M:%S", time.localtime(owner.get("since", 0)))
    where = f"pid {owner.get('pid')} on {owner.get('host')}{slurm}"
    return f"{where} (job {owner.get('job')}, since {since})"


@contextmanager
def machine_lock(path: Path) -> Iterator[None]:
    """Exclusive among this machine's processes for the `with` block; waits for its turn.
    For short find-or-create steps that MLflow cannot make atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # dropped when the file closes, or the process dies
        yield


class Ownership:
    def __init__(self, tracking, identity: str, job: str, experiment_id: str):
        self.identity, self.job, self.experiment_id = identity, job, experiment_id
        self.remote = str(tracking.uri).startswith(("http://", "https://"))
        self.expiry = float(tracking.get("owner_expiry_s") or 120)
        wait = tracking.get("owner_wait_s")
        self.wait_s = None if wait is None else float(wait)
        self.lock_path = Path(tracking.root) / "locks" / f"{identity}.lock"
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm": _slurm_task(),
            "job": job,
            "since": time.time(),
        }
        self.token = f"{self.me['host']}:{self.me['pid']}:{time.time_ns()}"
        self._handle = None
        self._leased = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- the whole protocol --------------------------------------------------------------------

    def acquire(self) -> None:
        """Returns once this process owns the identity; waits while a live owner holds it."""
        started = time.monotonic()
        announced = None
        while True:
            holder = self._try_local()
            if holder is None and self.remote:
                holder = self._try_lease()
            if holder is None:
                if self.remote:
                    self._leased = True
                    self._start_heartbeat()
                return
            if self.wait_s is not None and time.monotonic() - started >= self.wait_s:
                raise UserError(
                    f"tracking.owner_wait_s={self.wait_s:g}: this config's run is owned by "
                    f"{holder}, still training; run the same command again once it ends"
                )
            if holder != announced:
                log.warning("%s: this config's run is owned by %s; waiting", self.job, holder)
                announced = holder
            time.sleep(POLL_SECONDS)

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)
            self._heartbeat = None
        if self._leased:
            self._leased = False
            try:
                lease = self._lease()
                if lease is not None and lease.get("token") == self.token:
                    mlflow.MlflowClient().delete_experiment_tag(self.experiment_id, self._key)
            except Exception as error:  # the lease expires by itself
                log.debug("could not drop the lease: %s", error)
        if self._handle is not None:
            self._handle.close()  # drops the lock
            self._handle = None

    # -- one machine: the lock file -----------------------------------------------------------

    def _try_local(self) -> str | None:
        if self._handle is not None:
            return None
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+")  # noqa: SIM115 (held until release())
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                owner = json.loads(handle.read() or "{}")
            except ValueError:
                owner = {}
            handle.close()
            return _describe(owner) if owner else "another process on this machine"
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(self.me))
        handle.flush()
        self._handle = handle
        return None

    # -- across machines: the lease on the server ------------------------------------------------

    @property
    def _key(self) -> str:
        return f"owner.{self.identity}"

    def _lease(self) -> dict | None:
        tags = mlflow.MlflowClient().get_experiment(self.experiment_id).tags
        try:
            return json.loads(tags[self._key]) if tags.get(self._key) else None
        except ValueError:
            return None

    def _write_lease(self) -> None:
        lease = {**self.me, "token": self.token, "heartbeat": time.time()}
        set_experiment_tag(mlflow.MlflowClient(), self.experiment_id, self._key, json.dumps(lease))

    def _live(self, lease: dict) -> bool:
        if lease.get("token") == self.token:
            return False
        if self.me["slurm"] and lease.get("slurm") == self.me["slurm"]:
            log.warning("%s: requeued SLURM task %s takes over its run", self.job, self.me["slurm"])
            return False
        if lease.get("host") == self.me["host"]:
            return False  # its owner would hold the lock file we hold now: it is dead
        return time.time() - float(lease.get("heartbeat", 0)) < self.expiry

    def _try_lease(self) -> str | None:
        lease = self._lease()
        if lease is not None and self._live(lease):
            return _describe(lease) + f", heartbeat {time.time() - lease['heartbeat']:.0f} s ago"
        self._write_lease()
        time.sleep(SETTLE_SECONDS)
        lease = self._lease()
        if lease is not None and lease.get("token") != self.token:
            return _describe(lease) + ", claimed at the same moment"
        return None

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.expiry / 4):
                try:
                    self._write_lease()
                except Exception as error:  # a blip: the next beat tries again
                    log.debug("heartbeat failed: %s", error)

        self._stop.clear()
        self._heartbeat = threading.Thread(target=beat, name="owner-heartbeat", daemon=True)
        self._heartbeat.start()
