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
    "scheduler_options": (dict,),
    "model": (str,),
}


def load_params(path: str | Path) -> dict[str, Any]:
    """Read and type-check a params JSON object (A1111's names too) or an image's own parameters (PNG)."""
    from sdlab.infotext import from_a1111

    path = Path(path)
    try:
        data = read_png_params(path) if path.suffix.lower() == ".png" else json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"params={path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"params={path} cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"params={path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise UserError(f"params={path} must hold a JSON object of {', '.join(PARAM_TYPES)}")
    try:
        data = from_a1111(data)
    except UserError as e:
        raise UserError(f"params={path}: {e}") from None
    for key, value in data.items():
        if key not in PARAM_TYPES:
            raise UserError(f"params={path} has unknown key {key!r}; allowed: {', '.join(PARAM_TYPES)}")
        if isinstance(value, bool) or not isinstance(value, PARAM_TYPES[key]):
            kinds = " or ".join(t.__name__ for t in PARAM_TYPES[key])
            raise UserError(f"params={path}: {key}={value!r} should be {kinds}")
    return data


def read_png_params(path: Path) -> dict[str, Any]:
    """The parameters a PNG carries: sdlab's own record, else an image tool's A1111 `parameters` text."""
    from PIL import Image, UnidentifiedImageError

    from sdlab.infotext import parse_infotext

    try:
        with Image.open(path) as image:
            chunks = dict(getattr(image, "text", {}))
    except UnidentifiedImageError:
        raise UserError(f"params={path} is not a readable PNG image") from None
    if "sdlab" in chunks:
        record = json.loads(chunks["sdlab"])
        return {k: v for k, v in record.items() if k in PARAM_TYPES and v is not None}
    if "parameters" in chunks:
        return parse_infotext(chunks["parameters"])
    raise UserError(f"params={path} carries no generation parameters (no 'sdlab' or 'parameters' text chunk)")


assert set(GENERATION_KEYS) <= set(PARAM_TYPES)
