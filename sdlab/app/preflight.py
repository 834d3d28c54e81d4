"""Pre-flight: everything a job needs, checked from its config before any model loads or file is written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from sdlab.bench.captions import counted
from sdlab.bench.inputs import input_image_files
from sdlab.bench.scorers import check_reference_read, check_set_scorers, configured
from sdlab.bench.worlds import world
from sdlab.config import GenerationParams, Run, config_hash
from sdlab.errors import CannotRun, UserError, choose
from sdlab.jobs import IMAGELESS_JOBS, JOB_MODULES, MODEL_FREE_JOBS, check_recipe
from sdlab.jobs.recipes import RECIPES
from sdlab.metrics.schedule import model_kind
from sdlab.models.clip import check_clip_folder, clip_folder
from sdlab.models.device import resolve_device
from sdlab.models.families import ModelAdapter
from sdlab.models.loading import adapter_class, built_in, check_fits_memory, check_model, shipped_scheduler_config
from sdlab.models.schedulers import check_fit, check_options, make_scheduler, scheduler_class  # imports diffusers

# The generation settings: what a request asks of the denoiser and how its images are scored
GENERATION_SETTINGS = frozenset({"scorers", "reference", "reference_count", "prompt_file", "seed",
                                 *(f.name for f in fields(GenerationParams))})
# What toy math (MODEL_FREE_JOBS) never reads: the model, its scheduler and every generation setting
MODEL_SETTINGS = GENERATION_SETTINGS | {"model", "scheduler", "clip", "params"}
IMAGE_FREE = {"batch_size", "threads"}  # how an image is made, not what it is: left out of its hash


def model_warnings(cfg: dict[str, Any], width: int, height: int, folder: type[ModelAdapter] | None = None,
                   prompts: Sequence[str] = ()) -> list[str]:
    """Warnings for requests the model was not made for: grammar (of the prompt and a recipe's `prompts`), size,
    weights of another `folder` family."""
    model = cfg.get("model") or {}
    name, native = model.get("name"), model.get("resolution")
    warnings = []
    if grammar := model.get("prompt_grammar"):
        known = world(grammar, "model.prompt_grammar")
        for key in ("prompt", "negative_prompt"):
            if unknown := known.unknown_words(str(cfg.get(key) or "")):
                warnings.append(f"{key}={cfg[key]!r} is outside model={name}'s {grammar} grammar (it does not know: "
                                f"{', '.join(dict.fromkeys(unknown))}); it knows prompts like {known.example!r}")
        outside = {f"P{i}": known.unknown_words(p) for i, p in enumerate(prompts, 1) if known.unknown_words(p)}
        if outside:  # numbered as the recipes' figures number them
            words = ", ".join(dict.fromkeys(w for unknown in outside.values() for w in unknown))
            said = f"prompts {', '.join(outside)} are" if len(outside) > 1 else f"prompt {next(iter(outside))} is"
            warnings.append(f"{said} outside model={name}'s {grammar} grammar (it does not know: {words}); it knows "
                            f"prompts like {known.example!r}")
    if folder and model.get("family") and folder.family != model["family"]:
        weights = f"model.path={model['path']}" if model.get("path") else model.get("repo_id") or f"model={name}"
        warnings.append(f"{weights} holds a {folder.family} pipeline ({folder.pipeline_class}), "
                        f"not the {model['family']} one model={name} is set up for: its {native} px and defaults "
                        f"apply; give a model= of family {folder.family}, or model.resolution=")
    if native and (width, height) != (native, native):
        warnings.append(f"width={width} height={height} differ from model={name}'s native {native}x{native} px; "
                        "expect tiled or broken images")
    if (made_for := cfg.get("made_for")) and name not in (made_for.get("models") or []):
        warnings.append(f"this recipe is made for {made_for['what']}; on model={name} {made_for['here']}")
    return warnings


def schedulers_used(run: Run, recipe: Any) -> list[str]:
    """Every scheduler name the job will build: its own and those its checked recipe lists."""
    names = [run.scheduler.name, *(getattr(recipe, "schedulers", None) or ()),
             getattr(recipe, "reference_scheduler", None)]
    names += [item.get("name") if isinstance(item, dict) else item
              for item in getattr(recipe, "visit_schedulers", None) or ()]
    return [n for n in dict.fromkeys(names) if n]


def misfit(run: Run) -> str | None:
    """Why the job's model cannot run its scheduler, in the words of the CannotRun `check_job` raises for it, read from
    the model's scheduler config without diffusers; None when it fits, or its config cannot be read here."""
    if run.job in MODEL_FREE_JOBS:
        return None
    try:
        base, source = shipped_scheduler_config(run.model)
        check_fit(run.scheduler.name, base, run.scheduler.options)
    except CannotRun as e:
        return f"{source}: {e}"
    except UserError:  # no weights, say: the sweep's check says so
        return None


def check_job(run: Run) -> list[str]:
    """Check a parsed job before any work (its name, scorers, weights, schedulers, recipe and files); its warnings."""
    cfg, spec, params = run.recipe, run.model, run.params
    choose("job", run.job, JOB_MODULES)
    configured(cfg)
    world(cfg.get("sample_world"))
    if run.job in MODEL_FREE_JOBS:  # toy math: no weights, scheduler or prompt to check
        check_recipe(run)
        return [*run.notes, *model_warnings({**cfg, "model": {"name": spec.name}}, params.width, params.height)]

    # a folder's files, components and family: missing weights are said before the scheduler checks import diffusers
    adapter = adapter_class(spec)
    if run.job != "anatomy":  # which builds its model on the meta device
        check_fits_memory(spec)
    base = shipped_scheduler_config(spec)[0]  # the scheduler's options: from diffusers' source, no import
    check_options(run.scheduler.name, run.scheduler.options, model_kind(base))
    clip = cfg.get("clip")  # as are the CLIP model (none with clip=none), input images and reference sets
    if clip and clip.get("name") not in (None, "none"):
        check_clip_folder(clip_folder(clip), clip["name"])
    input_image_files(cfg.get("images"), run.limits["max_input_pixels"])
    check_set_scorers(cfg, params.width, params.height)
    recipe = check_recipe(run)  # before the scheduler checks import diffusers: a bad recipe value is found in no time
    resolve_device(spec.device)  # torch alone knows the devices: said before the scheduler checks import diffusers
    for name in schedulers_used(run, recipe):
        scheduler_class(name)
    check_model(spec, run.scheduler, params)
    if getattr(recipe, "schedulers", None):  # a study's or grid's schedulers fit the model with the run's options
        for name in schedulers_used(run, recipe):  # the configured one too: check_model has already passed it
            try:
                make_scheduler(name, base, run.scheduler.options)
            except UserError as e:
                raise UserError(f"on model={spec.name}: {e}") from None
    prompts = () if getattr(recipe, "tokens_only", False) else getattr(recipe, "prompts", None) or ()
    warnings = [*run.notes, *model_warnings(cfg, params.width, params.height, None if built_in(spec) else adapter,
                                            prompts)]
    if params.negative_prompt and adapter.guidance == "distilled":  # a request value the family never reads
        warnings.append(f"negative_prompt={params.negative_prompt!r} is not used by model={spec.name}: its family "
                        f"({adapter.family}) is guidance-distilled, with no unconditional branch for it to steer "
                        "away from")
    elif params.negative_prompt and params.guidance_scale <= 1 and reads(run.job, "guidance_scale"):
        warnings.append(f"negative_prompt={params.negative_prompt!r} is not used at guidance_scale="
                        f"{params.guidance_scale:g}: only classifier-free guidance (above 1) runs the unconditional "
                        "branch it steers away from")
    return warnings


def check_sweep(runs: list[Run], typed: dict[str, str]) -> None:
    """Check what only a sweep's jobs together tell: that some job reads each setting typed (`typed`: {key: value})."""
    check_reference_read([run.recipe for run in runs])
    check_read([run.job for run in runs], typed)
    check_eta_read(runs, typed)
    check_clip_read(runs, typed)
    check_seeds_apart(runs, typed)


def check_clip_read(runs: list[Run], typed: dict[str, str]) -> None:
    """Refuse a typed `clip.*` setting where every job scores with no CLIP model (`clip=none`, tiny's default)."""
    given = [key for key in typed if key.startswith("clip.")]
    if given and all((run.recipe.get("clip") or {}).get("name") in (None, "none") for run in runs):
        raise UserError(f"{given[0]}={typed[given[0]]} is not read: clip=none scores with no CLIP model; add clip=mini "
                        "or clip=openai_l14 to use it")


def check_seeds_apart(runs: list[Run], typed: dict[str, str]) -> None:
    """Refuse an image that two generate cells would both make: a seed two cells of the same settings list
    (`seeds=[1,2],[2,3]`), or a swept setting an image does not change (`batch_size=1,2`)."""
    owners: dict[tuple[str, int], Run] = {}
    for run in runs if any(len(run.params.seeds) > 1 for run in runs) or IMAGE_FREE & typed.keys() else ():
        rest = config_hash({k: v for k, v in run.recipe.items()
                            if k not in ("seed", "seeds", "resume", "plan", *IMAGE_FREE)})
        for seed in run.params.seeds if run.job == "generate" else ():
            if (owner := owners.setdefault((rest, seed), run)) is run:
                continue
            if differ := [k for k in sorted(IMAGE_FREE & typed.keys()) if owner.recipe.get(k) != run.recipe.get(k)]:
                raise UserError(f"{differ[0]}={typed[differ[0]]} sweeps a setting that does not change an image: its "
                                f"cells would share their images, each made once; to time {differ[0]}, sweep it in "
                                "one folder per value")
            given = f"seeds={typed['seeds']}" if "seeds" in typed else "the sweep"
            raise UserError(f"{given} gives seed {seed} to two cells of the same settings: its image would be made "
                            "twice; list each seed once")


def check_eta_read(runs: list[Run], typed: dict[str, str]) -> None:
    """Refuse a typed eta other than 0 where no job steps DDIM on a DDPM model: no other sampler's step takes it."""
    if "eta" not in typed or all(run.params.eta == 0 for run in runs):
        return
    if not any(reads(run.job, "eta") and "ddim" in schedulers_used(run, check_recipe(run))
               and model_kind(shipped_scheduler_config(run.model)[0]) != "flow" for run in runs):
        used = sorted({name for run in runs for name in schedulers_used(run, check_recipe(run))})
        raise UserError(f"eta={typed['eta']} is not read: only ddim's step takes eta (on SD 1.x, 2.x and SDXL, not on "
                        f"a flow model), and {'this run steps' if len(runs) == 1 else 'the jobs step'} with "
                        f"{', '.join(used)}")


def recipe_fields(job: str) -> list[str]:
    """The names of `job`'s recipe fields (none for a job without a recipe)."""
    return [f.name for f in fields(RECIPES[job])] if job in RECIPES else []


def replaced(job: str) -> dict[str, str]:
    """The settings `job`'s recipe draws from a field of its own instead (a grid's axis): {setting: field}."""
    return getattr(RECIPES.get(job), "replaces", {})


def fixed(job: str) -> dict[str, str]:
    """The settings `job` runs with a value of its own, with no field to give it by: {setting: what it runs with}."""
    return getattr(RECIPES.get(job), "fixes", {})


def imageless_reads(job: str) -> list[str]:
    """The generation settings a job that denoises nothing reads: those it names and its recipe's fields."""
    return [name for name in (*IMAGELESS_JOBS[job], *recipe_fields(job)) if name in GENERATION_SETTINGS]


def reads(job: str, key: str) -> bool:
    """Whether `job` reads the setting `key` typed for it (`replaced`: `scheduler=`, not the options its samplers
    are built with)."""
    root = key.split(".")[0]
    if job in MODEL_FREE_JOBS:
        return root not in MODEL_SETTINGS
    if job in IMAGELESS_JOBS:
        return root not in GENERATION_SETTINGS or root in imageless_reads(job)
    return key not in replaced(job) and key not in fixed(job)


def check_read(jobs: Sequence[str], typed: dict[str, str]) -> None:
    """Refuse a setting typed for `jobs` (a run's or a sweep's) that none of them reads."""
    jobs = list(dict.fromkeys(jobs))
    given = [f"{key}={value}" for key, value in typed.items() if jobs and not any(reads(job, key) for job in jobs)]
    if not given:
        return
    where = f"experiment={typed['experiment']}" if "experiment" in typed else f"job {jobs[0]}"
    if len(jobs) > 1 and any(job not in MODEL_FREE_JOBS for job in jobs):
        raise UserError(f"{given[0]} is not read by any job of {where}")
    if jobs[0] in IMAGELESS_JOBS:
        raise UserError(f"{given[0]} is not read: {where} denoises nothing (job {jobs[0]}); of the generation settings "
                        f"it reads {', '.join(imageless_reads(jobs[0])) or 'none'}")
    key, _, value = given[0].partition("=")
    if key in fixed(jobs[0]):
        raise UserError(f"{given[0]} is not read: {where} (job {jobs[0]}) runs with {fixed(jobs[0])[key]}")
    if jobs[0] not in MODEL_FREE_JOBS:  # what its recipe draws itself
        field = replaced(jobs[0])[key]
        block = getattr(RECIPES[jobs[0]], "block", None)
        raise UserError(f"{given[0]} is not read: {where} (job {jobs[0]}) draws its own {field}; give "
                        f"{block + '.' if block else ''}{field}= instead")
    if len(jobs) > 1:
        raise UserError(f"{given[0]} is not read: every job of {where} is toy math that reads only its own block "
                        f"({', '.join(f'{RECIPES[job].block}:' for job in jobs)})")
    block, names = RECIPES[jobs[0]].block, recipe_fields(jobs[0])
    hint = f"; set {block}.{key.split('.')[-1]}={value}" if key.split(".")[-1] in names and "${" not in value else ""
    raise UserError(f"{given[0]} is not read: {where} is toy math (job {jobs[0]}) that reads only its {block}: block "
                    f"({', '.join(f'{block}.{name}' for name in names)}){hint}")


def sweep_plan(runs: list[Run]) -> str:
    """'N jobs, M images' (no images when some are analyses); a job repeating another's values is counted once."""
    distinct = {run.job_hash: run for run in runs}
    repeats = f" ({len(runs) - len(distinct)} repeats another's values: made once)" if len(distinct) < len(runs) else ""
    jobs = f"{counted(len(runs), 'job')}{repeats}"
    if runs and all(run.job == "generate" for run in runs):
        return f"{jobs}, {counted(sum(len(run.params.seeds) for run in distinct.values()), 'image')}"
    return jobs
