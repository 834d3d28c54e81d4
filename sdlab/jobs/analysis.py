"""What the analysis jobs share: input images and their tensors, the model's shipped scheduler config, the article line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sdlab.bench.inputs import image_files
from sdlab.bench.worlds import world
from sdlab.config import Run
from sdlab.errors import UserError
from sdlab.jobs.recipes import ImageInput
from sdlab.lazy import torch
from sdlab.metrics.image import cover
from sdlab.models.families import family
from sdlab.models.loading import shipped_scheduler_config
from sdlab.untrusted import check_pixels, image_faults, open_regular


def article_reports(run: Run) -> str:
    """A title's last line saying what the article measured on its own model (`article.reports`), or ""."""
    text = (run.recipe.get("article") or {}).get("reports")
    return f"\nthe article reports {text}" if text else ""


def check_guided(run: Run, scales, key: str) -> None:
    """Refuse scales below 1 on a model that guides by CFG: diffusers runs no guidance there (w = 1's image)."""
    below = [w for w in scales if w < 1]
    if below and family(run.model.family).guidance == "cfg":
        said = f"{', '.join(f'{w:g}' for w in below)} {'are' if len(below) > 1 else 'is'}"
        raise UserError(f"{key}: {said} below 1, where model={run.model.name} runs no classifier-free guidance and "
                        "makes the image of 1; give scales of 1 or more")


def model_scheduler_config(run: Run) -> dict:
    """The scheduler config the run's model ships with, without loading its weights, less diffusers' `_` keys."""
    return {k: v for k, v in shipped_scheduler_config(run.model)[0].items() if not k.startswith("_")}


def read_image(path: Path, width: int, height: int, label: str, max_pixels: int) -> np.ndarray:
    """One image file fitted to width x height; a one-line UserError naming `label` when it cannot be read."""
    with open_regular(path, label, "an image file") as f, image_faults(label, "an image", "an image file"):
        with Image.open(f) as image:
            check_pixels(image, label, max_pixels)
            image.load()
            return cover(image, width, height)


def input_images(source: ImageInput, width: int, height: int, count: int, max_pixels: int
                 ) -> list[tuple[str, np.ndarray, str]]:
    """(name, image, caption) from `images` (caption: the file stem; at most `max_pixels` each), else `count` drawn by
    the `sample_world`."""
    if source.images:
        return [(p.name, read_image(p, width, height, f"images: {p}", max_pixels), p.stem.replace("_", " "))
                for p in image_files(source.images, max_pixels)]
    samples = world(source.sample_world).samples(count, min(width, height), None)
    return [(name, cover(Image.fromarray(image), width, height), text) for name, image, text in samples]


def to_model(images: list[np.ndarray], model) -> torch.Tensor:
    """uint8 HxWx3 images as an NCHW tensor in [-1, 1] on the model's device and VAE dtype."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.to(model.device, model.vae.dtype)


def to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    """NCHW images in [-1, 1] as uint8 HxWx3 arrays (clipped)."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).cpu().numpy())
