"""Rebuild the comparison table and figures of a sweep from the MLflow tracking store.

    python compare.py                          # the latest sweep of experiment cifar100
    python compare.py --sweep 3f2a9c0b1d4e     # a given sweep (a unique prefix is enough)
    python compare.py --tracking-uri sqlite:///other/mlflow.db --out paper/ --no-log

Writes comparison.md, comparison.csv and PNG figures into --out (reports/<sweep_id>/ by
default), prints the table, and logs the files to the sweep's parent run. A missing store,
experiment or sweep is reported in one line on stderr with exit code 2.
"""

import argparse
import sys
from pathlib import Path

import tracking  # noqa: F401  (first: it turns MLflow's telemetry off before MLflow loads)

# isort: split
from comparison import StoreError, load_sweep, write_report
from errors import UserError

FLAGS = {"tracking_uri": "--tracking-uri", "experiment": "--experiment", "sweep": "--sweep"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tracking-uri",
        default="sqlite:///mlruns/mlflow.db",
        help="the MLflow store (default: %(default)s, relative to the current folder)",
    )
    parser.add_argument("--experiment", default="cifar100", help="default: %(default)s")
    parser.add_argument("--sweep", help="sweep id or a unique prefix (default: the latest)")
    parser.add_argument("--out", type=Path, help="output folder (default: reports/<sweep_id>)")
    parser.add_argument(
        "--no-log", action="store_true", help="do not log the files to the sweep's parent run"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sweep = load_sweep(args.tracking_uri, args.experiment, args.sweep)
        if args.sweep is None:
            print(sweep.how_chosen)
        out = args.out or Path("reports") / sweep.sweep_id
        report = write_report(sweep, out, log_to_parent=not args.no_log)
    except StoreError as error:
        print(error.line(FLAGS), file=sys.stderr)
        return 2
    except UserError as error:
        print(error, file=sys.stderr)
        return 2
    logged = f"; logged to run {report.logged_to} under comparison/" if report.logged_to else ""
    print(f"wrote {report.markdown.parent}/ ({len(report.paths)} files){logged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
