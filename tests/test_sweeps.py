"""Sweeps through the real CLI: one parent run, the comparison at the end, compare.py.

The Optuna search has its own tests in test_search.py."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS, REPO, Store, output, train_cli
from PIL import Image

from comparison.plots import read_series
from comparison.predictions import PREDICTIONS_FILE, read_predictions
from comparison.significance_table import NOT_SIGNIFICANT
from comparison.stat_plots import RELIABILITY, TOP1_INTERVALS, TRAIN_VAL_CURVES
from tracking.values import curve_key

# Every test runs train.py, or reads the smoke sweep it ran.
pytestmark = pytest.mark.slow


def _table(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _parent(store: Store):
    (parent,) = store.runs("tags.sweep_parent = 'true'")
    return parent


def test_sweep_is_one_parent_with_nested_children(smoke_sweep):
    store, _ = smoke_sweep
    parent = _parent(store)
    assert parent.info.status == "FINISHED"
    sweep_id = parent.data.tags["sweep_id"]
    for run in store.jobs():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["sweep_id"] == sweep_id


def test_sweep_prints_and_logs_a_table_equal_to_the_store(smoke_sweep):
    store, result = smoke_sweep
    assert "test top-1" in result.stdout and "full table: " in result.stdout
    folder = store.root / "multirun" / "comparison"
    rows = {row["architecture"]: row for row in _table(folder / "comparison.csv")}
    assert sorted(rows) == sorted(MODELS)
    for run in store.jobs():
        row, metrics = rows[run.info.run_name], run.data.metrics
        assert row["status"] == "FINISHED" and row["n"] == "1"
        assert float(row["test_top1_pct"]) == pytest.approx(metrics["test_top1"], abs=1e-4)
        assert float(row["test_top5_pct"]) == pytest.approx(metrics["test_top5"], abs=1e-4)
        assert float(row["best_val_top1_pct"]) == pytest.approx(metrics["best_val_top1"], abs=1e-4)
        assert int(row["param_count"]) == metrics["param_count"]
        assert row["input_size"] == run.data.params["model.input_size"]
    logged = {
        a.path for a in store.client().list_artifacts(_parent(store).info.run_id, "comparison")
    }
    assert {"comparison/comparison.md", "comparison/comparison.csv"} <= logged
    for png in folder.glob("*.png"):
        assert f"comparison/{png.name}" in logged
        description = Image.open(png).text["Description"]
        assert description == f"series={len(MODELS)}", (png.name, description)
    assert len(list(folder.glob("*.png"))) == 8


def test_compare_rebuilds_the_same_table_in_a_fresh_process(smoke_sweep, tmp_path):
    store, _ = smoke_sweep
    result = subprocess.run(
        [
            sys.executable,
            "compare.py",
            "--tracking-uri",
            store.uri,
            "--out",
            str(tmp_path),
            "--no-log",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    swept = (store.root / "multirun" / "comparison" / "comparison.csv").read_text()
    assert (tmp_path / "comparison.csv").read_text() == swept


@pytest.mark.slow
def test_seeds_give_mean_and_std(seeded_sweep):
    store, _ = seeded_sweep
    rows = _table(store.root / "multirun" / "comparison" / "comparison.csv")
    assert [row["architecture"] for row in rows] == ["alexnet", "vgg13"]
    for row in rows:
        assert row["n"] == "2"
        runs = [r for r in store.jobs() if r.data.tags["model"] == row["architecture"]]
        tops = [r.data.metrics["test_top1"] for r in runs]  # % as logged
        assert float(row["test_top1_pct"]) == pytest.approx(sum(tops) / 2, abs=1e-4)
        assert row["test_top1_pct_std"] != ""


@pytest.mark.slow
def test_runs_log_test_predictions_and_a_train_images_curve(seeded_sweep, tmp_path):
    store, _ = seeded_sweep
    client = store.client()
    for run in store.jobs():
        path = client.download_artifacts(run.info.run_id, PREDICTIONS_FILE, str(tmp_path))
        predictions = read_predictions(Path(path))
        assert predictions.probabilities.dtype == np.float16
        assert predictions.probabilities.shape == (200, 100)  # smoke: 2 test images a class
        assert predictions.top5.shape == (200, 5)
        np.testing.assert_array_equal(predictions.top5[:, 0], predictions.predicted)
        assert 100 * predictions.correct.mean() == pytest.approx(run.data.metrics["test_top1"])
        # In % like val_top1, at the same steps (epochs from 1).
        curve = client.get_metric_history(run.info.run_id, curve_key("train_eval_top1"))
        val = client.get_metric_history(run.info.run_id, curve_key("val_top1"))
        assert [m.step for m in curve] == [m.step for m in val] == [1]
        assert 0 <= curve[0].value <= 100
        assert run.data.metrics[curve_key("train_eval_images")] == 200  # experiment=smoke's subset


@pytest.mark.slow
def test_compare_on_seeds_shows_intervals_marks_gap_and_ece(seeded_sweep, tmp_path):
    store, sweep_result = seeded_sweep
    result = subprocess.run(
        [sys.executable, "compare.py", "--tracking-uri", store.uri, "--out", str(tmp_path)]
        + ["--no-log"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert result.returncode == 0, result.stderr
    assert "Downloading artifacts" not in result.stdout + result.stderr
    assert "Which differences are real" in result.stdout
    rows = {row["architecture"]: row for row in _table(tmp_path / "significance.csv")}
    best = next(row for row in rows.values() if row["versus_best"] == "best")
    other = next(row for row in rows.values() if row is not best)
    for row in rows.values():
        assert row["n"] == "2"
        top1 = float(row["test_top1"])
        assert float(row["top1_ci_low"]) <= top1 <= float(row["top1_ci_high"])
        assert float(row["seed_ci_low"]) <= top1 <= float(row["seed_ci_high"])
        assert float(row["gap_ci_low"]) <= float(row["gap"]) <= float(row["gap_ci_high"])
        assert 0 <= float(row["ece_mean"]) <= 100  # %
    assert other["test"] == "paired bootstrap" and 0 < float(other["p_holm"]) <= 1
    assert float(other["difference"]) <= 0
    markdown = (tmp_path / "comparison.md").read_text()
    line = next(x for x in markdown.splitlines() if x.startswith(f"| {other['row']} | 2 |"))
    assert (NOT_SIGNIFICANT in line) == (other["significant"] == "false")
    assert f"| {best['row']} | 2 |" in markdown and "| best |" in markdown
    for png in (TOP1_INTERVALS, RELIABILITY, TRAIN_VAL_CURVES):
        assert read_series(tmp_path / png) == 2, png
    # The sweep itself wrote the same and logged findings.md to its parent run.
    swept = store.root / "multirun" / "comparison"
    assert (swept / "significance.csv").read_text() == (tmp_path / "significance.csv").read_text()
    logged = {
        a.path for a in store.client().list_artifacts(_parent(store).info.run_id, "comparison")
    }
    assert {"comparison/findings.md", "comparison/significance.csv"} <= logged
    findings = (swept / "findings.md").read_text()
    assert re.findall(r"^\*\*Verdict: (.+?)\.\*\*", findings, flags=re.M)[2:] == [
        "not measured",  # smoke runs load no pretrained weights
        "not measured",  # and train neither ViT nor EfficientNetV2
    ]
    assert "alexnet" in findings and "vgg13" in findings


def test_failed_job_is_a_row_and_the_sweep_exits_non_zero(tmp_path, data_cache):
    # The second job's learning rate makes the loss NaN: that run must show as FAILED.
    result = train_cli(
        "-m",
        "model=alexnet",
        "experiment=smoke",
        "optimizer.lr=0.01,1e30",
        root=tmp_path,
        cache=data_cache,
    )
    assert result.returncode != 0
    assert "1 of 2 jobs failed" in output(result)
    rows = _table(tmp_path / "multirun" / "comparison" / "comparison.csv")
    assert sorted(row["status"] for row in rows) == ["FAILED", "FINISHED"]
    failed = next(row for row in rows if row["status"] == "FAILED")
    assert "NaN" in failed["error"] or "nan" in failed["error"]
