"""Jobs by name: each takes a JobContext (its parsed Run and where to write, no Hydra) and returns its result rows."""

from __future__ import annotations

import importlib
import logging
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from sdlab.config import AS_GIVEN, Run, check_block, rules_of
from sdlab.errors import UserError, choose
from sdlab.jobs.recipes import RECIPES
from sdlab.lazy import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """Everything a job needs: its parsed Run (None until parsed) and where to write."""

    run: Run | None
    out_dir: Path
    experiment: str = "generate"
    overrides: str = ""
    run_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    elsewhere: dict[str, str] = field(default_factory=dict)  # cells a sweep job took from other job dirs: hash -> dir

    @property
    def recipe(self) -> Any:
        """The job's own recipe dataclass, read from the run and checked."""
        return read_recipe(self.run, RECIPES[self.run.job])


JobFn = Callable[[JobContext], "pd.DataFrame"]
CheckFn = Callable[[Run], Any]
JOBS: dict[str, JobFn] = {}
CHECKS: dict[str, CheckFn] = {}
AheadFn = Callable[[list[Run], Path], list[int]]
AHEAD: dict[str, AheadFn] = {}
Solves = list[tuple[str, int, int]]  # (scheduler, steps, images): the images a run denoises, for its plan
WorkFn = Callable[[Run, Any], Solves]
WORK: dict[str, WorkFn] = {}


def job(name: str, check: CheckFn | None = None, ahead: AheadFn | None = None,
        work: WorkFn | None = None) -> Callable[[JobFn], JobFn]:
    """Register a job (its recipe is `RECIPES[name]`) with its pre-flight `check`, `ahead(runs, sweep_dir)` (shared
    work, runs covered) and `work(run, recipe)`, the images a run of it denoises (without one: its plan says it cannot
    count them)."""

    def register(fn: JobFn) -> JobFn:
        JOBS[name] = fn
        for table, value in ((CHECKS, check), (AHEAD, ahead), (WORK, work)):
            if value is not None:
                table[name] = value
        return fn

    return register


def read_recipe(run: Run, cls: type) -> Any:
    """A recipe dataclass from top-level keys (or `cls.block`'s), each checked by its Field; null keeps the default."""
    rules = rules_of(cls)
    if getattr(cls, "block", None):
        needed = tuple(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)
        given = check_block(run.recipe, cls.block, {f.name: rules.get(f.name, AS_GIVEN) for f in fields(cls)}, needed)
    else:
        given = {f.name: rules.get(f.name, AS_GIVEN).check(f.name, run.recipe.get(f.name)) for f in fields(cls)
                 if run.recipe.get(f.name) is not None or f.default is MISSING}
    return cls(**given)


def check_recipe(run: Run) -> Any:
    """Pre-flight: the job's recipe dataclass (None if it has none), read before its module imports torch; its check."""
    recipe = read_recipe(run, RECIPES[run.job]) if run.job in RECIPES else None
    if run.job in ONE_SEED_JOBS and len(seeds := run.params.seeds) > 1:
        listed = ",".join(map(str, seeds))
        raise UserError(f"seeds=[{listed}]: job {run.job} follows one seed's image; give one (seed={seeds[0]}), or "
                        f"sweep them with -m seed={listed}")
    get_job(run.job)
    if run.job in CHECKS:
        CHECKS[run.job](run)
    return recipe


# Jobs that never load a model (the explainers' exact toy math): pre-flight checks no weights for them.
MODEL_FREE_JOBS = ("noise_image", "toy_predictor", "toy_unet", "vae_compression", "cfg_toy", "ddim_steps",
                   "timestep_embedding")
# Jobs that load a model but denoise nothing, each with the generation settings it reads besides its recipe's own
# fields: a plan counts no images for them, and pre-flight refuses any other generation setting typed for them.
IMAGELESS_JOBS = {"anatomy": (), "clip_tokens": (), "schedule_snr": ("num_inference_steps", "width", "height"),
                  "forward_process": ("width", "height"), "vae_roundtrip": ("width", "height"),
                  "clip_similarity": ("width", "height")}
# Jobs that follow one image through its making: they take one seed.
ONE_SEED_JOBS = ("trajectory", "pipeline_by_hand", "img2img_strength")
# Which module registers each job, so a run imports only the job it needs (not scipy for a generate job).
JOB_MODULES = {
    "generate": "generate", "train_mini": "train", "compare_schedulers": "compare",
    "anatomy": "anatomy", "trajectory": "trajectory", "forward_process": "forward",
    "schedule_snr": "schedule", "vae_roundtrip": "vae", "clip_tokens": "clip", "clip_similarity": "clip",
    "guidance_grid": "grids", "prompt_grid": "grids", "scheduler_grid": "grids", "same_params": "grids",
    "pipeline_by_hand": "by_hand", "img2img_strength": "by_hand", "distribution_distance": "distance",
    **dict.fromkeys(MODEL_FREE_JOBS, "explainers"),
}


def own(run: Run, images: int = 1) -> tuple[str, int, int]:
    """`images` denoised with the run's own scheduler and steps."""
    return run.scheduler.name, run.params.num_inference_steps, images


def work_of(run: Run) -> Solves | None:
    """The `(scheduler, steps, images)` a run denoises: [] for toy math and imageless jobs; None: its job cannot say."""
    choose("job", run.job, JOB_MODULES)
    if run.job in MODEL_FREE_JOBS or run.job in IMAGELESS_JOBS:
        return []
    get_job(run.job)
    if run.job not in WORK:
        return None
    return WORK[run.job](run, read_recipe(run, RECIPES[run.job]) if run.job in RECIPES else None)


def get_job(name: str) -> JobFn:
    """The job registered under `name` (pre-flight checked it is one), importing only its module."""
    if name not in JOBS:
        importlib.import_module(f"sdlab.jobs.{JOB_MODULES[name]}")
    return JOBS[name]


def work_ahead(runs: list[Run | None], sweep_dir: Path) -> set[int]:
    """The indices of `runs` the first job's `ahead` covered; unparsed runs and any failure leave each job its own."""
    first = runs[0] if runs else None
    ahead = AHEAD.get(first.job) if first is not None and first.job in JOB_MODULES and get_job(first.job) else None
    if ahead is None:
        return {0}
    shown = [j for j, run in enumerate(runs) if run is not None]
    try:
        return {shown[k] for k in ahead([runs[j] for j in shown], Path(sweep_dir))}
    except Exception:  # noqa: BLE001 - the job meets the same error and reports it
        log.debug("working ahead of %s failed", first.job, exc_info=True)
        return {0}
