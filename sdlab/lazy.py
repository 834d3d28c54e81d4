"""Heavy libraries imported when first used: a refused value or --help does not wait for pandas (0.6 s) or torch (2 s)."""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable


class Lazy:
    """Stands for module `name`: reading one of its attributes imports it (once; then a lookup in sys.modules)."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)

    def __reduce__(self) -> tuple:
        return Lazy, (self._name,)  # a job pickled by value for a worker process takes its module globals along

    def __repr__(self) -> str:
        return f"<module {self._name!r}, imported when first used>"


pandas = Lazy("pandas")
pyarrow = Lazy("pyarrow")
parquet = Lazy("pyarrow.parquet")
torch = Lazy("torch")
safetensors_torch = Lazy("safetensors.torch")


def no_grad(function: Callable) -> Callable:
    """`@torch.no_grad()` that imports torch when `function` is first called, not when it is defined."""
    @functools.wraps(function)
    def without_grad(*args, **kwargs):
        with torch.no_grad():
            return function(*args, **kwargs)
    return without_grad
