"""A composed config parsed once into the Run a job takes: the model's world and `params=FILE` merged in, every value
checked."""

from __future__ import annotations

from typing import Any

from sdlab.bench.params import load_params
from sdlab.config import MODEL_FAMILIES, MODEL_KINDS, Run, checked_run, limits, model_spec
from sdlab.errors import UserError
from sdlab.metrics.schedule import model_kind
from sdlab.models.loading import adapter_class, shipped_scheduler_config


def parse(config: dict[str, Any], overridden: set[str] = frozenset()) -> Run:
    """What a job runs with: the composed config in the model's world, `params=FILE` merged in, every value checked
    and typed."""
    return checked_run(with_params_file(in_model_world(config, overridden), overridden))


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
