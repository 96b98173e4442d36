"""Training and inference speed of one composed config, on synthetic data.

    python bench/throughput.py model=resnet18 trainer.batch_size=128 bench.peak_tflops=989
    python bench/throughput.py -m model=resnet18,vgg13 trainer.jit_compile=false,true
    KERAS_BACKEND=jax python bench/throughput.py model=vit model.pretrained=false

The config is train.py's (conf/config.yaml and every override it takes) plus a `bench`
node registered below, so `bench.steps=50` needs no `+`. The model is built, compiled and
put in its dtype policy exactly as train.py does it (start_session, build_model,
compile_stage for the run's last stage: the unfrozen one of a fine-tune); the data are
random uint8 images and labels of the real shapes, so no dataset is loaded, and no MLflow.

What is timed (steady state: the first, compiling steps are never timed):
- train: `model.train_on_batch` on one batch already converted to a backend tensor, after
  `bench.warmup` untimed calls. It runs the compiled train function that fit() runs
  (in-graph augmentation, forward, backward, optimizer update, metrics) and returns Python
  floats, so each step is waited for: step times are real per-step latencies, plus
  train_on_batch's own small per-call overhead (it resets the metrics every call).
- fit: `model.fit` on `bench.steps` batches of uint8 arrays, fed as train.py feeds them
  (data/batches.py: shuffled per epoch, through keras.utils.PyDataset), for two epochs; the
  second is timed, so only the epoch mean per step is known. This adds the input pipeline
  and Keras' loop, overlaps steps where the backend can, and honours
  trainer.steps_per_execution: the closest to what train.py logs as images_per_second.
- inference: `model.predict_on_batch` (no augmentation, BatchNorm in inference mode), after
  `bench.warmup` untimed calls.

Each measurement is one JSON line on stdout, also appended to `bench.out`. FLOPs are
counted from the layers' shapes (see count_forward_flops); training FLOPs are taken as
3x the forward pass, and MFU = achieved FLOP/s / (bench.peak_tflops * 1e12).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before Keras imports TensorFlow
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")  # as train.py
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/throughput.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

import contextlib  # noqa: E402
import datetime  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import hydra  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from keras import layers, ops  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from data.batches import ShuffledBatches  # noqa: E402
from errors import UserError  # noqa: E402
from models.preprocessing import image_input  # noqa: E402
from training import device as devices  # noqa: E402
from training.fit import build_model, compile_stage, plan_stages  # noqa: E402
from training.session import distribution_scope, start_session  # noqa: E402
from training.validation import check_config  # noqa: E402

MEASUREMENTS = ("train", "fit", "inference")
AUGMENT_LAYERS = ("model", "keras")
# Forward + backward (gradients of activations and of weights) ≈ 3 forward passes.
TRAIN_FLOPS_PER_FORWARD = 3
SCHEMA_VERSION = 1

BENCH_DEFAULTS = {
    # Timed steps per measurement, and untimed steps before them (the first compiles).
    "steps": 20,
    "warmup": 3,
    # Any of: train, fit, inference.
    "measure": ["train", "fit", "inference"],
    # The device's dense peak in TFLOP/s at the run's precision (e.g. 989 for an H100 SXM
    # in bf16), for MFU; null leaves MFU null.
    "peak_tflops": None,
    # JSON lines are appended here (relative to the working directory); null: stdout only.
    "out": "outputs/bench/throughput.jsonl",
    # Which of plan_stages(cfg) to compile: -1 is the last (a fine-tune's unfrozen stage).
    "stage": -1,
    # model: the model's own in-graph crop + flip (models/preprocessing.py); keras: the
    # model built without them behind keras.layers.RandomTranslation + RandomFlip.
    "augment_layers": "model",
    # A free-form tag copied into every record.
    "label": None,
}

ConfigStore.instance().store(
    name="throughput",
    node={
        "defaults": ["config", "_self_"],
        "bench": BENCH_DEFAULTS,
        "hydra": {
            "run": {"dir": "outputs/bench/${now:%Y-%m-%d}/${now:%H-%M-%S}"},
            "sweep": {"dir": "multirun/bench/${now:%Y-%m-%d}/${now:%H-%M-%S}"},
            # train.py's sweep callback opens MLflow parent runs: not wanted here.
            "callbacks": {"sweep": {"_target_": "hydra.experimental.callback.Callback"}},
        },
    },
)


# ---------------------------------------------------------------------------- FLOPs


@dataclass
class FlopCount:
    """Forward-pass FLOPs of one image (2 per multiply-accumulate), by layer type."""

    macs_by_type: Counter = field(default_factory=Counter)

    @property
    def macs(self) -> int:
        return sum(self.macs_by_type.values())

    @property
    def flops(self) -> int:
        return 2 * self.macs


CONVS = (
    layers.Conv1D,
    layers.Conv2D,
    layers.Conv3D,
    layers.DepthwiseConv1D,
    layers.DepthwiseConv2D,
)
SEPARABLE_CONVS = (layers.SeparableConv1D, layers.SeparableConv2D)
TRANSPOSED_CONVS = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)


def _shape(x) -> tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


def _positions(shape: tuple[int, ...], data_format: str) -> int:
    """Spatial positions of one image of a conv layer's channels_last/first tensor."""
    spatial = shape[2:] if data_format == "channels_first" else shape[1:-1]
    return math.prod(spatial)


def _einsum_macs(equation: str, input_shape: tuple[int, ...], kernel_shape) -> int:
    """Multiply-accumulates of a two-operand einsum: the product of every index's size."""
    operands = equation.split("->")[0]
    inputs, kernel = operands.split(",")
    sizes, leading = {}, 1
    if inputs.startswith("..."):
        inputs = inputs[3:]
        leading = math.prod(input_shape[: len(input_shape) - len(inputs)])
    for letter, size in zip(inputs, input_shape[len(input_shape) - len(inputs) :], strict=True):
        sizes[letter] = size
    for letter, size in zip(kernel, kernel_shape, strict=True):
        sizes[letter] = int(size)
    return leading * math.prod(sizes.values())


def _attention_macs(layer: layers.MultiHeadAttention, args, kwargs) -> int:
    """The scores (QK^T) and the weighted sum of values; the projections are EinsumDense."""
    query = args[0] if args else kwargs["query"]
    value = args[1] if len(args) > 1 else kwargs["value"]
    queries = math.prod(_shape(query)[1:-1])
    keys = math.prod(_shape(value)[1:-1])
    return layer.num_heads * queries * keys * (layer.key_dim + layer.value_dim)


def _layer_macs(layer, args, kwargs, outputs) -> int:
    """Multiply-accumulates of one call of a leaf layer on a batch of one, 0 for others."""
    if isinstance(layer, CONVS):  # each output position applies the whole kernel once
        return _positions(_shape(outputs), layer.data_format) * math.prod(layer.kernel.shape)
    if isinstance(layer, SEPARABLE_CONVS):
        kernels = math.prod(layer.depthwise_kernel.shape) + math.prod(layer.pointwise_kernel.shape)
        return _positions(_shape(outputs), layer.data_format) * kernels
    if isinstance(layer, TRANSPOSED_CONVS):  # each input position scatters the whole kernel
        inputs = args[0] if args else kwargs["inputs"]
        return _positions(_shape(inputs), layer.data_format) * math.prod(layer.kernel.shape)
    if isinstance(layer, layers.Dense):
        return math.prod(_shape(outputs)[1:-1]) * math.prod(layer.kernel.shape)
    if isinstance(layer, layers.EinsumDense):
        inputs = args[0] if args else kwargs["inputs"]
        return _einsum_macs(layer.equation, _shape(inputs), layer.kernel.shape)
    if isinstance(layer, layers.MultiHeadAttention):
        return _attention_macs(layer, args, kwargs)
    return 0


@contextlib.contextmanager
def _recording_layer_calls(record):
    """Calls `record(layer, args, kwargs, outputs)` after every Layer.__call__ inside.

    Patching the base class reaches the layers a subclassed layer calls from its own
    call() (keras-hub's attention blocks), which no functional graph lists.
    """
    original = keras.layers.Layer.__call__

    def recording_call(layer, *args, **kwargs):
        outputs = original(layer, *args, **kwargs)
        record(layer, args, kwargs, outputs)
        return outputs

    keras.layers.Layer.__call__ = recording_call
    try:
        yield
    finally:
        keras.layers.Layer.__call__ = original


def count_forward_flops(model: keras.Model) -> FlopCount:
    """Forward FLOPs per image, counted from the layers' shapes during one inference call.

    Counts the multiply-accumulates of Conv (1-3D, depthwise, separable, transposed),
    Dense and EinsumDense layers and of MultiHeadAttention's score and value products,
    times 2. Not counted: normalization, activations, pooling, softmax, resizing,
    augmentation, residual adds and ops a layer runs outside these layers; for the
    networks here that is a few percent of the total. Backend-agnostic: one eager
    call on a single zero image, whatever the backend.
    """
    count = FlopCount()

    def record(layer, args, kwargs, outputs):
        macs = _layer_macs(layer, args, kwargs, outputs)
        if macs:
            count.macs_by_type[type(layer).__name__] += macs

    image = np.zeros((1, *model.input_shape[1:]), dtype=model.input.dtype)
    with _recording_layer_calls(record):
        model(ops.convert_to_tensor(image), training=False)
    return count


# ---------------------------------------------------------------------------- devices


def device_peak_memory() -> tuple[int | None, str | None]:
    """(peak bytes, where the number comes from) on the first accelerator; (None, None) on CPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "jax Device.memory_stats peak_bytes_in_use"
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
            return int(peak), "tf.config.experimental.get_memory_info('GPU:0')['peak']"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
    return None, None


def host_peak_rss() -> int | None:
    """This process's peak resident set size in bytes (host memory, not the device's)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


# ---------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    images: int  # images per timed step
    step_seconds: list[float]  # one per timed step, or per-step means for `fit`
    per_step: bool  # whether step_seconds are individual steps
    cpu_seconds: float  # this process's CPU time (all threads) over the timed steps

    @property
    def total_seconds(self) -> float:
        return sum(self.step_seconds)

    @property
    def images_per_second(self) -> float:
        return self.images * len(self.step_seconds) / self.total_seconds


def _timed(step, steps: int, warmup: int) -> tuple[list[float], float]:
    for _ in range(warmup):
        step()
    seconds = []
    cpu_start = time.process_time()
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return seconds, time.process_time() - cpu_start


class _EpochTimer(keras.callbacks.Callback):
    # Epoch hooks only: a batch hook would make Keras wait for every step
    # (CallbackList turns off its asynchronous batch callbacks).
    def __init__(self):
        super().__init__()
        self.seconds, self.cpu_seconds = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        # The logs arrive as Python floats, so the epoch's last step has finished.
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu_start)


def time_train(model, images, labels, bench) -> Timing:
    x, y = ops.convert_to_tensor(images), ops.convert_to_tensor(labels)
    seconds, cpu = _timed(lambda: model.train_on_batch(x, y), bench.steps, bench.warmup)
    return Timing(len(images), seconds, True, cpu)


def time_fit(model, images, labels, bench) -> Timing:
    x = np.concatenate([images] * bench.steps)
    y = np.concatenate([labels] * bench.steps)
    batches = ShuffledBatches(x, y, len(images), seed=0, first_epoch=0, end_epoch=2)
    timer = _EpochTimer()
    model.fit(
        batches,
        steps_per_epoch=batches.steps_per_epoch,
        shuffle=False,
        epochs=2,
        verbose=0,
        callbacks=[timer],
    )
    step = timer.seconds[-1] / bench.steps
    return Timing(len(images), [step] * bench.steps, False, timer.cpu_seconds[-1])


def time_inference(model, images, labels, bench) -> Timing:
    x = ops.convert_to_tensor(images)
    seconds, cpu = _timed(lambda: model.predict_on_batch(x), bench.steps, bench.warmup)
    return Timing(len(images), seconds, True, cpu)


TIMERS = {"train": time_train, "fit": time_fit, "inference": time_inference}


# ---------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class ImageShapes:
    """What build_model reads from the dataset, without loading one."""

    num_classes: int
    image_size: int


def _check_bench(bench: DictConfig) -> None:
    for key in ("steps", "warmup"):
        value = bench[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"bench.{key}={value!r} must be an integer >= 1, e.g. bench.{key}=5")
    measure = _measurements(bench)
    unknown = [m for m in measure if m not in MEASUREMENTS]
    if unknown or not measure:
        raise UserError(
            f"bench.measure={measure} must list some of {', '.join(MEASUREMENTS)}, "
            "e.g. bench.measure=[train,inference]"
        )
    peak = bench.peak_tflops
    if peak is not None and (not isinstance(peak, int | float) or peak <= 0):
        raise UserError(f"bench.peak_tflops={peak!r} must be a positive number or null")
    if bench.augment_layers not in AUGMENT_LAYERS:
        raise UserError(
            f"bench.augment_layers={bench.augment_layers} must be one of "
            f"{', '.join(AUGMENT_LAYERS)}"
        )


def _measurements(bench: DictConfig) -> list[str]:
    return list(bench.measure) if OmegaConf.is_list(bench.measure) else [bench.measure]


def build_with_keras_augmentation(cfg: DictConfig, data: ImageShapes) -> keras.Model:
    """The model without its own crop + flip, behind Keras' RandomTranslation + RandomFlip.

    The translation moves by up to data.augment.crop_padding pixels with zero fill, the
    affine-warp way to do what the model's RandomShift does by gathering rows and columns.
    """
    augment = cfg.data.augment
    plain = OmegaConf.merge(cfg, {"data": {"augment": {"crop_padding": 0, "flip": False}}})
    network = build_model(plain, data)
    inputs = image_input(data.image_size)
    x = ops.cast(inputs, "float32")
    if augment.get("crop_padding", 0):
        factor = augment.crop_padding / data.image_size
        x = layers.RandomTranslation(
            factor, factor, fill_mode="constant", dtype="float32", name="keras_translation"
        )(x)
    if augment.get("flip", False):
        x = layers.RandomFlip("horizontal", dtype="float32", name="keras_flip")(x)
    outputs = network(ops.cast(x, "uint8"))
    return keras.Model(inputs, outputs, name=network.name)


def jit_blockers(model: keras.Model) -> list[str]:
    """Layers whose supports_jit=False make Keras turn XLA off for the whole model."""
    return [layer.name for layer in model._flatten_layers() if not layer.supports_jit]


def _summary(seconds: list[float], per_step: bool) -> dict:
    ms = [s * 1000 for s in seconds]
    return {
        "step_ms_mean": round(statistics.fmean(ms), 4),
        "step_ms_median": round(statistics.median(ms), 4) if per_step else None,
        "step_ms_min": round(min(ms), 4) if per_step else None,
        "step_ms_max": round(max(ms), 4) if per_step else None,
    }


def _versions() -> dict:
    backend = keras.backend.backend()
    try:
        version = importlib.import_module(backend).__version__
    except (ImportError, AttributeError):  # e.g. the numpy or openvino backends
        version = None
    return {"backend": backend, "backend_version": version, "keras_version": keras.__version__}


def run_benchmark(cfg: DictConfig) -> list[dict]:
    """Builds the config's model as train.py does, times it and returns one record a measurement."""
    check_config(cfg)
    bench = cfg.bench
    _check_bench(bench)
    device = devices.detect()
    cfg.trainer.precision = devices.resolve_precision(cfg.trainer.precision, device)
    start_session(cfg.trainer.precision, cfg.seed)
    data = ImageShapes(cfg.data.num_classes, cfg.data.image_size)
    stages = plan_stages(cfg)
    try:
        stage = stages[bench.stage]
    except (IndexError, TypeError):
        raise UserError(
            f"bench.stage={bench.stage} is not a stage of this run, which has {len(stages)}; "
            "use -1 (the last) or 0"
        ) from None
    batch_size = int(cfg.trainer.batch_size)
    with distribution_scope(cfg.trainer.distribution):
        if bench.augment_layers == "keras":
            model = build_with_keras_augmentation(cfg, data)
        else:
            model = build_model(cfg, data)
        compile_stage(model, cfg, stage, steps_per_epoch=bench.steps)
    flops = count_forward_flops(model)

    rng = np.random.default_rng(cfg.seed)
    size = data.image_size
    images = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, data.num_classes, (batch_size,), dtype=np.int32)
    common = {
        "schema": SCHEMA_VERSION,
        "label": bench.label,
        "model": cfg.model.name,
        "size": cfg.model.get("size"),
        "strategy": cfg.model.strategy,
        "stage": stages.index(stage),
        "stem": cfg.model.get("stem"),
        "input_size": int(cfg.model.input_size),
        "image_size": size,
        "batch_size": batch_size,
        "augment": OmegaConf.to_container(cfg.data.augment),
        "augment_layers": bench.augment_layers,
        "precision": cfg.trainer.precision,
        "jit_compile_requested": cfg.trainer.jit_compile,
        "jit_compile": bool(model.jit_compile),
        "jit_blockers": jit_blockers(model),
        "steps_per_execution": int(cfg.trainer.steps_per_execution),
        **_versions(),
        "device": device.label,
        "device_kind": device.kind,
        "device_name": device.name,
        "compute_capability": device.compute_capability,
        "params": int(model.count_params()),
        "trainable_params": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "forward_flops_per_image": flops.flops,
        "forward_flops_by_layer_type": {k: 2 * v for k, v in sorted(flops.macs_by_type.items())},
        "steps": int(bench.steps),
        "warmup": int(bench.warmup),
        "peak_tflops": bench.peak_tflops,
    }

    records = []
    for measurement in _measurements(bench):
        timing = TIMERS[measurement](model, images, labels, bench)
        multiple = 1 if measurement == "inference" else TRAIN_FLOPS_PER_FORWARD
        flops_per_image = flops.flops * multiple
        achieved = timing.images_per_second * flops_per_image
        peak_bytes, peak_source = device_peak_memory()
        records.append(
            {
                "measurement": measurement,
                "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                **common,
                "images_per_second": round(timing.images_per_second, 3),
                **_summary(timing.step_seconds, timing.per_step),
                "flops_per_image": flops_per_image,
                "achieved_tflops": achieved / 1e12,
                "mfu": achieved / (bench.peak_tflops * 1e12) if bench.peak_tflops else None,
                "device_peak_memory_bytes": peak_bytes,
                "device_peak_memory_source": peak_source,
                "host_peak_rss_bytes": host_peak_rss(),
                "host_cpu_ms_per_step": round(1000 * timing.cpu_seconds / bench.steps, 4),
                "host_load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            }
        )
        _emit(records[-1], bench.out)
    return records


def _emit(record: dict, out: str | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        path = Path(out).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as file:
            file.write(line + "\n")


@hydra.main(version_base="1.3", config_path="../conf", config_name="throughput")
def main(cfg: DictConfig) -> None:
    try:
        run_benchmark(cfg)
    except UserError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
