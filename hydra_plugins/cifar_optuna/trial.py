"""The job's side of a search: the Optuna trial this job is, reached through the storage.

The sweeper passes `search.study` and `search.trial` as overrides; the storage and pruner
come from the job's own `hydra.sweeper` config, so a job on another node finds the same study.
"""

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from errors import UserError

EPOCHS = "epochs"
RUN_ID = "mlflow_run_id"


def job_trial(search: DictConfig):
    """The optuna.trial.Trial of this job, None outside a search."""
    if search.trial is None:
        return None
    sweeper = HydraConfig.get().sweeper
    if "storage" not in sweeper or not search.study:
        raise UserError(
            "search.trial: set by the Optuna sweeper for its jobs; run a search with "
            "`python train.py -m hparams_search=optuna`, or drop search.trial"
        )
    import optuna
    from hydra.utils import instantiate

    from hydra_plugins.cifar_optuna._study import open_storage, trial_id

    storage = open_storage(sweeper.storage)
    study = optuna.load_study(
        study_name=search.study,
        storage=storage,
        # Nothing is sampled here; the pruner must be the study's.
        sampler=optuna.samplers.RandomSampler(),
        pruner=instantiate(sweeper.pruner),
    )
    return optuna.trial.Trial(study, trial_id(storage, search.study, int(search.trial)))


def trial_tags(search: DictConfig) -> dict[str, str]:
    if search.trial is None:
        return {}
    return {"trial": str(search.trial), "study": str(search.study)}


def link_run(trial, run_id: str, epochs: int) -> None:
    """Records on the trial which MLflow run trains it, and for how many epochs."""
    trial.set_user_attr(RUN_ID, run_id)
    trial.set_user_attr(EPOCHS, int(epochs))
