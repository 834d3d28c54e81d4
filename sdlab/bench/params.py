"""Generation parameters from a JSON file or a PNG, the same keys people already pass to image tools: read through
the bounded reader, checked to set exactly what the command line may."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlab.bench.infotext import from_a1111, parse_infotext
from sdlab.conf_files import known_keys
from sdlab.config import LIMITS, MODEL_NAMES, GenerationParams, rules_of
from sdlab.errors import UserError
from sdlab.untrusted import parse_json, read_bytes, read_png_text

PYTHON_TYPES = {"int": (int,), "number": (int, float), "str": (str,)}
# What a params file may set: each generation parameter (typed by its Field), one `seed`, the scheduler and model.
PARAM_TYPES: dict[str, tuple[type, ...]] = {
    **{name: PYTHON_TYPES[rule.kind] for name, rule in rules_of(GenerationParams).items()},
    "seed": (int,), "seeds": (list,), "scheduler": (str,), "scheduler_options": (dict,), "model": (str,),
}


def load_params(path: str | Path, limit: dict[str, int] = LIMITS) -> dict[str, Any]:
    """Read and check a params JSON object (A1111's names too) or an image's own parameters (PNG), within `limit`."""
    if not isinstance(path, (str, Path)):
        raise UserError(f"params={path!r} must be a file path or null")
    label = f"params={path}"
    path = Path(path)
    if path.suffix.lower() == ".png":
        data = read_png_params(path, label, limit)
    else:
        data = parse_json(read_bytes(path, label, "a JSON file or a PNG image", "max_params_bytes", limit), label)
    if not isinstance(data, dict):
        raise UserError(f"{label} must hold a JSON object of {', '.join(PARAM_TYPES)}")
    try:
        data = from_a1111(data)
    except UserError as e:
        raise UserError(f"{label}: {e}") from None
    for key, value in data.items():
        if key not in PARAM_TYPES:
            raise UserError(f"{label} has unknown key {key!r}; allowed: {', '.join(PARAM_TYPES)}")
        if isinstance(value, bool) or not isinstance(value, PARAM_TYPES[key]):
            kinds = " or ".join(t.__name__ for t in PARAM_TYPES[key])
            raise UserError(f"{label}: {key}={value!r} should be {kinds}")
    bad = [s for s in data.get("seeds", []) if isinstance(s, bool) or not isinstance(s, int)]
    if bad:
        raise UserError(f"{label}: seeds should be a list of int, not one holding {bad[0]!r}")
    check_model_name(data, label)
    check_scheduler_options(data, label)
    return data


def check_model_name(data: dict[str, Any], label: str) -> None:
    """A file's `model` is one model name, as `model=NAME` on the command line takes it."""
    if "model" in data and data["model"] not in MODEL_NAMES:
        raise UserError(f"{label}: model={data['model']!r} is not a model; choose one of: {', '.join(MODEL_NAMES)}")


def check_scheduler_options(data: dict[str, Any], label: str) -> None:
    """A file's `scheduler_options` set only what `scheduler.KEY=VALUE` may, each a plain value; their values are
    then checked against the scheduler as the command line's are (preflight.check_job)."""
    allowed = sorted(known_keys("scheduler") - {"name"})
    for key, value in data.get("scheduler_options", {}).items():
        if key not in allowed:
            raise UserError(f"{label}: scheduler_options has no option {key!r}; a params file sets what "
                            f"scheduler.KEY= does: {', '.join(allowed)}")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise UserError(f"{label}: scheduler_options.{key}={value!r} must be a string, number or boolean")


def read_png_params(path: Path, label: str, limit: dict[str, int]) -> dict[str, Any]:
    """The parameters a PNG carries: sdlab's own record, else an image tool's A1111 `parameters` text."""
    chunks = read_png_text(path, label, limit)
    if "sdlab" in chunks:
        record = parse_json(chunks["sdlab"], f"{label}'s sdlab text chunk")
        if not isinstance(record, dict):
            raise UserError(f"{label}'s sdlab text chunk must hold a JSON object, not {type(record).__name__}")
        return {k: v for k, v in record.items() if k in PARAM_TYPES and v is not None}
    if "parameters" in chunks:
        try:
            return parse_infotext(chunks["parameters"])
        except UserError as e:
            raise UserError(f"{label}: {e}") from None
    raise UserError(f"{label} carries no generation parameters (no 'sdlab' or 'parameters' text chunk)")

