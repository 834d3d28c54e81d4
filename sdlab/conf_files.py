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
def conf_file(name: str) -> dict:
    """What a file of conf/ holds, its defaults list included."""
    return yaml.safe_load((CONF_DIR / name).read_text()) or {}


@lru_cache(maxsize=None)
def conf_values(name: str) -> dict:
    """The values a file of conf/ sets (its defaults list aside): where sdlab's defaults are written, once."""
    return {key: value for key, value in conf_file(name).items() if key != "defaults"}


def default_choices(name: str) -> dict[str, str]:
    """The group options a file of conf/ picks in its defaults list, `override /G@PACKAGE: X` too: {G: X}."""
    entries = [entry for entry in conf_file(name).get("defaults", []) if isinstance(entry, dict)]
    return {key.removeprefix("override ").lstrip("/").partition("@")[0]: option
            for entry in entries for key, option in entry.items()}


def option_values(group: str, option: str) -> dict:
    """The values a group's option sets, over those of conf/common/<group>.yaml when it inherits them."""
    inherits = f"/common/{group}@_here_" in conf_file(f"{group}/{option}.yaml").get("defaults", [])
    return {**(conf_values(f"common/{group}.yaml") if inherits else {}), **conf_values(f"{group}/{option}.yaml")}


def known_keys(group: str | None) -> set[str]:
    """Keys a `group.KEY=` override may set, or top-level keys (base config and every recipe) for None."""
    if group is None:
        recipes = [yaml_keys(p) for p in (CONF_DIR / "experiment").glob("*.yaml")]
        return (yaml_keys(CONF_DIR / "config.yaml") | set().union(*recipes)) - {"hydra"}
    return set().union(*(yaml_keys(p) for p in [*(CONF_DIR / group).glob("*.yaml"), CONF_DIR / "common" / f"{group}.yaml"]
                         if p.is_file()))
