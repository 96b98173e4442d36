"""What a user reads in the MLflow UI after the smoke sweep: through a real `mlflow server`
on 127.0.0.1 (its REST API is what the UI calls), and in headless Chromium."""

import json
import re
import subprocess
import sys
import textwrap
import urllib.request

import numpy as np
import pytest
from conftest import MODELS, REPO, output, train_cli
from hydra import compose, initialize_config_dir

from tracking.ui import chromium_page, chromium_path, mlflow_server
from tracking.values import curve_key

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def ui_server(smoke_sweep):
    store, _ = smoke_sweep
    with mlflow_server(store.uri) as url:
        yield url


def call(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def tags(entity: dict) -> dict[str, str]:
    return {
        tag["key"]: tag["value"]
        for tag in entity.get("tags", entity.get("data", {}).get("tags", []))
    }


@pytest.fixture(scope="session")
def served(ui_server):
    experiment = call(ui_server, "experiments/get-by-name?experiment_name=cifar100")["experiment"]
    runs = call(
        ui_server,
        "runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000},
    )["runs"]
    parents = [run for run in runs if tags(run).get("sweep_parent") == "true"]
    children = [run for run in runs if tags(run).get("sweep_parent") != "true"]
    return experiment, parents, children


def metrics(run: dict) -> dict[str, float]:
    return {metric["key"]: metric["value"] for metric in run["data"].get("metrics", [])}


def test_the_experiment_opens_on_model_training(served):
    experiment, _, _ = served
    assert tags(experiment)["mlflow.experimentKind"] == "custom_model_development"


def test_every_run_names_its_data_and_has_a_logged_model_and_system_metrics(served):
    _, _, children = served
    assert sorted(run["info"]["run_name"] for run in children) == sorted(MODELS)
    for run in children:
        name = run["info"]["run_name"]
        inputs = run["inputs"]["dataset_inputs"]
        contexts = sorted(tags(i)["mlflow.data.context"] for i in inputs)
        assert contexts == ["test", "train", "val"], name
        assert {i["dataset"]["name"] for i in inputs} == {
            "synthetic-train",
            "synthetic-val",
            "synthetic-test",
        }
        assert {i["dataset"]["digest"] for i in inputs} == {tags(run)["dataset_fingerprint"]}
        assert len(run["outputs"]["model_outputs"]) == 1, name
        values = metrics(run)
        assert any(key.startswith("system/cpu") for key in values), name
        assert any(key.startswith("system/system_memory") for key in values), name
        assert not [key for key in values if "superclass" in key]


def test_metric_values_carry_no_float32_noise(served):
    _, parents, children = served
    for run in [*children, *parents]:
        for key, value in metrics(run).items():
            if key.startswith("system/"):
                continue  # MLflow's own sampler logs these as psutil reports them
            clean = value.is_integer() or value == float(f"{value:.6g}")
            assert clean, (run["info"]["run_name"], key, value)
    lr = [metrics(run)[curve_key("lr")] for run in children]
    assert set(lr) <= {0.1, 0.05, 0.02, 0.01, 0.001, 0.0003, 0.0001}, lr


def test_each_logged_model_carries_its_runs_test_metrics(served, ui_server):
    experiment, _, children = served
    found = call(
        ui_server, "logged-models/search", {"experiment_ids": [experiment["experiment_id"]]}
    )["models"]
    by_run = {model["info"]["source_run_id"]: model for model in found}
    for run in children:
        model = by_run[run["info"]["run_id"]]
        assert model["info"]["name"] == run["info"]["run_name"]
        linked = {m["key"]: m["value"] for m in model["data"]["metrics"]}
        assert linked["test_top1"] == metrics(run)["test_top1"]
        assert linked["test_top5"] == metrics(run)["test_top5"]


def test_the_parent_run_describes_the_sweep(served):
    _, parents, children = served
    (parent,) = parents
    assert parent["info"]["run_name"].startswith("sweep 5 models · smoke · ")
    note = tags(parent)["mlflow.note.content"]
    assert "python train.py -m model=alexnet,vgg13,resnet18,effnetv2,vit experiment=smoke" in note
    assert "| architecture | test top-1 (%) |" in note
    values = metrics(parent)
    for run in children:
        name = run["info"]["run_name"]
        top1 = metrics(run)["test_top1"]
        assert values[f"test_top1.{name}"] == round(top1, 4)
        assert f"| {name} | {top1:.2f} |" in note
    assert values["best_test_top1"] == max(metrics(run)["test_top1"] for run in children)


def test_the_logged_model_predicts_the_runs_test_top1_in_a_fresh_process(
    smoke_sweep, data_cache, tmp_path
):
    """MLflow's own loader, in a process that never imported the repo's models package."""
    from data.cifar100 import load_cifar100

    store, _ = smoke_sweep
    run = next(r for r in store.jobs() if r.info.run_name == "resnet18")
    (output_model,) = run.outputs.model_outputs
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", ["experiment=smoke", f"data.cache_dir={data_cache}"])
    test = load_cifar100(cfg.data, seed=cfg.seed).test
    np.savez(tmp_path / "test.npz", images=test.images, labels=test.labels)
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import mlflow
        mlflow.set_tracking_uri(sys.argv[1])
        model = mlflow.pyfunc.load_model(f"models:/{sys.argv[2]}")
        test = np.load(sys.argv[3])
        logits = model.predict(test["images"])
        print("top1", 100 * float((logits.argmax(axis=1) == test["labels"]).mean()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, store.uri, output_model.model_id, str(tmp_path / "test.npz")],
        cwd=tmp_path,  # not the repo: the model's own copy of `models` must do
        capture_output=True,
        text=True,
        timeout=600,
        env={"MLFLOW_DISABLE_TELEMETRY": "true", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    top1 = float(result.stdout.split("top1")[-1])
    assert top1 == pytest.approx(run.data.metrics["test_top1"], abs=1e-3)


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed")
def test_the_runs_page_shows_the_architectures_and_test_top1(served, ui_server):
    """The parent's description links a view of the sweep's runs, best test top-1 first, in
    MLflow's Model training mode; its chart view opens on the accuracy curves."""
    experiment, parents, children = served
    (parent,) = parents
    resnet18 = next(run for run in children if run["info"]["run_name"] == "resnet18")
    sweep_id = tags(parent)["sweep_id"]
    route = (
        f"#/experiments/{experiment['experiment_id']}/runs"
        f"?viewStateShareKey={sweep_id}&workflowType=machine_learning"
    )
    assert f"]({route})" in tags(parent)["mlflow.note.content"]
    with chromium_page(1600, 900) as page:
        page.goto(f"{ui_server}/{route}")
        page.get_by_text("resnet18").first.wait_for(timeout=90_000)
        page.wait_for_timeout(1000)
        text = page.inner_text("body")
        page.goto(f"{ui_server}/{route}&compareRunsMode=CHART")
        page.get_by_text("Model metrics").first.wait_for(timeout=90_000)
        page.wait_for_timeout(1000)
        charts = page.inner_text("body")
    # Model training mode: the sidebar holds none of the GenAI pages.
    assert "Sort: test_top1" in text and "Judges" not in text and "Evaluation runs" not in text
    # Its row: the Models column names the logged model, then best val top-1 and test top-1.
    values = metrics(resnet18)
    row = f"resnet18\n{values['best_val_top1']:g}\n{values['test_top1']:g}\n"
    assert row in text, text[text.find("Run Name") :][:2000]
    # Chart sections in page order, each "name\n(count)": the curves come first.
    sections = [name for name, _ in re.findall(r"^(\w[\w ]*)\n\((\d+)\)$", charts, re.M)]
    assert sections[:2] == ["accuracy", "loss"] and "Model metrics" in sections, sections
    assert charts.index("accuracy/val_top1") < charts.index("Model metrics")


def test_a_sweep_that_does_not_compose_leaves_no_parent(tmp_path, data_cache):
    result = train_cli(
        "-m", "model=resnet50,alexnet", "experiment=smoke", root=tmp_path, cache=data_cache
    )
    text = output(result)
    assert result.returncode == 2, text[-3000:]
    assert "sweep job `model=resnet50" in text and "no parent run was created" in text
    assert not (tmp_path / "mlflow.db").exists()
