"""The train-images top-1 curve and the test predictions a run logs, in-process."""

import keras
import numpy as np
import pytest
from test_fit import StopAfter, _setup

from callbacks.train_eval import TRAIN_EVAL_KEY, TrainEvalTop1, train_subset
from comparison.predictions import read_predictions
from data.cifar100 import Split
from models.alexnet import build_alexnet
from training.evaluate import predictions_from_logits
from training.fit import fit

AUGMENT = {"crop_padding": 4, "flip": True}


def _data(n=96, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, n).astype(np.int32)
    return Split(images, labels, labels // 2)


def test_the_subset_is_fixed_and_sized_by_the_config():
    labels = np.arange(1000)
    first, again = train_subset(labels, 300), train_subset(labels, 300)
    assert len(first) == 300 and len(np.unique(first)) == 300
    np.testing.assert_array_equal(first, again)  # every run and seed: the same images
    assert len(train_subset(labels, 5000)) == 1000  # fewer images than asked: all of them


def test_augmentation_is_off_when_the_callback_predicts():
    """The models augment only with training=True; predict() runs in inference mode."""
    model = build_alexnet(
        num_classes=5, image_size=32, augment=AUGMENT, width=4, classifier_width=16
    )
    images = _data().images[:8]
    x = keras.ops.cast(images, "float32")
    for name in ("augment_shift", "augment_flip"):
        layer = model.get_layer(name)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
        assert not np.array_equal(keras.ops.convert_to_numpy(layer(x, training=True)), x)
    first = model.predict(images, verbose=0)
    np.testing.assert_array_equal(first, model.predict(images, verbose=0))


def test_callback_logs_top1_on_the_subset_each_epoch():
    split = _data()
    model = build_alexnet(
        num_classes=5, image_size=32, augment=AUGMENT, width=4, classifier_width=16
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    callback = TrainEvalTop1.from_split(split, size=64, batch_size=32)
    seen = []

    class Record(keras.callbacks.Callback):  # after ours, as the MLflow logger is
        def on_epoch_end(self, epoch, logs=None):
            seen.append(dict(logs))

    model.fit(
        split.images,
        split.labels,
        epochs=2,
        batch_size=32,
        callbacks=[callback, Record()],
        verbose=0,
    )
    assert [TRAIN_EVAL_KEY in logs for logs in seen] == [True, True]
    assert seen[-1]["train_eval_images"] == 64 and seen[-1]["train_eval_seconds"] > 0
    index = train_subset(split.labels, 64)
    predicted = np.argmax(model.predict(split.images[index], verbose=0), axis=1)
    # In %, like val_top1.
    assert seen[-1][TRAIN_EVAL_KEY] == pytest.approx(
        100 * np.mean(predicted == split.labels[index])
    )


def test_predictions_round_trip_through_the_artifact_file(tmp_path):
    split = _data(n=50, classes=7)
    logits = np.random.default_rng(1).normal(size=(50, 7)).astype(np.float32)
    predictions = predictions_from_logits(logits, split)
    path = tmp_path / "predictions.npz"
    np.savez_compressed(path, **predictions.arrays())  # as tracking/results.py logs it
    read = read_predictions(path)
    np.testing.assert_array_equal(read.labels, split.labels)
    np.testing.assert_array_equal(read.predicted, np.argmax(logits, axis=1))
    np.testing.assert_array_equal(read.top5, np.argsort(-logits, axis=1)[:, :5])
    assert read.probabilities.dtype == np.float16 and read.probabilities.shape == (50, 7)
    np.testing.assert_allclose(read.probabilities.astype(float).sum(axis=1), 1, atol=5e-3)
    expected_confidence = np.exp(logits.max(1)) / np.exp(logits).sum(1)
    np.testing.assert_allclose(read.confidence, expected_confidence, atol=1e-3)
    assert read.test_fingerprint == predictions.test_fingerprint
    other = predictions_from_logits(logits, _data(n=50, classes=7, seed=2))
    assert other.test_fingerprint != predictions.test_fingerprint  # other images, other print


def test_a_resumed_fit_keeps_the_curve_of_the_epochs_before(tmp_path, data_cache):
    """epoch_metrics run before the checkpoint: the history a resume re-logs holds them."""
    cfg, data, model = _setup("scratch", data_cache, epochs=2)
    curve = [TrainEvalTop1.from_split(data.train, size=64, batch_size=32)]
    fit(model, data, cfg, tmp_path, epoch_metrics=curve, callbacks=[StopAfter(1)])

    cfg, data, model = _setup("scratch", data_cache, epochs=2)
    heard, logged = [], keras.callbacks.History()
    fit(
        model,
        data,
        cfg,
        tmp_path,
        resume=True,
        on_resume=lambda epochs_done, history: heard.append(history),
        epoch_metrics=[TrainEvalTop1.from_split(data.train, size=64, batch_size=32)],
        callbacks=[logged],
    )
    (history,) = heard
    assert len(history) == 1 and 0 <= history[0][TRAIN_EVAL_KEY] <= 100
    assert history[0]["train_eval_images"] == 64
    assert logged.epoch == [1] and TRAIN_EVAL_KEY in logged.history
