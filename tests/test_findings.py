"""The significance table and findings.md on a fabricated store whose verdicts are known.

A real sqlite MLflow store, filled with the client in train.py's schema: sweep parents,
FINISHED children with their curves and a predictions.npz artifact built so that each
model's accuracy, agreement with the others, confidence and generalization gap are exact.
"""

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy import stats as scipy_stats

from comparison import build_report, build_rows, load_sweep
from comparison.findings import NOT_MEASURED, NOT_SUPPORTED, SUPPORTED, findings
from comparison.plots import read_series
from comparison.predictions import load_predictions
from comparison.report import render_markdown
from comparison.significance import Significance, analyse
from comparison.significance_table import NOT_SIGNIFICANT
from comparison.stat_plots import RELIABILITY, TOP1_INTERVALS, TRAIN_VAL_CURVES
from comparison.stats import holm
from tracking.values import curve_key

IMAGES, CLASSES, VAL_IMAGES, TRAIN_EVAL_IMAGES = 2000, 100, 5000, 5000
MIXED, SCRATCH_ONLY = "aaaaaaaaaaa1", "bbbbbbbbbbb2"


def exact(accuracy: float, seed: int) -> np.ndarray:
    """Correct on exactly accuracy × IMAGES images, shuffled."""
    order = np.random.default_rng(seed).permutation(IMAGES)
    return order < round(accuracy * IMAGES)


def flipped(correct: np.ndarray, lose: int, gain: int, seed: int) -> np.ndarray:
    """`correct` with `lose` right images made wrong and `gain` wrong ones made right:
    McNemar's b and c against the original are exactly lose and gain."""
    rng = np.random.default_rng(seed)
    result = correct.copy()
    result[rng.choice(np.flatnonzero(correct), lose, replace=False)] = False
    result[rng.choice(np.flatnonzero(~correct), gain, replace=False)] = True
    return result


LABELS = np.random.default_rng(99).integers(0, CLASSES, IMAGES)


def write_predictions(path: Path, correct: np.ndarray, confidence: float) -> Path:
    """Every image's top-1 gets probability `confidence` (exact in float16), right or not."""
    predicted = np.where(correct, LABELS, (LABELS + 1) % CLASSES)
    probabilities = np.full((IMAGES, CLASSES), (1 - confidence) / (CLASSES - 1))
    probabilities[np.arange(IMAGES), predicted] = confidence
    top5 = (predicted[:, None] + np.arange(5)[None, :]) % CLASSES
    np.savez_compressed(
        path,
        labels=LABELS.astype(np.uint8),
        predicted=predicted.astype(np.uint8),
        top5=top5.astype(np.uint8),
        probabilities=probabilities.astype(np.float16),
        test_fingerprint=np.array("f" * 16),
    )
    return path


class Store:
    def __init__(self, root: Path):
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)
        self.experiment_id = self.client.create_experiment(
            "cifar100", artifact_location=(root / "artifacts").as_uri()
        )
        self.parents: dict[str, str] = {}
        self.clock = 1_000_000

    def parent(self, sweep_id: str) -> None:
        self.clock += 1000
        self.parents[sweep_id] = self.client.create_run(
            self.experiment_id,
            start_time=self.clock,
            run_name=f"sweep-{sweep_id}",
            tags={"sweep_parent": "true", "sweep_id": sweep_id, "sweep_overrides": "fabricated"},
        ).info.run_id

    def run(
        self,
        sweep_id: str,
        model: str,
        correct: np.ndarray,
        *,
        seed: int = 0,
        strategy: str = "scratch",
        pretrained: bool = False,
        confidence: float = 0.5,
        train_at_best: float | None = None,
        val_at_best: float = 0.5,
    ) -> str:
        self.clock += 10
        run_id = self.client.create_run(
            self.experiment_id,
            start_time=self.clock,
            run_name=model,
            tags={
                "mlflow.parentRunId": self.parents[sweep_id],
                "model": model,
                "strategy": strategy,
                "backend": "tensorflow",
                "identity": f"{sweep_id}-{model}-{seed}",
                "sweep_id": sweep_id,
                f"sweep.{sweep_id}": "true",
                "overrides": f"model={model} seed={seed}",
                "dataset_id": "fabricated",
            },
        ).info.run_id
        params = {
            "seed": str(seed),
            "model.pretrained": str(pretrained),
            "data.val_size": str(VAL_IMAGES),
            "trainer.epochs": "3",
        }
        # As train.py logs them: accuracies in %, epochs from 1 (step = epoch, best_epoch
        # the same count). The best epoch is 2; epochs 1 and 3 hold other values on purpose.
        val = (0.1, val_at_best, val_at_best - 0.05)
        history = [
            Metric(curve_key("val_top1"), 100 * v, self.clock, step)
            for step, v in enumerate(val, start=1)
        ]
        if train_at_best is not None:
            train = (0.2, train_at_best, min(1.0, train_at_best + 0.02))
            history += [
                Metric(curve_key("train_eval_top1"), 100 * v, self.clock, step)
                for step, v in enumerate(train, start=1)
            ]
            history.append(Metric(curve_key("train_eval_images"), TRAIN_EVAL_IMAGES, self.clock, 3))
        finals = {
            "test_top1": 100 * float(correct.mean()),
            "best_epoch": 2.0,
            "best_val_top1": 100 * val_at_best,
        }
        history += [Metric(k, v, self.clock, 0) for k, v in finals.items()]
        self.client.log_batch(
            run_id, metrics=history, params=[Param(k, v) for k, v in params.items()]
        )
        folder = self.root / "files" / run_id
        folder.mkdir(parents=True)
        path = write_predictions(folder / "predictions.npz", correct, confidence)
        self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


VGG13 = exact(0.55, 3)
RESNET18 = exact(0.60, 10)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    s = Store(tmp_path_factory.mktemp("findings-store"))
    # MIXED: the five models in the reference study's order, but vgg13 and alexnet tied;
    # pretrained ViT and EfficientNetV2; every from-scratch CNN far above on training images.
    s.parent(MIXED)
    s.run(MIXED, "vit", exact(0.90, 1), strategy="finetune", pretrained=True, confidence=0.875)
    s.run(MIXED, "effnetv2", exact(0.80, 2), strategy="freeze", pretrained=True, confidence=0.75)
    for seed in (0, 1):
        s.run(
            MIXED,
            "resnet18",
            exact(0.60, 10 + seed),
            seed=seed,
            train_at_best=0.95,
            val_at_best=0.6,
        )
    s.run(MIXED, "vgg13", VGG13, train_at_best=0.9, val_at_best=0.55)
    # 100 images only vgg13 gets right, 95 only alexnet: McNemar p = 0.77.
    s.run(MIXED, "alexnet", flipped(VGG13, 100, 95, 4), train_at_best=0.9, val_at_best=0.55)

    # SCRATCH_ONLY: three CNNs far apart in the claimed order, one without a gap; a fourth
    # architecture tied with the best; no ViT, no EfficientNetV2, nothing pretrained.
    s.parent(SCRATCH_ONLY)
    s.run(SCRATCH_ONLY, "resnet18", RESNET18, train_at_best=0.8, val_at_best=0.6)
    s.run(SCRATCH_ONLY, "vgg13", exact(0.45, 5), train_at_best=0.7, val_at_best=0.45)
    s.run(SCRATCH_ONLY, "alexnet", exact(0.30, 6), train_at_best=0.30, val_at_best=0.30)
    s.run(SCRATCH_ONLY, "mystery", flipped(RESNET18, 30, 28, 7))
    return s


@pytest.fixture(scope="module")
def mixed(store, tmp_path_factory):
    return build_report(store.uri, "cifar100", MIXED, tmp_path_factory.mktemp("mixed"))


@dataclass
class Analysis:
    """What build_report computes before it draws: enough for the verdicts, and faster."""

    significance: Significance
    markdown: str


@pytest.fixture(scope="module")
def scratch_only(store):
    sweep = load_sweep(store.uri, "cifar100", SCRATCH_ONLY)
    rows = build_rows(sweep.runs, ())
    significance = analyse(rows, load_predictions(store.uri, sweep.runs))
    return Analysis(significance, render_markdown(sweep, rows, (), significance))


def verdicts(report) -> dict[str, str]:
    return {f.title: f.verdict for f in findings(report.significance)}


def by_architecture(report):
    return {s.row.architecture: s for s in report.significance.rows}


def test_mixed_sweep_verdicts(mixed):
    assert verdicts(mixed) == {
        "The ranking of the five models": NOT_SUPPORTED,
        "The from-scratch generalization gap": SUPPORTED,
        "Transfer learning beats training from scratch": SUPPORTED,
        "ViT beats EfficientNetV2": SUPPORTED,
    }
    ranking = findings(mixed.significance)[0]
    assert "vgg13 is not significantly above alexnet" in ranking.reason
    text = mixed.findings.read_text()
    # The numbers are this sweep's: vit's exact top-1, the McNemar counts and p of the tie.
    assert "vit 90.00 %" in text
    p_tie = scipy_stats.binomtest(100, 195).pvalue
    assert "(100 vs 95 discordant images)" in text and f"p = {p_tie:.2g}" in text
    assert "resnet18 (n=2): 95.00 % − 60.00 % = +35.00 pts" in text


def test_scratch_only_sweep_verdicts(scratch_only):
    assert verdicts(scratch_only) == {
        "The ranking of the five models": SUPPORTED,
        "The from-scratch generalization gap": NOT_SUPPORTED,
        "Transfer learning beats training from scratch": NOT_MEASURED,
        "ViT beats EfficientNetV2": NOT_MEASURED,
    }
    ranking, gap, transfer, vit = findings(scratch_only.significance)
    assert ranking.reason.endswith("Measured: 3 of the 5 models (vit, effnetv2 not run).")
    assert gap.reason.endswith("for: alexnet.")
    assert transfer.reason == "In this sweep no run started from pretrained weights."
    assert "vit and effnetv2" in vit.reason


def test_findings_md_states_each_claim_and_its_verdict_and_is_logged(mixed, store):
    text = mixed.findings.read_text()
    sections = re.findall(r"^## \d\. (.+)$", text, flags=re.M)
    assert sections == list(verdicts(mixed))
    found = re.findall(r"^\*\*Verdict: (.+?)\.\*\*", text, flags=re.M)
    assert found == list(verdicts(mixed).values())
    assert text.count("**Claim** (the reference study):") == 4
    logged = store.client.list_artifacts(store.parents[MIXED], "comparison")
    assert "comparison/findings.md" in {item.path for item in logged}


def test_intervals_tests_and_marks_against_the_best(mixed, scratch_only):
    rows = by_architecture(mixed)
    assert rows["vit"].is_best and rows["vit"].top1 == 0.9
    assert rows["vit"].top1_interval.contains(0.9) and rows["vit"].top1_interval.low > 0.87
    resnet = rows["resnet18"]
    assert resnet.row.n == 2 and resnet.versus_best.method == "paired bootstrap"
    assert resnet.seed_interval is not None  # mean over seeds gets its t interval
    assert rows["alexnet"].versus_best.method == "McNemar exact"
    assert all(s.significant for s in mixed.significance.rows if not s.is_best)
    # Holm over the four rows tested against the best.
    tested = [s for s in mixed.significance.rows if not s.is_best]
    assert [s.p_holm for s in tested] == holm([s.versus_best.p_value for s in tested])
    assert all(s.p_holm >= s.versus_best.p_value for s in tested)

    tie = by_architecture(scratch_only)["mystery"]
    assert tie.significant is False and (tie.versus_best.a_only, tie.versus_best.b_only) == (
        28,
        30,
    )
    markdown = scratch_only.markdown
    assert "| mystery | 1 | 59.90 |" in markdown and f"-0.10 {NOT_SIGNIFICANT} |" in markdown


def test_significance_csv_is_in_percent_and_points(mixed):
    with mixed.significance_csv.open(newline="") as file:
        rows = {row["architecture"]: row for row in csv.DictReader(file)}
    assert float(rows["vit"]["test_top1"]) == pytest.approx(90.0)
    assert float(rows["vit"]["ece_mean"]) == pytest.approx(2.5, abs=1e-3)
    assert float(rows["resnet18"]["gap"]) == pytest.approx(35.0)
    assert float(rows["resnet18"]["train_eval_top1_at_best"]) == pytest.approx(95.0)
    assert float(rows["resnet18"]["val_top1_at_best"]) == pytest.approx(60.0)


def test_ece_and_gap_have_their_constructed_values(mixed):
    rows = by_architecture(mixed)
    # One confidence for every image: ECE = |accuracy − confidence|.
    assert rows["vit"].ece == pytest.approx((0.025,), abs=1e-6)
    assert rows["effnetv2"].ece == pytest.approx((0.05,), abs=1e-6)
    gap = rows["resnet18"].gap
    assert (gap.train, gap.val, gap.epochs) == (pytest.approx(0.95), pytest.approx(0.6), (2, 2))
    assert gap.interval.contains(0.35) and gap.interval.low > 0.3
    assert rows["vit"].gap is None  # no train_eval_top1 curve logged


def test_figures_count_what_they_draw(mixed):
    assert read_series(mixed.plots[TOP1_INTERVALS]) == 5
    assert read_series(mixed.plots[RELIABILITY]) == 5
    assert read_series(mixed.plots[TRAIN_VAL_CURVES]) == 3  # the from-scratch CNNs
