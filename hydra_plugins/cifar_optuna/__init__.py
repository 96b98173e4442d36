"""A Hydra sweeper on Optuna 5: persistent, pruning, ask/tell with parallel workers.

Hydra finds it because `hydra_plugins` (no `__init__.py`) is a namespace package that the
repo root, where train.py runs, adds to the one in site-packages. Modules whose names start
with `_` are skipped by Hydra's plugin scan, so Optuna is imported only by a search.
"""
