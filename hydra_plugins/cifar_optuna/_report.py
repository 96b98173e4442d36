"""What a search leaves behind: the best trial as a command, Optuna's plots, epochs saved.

Printed at the end of every invocation and logged to the sweep's MLflow parent run under
`search/`, from the study alone, so a search reopened later reports all of its trials.
"""

import logging
import shlex
import warnings
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from callbacks.trial_pruning import PRUNED_AT
from errors import one_line
from hydra_plugins.cifar_optuna._space import as_override
from hydra_plugins.cifar_optuna._study import counted
from hydra_plugins.cifar_optuna.trial import EPOCHS

log = logging.getLogger(__name__)

ARTIFACT_DIR = "search"


def tag_trial_run(config, run_id: str, state: TrialState, pruned_at: int | None = None) -> None:
    """The trial's state on its MLflow run, as the study recorded it. A pruned trial whose
    search died before its job ended the run gets the end the job would have given it."""
    client = mlflow.MlflowClient(config.tracking.uri)
    try:
        client.set_tag(run_id, "trial_state", state.name)
        if pruned_at is not None and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "pruned", "true")
            client.set_tag(run_id, "pruned_at_epoch", str(pruned_at))
            client.set_terminated(run_id, "KILLED")
    except Exception as error:  # the study is the record; a tag is a convenience
        log.warning("run %s: could not tag trial_state (%s)", run_id, error)


def best_command(fixed: list[str], params: dict) -> str:
    """A single run of the trial's config (no search group: that only configures the sweeper)."""
    kept = [o for o in fixed if not o.lstrip("+~").startswith("hparams_search=")]
    overrides = [*kept, *(as_override(name, value) for name, value in params.items())]
    return "python train.py " + " ".join(shlex.quote(o) for o in overrides)


def epochs_saved(trials) -> int:
    """Epochs the pruned trials did not train: planned minus reached."""
    return sum(
        t.user_attrs[EPOCHS] - t.user_attrs[PRUNED_AT]
        for t in trials
        if t.state == TrialState.PRUNED and EPOCHS in t.user_attrs and PRUNED_AT in t.user_attrs
    )


def summary_lines(search, study: optuna.Study) -> list[str]:
    trials = counted(study.get_trials(deepcopy=False))
    states = {state: [t for t in trials if t.state == state] for state in TrialState}
    complete, pruned = states[TrialState.COMPLETE], states[TrialState.PRUNED]
    planned = sum(t.user_attrs.get(EPOCHS, 0) for t in complete + pruned)
    trained = sum(len(t.intermediate_values) for t in complete + pruned)
    lines = [
        f"Study `{study.study_name}` ({study.direction.name.lower()} the objective): "
        f"{len(trials)} of {search.n_trials} trials: {len(complete)} complete, "
        f"{len(pruned)} pruned, {len(states[TrialState.FAIL])} failed, "
        f"{len(states[TrialState.RUNNING])} running.",
        f"Epochs trained: {trained}; pruning saved {epochs_saved(trials)} of {planned} planned.",
    ]
    if complete:
        best = study.best_trial
        lines += [
            f"Best trial: {best.number}, value {best.value:.4f}, params {best.params}.",
            f"Reproduce it: {best_command(search.space.fixed, best.params)}",
        ]
    else:
        lines.append("No trial has completed yet, so there is no best trial.")
    return lines


def _plots(study: optuna.Study, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    makers = {
        "optimization_history.png": optuna_plots.plot_optimization_history,
        "intermediate_values.png": optuna_plots.plot_intermediate_values,
        "param_importances.png": optuna_plots.plot_param_importances,
        "slice.png": optuna_plots.plot_slice,
    }
    paths = []
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = make(study)
        except Exception as error:  # e.g. importances need two completed trials
            log.info("search plot %s skipped: %s", name, one_line(error, 200))
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.savefig(folder / name, dpi=110, bbox_inches="tight")
        plt.close(figure)
        paths.append(folder / name)
    return paths


def report(search, study: optuna.Study) -> None:
    lines = summary_lines(search, study)
    for line in lines:
        log.info("%s", line)
    folder = search.sweep_dir / ARTIFACT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "search.md").write_text(
        "# Search\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    )
    study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
    paths = [folder / "search.md", folder / "trials.csv", *_plots(study, folder)]

    trials = counted(study.get_trials(deepcopy=False))
    client = mlflow.MlflowClient(search.config.tracking.uri)
    parent = search.sweep.parent_run_id
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    metrics = {
        "trials_complete": count[TrialState.COMPLETE],
        "trials_pruned": count[TrialState.PRUNED],
        "trials_failed": count[TrialState.FAIL],
        "epochs_saved_by_pruning": epochs_saved(trials),
    }
    tags = {"search": "optuna", "study": study.study_name}
    if count[TrialState.COMPLETE]:
        best = study.best_trial
        metrics["best_value"] = best.value
        tags |= {
            "best_trial": str(best.number),
            "best_params": str(best.params),
            "best_command": best_command(search.space.fixed, best.params),
        }
    for key, value in metrics.items():
        client.log_metric(parent, key, value)
    for key, value in tags.items():
        client.set_tag(parent, key, value[:5000])
    for path in paths:
        client.log_artifact(parent, str(path), ARTIFACT_DIR)
    log.info("search report: %s (parent run %s, artifacts %s/)", folder, parent, ARTIFACT_DIR)
