"""Where this process computes: the Keras backend's accelerators, nvidia-smi's view, versions.

`detect()` asks the backend which accelerators it will use and nvidia-smi which GPUs the
machine has. The two differ when the backend was installed without its CUDA build: the
GPUs are there, the backend trains on the CPU, and `silent_cpu_warning` says so.
`auto_precision` turns `trainer.precision=auto` into the policy this device runs fastest.
"""

import contextlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import keras

# bf16 tensor cores arrived with Ampere (compute capability 8.0).
BF16_COMPUTE_CAPABILITY = 8.0
# The libraries whose versions change a run's numbers or speed (distribution names).
VERSIONED = ("keras", "keras-hub", "tensorflow", "jax", "jaxlib", "torch")


@dataclass(frozen=True)
class NvidiaSmi:
    """What `nvidia-smi` reports: the machine's GPUs, whatever the backend can use."""

    names: tuple[str, ...] = ()
    driver: str | None = None
    cuda: str | None = None  # the newest CUDA the driver supports
    compute_capability: float | None = None  # of the first GPU


@dataclass(frozen=True)
class Device:
    kind: str  # gpu | tpu | cpu: what the Keras backend computes on
    name: str
    count: int  # accelerators, or CPU cores
    compute_capability: float | None = None
    smi: NvidiaSmi = NvidiaSmi()

    @property
    def label(self) -> str:
        """One line for tables: `NVIDIA H100 80GB HBM3 ×1`, `cpu ×2 cores`."""
        if self.kind == "cpu":
            return f"cpu ×{self.count} cores"
        return f"{self.name} ×{self.count}"

    @property
    def gpus_unused(self) -> bool:
        """nvidia-smi lists GPUs, but the backend computes on the CPU."""
        return self.kind == "cpu" and bool(self.smi.names)

    def tags(self) -> dict[str, str]:
        tags = {
            "device": self.label,
            "device.kind": self.kind,
            "device.name": self.name,
            "device.count": str(self.count),
        }
        if self.compute_capability is not None:
            tags["device.compute_capability"] = f"{self.compute_capability:.1f}"
        if self.smi.driver:
            tags["device.driver"] = self.smi.driver
        if self.smi.cuda:
            tags["device.cuda"] = self.smi.cuda
        if self.gpus_unused:
            tags["device.gpus_unused"] = f"{self.smi.names[0]} ×{len(self.smi.names)}"
        return tags


def _run(*command: str) -> str | None:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def nvidia_smi() -> NvidiaSmi:
    """The GPUs nvidia-smi lists (it ignores CUDA_VISIBLE_DEVICES), or none without it."""
    if shutil.which("nvidia-smi") is None:
        return NvidiaSmi()
    listing = _run(
        "nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"
    )
    rows = [
        [field.strip() for field in line.split(",")]
        for line in (listing or "").splitlines()
        if line.strip()
    ]
    if not rows:
        return NvidiaSmi()
    capability = None
    with contextlib.suppress(IndexError, ValueError):
        capability = float(rows[0][2])
    # The banner is the only place nvidia-smi prints the CUDA version.
    banner = re.search(r"CUDA Version:\s*([\d.]+)", _run("nvidia-smi") or "")
    return NvidiaSmi(
        names=tuple(row[0] for row in rows),
        driver=rows[0][1] if len(rows[0]) > 1 else None,
        cuda=banner.group(1) if banner else None,
        compute_capability=capability,
    )


def cpu_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def _capability(value) -> float | None:
    """8.0 from "8.0", (8, 0) or 8.0."""
    with contextlib.suppress(TypeError, ValueError):
        if isinstance(value, tuple | list):
            return float(f"{value[0]}.{value[1]}")
        return float(value)
    return None


def _backend_accelerators() -> tuple[str, str, int, float | None] | None:
    """(kind, name, count, compute capability) of what the backend computes on; None: CPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = [d for d in jax.devices() if d.platform != "cpu"]
        if devices:
            first = devices[0]
            kind = "tpu" if first.platform == "tpu" else "gpu"
            capability = _capability(getattr(first, "compute_capability", None))
            return kind, first.device_kind, len(devices), capability
    elif backend == "tensorflow":
        import tensorflow as tf

        for kind in ("TPU", "GPU"):
            devices = tf.config.list_physical_devices(kind)
            if devices:
                details = tf.config.experimental.get_device_details(devices[0])
                name = details.get("device_name", devices[0].name)
                capability = _capability(details.get("compute_capability"))
                return kind.lower(), name, len(devices), capability
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            capability = _capability(torch.cuda.get_device_capability(0))
            return "gpu", torch.cuda.get_device_name(0), torch.cuda.device_count(), capability
    return None


def detect() -> Device:
    """The device the Keras backend trains on. Lists devices without allocating memory on them."""
    smi = nvidia_smi()
    found = _backend_accelerators()
    if found is None:
        return Device("cpu", cpu_name(), cpu_cores(), smi=smi)
    kind, name, count, capability = found
    if kind == "gpu" and capability is None:
        capability = smi.compute_capability
    return Device(kind, name, count, capability, smi)


def auto_precision(device: Device) -> str:
    """bf16 where the hardware has it (TPUs, GPUs from Ampere on), fp16 on older GPUs, CPUs
    float32 (they emulate 16-bit policies, slowly)."""
    if device.kind == "tpu":
        return "mixed_bfloat16"
    if device.kind == "gpu":
        capability = device.compute_capability
        if capability is not None and capability >= BF16_COMPUTE_CAPABILITY:
            return "mixed_bfloat16"
        return "mixed_float16"
    return "float32"


def resolve_precision(precision: str, device: Device) -> str:
    """`trainer.precision` as it will run: an explicit policy wins over auto."""
    return auto_precision(device) if precision == "auto" else precision


def silent_cpu_warning(device: Device) -> str | None:
    """One line when the machine has GPUs the backend does not use, naming the fix."""
    if not device.gpus_unused:
        return None
    count = len(device.smi.names)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = "" if visible is None else f", or CUDA_VISIBLE_DEVICES={visible!r} hides them"
    return (
        f"nvidia-smi lists {count} GPU{'s' * (count > 1)} ({device.smi.names[0]}), but Keras' "
        f"{keras.backend.backend()} backend sees none and will train on the CPU: install the "
        f'CUDA builds with `pip install -e ".[cuda]"`{hidden}'
    )


def software_versions() -> dict[str, str]:
    """`version.<distribution>` of the installed libraries that shape a run, and the backend's."""
    versions = {"version.keras_backend": keras.backend.backend()}
    for name in VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[f"version.{name}"] = importlib.metadata.version(name)
    return versions
