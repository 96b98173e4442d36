"""Train one architecture on CIFAR-100 and record the run in MLflow.

    python train.py model=resnet18 data.path=../shared/cifar100
    python train.py -m model=alexnet,vgg13,resnet18,effnetv2,vit
    python train.py -m model=alexnet,vgg13,resnet18,effnetv2,vit experiment=smoke

Compose (Hydra) → data → model → fit → evaluate → log. A run whose config already
FINISHED is skipped, an interrupted one resumes; `resume=false` starts afresh.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before Keras imports TensorFlow
# TensorFlow takes a GPU's memory as it needs it, not all at start, so parallel jobs can
# share one card. Read when TensorFlow first initializes a GPU; `=false` in the env wins.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

import logging  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from callbacks.train_eval import TrainEvalTop1  # noqa: E402
from data.cifar100 import load_cifar100  # noqa: E402
from tracking.job import TrackedJob  # noqa: E402
from tracking.mlflow_metrics import MlflowMetrics  # noqa: E402
from tracking.results import log_results, run_tags  # noqa: E402
from training import device as devices  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.fit import build_model, fit  # noqa: E402
from training.session import distribution_scope, start_session  # noqa: E402
from training.validation import check_config  # noqa: E402

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
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
        start_session(cfg.trainer.precision, cfg.seed)
        data = load_cifar100(cfg.data, seed=cfg.seed)
        with distribution_scope(cfg.trainer.distribution):
            model = build_model(cfg, data)
            tags = {**device.tags(), **devices.software_versions()}
            job.start(run_tags(cfg, data, tags), model)
            result = fit(
                model,
                data,
                cfg,
                job.checkpoint_dir,
                resume=job.resuming,
                on_resume=job.continue_from,
                epoch_metrics=train_eval(cfg, data),
                callbacks=[MlflowMetrics()],
            )

        evaluation = evaluate(result.best_checkpoint, data, cfg.trainer.batch_size)
        log_results(result, evaluation, data)
        job.finish(result.best_val_top1)
    return job.objective


def train_eval(cfg: DictConfig, data) -> list:
    """The generalization gap's curve: top-1 on fixed training images, each epoch."""
    size = cfg.trainer.train_eval_size
    if not size:
        return []
    return [TrainEvalTop1.from_split(data.train, size, cfg.trainer.batch_size)]


if __name__ == "__main__":
    main()
