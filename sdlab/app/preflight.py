"""Pre-flight: everything a job needs, checked from its config before any model loads or file is written."""

from __future__ import annotations

from typing import Any

from sdlab.bench.inputs import image_files
from sdlab.bench.params import load_params
from sdlab.bench.scorers import scorer_names
from sdlab.bench.worlds import world
from sdlab.config import (
    MODEL_FAMILIES,
    MODEL_KINDS,
    generation_params,
    limits,
    model_spec,
    scheduler_choice,
    validate_config,
)
from sdlab.errors import UserError, choose
from sdlab.jobs import JOB_MODULES, MODEL_FREE_JOBS, check_recipe
from sdlab.metrics.schedule import model_kind
from sdlab.models.architectures import BUILT_IN
from sdlab.models.clip import check_clip_folder, clip_folder
from sdlab.models.loading import (
    adapter_class,
    check_model,
    model_folder,
    shipped_scheduler_config,
)
from sdlab.models.model_files import check_weights_folder
from sdlab.models.schedulers import (  # imports diffusers
    check_options,
    make_scheduler,
    scheduler_class,
)


def model_warnings(cfg: dict[str, Any], width: int, height: int) -> list[str]:
    """Warnings for requests the model was not made for: a prompt outside its grammar, a non-native size."""
    model = cfg.get("model") or {}
    name, native = model.get("name"), model.get("resolution")
    warnings = []
    grammar = model.get("prompt_grammar")
    if grammar:
        known = world(grammar, "model.prompt_grammar")
        for key in ("prompt", "negative_prompt"):
            unknown = known.unknown_words(str(cfg.get(key) or ""))
            if unknown:
                warnings.append(f"{key}={cfg[key]!r} is outside model={name}'s {grammar} grammar (it does not know: "
                                f"{', '.join(dict.fromkeys(unknown))}); it knows prompts like {known.example!r}")
    if native and (width, height) != (native, native):
        warnings.append(f"width={width} height={height} differ from model={name}'s native {native}x{native} px; "
                        "expect tiled or broken images")
    made_for = cfg.get("made_for")
    if made_for and name not in (made_for.get("models") or []):
        warnings.append(f"this recipe is made for {made_for['what']}; on model={name} {made_for['here']}")
    return warnings


def job_config(config: dict[str, Any], overridden: set[str]) -> dict[str, Any]:
    """What a job runs with: the composed config in the model's world, then `params=FILE` merged in."""
    return with_params_file(in_model_world(config, overridden), overridden)


def with_params_file(config: dict[str, Any], overridden: set[str]) -> dict[str, Any]:
    """The config with `params=FILE` merged in; explicit command-line overrides still win."""
    if not config.get("params"):
        return config
    params = load_params(config["params"], limits(config))
    config = {**config, "scheduler": dict(config["scheduler"])}
    for key, value in params.items():
        if key in overridden:
            continue
        if key == "model":
            if value != config["model"].get("name"):
                raise UserError(f"params={config['params']} was made with model={value}; this run uses "
                                f"model={config['model'].get('name')}: add model={value} to the command line")
        elif key == "scheduler":
            config["scheduler"]["name"] = value
        elif key == "scheduler_options":
            config["scheduler"].update({k: v for k, v in value.items() if f"scheduler.{k}" not in overridden})
        else:
            config[key] = value
    if "seed" in params and "seeds" not in params and "seeds" not in overridden:
        config["seeds"] = None  # the file's single seed wins over a recipe's seed list
    return config


def in_model_world(config: dict[str, Any], overridden: set[str]) -> dict[str, Any]:
    """The config with a recipe's `world.<name>` values applied for each world the model is in, in this order: its
    prompt grammar (the same experiment told in prompts the model knows), its scheduler kind (`flow`: the samplers
    that fit a flow-matching model) and its family (`flux`). Blocks merge key by key; command-line overrides
    (`compare.steps=...`) still win."""
    worlds = config.get("world") or {}
    if not worlds:
        return config
    names = [(config.get("model") or {}).get("prompt_grammar")]
    if worlds.keys() & {*MODEL_KINDS, *MODEL_FAMILIES}:

        spec = model_spec(config["model"])
        names += [model_kind(shipped_scheduler_config(spec)[0]), adapter_class(spec).family]
    for name in names:
        if name and worlds.get(name):
            config = merged(config, worlds[name], overridden)
    return config


def merged(config: dict[str, Any], values: dict[str, Any], overridden: set[str], prefix: str = "") -> dict[str, Any]:
    """`config` with `values` put in, dicts merged key by key, leaving the keys the command line set."""
    out = dict(config)
    for key, value in values.items():
        dotted = prefix + key
        if dotted in overridden:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value, overridden, dotted + ".")
        else:
            out[key] = value
    return out


def check_files(cfg: dict[str, Any]) -> None:
    """Files and folders the config names exist and are what they should be: params, images, weights, CLIP."""
    if cfg.get("images"):
        image_files(cfg["images"])
    check_model(cfg)
    clip = cfg.get("clip") or {}
    if clip.get("name") not in (None, "none"):
        check_clip_folder(clip_folder(clip), clip["name"])


def schedulers_used(cfg: dict[str, Any]) -> list[str]:
    """Every scheduler name the job will build: its own and those a study lists."""
    names = [(cfg.get("scheduler") or {}).get("name")]
    names += list(cfg.get("schedulers") or []) + [cfg.get("reference_scheduler")]  # scheduler_grid
    study = cfg.get("compare") or {}
    names += list(study.get("schedulers") or []) + [study.get("reference_scheduler")]
    names += [item.get("name") if isinstance(item, dict) else item for item in cfg.get("visit_schedulers") or []]
    return [n for n in dict.fromkeys(names) if n]


def check_schedulers_fit(cfg: dict[str, Any], spec) -> None:
    """Every scheduler a study or grid lists can run on the model (its kind, its shifting), as one line naming it."""

    if not (cfg.get("compare") or cfg.get("schedulers")):
        return
    base, _ = shipped_scheduler_config(spec)
    for name in schedulers_used(cfg):  # the configured one too: check_model has already passed it
        try:
            make_scheduler(name, base)
        except UserError as e:
            raise UserError(f"on model={spec.name}: {e}") from None


def check_job(cfg: dict[str, Any]) -> list[str]:
    """Check a job's resolved config before any work; returns warning lines, raises UserError on bad input."""
    choose("job", cfg.get("job", "generate"), JOB_MODULES)
    validate_config(cfg)  # values, types and limits, reading no file
    scorer_names(cfg)
    world(cfg.get("sample_world"))
    spec = model_spec(cfg["model"])
    params = generation_params(cfg, spec.resolution)
    if cfg.get("job") in MODEL_FREE_JOBS:  # toy math: no weights, scheduler or prompt to check
        check_recipe(cfg)
        return model_warnings({**cfg, "model": {"name": spec.name}}, params.width, params.height)

    if spec.name not in BUILT_IN or spec.path:  # missing weights are said before the scheduler checks import diffusers
        check_weights_folder(model_folder(spec))
    choice = scheduler_choice(cfg["scheduler"])
    check_options(choice.name, choice.options)
    for name in schedulers_used(cfg):
        scheduler_class(name)
    check_recipe(cfg)  # before the weights are checked: a bad recipe value is the cheaper thing to find
    check_files(cfg)
    check_schedulers_fit(cfg, spec)
    return model_warnings(cfg, params.width, params.height)


def images_of(cfg: dict[str, Any]) -> int | None:
    """How many images a generate job makes (None for other jobs)."""
    if cfg.get("job") != "generate":
        return None
    seeds = cfg.get("seeds")
    return len(seeds) if isinstance(seeds, (list, tuple)) else 1


def sweep_plan(configs: list[dict[str, Any]]) -> str:
    """'N jobs, M images' (or 'N jobs' when some jobs are analyses) for a sweep's configs."""
    counts = [images_of(c) for c in configs]
    jobs = f"{len(configs)} job{'s' * (len(configs) != 1)}"
    if counts and all(n is not None for n in counts):
        return f"{jobs}, {sum(counts)} image{'s' * (sum(counts) != 1)}"
    return jobs
