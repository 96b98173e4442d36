"""SIGTERM and SIGINT end a job as Ctrl-C does, but never halfway through a store call.

SLURM, `timeout` and `docker stop` send SIGTERM; Python's default would die without a word,
leaving the run and its sweep RUNNING. Here both signals raise KeyboardInterrupt, so the job
marks its run KILLED and the sweep its parent (the epoch checkpoints are written atomically,
so the last one is intact and the same command resumes). A signal that lands inside MLflow
or SQLAlchemy is put off until that call returns: an sqlite write cut in half keeps the
database locked, and the run could not be marked KILLED any more.
"""

import contextlib
import os
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)
RETRY_SECONDS = 0.05
_STORE_CODE = tuple(f"{os.sep}{name}{os.sep}" for name in ("mlflow", "sqlalchemy", "sqlite3"))


def _in_store_call(frame) -> bool:
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in _STORE_CODE):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum, frame):
    if _in_store_call(frame):
        threading.Timer(RETRY_SECONDS, os.kill, (os.getpid(), signum)).start()
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def interrupts_between_store_calls():
    """Within: SIGTERM and SIGINT raise KeyboardInterrupt(name) outside store calls."""
    previous = {signum: signal.signal(signum, _interrupt) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_status(interrupt: KeyboardInterrupt) -> tuple[str, int]:
    """The signal's name and the shell's exit status for it (130 for SIGINT, 143 for SIGTERM)."""
    name = "SIGTERM" if interrupt.args == ("SIGTERM",) else "SIGINT"
    return name, 128 + signal.Signals[name].value
