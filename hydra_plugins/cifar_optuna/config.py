"""The sweeper's config groups: hydra/sweeper=optuna, its sampler and pruner.

hydra/sweeper/sampler: tpe | random | grid
hydra/sweeper/pruner:  none | median | successive_halving | hyperband
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    # Random trials before TPE models the space; searches here are tens of trials, not hundreds.
    n_startup_trials: int = 5
    # Parallel workers see each other's running trials as bad results, so they spread out.
    constant_liar: bool = True
    # Samples conditional parameters (a schedule's own) jointly within each branch.
    group: bool = True


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class GridSamplerConf:
    # The grid comes from the search space's choice(...) and range(...) values.
    _target_: str = "optuna.samplers.GridSampler"
    seed: int | None = None


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    # Trials that finish before any is pruned, and the first epochs never judged (warmup).
    n_startup_trials: int = 5
    n_warmup_steps: int = 1
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "${trainer.epochs}"
    reduction_factor: int = 3


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.cifar_optuna.optuna_sweeper.OptunaSweeper"
    # The sampler and pruner reach the sweeper (and each job) as configs, built there.
    _recursive_: bool = False
    defaults: list[Any] = field(
        default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}, "_self_"]
    )
    sampler: Any = MISSING
    pruner: Any = MISSING
    # maximize | minimize: what train.py returns (best validation top-1).
    direction: str = "maximize"
    # Where the study lives. sqlite (default): one machine. journal:<path>: Optuna's journal
    # file on a filesystem every node sees. Any SQLAlchemy URL (postgresql://...): a server RDB.
    storage: str = "sqlite:///${tracking.root}/optuna.db"
    # null: sweep-<sweep id>, the MLflow parent run's name, so the same command reopens it.
    study_name: str | None = None
    # The study's total: trials of earlier runs of the same command count.
    n_trials: int = 20
    # Trials at once; above 1 needs a launcher with worker processes (local_parallel, slurm).
    n_jobs: int = 1
    # How long a trial of another machine may go without a heartbeat before it is taken over.
    heartbeat_s: int = 30
    grace_period_s: int = 120
    # key: space, in the Hydra sweep syntax: choice(a, b), range(1, 5), interval(0.1, 1),
    # tag(log, interval(1e-4, 1e-1)), tag(int, interval(1, 8)).
    params: dict[str, str] | None = None
    # Parameters that exist only for one value of a categorical parameter:
    # {parent key: {value: {key: space}}}, e.g. a schedule's own warmup under schedule=cosine.
    conditional: dict[str, dict[str, dict[str, str]]] | None = None


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="cifar_optuna")
for name, node in {
    "tpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "grid": GridSamplerConf,
}.items():
    store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="cifar_optuna")
for name, node in {
    "none": NopPrunerConf,
    "median": MedianPrunerConf,
    "successive_halving": SuccessiveHalvingPrunerConf,
    "hyperband": HyperbandPrunerConf,
}.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="cifar_optuna")
