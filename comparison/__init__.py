"""The comparison a paper reports, rebuilt from the MLflow tracking store alone.

    from comparison import build_report
    report = build_report("sqlite:///mlruns/mlflow.db", "cifar100", None, Path("reports/x"))

No TensorFlow or Keras here: the package only reads the store and draws.
"""

from comparison.collect import RunRecord, StoreError, SweepRecord, load_sweep
from comparison.findings import Finding, findings
from comparison.plots import SERIES_KEY, read_series, write_plots
from comparison.predictions import Predictions, load_predictions
from comparison.reference import REFERENCE, Reference, reference_top1
from comparison.report import Report, build_report, write_report
from comparison.significance import RowStats, Significance, analyse
from comparison.table import Row, Stat, build_rows, varied_keys

__all__ = [
    "Finding",
    "Predictions",
    "RowStats",
    "Significance",
    "analyse",
    "findings",
    "load_predictions",
    "REFERENCE",
    "SERIES_KEY",
    "Reference",
    "Report",
    "Row",
    "RunRecord",
    "Stat",
    "StoreError",
    "SweepRecord",
    "build_report",
    "build_rows",
    "load_sweep",
    "read_series",
    "reference_top1",
    "varied_keys",
    "write_plots",
    "write_report",
]
