"""Heavy libraries imported when first used: a refused value or --help does not wait for pandas (0.6 s) or torch (2 s)."""

from __future__ import annotations

import importlib
from typing import Any


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
