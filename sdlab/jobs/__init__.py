"""Jobs by name: each takes a JobContext (plain data, no Hydra) and returns its result rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from sdlab.errors import choose


@dataclass
class JobContext:
    """Everything a job needs: the resolved config as a dict and where to write."""

    config: dict[str, Any]
    out_dir: Path
    experiment: str = "generate"
    overrides: str = ""
    run_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


JobFn = Callable[[JobContext], pd.DataFrame]
JOBS: dict[str, JobFn] = {}


def job(name: str) -> Callable[[JobFn], JobFn]:
    """Register a job function under `name`."""

    def register(fn: JobFn) -> JobFn:
        JOBS[name] = fn
        return fn

    return register


def get_job(name: str) -> JobFn:
    """The job registered under `name`."""
    from sdlab.jobs import by_hand, compare, explainers, generate  # noqa: F401  (registers)
    from sdlab.jobs import anatomy, clip, forward, grids, schedule, trajectory, vae  # noqa: F401  (registers)
    from sdlab.jobs import train  # noqa: F401  (registers)

    choose("job", name, JOBS)
    return JOBS[name]
