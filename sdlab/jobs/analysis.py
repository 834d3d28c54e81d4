"""Helpers the analysis jobs share: base row, model and scheduler config, input images, VAE encode/decode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sdlab.bench.inputs import image_files
from sdlab.bench.recipe_fields import Field
from sdlab.bench.worlds import world
from sdlab.config import ModelSpec, model_spec
from sdlab.errors import UserError
from sdlab.jobs import JobContext
from sdlab.models.loading import load_model, shipped_scheduler_config


def article_reports(ctx: JobContext) -> str:
    """A title's last line saying what the article measured on its own model (`article.reports`), or ""."""
    text = (ctx.config.get("article") or {}).get("reports")
    return f"\nthe article reports {text}" if text else ""


def loaded_model(ctx: JobContext):
    """The configured model's adapter (cached per process) and its ModelSpec."""

    spec = model_spec(ctx.config["model"])
    return load_model(spec), spec


def model_scheduler_config(spec: ModelSpec) -> dict[str, Any]:
    """The scheduler config a model ships with, without loading its weights, less diffusers' `_` bookkeeping keys."""

    return {k: v for k, v in shipped_scheduler_config(spec)[0].items() if not k.startswith("_")}


def str_list(cfg: dict, key: str) -> list[str]:
    """A config key that must be a non-empty list of strings (a single string counts as one)."""
    value = cfg.get(key)
    if isinstance(value, str):
        value = [value]
    if not value or not all(isinstance(v, str) for v in value):
        raise UserError(f"{key}={value!r} must be a non-empty list of strings, e.g. {key}='[a red circle,a blue square]'")
    return list(value)


def number_list(cfg: dict, key: str, integer: bool = False, low: float | None = None,
                high: float | None = None) -> list:
    """A config key that must be a non-empty list of numbers (a single number counts as one), each in [low, high]."""
    value = cfg.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    ok = bool(value) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or (integer and not all(float(v).is_integer() for v in value)):
        kind = "integers" if integer else "numbers"
        raise UserError(f"{key}={value!r} must be a non-empty list of {kind}, e.g. {key}=[1,2,3]")
    out = [int(v) for v in value] if integer else [float(v) for v in value]
    bounds = Field("numbers", low, high)
    if not bounds.fits(out):
        raise UserError(f"{key}={value!r} must be {bounds.allowed()}")
    return out


def fit(image: Image.Image, width: int, height: int) -> np.ndarray:
    """Resize to cover width x height (bicubic), centre crop, as uint8 RGB."""
    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.BICUBIC)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)))


def read_image(path: Path, width: int, height: int) -> np.ndarray:
    """One image file fitted to width x height; a one-line UserError naming the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return fit(image, width, height)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        reason = "not an image" if isinstance(e, UnidentifiedImageError) else str(e).splitlines()[0]
        raise UserError(f"cannot read image {path}: {reason}") from None


def input_images(cfg: dict, width: int, height: int, count: int) -> list[tuple[str, np.ndarray, str]]:
    """(name, image, caption) from `images` (folder or files; caption = file stem), else `count` images of the
    `sample_world` drawn at min(width, height) and fitted."""
    if cfg.get("images"):
        return [(p.name, read_image(p, width, height), p.stem.replace("_", " ")) for p in image_files(cfg["images"])]
    samples = world(cfg.get("sample_world")).samples(count, min(width, height), None)
    return [(name, fit(Image.fromarray(image), width, height), text) for name, image, text in samples]


def image_size(cfg: dict, spec: ModelSpec) -> tuple[int, int]:
    """(width, height) from the config, the model's resolution when null; multiples of 8."""
    width, height = cfg.get("width") or spec.resolution, cfg.get("height") or spec.resolution
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or value <= 0 or value % 8:
            raise UserError(f"{name}={value} must be a positive multiple of 8")
    return width, height


def to_model(images: list[np.ndarray], model) -> torch.Tensor:
    """uint8 HxWx3 images as an NCHW tensor in [-1, 1] on the model's device and VAE dtype."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.to(model.device, model.vae.dtype)


def to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    """NCHW images in [-1, 1] as uint8 HxWx3 arrays (clipped)."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).cpu().numpy())


def encode(model, x: torch.Tensor) -> torch.Tensor:
    """The model's latents z = scaling_factor · (mean of q(z | x) - shift_factor)."""
    return model.encode_image(x)


def decode(model, z: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from the model's latents."""
    return model.decode(z)
