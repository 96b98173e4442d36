"""Override typos caught before any job starts.

Hydra answers `trainer.epoch=3` with "To append to your config use +trainer.epoch=3", the
wrong fix for a typo of `trainer.epochs`. This check composes the config for the command's
group choices (each value of a swept group once), and an override of a key that none of
them has but that is close to one they have gets one line and exit 1. Anything else,
`+new.key=…` additions included, is left to Hydra.
"""

import difflib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


def _keys(node, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            yield dotted
            yield from _keys(value, dotted + ".")


def _initials(name: str) -> str:
    return "".join(word[0] for word in name.split("_") if word)


def suggest(key: str, known: Sequence[str]) -> str | None:
    """The known key the user most likely meant, None when nothing is close."""
    known = [k for k in known if not key.startswith(k + ".")]  # not the key's own parents
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.85)
    if close:
        return close[0]
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.75)
    if close:
        return siblings[close[0]]
    # learning_rate for lr, weight_decay for wd, and the other way round
    for name, full in siblings.items():
        if (name == _initials(leaf) or leaf == _initials(name)) and "_" in name + leaf:
            return full
    return None


def _choices(override: Override) -> list[str]:
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def _configs(groups: dict[str, list[str]], additions: list[str]) -> Iterator[DictConfig]:
    """The config at the first value of every group, then at each other value of each
    (composed only as asked for: one compose costs about 0.3 s)."""
    first = {group: values[0] for group, values in groups.items()}
    variants = [first] + [
        {**first, group: value} for group, values in groups.items() for value in values[1:]
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for choice in variants:
            overrides = [f"{group}={value}" for group, value in choice.items()]
            yield compose("config", overrides=[*overrides, *additions])


def unknown_key_message(args: Sequence[str]) -> str | None:
    """One line for the first override of an unknown key close to a known one, else None."""
    parsed, _ = get_args_parser().parse_known_args(list(args))
    if parsed.hydra_help or parsed.config_name or parsed.config_path or parsed.config_dir:
        return None
    try:
        overrides = OverridesParser.create().parse_overrides(parsed.overrides)
    except Exception:  # Hydra reports its own parse errors
        return None
    groups: dict[str, list[str]] = {}
    additions, values = [], []
    for override in overrides:
        key = override.key_or_group
        if key.startswith("hydra"):
            continue
        if override.is_add() or override.is_force_add() or override.is_delete():
            if not override.is_sweep_override():
                additions.append(override.input_line)
        elif (CONF / key).is_dir():
            groups[key] = _choices(override)
        else:
            values.append(key)
    if not values:
        return None
    known: set[str] = set()
    try:
        for cfg in _configs(groups, additions):
            known.update(_keys(OmegaConf.to_container(cfg, resolve=False)))
            if known.issuperset(values):
                return None
    except Exception:  # a bad group choice: Hydra's own message names the options
        return None
    for key in values:
        if key not in known:
            match = suggest(key, sorted(known))
            if match:
                return f"unknown key {key}; did you mean {match}?"
    return None


def check_override_keys(args: Sequence[str] | None = None) -> None:
    message = unknown_key_message(sys.argv[1:] if args is None else args)
    if message:
        raise SystemExit(message)
