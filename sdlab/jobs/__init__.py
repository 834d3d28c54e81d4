"""Jobs by name: each takes a JobContext (its parsed Run and where to write, no Hydra) and returns its result rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from sdlab.config import Run
from sdlab.errors import choose


@dataclass
class JobContext:
    """Everything a job needs: its parsed Run (None until parsed) and where to write."""

    run: Run | None
    out_dir: Path
    experiment: str = "generate"
    overrides: str = ""
    run_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


JobFn = Callable[[JobContext], pd.DataFrame]
CheckFn = Callable[[Run], Any]
JOBS: dict[str, JobFn] = {}
CHECKS: dict[str, CheckFn] = {}


def job(name: str, check: CheckFn | None = None) -> Callable[[JobFn], JobFn]:
    """Register a job function under `name`; `check` reads its recipe keys from the Run and raises a one-line
    UserError on a bad value, before any folder is made or model loaded."""

    def register(fn: JobFn) -> JobFn:
        JOBS[name] = fn
        if check is not None:
            CHECKS[name] = check
        return fn

    return register


def check_recipe(run: Run) -> None:
    """The job's own check of its recipe keys, if it has one (pre-flight)."""
    get_job(run.job)
    if run.job in CHECKS:
        CHECKS[run.job](run)


# Jobs that never load a model (the explainers' exact toy math): pre-flight checks no weights for them.
MODEL_FREE_JOBS = frozenset(("noise_image", "toy_predictor", "toy_unet", "vae_compression", "cfg_toy", "ddim_steps",
                             "timestep_embedding"))
# Which module registers each job, so a run imports only the job it needs (not scipy for a generate job).
JOB_MODULES = {
    "generate": "generate", "train_mini": "train", "compare_schedulers": "compare",
    "anatomy": "anatomy", "trajectory": "trajectory", "forward_process": "forward",
    "schedule_snr": "schedule", "vae_roundtrip": "vae", "clip_tokens": "clip", "clip_similarity": "clip",
    "guidance_grid": "grids", "prompt_grid": "grids", "scheduler_grid": "grids",
    "pipeline_by_hand": "by_hand", "img2img_strength": "by_hand",
    **dict.fromkeys(("noise_image", "toy_predictor", "toy_unet", "vae_compression", "cfg_toy", "ddim_steps",
                     "timestep_embedding"), "explainers"),  # MODEL_FREE_JOBS
}


def get_job(name: str) -> JobFn:
    """The job registered under `name`, importing only its module."""
    import importlib

    choose("job", name, JOB_MODULES)
    if name not in JOBS:
        importlib.import_module(f"sdlab.jobs.{JOB_MODULES[name]}")
    return JOBS[name]
