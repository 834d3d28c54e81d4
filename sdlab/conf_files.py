"""What the conf/ folder offers: the options of each config group and the keys its files set."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def group_options(group: str) -> list[str]:
    """Selectable config names of a group (the files every option inherits live in conf/common/)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.name.startswith("_"))


@lru_cache(maxsize=None)
def yaml_keys(path: Path) -> frozenset[str]:
    """The top-level keys a config file sets (its defaults list aside)."""
    data = yaml.safe_load(path.read_text()) or {}
    return frozenset(data) - {"defaults"}


@lru_cache(maxsize=None)
def conf_values(name: str) -> dict:
    """The values a file of conf/ sets (its defaults list aside): where sdlab's defaults are written, once."""
    data = yaml.safe_load((CONF_DIR / name).read_text()) or {}
    return {key: value for key, value in data.items() if key != "defaults"}


def known_keys(group: str | None) -> set[str]:
    """Keys a `group.KEY=` override may set, or top-level keys (base config and every recipe) for None."""
    if group is None:
        recipes = [yaml_keys(p) for p in (CONF_DIR / "experiment").glob("*.yaml")]
        return (yaml_keys(CONF_DIR / "config.yaml") | set().union(*recipes)) - {"hydra"}
    return set().union(*(yaml_keys(p) for p in [*(CONF_DIR / group).glob("*.yaml"), CONF_DIR / "common" / f"{group}.yaml"]
                         if p.is_file()))
