"""The comparison report, built from a real MLflow sqlite store that mimics train.py's runs.

No training: the store is written with the MLflow client, in the schema tracking/ records
(sweep parents, membership tags, identities, per-epoch and final metrics).
"""

import csv
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from PIL import Image

import compare
from comparison import build_report
from comparison.plots import (
    SUPERCLASS_HEATMAP,
    TEST_BARS,
    TOP1_VS_PARAMS,
    TOP1_VS_TIME,
    VAL_CURVES,
)
from comparison.stat_plots import RELIABILITY, TOP1_INTERVALS, TRAIN_VAL_CURVES
from tracking.values import curve_key

REPO = Path(__file__).resolve().parent.parent
OLD, SWEEP, LR_SWEEP = "0000000000a0", "aaaaaaaaaaa1", "bbbbbbbbbbb2"
EMPTY = "ddddddddddd4"  # the newest sweep: a parent whose jobs never started
SUPERCLASSES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
]  # fmt: skip
PNGS = [
    VAL_CURVES,
    TEST_BARS,
    TOP1_VS_TIME,
    TOP1_VS_PARAMS,
    SUPERCLASS_HEATMAP,
    TOP1_INTERVALS,
    RELIABILITY,
    TRAIN_VAL_CURVES,
]


def finals(top1, top5, best_val, seconds, ips, params, epochs=3.0):
    """Final metrics as train.py logs them; accuracies given as fractions, stored in %."""
    metrics = {
        "test_top1": top1 * 100,
        "test_top5": top5 * 100,
        "best_val_top1": best_val * 100,
        "best_epoch": epochs,
        "epochs_run": epochs,
        "train_seconds": seconds,
        "train_images_per_second": ips,
        "param_count": params,
    }
    # Distinct per run and superclass, so a mixed-up column would show.
    superclasses = {name: round(100 * top1 + i / 10, 4) for i, name in enumerate(SUPERCLASSES)}
    return metrics, superclasses


class Store:
    def __init__(self, root: Path):
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)
        self.experiment_id = self.client.create_experiment(
            "cifar100", artifact_location=(root / "artifacts").as_uri()
        )
        self.client.create_experiment("empty", artifact_location=(root / "a2").as_uri())
        self.parents: dict[str, str] = {}
        self.runs: dict[str, str] = {}

    def parent(self, sweep_id: str, overrides: str, start: int, status: str) -> None:
        run = self.client.create_run(
            self.experiment_id,
            start_time=start,
            run_name=f"sweep-{sweep_id}",
            tags={"sweep_parent": "true", "sweep_id": sweep_id, "sweep_overrides": overrides},
        )
        if status != "RUNNING":
            self.client.set_terminated(run.info.run_id, status, end_time=start + 10**6)
        self.parents[sweep_id] = run.info.run_id

    def child(
        self,
        key: str,
        sweep_id: str,
        model: str,
        seed: int,
        start: int,
        status: str,
        *,
        lr: str = "0.05",
        overrides: str | None = None,
        identity: str | None = None,
        curve: tuple[float, ...] = (),
        metrics: tuple[dict, dict] | None = None,
        error: str | None = None,
        strategy: str = "scratch",
    ) -> str:
        tags = {
            "mlflow.parentRunId": self.parents[sweep_id],
            "model": model,
            "strategy": strategy,
            "backend": "tensorflow",
            "precision": "float32",
            "identity": identity or f"{model}-{seed}-{lr}",
            "sweep_id": sweep_id,
            f"sweep.{sweep_id}": "true",
            "overrides": overrides or f"model={model} seed={seed}",
        }
        if error:
            tags["error"] = error
        run_id = self.client.create_run(
            self.experiment_id, start_time=start, run_name=model, tags=tags
        ).info.run_id
        params = {
            "model.name": model,
            "model.input_size": "32",
            "seed": str(seed),
            "optimizer.lr": lr,
            "optimizer._target_": "keras.optimizers.SGD",
            "trainer.epochs": "3",
        }
        history = []
        for epoch, value in enumerate(curve):
            for name, v in (("val_top1", 100 * value), ("loss", 4.0 - epoch)):
                history.append(Metric(curve_key(name), v, start + epoch, epoch + 1))
        finals, superclasses = metrics if isinstance(metrics, tuple) else (metrics or {}, {})
        final = [Metric(k, v, start + 100, 0) for k, v in finals.items()]
        self.client.log_batch(
            run_id,
            metrics=history + final,
            params=[Param(k, v) for k, v in params.items()],
        )
        if superclasses:  # as tracking.results logs it
            table = {"superclass": list(superclasses), "test_top1": list(superclasses.values())}
            self.client.log_table(run_id, table, "superclass_top1.json")
        if status != "RUNNING":
            self.client.set_terminated(run_id, status, end_time=start + 1000)
        self.runs[key] = run_id
        return run_id

    def join(self, key: str, sweep_id: str) -> None:
        """What a reused FINISHED run gets from a later sweep: only its membership tag."""
        self.client.set_tag(self.runs[key], f"sweep.{sweep_id}", "true")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    s = Store(tmp_path_factory.mktemp("store"))
    # An earlier sweep: its resnet18 run is reused by SWEEP, its vit run is not.
    s.parent(OLD, "model=resnet18,vit seed=0", 1_000_000, "FINISHED")
    s.child(
        "resnet18-0",
        OLD,
        "resnet18",
        0,
        1_000_100,
        "FINISHED",
        curve=(0.25, 0.5, 0.59375),
        metrics=finals(0.65625, 0.875, 0.59375, 300.0, 2000.0, 11_227_812.0),
    )
    s.child("vit-0", OLD, "vit", 0, 1_000_200, "FINISHED", metrics=finals(0.9, 1, 0.9, 9, 9, 9))

    s.parent(SWEEP, "model=alexnet,vgg13,resnet18 seed=0,1", 2_000_000, "FAILED")
    s.child(
        "alexnet-0",
        SWEEP,
        "alexnet",
        0,
        2_000_100,
        "FINISHED",
        curve=(0.25, 0.375, 0.5),
        metrics=finals(0.5, 0.75, 0.5, 100.0, 1000.0, 2_500_000.0),
    )
    s.child(
        "alexnet-1",
        SWEEP,
        "alexnet",
        1,
        2_000_200,
        "FINISHED",
        curve=(0.125, 0.5, 0.5625),
        metrics=finals(0.625, 0.875, 0.5625, 110.0, 900.0, 2_500_000.0),
    )
    # vgg13 seed 0 failed once, then a re-run of the same config finished.
    s.child(
        "vgg13-0-old",
        SWEEP,
        "vgg13",
        0,
        2_000_300,
        "FAILED",
        identity="vgg13-id",
        curve=(0.0625,),
        metrics={"param_count": 9_400_000.0},
        error="RuntimeError: out of memory",
    )
    s.child(
        "vgg13-0",
        SWEEP,
        "vgg13",
        0,
        2_000_900,
        "FINISHED",
        identity="vgg13-id",
        curve=(0.25, 0.5, 0.53125),
        metrics=finals(0.59375, 0.8125, 0.53125, 200.0, 500.0, 9_400_000.0),
    )
    s.child(
        "vgg13-1",
        SWEEP,
        "vgg13",
        1,
        2_000_400,
        "FAILED",
        curve=(0.0625,),
        metrics={"param_count": 9_400_000.0},
        error="ValueError: loss is NaN | diverged",
    )
    s.join("resnet18-0", SWEEP)
    s.child("resnet18-1", SWEEP, "resnet18", 1, 2_000_500, "RUNNING", curve=(0.25, 0.375))

    # The latest sweep varies the learning rate; its alexnet lr=0.05 seed=0 is SWEEP's run,
    # whose overrides tag never named optimizer.lr (it came from the default).
    s.parent(LR_SWEEP, "model=alexnet,mystery optimizer.lr=0.05,0.1 seed=0", 3_000_000, "RUNNING")
    s.join("alexnet-0", LR_SWEEP)
    for index, (model, lr) in enumerate(
        [("alexnet", "0.1"), ("mystery", "0.05"), ("mystery", "0.1")]
    ):
        s.child(
            f"{model}-{lr}",
            LR_SWEEP,
            model,
            0,
            3_000_100 + index,
            "FINISHED",
            lr=lr,
            overrides=f"model={model} optimizer.lr={lr} seed=0",
            curve=(0.25, 0.5),
            metrics=finals(0.5 + index / 8, 0.75, 0.5, 50.0, 100.0, 1000.0 * (index + 1)),
        )
    s.parent(EMPTY, "model=alexnet,vgg13", 4_000_000, "RUNNING")
    return s


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    return build_report(store.uri, "cifar100", SWEEP, tmp_path_factory.mktemp("report"))


def by_label(report):
    return {row.label: row for row in report.rows}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_one_row_per_architecture_with_unfinished_runs_apart(report):
    assert report.varied_keys == ()
    assert [(row.architecture, row.status) for row in report.rows] == [
        ("alexnet", "FINISHED"),
        ("vgg13", "FINISHED"),
        ("vgg13", "FAILED"),
        ("resnet18", "FINISHED"),
        ("resnet18", "RUNNING"),
    ]


def test_seeds_are_averaged_with_sample_std(report, store):
    alexnet = report.rows[0]
    assert alexnet.n == 2 and alexnet.seeds == ("0", "1")
    assert set(alexnet.run_ids) == {store.runs["alexnet-0"], store.runs["alexnet-1"]}
    assert alexnet.test_top1.values == (50.0, 62.5)
    assert alexnet.test_top1.mean == 56.25
    assert alexnet.test_top1.std == pytest.approx(statistics.stdev([50.0, 62.5]))
    assert alexnet.train_seconds.mean == 105.0
    assert alexnet.delta_top1 == pytest.approx(56.25 - 56.97)

    rows = read_csv(report.csv)
    assert rows[0]["n"] == "2"
    assert rows[0]["test_top1_pct"] == "56.2500"
    assert rows[0]["test_top1_pct_std"] == f"{statistics.stdev([50.0, 62.5]):.4f}"
    assert rows[0]["delta_top1_pts"] == "-0.7200"
    assert "| alexnet | 2 | 2.50M | 32 | tensorflow | 53.12 ± 4.42 | 56.25 ± 8.84 |" in (
        report.markdown.read_text()
    )


def test_single_runs_show_the_stored_metrics(report, store):
    vgg13, resnet18 = report.rows[1], report.rows[3]
    # The re-run of a config that failed first; the failed attempt is not a row.
    assert vgg13.run_ids == (store.runs["vgg13-0"],)
    assert (vgg13.test_top1.values, vgg13.test_top5.values) == ((59.375,), (81.25,))
    assert (vgg13.best_val_top1.mean, vgg13.epochs_run.mean) == (53.125, 3.0)
    assert (vgg13.images_per_second.mean, vgg13.param_count.mean) == (500.0, 9_400_000.0)
    assert vgg13.test_top1.std is None
    assert vgg13.reference_top1 == 57.03
    # A FINISHED run of an earlier sweep that this sweep reused.
    assert resnet18.run_ids == (store.runs["resnet18-0"],)
    assert resnet18.test_top1.mean == 65.625
    assert resnet18.superclass_top1["vehicles_2"] == round(65.625 + 19 / 10, 4)
    assert len(resnet18.superclass_top1) == 20
    assert (resnet18.input_size, resnet18.backend, resnet18.strategy) == (
        "32",
        "tensorflow",
        "scratch",
    )

    csv_rows = read_csv(report.csv)
    assert csv_rows[1]["test_top1_pct"] == "59.3750"
    assert csv_rows[1]["test_top1_pct_std"] == ""
    assert csv_rows[3]["param_count"] == "11227812"
    assert csv_rows[3]["reference_top1_pct"] == "63.16"
    assert csv_rows[3]["delta_top1_pts"] == f"{65.625 - 63.16:.4f}"
    assert "vit" not in {row["architecture"] for row in csv_rows}  # not a member


def test_failed_and_running_runs_are_rows_with_their_status(report, store):
    failed, running = report.rows[2], report.rows[4]
    assert failed.status == "FAILED" and failed.error == "ValueError: loss is NaN | diverged"
    assert failed.test_top1 is None and failed.param_count.mean == 9_400_000.0
    assert running.status == "RUNNING" and running.run_ids == (store.runs["resnet18-1"],)
    assert running.val_top1_curve == (25.0, 37.5)

    csv_rows = read_csv(report.csv)
    assert [row["status"] for row in csv_rows] == [
        "FINISHED",
        "FINISHED",
        "FAILED",
        "FINISHED",
        "RUNNING",
    ]
    assert csv_rows[2]["error"] == "ValueError: loss is NaN | diverged"
    assert csv_rows[2]["test_top1_pct"] == ""
    markdown = report.markdown.read_text()
    assert "ValueError: loss is NaN \\| diverged |" in markdown  # escaped inside the table
    assert "| RUNNING | no final metrics yet |" in markdown
    assert store.runs["vgg13-0-old"] in markdown  # listed as a superseded attempt
    assert "the reference study" in markdown


def test_files_are_written_and_logged_to_the_parent(report, store):
    names = {
        "comparison.md",
        "comparison.html",
        "comparison.csv",
        "significance.csv",
        "findings.md",
        *PNGS,
    }
    assert {path.name for path in report.paths} == names
    assert all(path.stat().st_size > 0 for path in report.paths)
    assert report.logged_to == store.parents[SWEEP]
    logged = store.client.list_artifacts(store.parents[SWEEP], "comparison")
    assert {Path(item.path).name for item in logged} == names


def test_the_html_page_holds_the_table_and_every_figure(report):
    page = report.html.read_text()
    assert "<table>" in page and "56.25 ± 8.84" in page
    # Self-contained: each figure is embedded, nothing is fetched from beside the file.
    assert page.count('src="data:image/png;base64,') == len(PNGS)
    assert not any(f'src="{name}"' in page for name in PNGS)


def test_the_parent_run_shows_the_short_table_and_per_row_metrics(report, store):
    parent = store.client.get_run(store.parents[SWEEP])
    note = parent.data.tags["mlflow.note.content"]
    assert "| architecture | test top-1 (%) |" in note
    assert "| alexnet | 56.25 ± 8.84 |" in note
    assert "FAILED" in note and "comparison/comparison.html" in note
    metrics = parent.data.metrics
    assert metrics["test_top1.alexnet"] == 56.25
    assert metrics["test_top1.resnet18"] == 65.625
    assert metrics["best_test_top1"] == max(v for k, v in metrics.items() if "." in k)
    assert not [key for key in metrics if "FAILED" in key or "RUNNING" in key]


def test_png_metadata_counts_the_series(report):
    expected = {
        VAL_CURVES: 5,  # every row has epochs, unfinished ones included
        TEST_BARS: 3,  # rows with a test score
        TOP1_VS_TIME: 3,
        TOP1_VS_PARAMS: 3,
        SUPERCLASS_HEATMAP: 3,
        # These runs logged no predictions.npz and no train_eval_top1 curve.
        TOP1_INTERVALS: 0,
        RELIABILITY: 0,
        TRAIN_VAL_CURVES: 0,
    }
    for name, series in expected.items():
        with Image.open(report.plots[name]) as image:
            assert image.text["Description"] == f"series={series}", name


def test_a_varied_override_splits_rows(store, tmp_path):
    latest = build_report(store.uri, "cifar100", None, tmp_path, log_to_parent=False)
    # The newest sweep never ran a job: the latest one with runs is compared instead.
    assert latest.sweep_id == LR_SWEEP and latest.sweep.skipped_empty == (EMPTY,)
    assert latest.logged_to is None
    assert store.client.list_artifacts(store.parents[LR_SWEEP]) == []
    assert latest.varied_keys == ("optimizer.lr",)
    assert [(row.architecture, row.varied) for row in latest.rows] == [
        ("alexnet", (("optimizer.lr", "0.05"),)),
        ("alexnet", (("optimizer.lr", "0.1"),)),
        ("mystery", (("optimizer.lr", "0.05"),)),
        ("mystery", (("optimizer.lr", "0.1"),)),
    ]
    # The reused run knows its lr from its params, not its overrides tag.
    assert latest.rows[0].run_ids == (store.runs["alexnet-0"],)
    assert latest.rows[1].test_top1.mean == 50.0
    assert latest.rows[2].reference_top1 is None and latest.rows[2].delta_top1 is None
    csv_rows = read_csv(latest.csv)
    assert [row["optimizer.lr"] for row in csv_rows] == ["0.05", "0.1", "0.05", "0.1"]
    assert csv_rows[2]["reference_top1_pct"] == "" and csv_rows[2]["delta_top1_pts"] == ""
    with Image.open(latest.plots[TEST_BARS]) as image:
        assert image.text["Description"] == "series=4"


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "compare.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_cli_rebuilds_the_same_table_in_a_fresh_process(store, report, tmp_path):
    out = tmp_path / "cli"
    result = run_cli(
        "--tracking-uri", store.uri, "--sweep", SWEEP[:6], "--out", str(out), "--no-log"
    )
    assert result.returncode == 0, result.stderr
    assert (out / "comparison.csv").read_text() == report.csv.read_text()
    assert (out / "comparison.md").read_text() == report.markdown.read_text()
    assert "ValueError: loss is NaN" in result.stdout and "56.25±8.84" in result.stdout


def test_cli_says_which_sweep_it_picked_as_the_latest(store, tmp_path, capsys):
    argv = ["--tracking-uri", store.uri, "--out", str(tmp_path), "--no-log"]
    assert compare.main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        f"sweep {LR_SWEEP}: the latest with at least one run "
        f"(newer sweeps without runs skipped: {EMPTY})"
    )


def test_cli_missing_store_is_one_line_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default sqlite:///mlruns/mlflow.db is not there
    assert compare.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("--tracking-uri sqlite:///mlruns/mlflow.db: no store file")
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_empty_store_file_is_one_line_and_left_empty(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "mlflow.db"
    empty.touch()
    monkeypatch.chdir(tmp_path)
    assert compare.main(["--tracking-uri", f"sqlite:///{empty}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "--tracking-uri" in err and "not an MLflow store" in err
    assert empty.stat().st_size == 0 and list(tmp_path.iterdir()) == [empty]


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["--experiment", "nope"], "--experiment nope: no such experiment"),
        (["--experiment", "empty"], "--experiment empty: holds no sweep"),
        (["--sweep", "ffffffffffff"], "--sweep ffffffffffff: no such sweep"),
        (["--tracking-uri", "./mlruns"], "--tracking-uri ./mlruns: only an sqlite store"),
    ],
)
def test_cli_unknown_experiment_or_sweep_exits_2(store, tmp_path, capsys, args, start):
    argv = ["--tracking-uri", store.uri, "--out", str(tmp_path), *args]
    assert compare.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(start)
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_package_imports_no_tensorflow_or_keras():
    code = "import sys, comparison; print(sorted({'tensorflow', 'keras'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_an_unwritable_artifact_location_is_one_line_after_the_files(store, tmp_path, capsys):
    """A store copied from another machine: its artifact location cannot be written here."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    experiment_id = store.client.create_experiment(
        "copied", artifact_location=(blocker / "artifacts").as_uri()
    )
    parent = store.client.create_run(
        experiment_id, tags={"sweep_parent": "true", "sweep_id": "cccccccccccc"}
    ).info.run_id
    store.client.create_run(
        experiment_id,
        run_name="alexnet",
        tags={"mlflow.parentRunId": parent, "model": "alexnet", "sweep.cccccccccccc": "true"},
    )
    out = tmp_path / "out"
    assert (
        compare.main(["--tracking-uri", store.uri, "--experiment", "copied", "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"cannot log the report to parent run {parent}")
    assert err.strip().endswith("skip logging with compare.py --no-log (log_to_parent=False)")
    assert len(err.strip().splitlines()) == 1
    assert (out / "comparison.csv").exists()
    args = ["--tracking-uri", store.uri, "--experiment", "copied", "--out", str(out), "--no-log"]
    assert compare.main(args) == 0
    assert "RUNNING" in (out / "comparison.csv").read_text()


def test_curves_of_runs_logged_before_the_sections_still_read(tmp_path):
    from comparison.collect import _curve

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("old")
    run_ids = [client.create_run(experiment).info.run_id for _ in range(2)]
    for run_id, key in zip(run_ids, ("val_top1", curve_key("val_top1")), strict=True):
        for step, value in ((1, 10.0), (2, 20.5)):
            client.log_metric(run_id, key, value, step=step)
    assert [_curve(client, run_id) for run_id in run_ids] == [(10.0, 20.5)] * 2
    assert curve_key("val_top1") == "accuracy/val_top1" and curve_key("lr") == "schedule/lr"
