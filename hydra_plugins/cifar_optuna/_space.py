"""The search space: Hydra sweep syntax (choice, range, interval, tag(log|int, ...)) to Optuna.

The same strings the hydra-optuna-sweeper plugin read, so existing yaml keeps working, plus
conditional parameters: a branch of parameters sampled only under one value of a choice.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import BaseTrial

from errors import UserError, one_line


@dataclass
class SearchSpace:
    distributions: dict[str, BaseDistribution]
    fixed: list[str]  # overrides every trial gets as they are
    # parent key -> parent value (as its override text) -> that branch's distributions
    conditional: dict[str, dict[str, dict[str, BaseDistribution]]] = field(default_factory=dict)

    def suggest(self, trial: BaseTrial) -> dict[str, Any]:
        """Samples (or, for a trial resumed later, reads back) every parameter of the trial."""
        params = {name: _suggest(trial, name, dist) for name, dist in self.distributions.items()}
        for parent, branches in self.conditional.items():
            branch = branches.get(_text(params[parent]), {})
            params.update({name: _suggest(trial, name, dist) for name, dist in branch.items()})
        return params

    def grid(self) -> dict[str, list]:
        """GridSampler's search space; only choice(...) and range(...) make a grid."""
        if self.conditional:
            raise UserError("hydra.sweeper.conditional: the grid sampler needs a flat space")
        grid = {}
        for name, dist in self.distributions.items():
            if not isinstance(dist, CategoricalDistribution):
                raise UserError(
                    f"hydra.sweeper.params.{name}: the grid sampler needs choice(...) or "
                    "range(...); use hydra/sweeper/sampler=tpe for an interval"
                )
            grid[name] = list(dist.choices)
        return grid


def _suggest(trial: BaseTrial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def _text(value: Any) -> str:
    return "null" if value is None else str(value)


def as_override(name: str, value: Any) -> str:
    return f"{name}={_text(value)}"


def distribution(override: Override) -> BaseDistribution:
    """One sweep override (`key=interval(0.1, 1)`) as an Optuna distribution."""
    value = override.value()
    key = override.get_key_element()
    if override.is_choice_sweep():
        assert isinstance(value, ChoiceSweep)
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        # Hydra's range excludes its stop, as Python's does: a grid of its values.
        return CategoricalDistribution(list(override.sweep_iterator(Transformer.encode)))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log = "log" in value.tags
        if "int" in value.tags:
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise UserError(
        f"{key}: `{override.input_line}` is not a search space; use choice(...), range(...) "
        "or interval(...)"
    )


def _parse(lines: list[str], where: str) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(lines)
    except Exception as error:  # Hydra's parser error names the bad token
        raise UserError(f"{where}: cannot parse the search space ({one_line(error)})") from None


def parse_space(
    arguments: list[str],
    params: Mapping[str, str] | None,
    conditional: Mapping[str, Mapping[str, Mapping[str, str]]] | None,
) -> SearchSpace:
    """Command-line sweep overrides and hydra.sweeper.params/conditional as one space.

    A sweep on the command line wins over the same key in the config; a plain override
    on the command line fixes that key for every trial.
    """
    distributions: dict[str, BaseDistribution] = {}
    for override in _parse([f"{k}={v}" for k, v in (params or {}).items()], "hydra.sweeper"):
        distributions[override.get_key_element()] = distribution(override)
    fixed = []
    for override in _parse(list(arguments), "command line"):
        key = override.get_key_element()
        if override.is_sweep_override():
            distributions[key] = distribution(override)
        else:
            distributions.pop(key, None)
            fixed.append(override.input_line)
    branches: dict[str, dict[str, dict[str, BaseDistribution]]] = {}
    for parent, by_value in (conditional or {}).items():
        parent_dist = distributions.get(parent)
        if not isinstance(parent_dist, CategoricalDistribution):
            raise UserError(
                f"hydra.sweeper.conditional.{parent}: {parent} must be a choice(...) in "
                "hydra.sweeper.params to condition other parameters on it"
            )
        known = {_text(choice) for choice in parent_dist.choices}
        branches[parent] = {}
        for value, space in by_value.items():
            if str(value) not in known:
                raise UserError(
                    f"hydra.sweeper.conditional.{parent}.{value}: not one of {parent}'s "
                    f"choices ({', '.join(sorted(known))})"
                )
            where = f"hydra.sweeper.conditional.{parent}.{value}"
            overrides = _parse([f"{k}={v}" for k, v in (space or {}).items()], where)
            branches[parent][str(value)] = {o.get_key_element(): distribution(o) for o in overrides}
    return SearchSpace(distributions, fixed, branches)
