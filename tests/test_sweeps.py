"""Sweeps through the real CLI: one parent run, the comparison at the end, compare.py.

The Optuna search has its own tests in test_search.py."""

import csv
import subprocess
import sys

import pytest
from conftest import MODELS, REPO, Store, output, train_cli
from PIL import Image

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
    assert len(list(folder.glob("*.png"))) == 5


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


def test_seeds_give_mean_and_std(tmp_path, data_cache):
    result = train_cli(
        "-m", "model=resnet18", "experiment=smoke", "seed=0,1", root=tmp_path, cache=data_cache
    )
    assert result.returncode == 0, output(result)[-3000:]
    (row,) = _table(tmp_path / "multirun" / "comparison" / "comparison.csv")
    assert row["n"] == "2"
    tops = [r.data.metrics["test_top1"] for r in Store(tmp_path).jobs()]
    assert float(row["test_top1_pct"]) == pytest.approx(sum(tops) / 2, abs=1e-4)
    assert row["test_top1_pct_std"] != ""


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
