"""Generation parameters from a JSON file, the same keys people already pass to image tools."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from sdlab.config import GENERATION_KEYS, LIMITS
from sdlab.errors import UserError

PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "negative_prompt": (str,),
    "seed": (int,),
    "seeds": (list,),
    "num_inference_steps": (int,),
    "guidance_scale": (int, float),
    "width": (int,),
    "height": (int,),
    "eta": (int, float),
    "batch_size": (int,),
    "scheduler": (str,),
}


def read_bounded(path: Path, max_bytes: int) -> str:
    """The text of a regular file (or pipe) of at most `max_bytes`; devices, folders and bigger files are UserErrors."""
    try:
        mode = path.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise UserError(f"params={path} is not a regular file; give a JSON file")
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise UserError(f"params={path} does not exist") from None
    except OSError as e:
        raise UserError(f"params={path} cannot be read: {e}") from None
    if len(data) > max_bytes:
        raise UserError(f"params={path} is larger than limits.max_params_bytes={max_bytes}; "
                        "raise it with limits.max_params_bytes=N")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"params={path} cannot be read: {e}") from None


def load_params(path: str | Path, max_bytes: int = LIMITS["max_params_bytes"]) -> dict[str, Any]:
    """Read and type-check a params JSON object of at most `max_bytes`; unknown keys and wrong types are UserErrors."""
    if not isinstance(path, (str, Path)):
        raise UserError(f"params={path!r} must be a file path or null")
    path = Path(path)
    text = read_bounded(path, max_bytes)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"params={path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise UserError(f"params={path} nests too deeply; a params file is one flat JSON object") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise UserError(f"params={path} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"params={path} must hold a JSON object of {', '.join(PARAM_TYPES)}")
    for key, value in data.items():
        if key not in PARAM_TYPES:
            raise UserError(f"params={path} has unknown key {key!r}; allowed: {', '.join(PARAM_TYPES)}")
        if isinstance(value, bool) or not isinstance(value, PARAM_TYPES[key]):
            kinds = " or ".join(t.__name__ for t in PARAM_TYPES[key])
            raise UserError(f"params={path}: {key}={value!r} should be {kinds}")
    bad = [s for s in data.get("seeds", []) if isinstance(s, bool) or not isinstance(s, int)]
    if bad:
        raise UserError(f"params={path}: seeds should be a list of int, not one holding {bad[0]!r}")
    return data


assert set(GENERATION_KEYS) <= set(PARAM_TYPES)
