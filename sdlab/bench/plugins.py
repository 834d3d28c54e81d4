"""Objects installed packages register under an entry point group (`[project.entry-points."sdlab.<group>"]`)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any


@cache
def installed(group: str) -> dict[str, Any]:
    """Every object registered under `group`, by name, loaded once per process."""
    return {point.name: point.load() for point in entry_points(group=group)}
