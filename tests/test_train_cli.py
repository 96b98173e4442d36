"""train.py end to end through the real Hydra CLI, into a temporary MLflow store."""

import keras
import numpy as np
import pytest
from conftest import CURVES, MODELS, REPO, Store, output, train_cli

# Every test runs train.py, or reads the smoke sweep it ran.
pytestmark = pytest.mark.slow


def test_smoke_sweep_leaves_five_finished_runs(smoke_sweep):
    store, _ = smoke_sweep
    runs = {run.info.run_name: run for run in store.jobs()}
    assert sorted(runs) == sorted(MODELS)
    for name, run in runs.items():
        assert run.info.status == "FINISHED", name
        assert run.data.tags["model"] == name
        metrics = run.data.metrics
        for key in ("test_top1", "test_top5", "best_val_top1", "param_count", "train_seconds"):
            assert key in metrics, (name, key)
        # Accuracies in %, the repo's one unit.
        assert 0 <= metrics["test_top1"] <= metrics["test_top5"] <= 100
        assert not [k for k in metrics if "superclass" in k]  # a table, not 20 metrics


def test_runs_hold_curves_params_tags_and_artifacts(smoke_sweep):
    store, _ = smoke_sweep
    client = store.client()
    for run in store.jobs():
        run_id = run.info.run_id
        for key in CURVES:
            history = client.get_metric_history(run_id, key)
            assert [m.step for m in history] == [1], (run.info.run_name, key)  # Keras' Epoch 1/1
        params = run.data.params
        assert params["trainer.epochs"] == "1" and params["model.size"] == "tiny"
        assert params["model.name"] == run.info.run_name
        tags = run.data.tags
        assert tags["backend"] == "tensorflow" and tags["precision"] == "float32"
        assert tags["dataset_id"].startswith("synthetic:")
        assert len(tags["dataset_fingerprint"]) == 16 and tags["git_commit"]
        assert tags["strategy"] in ("scratch", "freeze", "finetune")
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert {
            "config.yaml",
            "classification_report.txt",
            "confusion_matrix.csv",
            "confusion_matrix.png",
            "model_summary.txt",
            "superclass_top1.json",
            "checkpoints",
        } <= artifacts
        assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == [
            "checkpoints/best.keras"
        ]


def test_logged_checkpoint_loads_in_safe_mode_and_predicts(smoke_sweep, tmp_path):
    store, _ = smoke_sweep
    run = next(r for r in store.jobs() if r.info.run_name == "resnet18")
    path = store.client().download_artifacts(run.info.run_id, "checkpoints/best.keras", tmp_path)
    import models  # noqa: F401  (registers the custom layers, as the README says)

    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    logits = model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0)
    assert logits.shape == (2, 100) and np.isfinite(logits).all()


def test_same_command_again_skips_finished_runs(smoke_sweep, data_cache):
    store, _ = smoke_sweep
    before = len(store.jobs())
    result = train_cli("model=alexnet", "experiment=smoke", root=store.root, cache=data_cache)
    assert result.returncode == 0, output(result)[-3000:]
    assert "FINISHED earlier" in output(result)
    assert len(store.jobs()) == before


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_train_end_to_end(backend, tmp_path, data_cache):
    if backend == "torch":
        pytest.importorskip("torch")
    result = train_cli(
        "-m",
        "model=resnet18,vit",
        "experiment=smoke",
        root=tmp_path,
        cache=data_cache,
        backend=backend,
    )
    assert result.returncode == 0, output(result)[-4000:]
    runs = Store(tmp_path).jobs()
    assert {r.info.run_name for r in runs} == {"resnet18", "vit"}
    assert all(r.info.status == "FINISHED" and r.data.tags["backend"] == backend for r in runs)


BAD_INPUTS = [
    (["trainer.epochs=0"], "trainer.epochs=0"),
    (["optimizer.lr=0"], "optimizer.lr=0"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1"),
    (["trainer.batch_size=0"], "trainer.batch_size=0"),
    (["optimizer.global_clipnorm=0"], "optimizer.global_clipnorm=0"),
    (["optimizer.gradient_accumulation_steps=0"], "optimizer.gradient_accumulation_steps=0"),
    (["data.val_size=0"], "data.val_size=0"),
    (["data.val_size=100000"], "data.val_size=100000"),
    (["data.path=/no/such/cifar"], "data.path=/no/such/cifar"),
    (["data.path=conf"], "data.path=conf"),
    (["model=vit", "model.pretrained=true", "model.input_size=224"], "model.checkpoint"),
    (["model=effnetv2", "model.pretrained=true"], "model.pretrained=false"),
]


@pytest.mark.parametrize(("overrides", "named"), BAD_INPUTS, ids=[b[1] for b in BAD_INPUTS])
def test_bad_input_fails_with_one_line_and_no_running_run(overrides, named, tmp_path, data_cache):
    result = train_cli(
        "model=alexnet",
        "experiment=smoke",
        *overrides,
        root=tmp_path,
        cache=data_cache,
        env={"HF_HUB_OFFLINE": "1"},
    )
    text = output(result)
    assert result.returncode != 0
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if " error: " in line]
    assert len(errors) == 1 and named in errors[0], text[-3000:]
    assert not Store(tmp_path).runs("attributes.status = 'RUNNING'")


def test_unknown_group_option_lists_the_choices(tmp_path, data_cache):
    result = train_cli("model=resnet99", root=tmp_path, cache=data_cache)
    text = output(result)
    assert result.returncode != 0 and "Traceback" not in text
    assert "Could not find 'model/resnet99'" in text
    assert all(name in text for name in MODELS)


def test_unwritable_tracking_store_is_one_line(tmp_path, data_cache):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = train_cli(
        "experiment=smoke", root=tmp_path, cache=data_cache, tracking_root=blocker / "mlruns"
    )
    text = output(result)
    assert result.returncode != 0 and "Traceback" not in text
    errors = [line for line in text.splitlines() if " error: " in line]
    assert len(errors) == 1 and "tracking" in errors[0] and "writable" in errors[0]


@pytest.mark.skipif(
    not (REPO.parent / "shared" / "cifar100").is_dir(),
    reason="the real CIFAR-100 copy is not beside the repo",
)
def test_smoke_on_the_real_images(tmp_path, data_cache):
    result = train_cli(
        "model=resnet18",
        "data.path=../shared/cifar100",
        "experiment=smoke",
        root=tmp_path,
        cache=data_cache,
    )
    assert result.returncode == 0, output(result)[-3000:]
    (run,) = Store(tmp_path).jobs()
    assert run.info.status == "FINISHED"
    assert run.data.tags["dataset_id"].endswith("shared/cifar100")
    assert run.data.params["data.val_size"] == "200"
    # data.path won over the preset's synthetic group: nothing says synthetic.
    params = run.data.params
    assert params["data.name"] == "cifar100" and not [k for k in params if "synthetic" in k]
    assert run.data.tags["data.path"] == "../shared/cifar100" and "data.path" not in params
    inputs = {i.dataset.name: i.dataset for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["cifar100-test", "cifar100-train", "cifar100-val"]
    assert all(d.source_type == "local" and "shared/cifar100" in d.source for d in inputs.values())
