"""A composed config parsed once into the Run a job takes, the model's world and `params=FILE` (sdlab's JSON or a PNG's
parameters, in sdlab's or A1111's names) merged in; a file, read bounded, sets only what the command line may."""

from __future__ import annotations

import json
import re
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from sdlab.bench.scorers import scorer_weights
from sdlab.bench.worlds import world
from sdlab.conf_files import group_options, known_keys
from sdlab.config import (LIMITS, MODEL_FAMILIES, MODEL_KINDS, MODEL_NAMES, GenerationParams, ModelSpec, Run,
                          SEED, checked_run, clash, config_hash, limits, model_spec, rivals, rules_of, suggestion,
                          as_typed)
from sdlab.errors import UserError, repeats
from sdlab.metrics.schedule import model_kind
from sdlab.models.architectures import ARCHITECTURES, BUILT_IN
from sdlab.models.loading import SHIPPED, adapter_class, published_scheduler_config, weights_identity
from sdlab.untrusted import check_text, read_params


def parse(config: dict[str, Any], overridden: set[str] = frozenset()) -> Run:
    """What a job runs with: the config in the model's world, `params=FILE` merged in, every value checked and typed;
    what the file's merge skipped or gave way goes in `Run.notes`."""
    notes: list[str] = []
    config = with_params_file(in_model_world(config, overridden), overridden, notes)
    check_weights_source(config.get("model") or {}, overridden)
    run = typed_run(config)
    check_built_in(run.model)
    return replace(run, notes=tuple(notes))


def check_built_in(spec: ModelSpec) -> None:
    """Refuse what a model built in code does not read: a weights variant (it has no files) or another family."""
    if spec.path or spec.name not in BUILT_IN:
        return
    family = ARCHITECTURES[spec.name].family
    if spec.variant:
        raise UserError(f"model.variant={spec.variant} is not read: model={spec.name} is built in code, with no "
                        "weights files; a variant picks the files of a weights folder (model.path=DIR)")
    if spec.family != family:
        raise UserError(f"model.family={spec.family} is not read: model={spec.name} is built in code as {family}")


def check_weights_source(model: dict[str, Any], overridden: set[str]) -> None:
    """Refuse a `model.repo_id` that would not be read: a path, a shipped or a built-in model comes first."""
    repo, path, name = model.get("repo_id"), model.get("path"), model.get("name")
    if repo and not path and (name in SHIPPED or name in BUILT_IN):
        made = f"loads its own weights from models/{name}" if name in SHIPPED else "is built in code"
        raise UserError(f"model.repo_id={repo} is not read: model={name} {made}; pass model.path=DIR for a folder")
    if repo and path and "model.repo_id" in overridden:
        raise UserError(f"model.repo_id={repo} is not read: model.path={path} is loaded instead; drop one of them")


def typed_run(config: dict[str, Any]) -> Run:
    """The Run of an effective config with the fingerprint of the weights its rows are made from: model and scorers."""
    run = checked_run(config)
    scoring = {}
    with suppress(UserError):  # an unknown scorer: pre-flight names it
        scoring = scorer_weights(config)
    model = weights_identity(run.model)
    return replace(run, weights=config_hash({"model": model, "scorers": scoring}) if scoring else model)


def with_params_file(config: dict[str, Any], overridden: set[str], notes: list[str]) -> dict[str, Any]:
    """The config with `params=FILE` merged in; explicit command-line overrides still win (said in `notes`)."""
    if not config.get("params"):
        return config
    params = load_params(config["params"], limits(config), notes)
    config = {**config, "scheduler": dict(config["scheduler"])}
    gave_way = []  # what the file sets otherwise than the command line did (or replaced: seed by seeds)
    for key, value in params.items():
        if key in overridden or rivals(key) & overridden:
            typed = (config.get(key) or {}).get("name") if key in ("model", "scheduler") else config.get(key)
            if value != typed or rivals(key) & overridden:
                gave_way.append(f"{key}={value!r}")
            continue
        if key == "model":
            if value != config["model"].get("name"):
                raise UserError(f"params={config['params']} was made with model={value}; this run uses "
                                f"model={config['model'].get('name')}: add model={value} to the command line")
        elif key == "scheduler":
            config["scheduler"]["name"] = value
        elif key == "scheduler_options":
            config["scheduler"].update({k: v for k, v in value.items() if f"scheduler.{k}" not in overridden})
            gave_way += [f"scheduler_options.{k}={v!r}" for k, v in value.items() if f"scheduler.{k}" in overridden]
        else:
            config[key] = value
    if gave_way:
        notes.append(f"params={config['params']}: {', '.join(gave_way)} from the file "
                     f"{'gives' if len(gave_way) == 1 else 'give'} way to the command line")
    if "seed" in params and "seeds" not in params and "seeds" not in overridden:
        config["seeds"] = None  # the file's single seed wins over a recipe's seed list
    return config


def in_model_world(config: dict[str, Any], overridden: set[str]) -> dict[str, Any]:
    """The config with `world.<name>` values for the model's prompt grammar, kind, then family; overrides win."""
    worlds = config.get("world") or {}
    if not isinstance(worlds, dict):
        raise UserError(f"world={worlds!r} must be a mapping of worlds (a prompt grammar, "
                        f"{', '.join(MODEL_KINDS)} or a family) to recipe values")
    for name, values in worlds.items():
        if values is not None and not isinstance(values, dict):
            raise UserError(f"world.{name}={values!r} must be a mapping of recipe keys to their values on such a model")
    names = [(config.get("model") or {}).get("prompt_grammar")]
    if names[0] is not None:
        world(names[0], "model.prompt_grammar")  # one line naming it, not a fault further on
    if worlds.keys() & {*MODEL_KINDS, *MODEL_FAMILIES}:
        spec = model_spec(config["model"])
        names += [model_kind(published_scheduler_config(spec)[0]), adapter_class(spec).family]
    for name in names:
        if name and worlds.get(name):
            config = merged(config, worlds[name], overridden)
    return config


def merged(config: dict[str, Any], values: dict[str, Any], overridden: set[str], prefix: str = "") -> dict[str, Any]:
    """`config` with `values` put in, dicts merged key by key, leaving the keys the command line set."""
    out = dict(config)
    for key, value in values.items():
        dotted = prefix + key
        if dotted not in overridden:
            nested = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merged(out[key], value, overridden, dotted + ".") if nested else value
    return out


# sdlab scheduler -> A1111 sampler name (the combined "Name Karras" form every PNG-info reader parses)
SAMPLER_NAMES = {
    "ddim": "DDIM", "ddpm": "DDPM", "pndm": "PLMS", "lms": "LMS", "lms_karras": "LMS Karras", "euler": "Euler",
    "euler_a": "Euler a", "heun": "Heun", "dpm2": "DPM2", "dpm2_a": "DPM2 a", "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras", "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras",
    "dpmpp_sde": "DPM++ SDE", "unipc": "UniPC", "deis": "DEIS",
}
SCHEDULERS_BY_SAMPLER = {v.lower(): k for k, v in SAMPLER_NAMES.items()}
SCHEDULE_TYPES = ("automatic", "uniform", "karras")  # A1111's separate "Schedule type" that sdlab can honour
A1111_KEYS = {"steps": "num_inference_steps", "cfg_scale": "guidance_scale", "sampler_name": "scheduler",
              "sampler_index": "scheduler"}
# The infotext's labels in the order image tools write them, and sdlab's name for each ("Model" is their checkpoint
# name, and "Version" theirs: written, never read back; "Size" is read as width and height)
INFOTEXT_KEYS = {"Steps": "num_inference_steps", "Sampler": "scheduler", "Schedule type": "schedule_type",
                 "CFG scale": "guidance_scale", "Seed": "seed", "Size": "size", "Model": "model", "Eta": "eta",
                 "Version": "version"}
READ_KEYS = {label.lower(): name for label, name in INFOTEXT_KEYS.items() if label not in ("Size", "Model", "Version")}


def sampler_to_scheduler(sampler: str, schedule_type: str | None = None) -> str:
    """An A1111 sampler name (and optional schedule type, e.g. "Karras") as an sdlab scheduler name."""
    name = sampler.strip().lower()
    if schedule_type and schedule_type.strip().lower() == "karras" and not name.endswith("karras"):
        if scheduler_named(name) and not scheduler_named(f"{name} karras"):
            karras = [SAMPLER_NAMES[s].removesuffix(" Karras") for s in SAMPLER_NAMES if s.endswith("_karras")]
            raise UserError(f"sampler {sampler!r} with schedule type {schedule_type!r} has no sdlab scheduler; the "
                            f"Karras schedule goes with: {', '.join(karras)} (or give schedule type Automatic)")
        name += " karras"
    elif schedule_type and schedule_type.strip().lower() not in SCHEDULE_TYPES:
        raise UserError(f"schedule type {schedule_type!r} is not supported; choose one of: Automatic, Uniform, Karras")
    if scheduler := scheduler_named(name):
        return scheduler
    raise UserError(f"sampler {sampler!r} has no sdlab scheduler; choose one of: {', '.join(SAMPLER_NAMES.values())}")


def scheduler_named(name: str) -> str | None:
    """The sdlab scheduler a lower-case sampler name (`dpm++ 2m karras`) or scheduler name spaced out names, or None."""
    underscored = name.replace(" ", "_")
    return SCHEDULERS_BY_SAMPLER.get(name) or (underscored if underscored in SAMPLER_NAMES else None)


def params_scheduler(name: str, label: str) -> str:
    """A params file's scheduler as sdlab names it: sdlab's name, or the sampler name an image tool shows."""
    names = group_options("scheduler")
    if name in names:
        return name
    if scheduler := SCHEDULERS_BY_SAMPLER.get(name.strip().lower()):
        return scheduler
    raise UserError(f"{label}: unknown scheduler {name!r}{suggestion(name, names)}; choose one of: {', '.join(names)} "
                    "(or a sampler name as image tools show it, e.g. 'DPM++ 2M Karras')")


def from_a1111(data: dict[str, Any]) -> dict[str, Any]:
    """A params dict with A1111's names (steps, cfg_scale, sampler_name, scheduler="Karras") in sdlab's."""
    data = dict(data)
    schedule_type = None
    if isinstance(data.get("scheduler"), str) and ("sampler_name" in data or "sampler_index" in data):
        schedule_type = data.pop("scheduler")  # A1111 >= 1.9: the schedule type, beside sampler_name
    out = {}
    for key, value in data.items():
        target = A1111_KEYS.get(key, key)
        if target in out:
            named = [k for k in data if A1111_KEYS.get(k, k) == target]
            raise UserError(f"params give both {named[0]!r} and {named[1]!r}; keep one")
        if target == "scheduler" and key != "scheduler":
            if not isinstance(value, str):
                raise UserError(f"{key}={value!r} should be a sampler name such as 'DPM++ 2M Karras'")
            value = sampler_to_scheduler(value, schedule_type)
        out[target] = value
    return out


def format_infotext(meta: dict[str, Any]) -> str:
    """The A1111 `parameters` text: prompt, `Negative prompt:` line, then `Steps: N, Sampler: ..., ...`."""
    shown = {**meta, "scheduler": SAMPLER_NAMES.get(meta.get("scheduler"), meta.get("scheduler")),
             "size": f"{meta.get('width')}x{meta.get('height')}", "eta": meta.get("eta") or None,
             "version": meta.get("version") or None}
    fields = {label: shown.get(name) for label, name in INFOTEXT_KEYS.items()}
    lines = [str(meta.get("prompt") or "")]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        with suppress(ValueError):
            return kind(text)
    return text


def unquote(value: str) -> str:
    """An infotext value as A1111 reads it: one holding a comma, a colon or a quote is written as a JSON string."""
    if len(value) > 1 and value[0] == value[-1] == '"':
        with suppress(ValueError):
            return str(json.loads(value))
    return value


def parse_infotext(text: str, label: str = "the PNG's parameters", notes: list[str] | None = None) -> dict[str, Any]:
    """sdlab params from an A1111 `parameters` text (`format_infotext`'s inverse); a line in `notes` names what it
    skips."""
    lines = text.strip().splitlines()
    if not lines or not re.match(r"^Steps: ", lines[-1]):
        raise UserError("the PNG's parameters text has no 'Steps: ...' line; it was not written by an image tool")
    *body, settings = lines
    cut = next((i for i, line in enumerate(body) if line.startswith("Negative prompt:")), len(body))
    negative = [line.removeprefix("Negative prompt:").strip() for line in body[cut:]]
    out: dict[str, Any] = {"prompt": "\n".join(body[:cut]), "negative_prompt": "\n".join(negative)}
    pairs = [(k.strip(), v.strip()) for k, v in re.findall(r'\s*([\w \-/]+):\s*("(?:[^"\\]|\\.)*"|[^,]*)', settings)]
    if twice := repeats(k.lower() for k, _ in pairs):
        raise UserError(f"{label} gives {next(k for k, _ in pairs if k.lower() == twice[0])!r} twice; keep one")
    unread = []
    for typed, value in pairs:
        key = typed.lower()
        if key == "size":
            if not re.fullmatch(r"\d+x\d+", value):
                raise UserError(f"{label}: Size: {value} must be WIDTHxHEIGHT, such as 512x768")
            out["width"], out["height"] = map(int, value.split("x"))
        elif key in READ_KEYS:
            out[READ_KEYS[key]] = _number(value) if key not in ("sampler", "schedule type") else unquote(value)
        elif key != "version":
            unread.append(f"{typed}: {value}")
    if unread and notes is not None:
        notes.append(f"{label}: sdlab does not read the image tool's {', '.join(unread)}; its image may differ")
    schedule_type = out.pop("schedule_type", None)
    if "scheduler" in out:
        out["scheduler"] = sampler_to_scheduler(out["scheduler"], schedule_type)
    return out

PYTHON_TYPES = {"int": (int,), "number": (int, float), "str": (str,)}
# What a params file may set: each generation parameter (typed by its Field), one `seed`, the scheduler and model.
RULES = rules_of(GenerationParams)
PARAM_TYPES: dict[str, tuple[type, ...]] = {
    **{name: PYTHON_TYPES[rule.kind] for name, rule in RULES.items()},
    "seed": (int,), "seeds": (list,), "scheduler": (str,), "scheduler_options": (dict,), "model": (str,),
    "batch_size": (int, str),  # or auto, as GenerationParams takes it
}


def load_params(path: str | Path, limit: dict[str, int] = LIMITS, notes: list[str] | None = None) -> dict[str, Any]:
    """Read and check a params JSON object (A1111's names too) or an image's own parameters (PNG), within `limit`;
    what it does not read is said in `notes`."""
    if not isinstance(path, (str, Path)):
        raise UserError(f"params={path!r} must be a file path or null")
    label = f"params={path}"
    form, data = read_params(path, label, limit)
    if form == "sdlab":  # an image's record holds more than its parameters
        data = {k: v for k, v in data.items() if k in PARAM_TYPES and v is not None}
    elif form == "json" and not isinstance(data, dict):
        raise UserError(f"{label} must hold a JSON object of {', '.join(PARAM_TYPES)}")
    try:
        data = from_a1111(parse_infotext(data, label, notes) if form == "infotext" else data)
    except UserError as e:
        raise UserError(f"{label}: {e}") from None
    for key, value in data.items():
        if key not in PARAM_TYPES:
            raise UserError(f"{label} has unknown key {key!r}{suggestion(key, [*PARAM_TYPES, *A1111_KEYS])}; "
                            f"allowed: {', '.join(PARAM_TYPES)}, or the image tools' {', '.join(A1111_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, PARAM_TYPES[key]):
            kinds = " or ".join(t.__name__ for t in PARAM_TYPES[key])
            raise UserError(f"{label}: {key}={as_typed(value)} should be {kinds}")
        if key in RULES and value != "auto":  # its range too, named with its file (batch_size=auto: GenerationParams)
            RULES[key].check(f"{label}: {key}", value)
        elif key == "seed":
            SEED.check(f"{label}: seed", value)
        elif isinstance(value, str):
            check_text(value, f"{label}: {key}")
    if "scheduler" in data:  # a str, as checked above
        data["scheduler"] = params_scheduler(data["scheduler"], label)
    if found := clash(data):
        (first, second), why = found
        raise UserError(f"{label} gives both {first!r} and {second!r} ({why}); keep one")
    if bad := [s for s in data.get("seeds", []) if isinstance(s, bool) or not isinstance(s, int)]:
        raise UserError(f"{label}: seeds should be a list of int, not one holding {bad[0]!r}")
    for i, seed in enumerate(data.get("seeds", [])):
        SEED.check(f"{label}: seeds[{i}]", seed)
    if "model" in data and data["model"] not in MODEL_NAMES:  # one name, as `model=NAME` takes it
        raise UserError(f"{label}: model={data['model']!r} is not a model; choose one of: {', '.join(MODEL_NAMES)}")
    allowed = sorted(known_keys("scheduler") - {"name"})  # what `scheduler.KEY=` sets; preflight checks the values
    for key, value in data.get("scheduler_options", {}).items():
        if key not in allowed:
            raise UserError(f"{label}: scheduler_options has no option {key!r}; a params file sets what "
                            f"scheduler.KEY= does: {', '.join(allowed)}")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise UserError(f"{label}: scheduler_options.{key}={value!r} must be a string, number or boolean")
    return data
