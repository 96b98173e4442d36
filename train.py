"""Train one architecture on CIFAR-100 and record the run in MLflow.

    python train.py model=resnet18 data.path=../shared/cifar100
    python train.py -m model=alexnet,vgg13,resnet18,effnetv2,vit
    python train.py -m model=alexnet,vgg13,resnet18,effnetv2,vit experiment=smoke

Compose (Hydra) → data → model → fit → evaluate → log. A run whose config already
FINISHED is skipped, an interrupted one resumes; `resume=false` starts afresh.

Keras, TensorFlow and MLflow load only once a job runs, so `--help`, `--cfg job` and config
errors answer at once.
"""

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from cli.help import answer_help  # also registers the resolver --help lists groups with
from cli.overrides import check_override_keys
from cli.quiet import set_switches

set_switches()
# TensorFlow takes a GPU's memory as it needs it, not all at start, so parallel jobs can
# share one card. Read when TensorFlow first initializes a GPU; `=false` in the env wins.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from cli.quiet import start_devices

    start_devices()

    from callbacks.trial_pruning import TrialPruning
    from data.cifar100 import load_cifar100
    from hydra_plugins.cifar_optuna.trial import job_trial, link_run, trial_tags
    from tracking.datasets import log_datasets
    from tracking.job import TrackedJob
    from tracking.logged_model import log_best_model
    from tracking.mlflow_metrics import MlflowMetrics
    from tracking.results import log_results, run_tags
    from training import device as devices
    from training.evaluate import evaluate
    from training.fit import build_model, fit
    from training.session import distribution_scope, start_session
    from training.validation import check_config

    with TrackedJob(cfg) as job:
        check_config(cfg)
        device = devices.detect()
        # Resolved before the run's identity and params are taken, so both hold the policy
        # that ran: a CPU run and a GPU run of `auto` are different experiments.
        cfg.trainer.precision = devices.resolve_precision(cfg.trainer.precision, device)
        job.open()
        if job.finished:
            return job.reuse_finished()

        if warning := devices.silent_cpu_warning(device):
            log.warning(warning)
        trial = job_trial(cfg.search)  # the Optuna trial this job is, in a search
        start_session(cfg.trainer.precision, cfg.seed)
        data = load_cifar100(cfg.data, seed=cfg.seed)
        with distribution_scope(cfg.trainer.distribution):
            model = build_model(cfg, data)
            tags = {**device.tags(), **devices.software_versions(), **trial_tags(cfg.search)}
            job.start(run_tags(cfg, data, tags), model)
            pruning = []
            if trial is not None:
                link_run(trial, job.run_id, cfg.trainer.epochs)
                pruning = [TrialPruning(trial, cfg.trainer.epochs, cfg.trainer.checkpoint_monitor)]
            datasets = log_datasets(data)
            result = fit(
                model,
                data,
                cfg,
                job.checkpoint_dir,
                resume=job.resuming,
                on_resume=job.continue_from,
                epoch_metrics=train_eval(cfg, data),
                callbacks=[MlflowMetrics(), *progress(cfg), *pruning],
            )

        if pruning and pruning[0].pruned:
            job.prune(result, pruning[0].pruned_at)
            return job.objective

        evaluation = evaluate(result.best_checkpoint, data, cfg.trainer.batch_size)
        model_id = log_best_model(result.best_checkpoint, data, job.name, cfg.tracking.register)
        log_results(result, evaluation, data, model_id, datasets["test"])
        job.finish(result.best_val_top1)
    return job.objective


def train_eval(cfg: DictConfig, data) -> list:
    """The generalization gap's curve: top-1 on fixed training images, each epoch."""
    size = cfg.trainer.train_eval_size
    if not size:
        return []
    from callbacks.train_eval import TrainEvalTop1

    return [TrainEvalTop1.from_split(data.train, size, cfg.trainer.batch_size)]


def progress(cfg: DictConfig) -> list:
    """The per-epoch lines, labelled `[k/N] architecture` in a sweep."""
    if not cfg.trainer.progress:
        return []
    from hydra.core.hydra_config import HydraConfig

    from callbacks.progress import EpochProgress
    from tracking.sweep import current_sweep

    hydra_cfg = HydraConfig.get()
    label = hydra_cfg.runtime.choices.get("model", cfg.model.name)
    sweep = current_sweep()
    jobs_after = None
    if sweep is not None:
        number = hydra_cfg.job.num + 1
        total = sweep.job_count
        label = f"[{number}/{total or '?'}] {label:<8}"  # effnetv2: the longest name
        # Jobs side by side (joblib, SLURM) make a sum of epoch times no ETA.
        if total and hydra_cfg.launcher._target_.endswith("BasicLauncher"):
            jobs_after = total - number
    # Keras' own bar (trainer.verbose=1) would fight a live one.
    live = None if cfg.trainer.verbose == 0 else False
    return [EpochProgress(label, cfg.trainer.epochs, jobs_after, live=live)]


# -- the exit code ----------------------------------------------------------------------------
# Hydra swallows a callback's exception, so a sweep's exit code is decided here, from what the
# sweep recorded (tracking.sweep.exit_code), never by raising inside a callback.


def cli() -> int:
    """Runs train.py as a command and returns its exit code, saying why in one line."""
    from tracking.interrupts import exit_status, interrupts_between_store_calls
    from tracking.sweep import LAUNCH, Launch, exit_code, interrupted

    LAUNCH.__dict__.update(Launch().__dict__)  # a command of its own, also when called twice
    try:
        with interrupts_between_store_calls():
            main()
    except KeyboardInterrupt as interrupt:
        name, status = exit_status(interrupt)
        print(interrupted(name), file=sys.stderr)
        return status
    code, why = exit_code()
    if code:
        print(why, file=sys.stderr)
    return code


if __name__ == "__main__":
    if answer_help(sys.argv[1:]):
        sys.exit(0)
    check_override_keys()
    sys.exit(cli())
