"""Per-job Keras state.

Hydra's basic launcher runs every job of a sweep in one process, so whatever one job sets
globally (layers' name counters, the dtype policy, the RNGs, a distribution) must be reset
before the next job builds its model.
"""

import contextlib
import logging

import keras

log = logging.getLogger(__name__)

# auto: resolved per device by training.device.resolve_precision before a session starts.
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16", "bfloat16")


def start_session(precision: str, seed: int) -> None:
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
