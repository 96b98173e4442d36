"""Everything that talks to MLflow: the store, one job's run, its params and results, sweeps."""

import os

# MLflow's usage telemetry thread deletes an environment variable when it cannot reach its
# endpoint (offline, here), while requests iterates os.environ for proxies: a KeyError that
# fails a run's first call to a tracking server. Set here, before any tracking module (or
# compare.py, which imports this package first) imports MLflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
