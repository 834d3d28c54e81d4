"""Generation parameters from a JSON file, the same keys people already pass to image tools."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from sdlab.bench.infotext import from_a1111, parse_infotext
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
    "scheduler_options": (dict,),
    "model": (str,),
}


def check_regular(path: Path) -> None:
    """A params file must be a regular file or a pipe: never a folder or a device such as /dev/zero."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"params={path} does not exist") from None
    except OSError as e:
        raise UserError(f"params={path} cannot be read: {e}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise UserError(f"params={path} is not a regular file; give a JSON file or a PNG")


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of a params file of at most `max_bytes`; a bigger one is a UserError naming the limit."""
    check_regular(path)
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise UserError(f"params={path} cannot be read: {e}") from None
    if len(data) > max_bytes:
        raise UserError(f"params={path} is larger than limits.max_params_bytes={max_bytes}; "
                        "raise it with limits.max_params_bytes=N")
    return data


def parse_json(path: Path, raw: bytes) -> Any:
    """A params file's JSON, or a UserError saying in one line why it is not."""
    try:
        return json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"params={path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise UserError(f"params={path} nests too deeply; a params file is one flat JSON object") from None
    except ValueError as e:  # not UTF-8, or an integer of more than 4300 digits
        raise UserError(f"params={path} cannot be read: {e}") from None


def load_params(path: str | Path, max_bytes: int = LIMITS["max_params_bytes"]) -> dict[str, Any]:
    """Read and type-check a params JSON object (A1111's names too) or an image's own parameters (PNG)."""

    if not isinstance(path, (str, Path)):
        raise UserError(f"params={path!r} must be a file path or null")
    path = Path(path)
    if path.suffix.lower() == ".png":  # Pillow bounds the text chunks it reads
        check_regular(path)
        data = read_png_params(path)
    else:
        data = parse_json(path, read_bounded(path, max_bytes))
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
    bad = [s for s in data.get("seeds", []) if isinstance(s, bool) or not isinstance(s, int)]
    if bad:
        raise UserError(f"params={path}: seeds should be a list of int, not one holding {bad[0]!r}")
    return data


def read_png_params(path: Path) -> dict[str, Any]:
    """The parameters a PNG carries: sdlab's own record, else an image tool's A1111 `parameters` text."""
    from PIL import Image, UnidentifiedImageError


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
