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


def help_text() -> str:
    """`--help` as Hydra prints it from conf/hydra/help/train.yaml."""
    help_cfg = OmegaConf.load(CONF / "hydra" / "help" / "train.yaml")
    return OmegaConf.create({"hydra": {"help": help_cfg}}).hydra.help.template


def answer_help(argv: list[str]) -> bool:
    """Prints the help and says so when asked for it. Hydra's own path would list every config
    group through its config repository, deep-copied once per group (about 1.5 s of CPU), for
    a listing our template does not show."""
    if "--help" not in argv and "-h" not in argv:
        return False
    print(help_text())
    return True
