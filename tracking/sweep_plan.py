"""What a multirun will launch, known before its parent run exists.

The basic sweeper's jobs are the product of the sweep overrides. Composing each of them up
front means an override that cannot compose (`model=resnet50`) fails the command before the
parent run is created, instead of leaving an empty parent RUNNING for ever.
"""

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from errors import UserError

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, as the basic sweeper will launch them; None for other sweepers
    (Optuna draws its jobs as it goes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=False) if params else {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += list(config.hydra.overrides.task)
    loader = GlobalHydra.instance().config_loader()
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def check_jobs_compose(config: DictConfig, jobs: list[list[str]]) -> None:
    """Composes every job's config; raises UserError naming the first that fails."""
    loader = GlobalHydra.instance().config_loader()
    for overrides in jobs:
        try:
            loader.load_sweep_config(config, list(overrides))
        except (HydraException, ValueError, KeyError) as error:
            reason = _reason(str(error))
            raise UserError(
                f"sweep job `{' '.join(overrides)}` does not compose ({reason}); fix that "
                "override and run again (no job ran, no parent run was created)"
            ) from None


def describe(jobs: list[list[str]] | None, overrides: list[str], default_model: str) -> str:
    """`5 models · smoke`: what a sweep varies, for the parent run's name."""
    if jobs is None:
        return " ".join(overrides) or "defaults"
    models = {value for job in jobs for key, _, value in _pairs(job) if key == "model"}
    experiment = {value for job in jobs for key, _, value in _pairs(job) if key == "experiment"}
    parts = [f"{len(models)} models" if len(models) > 1 else next(iter(models), default_model)]
    if len(jobs) > max(len(models), 1):
        parts[0] += f", {len(jobs)} jobs"
    parts += sorted(experiment)
    return " · ".join(parts)


def _pairs(job: list[str]):
    for override in job:
        key, equals, value = override.lstrip("+~").partition("=")
        if equals:
            yield key, equals, value


def _reason(message: str) -> str:
    """Hydra's first line, plus the options it lists (`Could not find 'model/x' (options: ...)`)."""
    lines = message.strip().splitlines()
    options = [line.strip() for line in lines if line.startswith("\t")]
    if "Available options" in message and options:
        end = next((i for i, line in enumerate(lines) if line.startswith("Config search")), None)
        options = [line.strip() for line in lines[:end] if line.startswith("\t")]
        return f"{lines[0]}; options: {', '.join(options)}"
    return lines[0][:300] if lines else "no detail"
