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
def conf_file(name: str | Path) -> dict:
    """What a file of conf/ (or at an absolute path) holds, its defaults list included."""
    return yaml.safe_load((CONF_DIR / name).read_text()) or {}


@lru_cache(maxsize=None)
def conf_values(name: str | Path) -> dict:
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
        recipes = (CONF_DIR / "experiment").glob("*.yaml")
        return set(conf_values("config.yaml")).union(*map(conf_values, recipes)) - {"hydra"}
    files = [*(CONF_DIR / group).glob("*.yaml"), CONF_DIR / "common" / f"{group}.yaml"]
    return set().union(*(conf_values(p) for p in files if p.is_file()))
