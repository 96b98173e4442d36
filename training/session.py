"""Per-job Keras state, and which GPU a parallel job's process gets.

Hydra's basic launcher runs every job of a sweep in one process, so whatever one job sets
globally (layers' name counters, the dtype policy, the RNGs, a distribution) must be reset
before the next job builds its model.
"""

import contextlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "bfloat16")


def start_session(precision: str, seed: int) -> None:
    import keras  # here, not at the top: train.py imports this module for the resolvers

    keras.backend.clear_session(free_memory=True)
    keras.config.set_dtype_policy(precision)
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "jax":
        keras.distribution.set_distribution(None)


def distribution_scope(kind: str | None):
    """A context in which the model is built and compiled for `trainer.distribution`.

    `data_parallel` splits each batch over every local accelerator: keras.distribution on
    JAX, tf.distribute.MirroredStrategy on TensorFlow (which Keras' TF trainer honours).
    """
    import keras

    if not kind:
        return contextlib.nullcontext()
    backend = keras.backend.backend()
    if backend == "jax":
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        log.info("data_parallel: %d replicas on %s", len(devices), ", ".join(devices))
        return contextlib.nullcontext()
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
        devices = strategy.extended.worker_devices
        log.info("data_parallel: %d replicas on %s", len(devices), ", ".join(devices))
        return strategy.scope()
    raise AssertionError(f"check_config lets {kind!r} through on {backend}")


def visible_gpus() -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]


_claimed: tuple[str, object] | None = None  # (gpu, its lock file, held open for the process)


def worker_gpu(lock_dir: str) -> str:
    """One GPU for this worker process, for its life, none of which another worker holds.

    The local_parallel launcher sets it as each job's CUDA_VISIBLE_DEVICES. joblib reuses its
    worker processes and CUDA reads the variable once per process, so the GPU belongs to the
    process: each claims the first free one through a lock file in `lock_dir` (the sweep
    folder), which the OS releases when the process ends. More workers than GPUs share them.
    """
    global _claimed
    if _claimed is not None:
        return _claimed[0]
    gpus = visible_gpus()
    if not gpus:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")
    import fcntl

    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    for gpu in gpus:
        handle = open(Path(lock_dir) / f".gpu-{gpu}.lock", "w")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _claimed = (gpu, handle)
        return gpu
    gpu = gpus[os.getpid() % len(gpus)]
    log.warning("more parallel jobs than GPUs (%s): this one shares GPU %s", ",".join(gpus), gpu)
    _claimed = (gpu, None)
    return gpu


# For conf/hydra/launcher/local_parallel.yaml: n_jobs and each job's CUDA_VISIBLE_DEVICES.
OmegaConf.register_new_resolver("gpu_count", lambda: max(len(visible_gpus()), 1), replace=True)
OmegaConf.register_new_resolver("worker_gpu", worker_gpu, replace=True)
