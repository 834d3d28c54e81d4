"""Typed recipe values: each checked for type and range before any work, a bad one named in one line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdlab.errors import UserError


@dataclass(frozen=True)
class Field:
    """What one recipe value may be: an int, a number, a non-empty list of them (or of int lists), each within
    [low, high], or one of `choices`; null only where `optional` (the job's default)."""

    kind: str = "int"
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    optional: bool = False

    def allowed(self) -> str:
        """What the field takes, in words."""
        if self.kind == "choice":
            return f"one of: {', '.join(map(str, self.choices))}"
        what = {"int": "an integer", "number": "a number", "str": "a string", "ints": "a non-empty list of integers",
                "numbers": "a non-empty list of numbers", "strs": "a non-empty list of strings",
                "int_lists": "a non-empty list of non-empty integer lists"}
        bounds = " and ".join(f"{sign} {bound:g}" for sign, bound in ((">=", self.low), ("<=", self.high))
                              if bound is not None)
        if not bounds:
            return what[self.kind]
        return f"{what[self.kind]} {bounds}" if self.kind in ("int", "number") else f"{what[self.kind]}, each {bounds}"

    def check(self, name: str, value: Any) -> None:
        """Raise a UserError naming `name`, `value` and what is allowed unless the value fits."""
        if (value is None and self.optional) or (value is not None and self.fits(value)):
            return
        raise UserError(f"{name}={value!r} must be {self.allowed()}" + (" or null" if self.optional else ""))

    def fits(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        if self.kind == "str":
            return isinstance(value, str) and bool(value)
        if self.kind == "strs":
            return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) and v for v in value)
        if self.kind in ("int", "number"):
            return _scalar(value, self.kind == "int") and self._inside(value)
        if not isinstance(value, (list, tuple)) or not value:
            return False
        if self.kind == "int_lists":
            return all(isinstance(v, (list, tuple)) and v and all(_scalar(x, True) and self._inside(x) for x in v)
                       for v in value)
        return all(_scalar(v, self.kind == "ints") and self._inside(v) for v in value)

    def _inside(self, value) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


def _scalar(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, (int, float))


def check_fields(values: dict[str, Any], fields: dict[str, Field], prefix: str = "") -> None:
    """Every field present in `values` fits (named `prefix` + name)."""
    for name, field in fields.items():
        if name in values:
            field.check(prefix + name, values[name])


def check_block(cfg: dict[str, Any], key: str, fields: dict[str, Field]) -> dict[str, Any]:
    """The recipe's `key:` block, a dict whose keys are `fields` and whose values fit them."""
    block = cfg.get(key)
    if not isinstance(block, dict):
        raise UserError(f"job {cfg.get('job')} needs a `{key}:` block of {', '.join(fields)}")
    unknown = sorted(set(block) - set(fields))
    if unknown:
        raise UserError(f"{key}.{unknown[0]} is not a key of {key}; its keys are: {', '.join(fields)}")
    check_fields(block, fields, f"{key}.")
    return block
