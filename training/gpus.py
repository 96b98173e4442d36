"""Which GPU each job of a parallel sweep gets: the resolvers of the local_parallel launcher.

conf/hydra/launcher/local_parallel.yaml sets `n_jobs: ${gpu_count:}` and each job's
CUDA_VISIBLE_DEVICES to `${worker_gpu:...}`. Importing this module registers both. The yaml
names `GpuResolvers` as a Hydra callback, so Hydra imports it in the launching process
before it reads n_jobs, and in every joblib worker (which unpickles the callbacks) before
it sets the job's environment.
"""

import logging
import os
import shutil
import subprocess
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


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


class GpuResolvers(Callback):
    """Does nothing itself: naming it in a launcher yaml imports this module (see above)."""
