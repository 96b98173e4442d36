"""training.fit on its own: stages, resume and extra callbacks, with no tracking store."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir

from data.cifar100 import load_cifar100
from training.fit import build_model, fit
from training.session import start_session

# AlexNet from scratch, and a tiny ViT fine-tuned (a head stage of 1 epoch, then all).
CASES = {
    "scratch": ("model=alexnet",),
    "finetune": ("model=vit", "model.strategy=finetune", "model.head_epochs=1"),
}


def _setup(case: str, cache, epochs: int = 3):
    # An explicit policy: train.py resolves precision=auto per device, fit does not.
    overrides = [*CASES[case], "experiment=smoke", "trainer.precision=float32"]
    overrides.append(f"trainer.epochs={epochs}")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"data.cache_dir={cache}"])
    start_session(cfg.trainer.precision, cfg.seed)
    data = load_cifar100(cfg.data, seed=cfg.seed)
    return cfg, data, build_model(cfg, data)


class StopAfter(keras.callbacks.Callback):
    """An interruption: training ends after `epochs` epochs (their checkpoints written)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.epochs:
            self.model.stop_training = True


# The fine-tune case (a ViT, two stages) is the quick loop's costliest test: full suite only.
@pytest.mark.parametrize("case", ["scratch", pytest.param("finetune", marks=pytest.mark.slow)])
def test_an_interrupted_fit_resumes_where_its_checkpoint_stopped(case, tmp_path, data_cache):
    cfg, data, model = _setup(case, data_cache)
    first = fit(model, data, cfg, tmp_path, callbacks=[StopAfter(2)])
    assert first.epochs_run == 2

    cfg, data, model = _setup(case, data_cache)  # a new process would start from scratch
    heard = []
    logged = keras.callbacks.History()
    result = fit(
        model,
        data,
        cfg,
        tmp_path,
        resume=True,
        on_resume=lambda epochs_done, history: heard.append((epochs_done, len(history))),
        callbacks=[logged],
    )
    assert heard == [(2, 2)]
    assert logged.epoch == [2]  # only the epoch the interruption lost
    assert result.epochs_run == 3
    assert result.best_checkpoint.exists() and result.best_epoch in (0, 1, 2)
    # The last stage's optimizer went on from its restored step count, not from zero.
    steps_per_epoch = -(-len(data.train.labels) // cfg.trainer.batch_size)
    last_stage_epochs = 3 - (cfg.model.head_epochs if case == "finetune" else 0)
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    assert steps == last_stage_epochs * steps_per_epoch

    # Killed after the last epoch's checkpoint but before the job ended: nothing left to train,
    # and the result is the finished one's.
    cfg, data, model = _setup(case, data_cache)
    again = fit(model, data, cfg, tmp_path, resume=True)
    assert (again.epochs_run, again.best_epoch) == (3, result.best_epoch)
    assert again.best_val_top1 == result.best_val_top1
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == steps


@pytest.mark.slow
def test_fit_runs_without_mlflow(tmp_path, data_cache):
    """A notebook or the benchmark calls fit with no tracking: MLflow is never imported."""
    script = f"""
import json, sys
from pathlib import Path
from hydra import compose, initialize_config_dir
from data.cifar100 import load_cifar100
from training.fit import build_model, fit
with initialize_config_dir({str(REPO / "conf")!r}, version_base="1.3"):
    cfg = compose("config", overrides=["model=alexnet", "experiment=smoke",
                                       "data.cache_dir={data_cache}"])
data = load_cifar100(cfg.data, seed=cfg.seed)
result = fit(build_model(cfg, data), data, cfg, Path({str(tmp_path)!r}))
loaded = [m for m in sys.modules if m.split(".")[0] in ("mlflow", "tracking")]
print(json.dumps({{"epochs_run": result.epochs_run, "loaded": loaded}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"epochs_run": 1, "loaded": []}


def test_each_epoch_sees_the_images_in_a_new_order_and_a_resumed_run_the_same_orders():
    """fit(images, labels, shuffle=True) under TensorFlow with a seed set repeats epoch 1's
    batches every epoch; ShuffledBatches reshuffles as PyTorch's DataLoader does."""
    from data.batches import ShuffledBatches

    seen = []

    class Probe(keras.layers.Layer):
        def call(self, x, training=None):
            if training:
                seen.extend(keras.ops.convert_to_numpy(x)[:, 0].astype(int).tolist())
            return x

    def run(first_epoch, epochs):
        keras.utils.set_random_seed(0)  # as train.py's session does
        seen.clear()
        model = keras.Sequential([keras.Input((1,)), Probe(), keras.layers.Dense(2)])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=True)
        images = np.arange(20, dtype=np.uint8)[:, None]  # each image is its own index
        batches = ShuffledBatches(images, np.zeros(20, "int32"), 8, 7, first_epoch, epochs)
        model.fit(
            batches,
            steps_per_epoch=batches.steps_per_epoch,
            shuffle=False,
            epochs=epochs,
            initial_epoch=first_epoch,
            verbose=0,
        )
        return [seen[i : i + 20] for i in range(0, len(seen), 20)]

    orders = run(0, 3)
    assert len(orders) == 3
    for order in orders:
        assert sorted(order) == list(range(20))  # every image once, last batch of 4
    assert len({tuple(order) for order in orders}) == 3
    assert run(2, 3) == orders[2:]
    assert run(0, 1) == orders[:1]  # the seed fixes the orders
