"""What the live progress bar costs a training step, against no callback and a batch-end hook.

    KERAS_BACKEND=jax python bench/progress_overhead.py

A small dense model on tiny batches, so per-step overhead shows: 3000 steps an epoch, best
of 3 epochs per variant, interleaved so all see the same machine load. The bar moves in
on_train_batch_begin (no step logs, no wait for the device); a batch-end hook makes Keras
convert each step's logs, i.e. wait for the step, and on JAX/torch stops async dispatch.
"""

import io
import sys
import time
from pathlib import Path

import keras
import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from callbacks.progress import EpochProgress  # noqa: E402

STEPS, BATCH, REPEATS = 3000, 8, 3


class BatchEndHook(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        pass


def main() -> None:
    inputs = keras.Input((32,))
    hidden = keras.layers.Dense(256, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(hidden))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.rand(STEPS * BATCH, 32).astype("float32")
    y = np.random.randint(0, 10, STEPS * BATCH)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # compile

    def live_bar():
        console = Console(file=io.StringIO(), force_terminal=True)
        return [EpochProgress("bench", 1, console=console)]

    variants = {
        "no callback": list,
        "live bar": live_bar,
        "batch-end hook": lambda: [BatchEndHook()],
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(REPEATS):
        for name, callbacks in variants.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=callbacks())
            seconds[name].append(time.perf_counter() - start)
    for name, values in seconds.items():
        print(f"{keras.backend.backend()} {name}: {min(values) / STEPS * 1e6:.0f} us/step")


if __name__ == "__main__":
    main()
