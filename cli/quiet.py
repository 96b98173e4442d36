"""A quiet start for TensorFlow, XLA and absl, keeping their real errors visible.

Documented switches go first, set before anything loads the backend (`setdefault`, so a
user's own value wins). What no switch reaches: absl writes the lines TensorFlow logs before
its logging is initialised straight to stderr, whatever TF_CPP_MIN_LOG_LEVEL says. Those
known lines are dropped by exact pattern, from file descriptor 2, only while Keras imports
the backend and the backend finds its devices; every other line is written back.
"""

import ctypes.util
import functools
import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager

SWITCHES = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow C++: INFO and WARNING off, ERROR kept
    "GRPC_VERBOSITY": "ERROR",  # gRPC inside TensorFlow
    # datasets' bars for preparing a local cache: seconds of carriage returns in a log
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    # MLflow's bar for each small artifact it reads back (a run's tables, predictions)
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# MLflow's per-job INFO chatter: the system-metrics thread starting and stopping, the logged
# model's input example being validated. Their warnings and errors still show.
CHATTY_LOGGERS = ("mlflow.system_metrics", "mlflow.pyfunc", "mlflow.models")

_ABSL = r"^[IWE]0000 \d\d:\d\d:[\d.]+ +\d+ "
# Harmless on every healthy run. `cuInit` is dropped only where there is no CUDA driver at
# all: with a driver installed, that failure is a real error and stays.
NO_DRIVER = re.compile(_ABSL + r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine")
CUINIT = re.compile(_ABSL + r"cuda_platform\.cc:\d+\] failed call to cuInit: ")
KNOWN = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written"),
    re.compile(_ABSL + r"port\.cc:\d+\] oneDNN custom operations are on\. "),
    NO_DRIVER,
    re.compile(_ABSL + r"util\.cc:\d+\] oneDNN supports DT_INT64 only on platforms with AVX-512\."),
)


class OncePerWarning(logging.Filter):
    """Lets each warning through once per process, whatever numbers and addresses it holds.

    TensorFlow repeats some for every model a sweep builds in the same process (`… triggered
    tf.function retracing`); errors always pass.
    """

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        key = re.sub(r"0x[0-9a-fA-F]+|\d+", "#", record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def set_switches() -> None:
    for name, value in SWITCHES.items():
        os.environ.setdefault(name, value)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def drop_known(text: str) -> str:
    """The captured text less the known harmless lines."""
    lines = text.splitlines(keepends=True)
    no_driver = any(NO_DRIVER.match(line) for line in lines) or not ctypes.util.find_library("cuda")
    known = (*KNOWN, CUINIT) if no_driver else KNOWN
    return "".join(line for line in lines if not any(p.match(line) for p in known))


@contextmanager
def filtered_stderr():
    """Captures fd 2 (C++ and Python alike) and writes back all but the known lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            sys.stderr.write(drop_known(capture.read().decode(errors="replace")))
            sys.stderr.flush()


@functools.cache
def start_backend() -> str:
    """Imports Keras quietly; returns the backend's name."""
    set_switches()
    with filtered_stderr():
        import keras

        backend = keras.backend.backend()
    if backend == "tensorflow":
        logging.getLogger("tensorflow").addFilter(OncePerWarning())
    return backend


@functools.cache
def start_devices() -> None:
    """Brings the backend's devices up quietly, in the process that trains (not in a
    launcher's parent process, which must leave the GPUs to its workers)."""
    if start_backend() != "tensorflow":
        return
    with filtered_stderr():
        import keras
        import numpy as np
        import tensorflow as tf

        # Device discovery (cuInit) and the first int64 gather (oneDNN's note, which the
        # models' RandomShift would trigger mid-epoch) log once per process: here.
        tf.config.list_physical_devices()
        images, index = np.zeros((1, 1, 1), "float32"), np.zeros((1, 1, 1), "int32")
        keras.ops.take_along_axis(images, index, axis=1)
