"""The comparison a paper reports, rebuilt from the MLflow tracking store alone.

    from comparison import build_report
    report = build_report("sqlite:///mlruns/mlflow.db", "cifar100", None, Path("reports/x"))

No TensorFlow or Keras here: the package only reads the store and draws.
"""

from comparison.collect import RunRecord, StoreError, SweepRecord, load_sweep
from comparison.plots import SERIES_KEY, read_series, write_plots
from comparison.reference import REFERENCE, Reference, reference_top1
from comparison.report import Report, build_report, write_report
from comparison.table import Row, Stat, build_rows, varied_keys

__all__ = [
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
