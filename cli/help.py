"""The config groups for `--help`, wrapped to fit a terminal (Hydra's $APP_CONFIG_GROUPS puts
each group on one line of any length)."""

import textwrap
from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


def config_groups(width: int = 78) -> str:
    lines = []
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        options = ", ".join(sorted(f.stem for f in group.glob("*.yaml")))
        head = f"  {group.name}: "
        lines.append(textwrap.fill(options, width, initial_indent=head, subsequent_indent="    "))
    return "\n".join(lines)


OmegaConf.register_new_resolver("config_groups", config_groups, replace=True)
