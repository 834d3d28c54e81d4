"""Generation parameters from a JSON file, the same keys people already pass to image tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdlab.config import GENERATION_KEYS
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


def load_params(path: str | Path) -> dict[str, Any]:
    """Read and type-check a params JSON object; unknown keys and wrong types are UserErrors."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"params={path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"params={path} cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"params={path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise UserError(f"params={path} must hold a JSON object of {', '.join(PARAM_TYPES)}")
    for key, value in data.items():
        if key not in PARAM_TYPES:
            raise UserError(f"params={path} has unknown key {key!r}; allowed: {', '.join(PARAM_TYPES)}")
        if isinstance(value, bool) or not isinstance(value, PARAM_TYPES[key]):
            kinds = " or ".join(t.__name__ for t in PARAM_TYPES[key])
            raise UserError(f"params={path}: {key}={value!r} should be {kinds}")
    return data


assert set(GENERATION_KEYS) <= set(PARAM_TYPES)
