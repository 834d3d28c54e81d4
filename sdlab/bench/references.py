"""Reference sets of the set scorers: real images, rendered per prompt by the model's prompt world or read from
`reference=DIR`, whose features are cached by what decides them (one `.npy` per set, which rows name by key)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from sdlab.bench.worlds import world
from sdlab.config import Field, config_hash
from sdlab.errors import UserError
from sdlab.io import atomic_path
from sdlab.models.clip import clip_weights
from sdlab.untrusted import check_whole, image_faults, open_regular

SUFFIXES = (".png", ".jpg", ".jpeg")
SEED = 0  # what a world leaves open in a prompt is drawn from this seed: every run compares with the same images
KEY = re.compile(r"[0-9a-f]{16}")  # a config_hash
COUNT = Field("int", 1, 100_000, plain=True)  # FID's customary 50,000 fit; a typo's 10**8 renders would fill memory


def cache_dir() -> Path:
    """The folder sdlab caches reference features in."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "sdlab" / "references"


def reference_files(folder: Any) -> list[Path]:
    """The PNG and JPEG files of `reference=DIR`, sorted; one error line when it is no folder or has none."""
    path = Path(os.path.expanduser(str(folder)))
    if not path.is_dir():
        what = " is a file, not a folder" if path.exists() else ": no such folder"
        raise UserError(f"reference={folder}{what}; give a folder of PNG/JPEG images, or reference=null "
                        "to render them from the model's prompt world")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    if not files:
        raise UserError(f"reference={folder}: no PNG/JPEG images in the folder")
    return files


def read_image(path: Path, width: int, height: int, pixels: bool = True) -> np.ndarray | None:
    """One reference image as HxWx3 uint8 (without `pixels`, only checked whole), refused in one line unless a whole
    regular PNG/JPEG file of width x height (its size checked before its pixels are decoded)."""
    label, what = f"reference image {path}", "a PNG or JPEG file"
    with (open_regular(path, label, what) as f, image_faults(label, "a readable PNG or JPEG image", what),
          Image.open(f, formats=["PNG", "JPEG"]) as image):
        if image.size != (width, height):
            raise UserError(f"{label} is {image.size[0]}x{image.size[1]} px, the generated images {width}x{height}; "
                            "give references of the generated size")
        if pixels:
            return np.asarray(image.convert("RGB"))
        check_whole(image, f)
        return None


def check_reference(cfg: dict, width: int, height: int, needed: dict[str, int]) -> None:
    """The reference set `needed` (scorer -> least images) exists, is big enough and fits: else one error line."""
    count = COUNT.check("reference_count", cfg.get("reference_count"))
    if cfg.get("reference") is not None and not isinstance(cfg["reference"], str):
        raise UserError(f"reference={cfg['reference']!r} must be a folder of PNG/JPEG images or null")
    if not needed:
        return
    name, least = max(needed.items(), key=lambda item: item[1])
    if cfg.get("reference") is not None:
        files = reference_files(cfg["reference"])
        if min(len(files), count) < least:
            raise UserError(f"reference={cfg['reference']} has {len(files)} images (reference_count={count}); "
                            f"scorer {name} needs at least {least}")
        for path in files[:count]:
            read_image(path, width, height, pixels=False)
        return
    model = cfg.get("model") or {}
    if not model.get("prompt_grammar"):
        raise UserError(f"scorer {name} needs real images: model={model.get('name')} names no prompt world to render "
                        "them from; give reference=DIR of PNG/JPEG images")
    if width != height:
        raise UserError(f"scorer {name}: the {model['prompt_grammar']} world renders square references; "
                        f"width={width} height={height} differ")
    if count < least:
        raise UserError(f"reference_count={count} is too small: scorer {name} needs at least {least}")
    if not world(model["prompt_grammar"], "model.prompt_grammar").references(str(cfg.get("prompt")), 1, width, SEED):
        raise UserError(f"prompt={cfg.get('prompt')!r} names nothing the {model['prompt_grammar']} world renders, so "
                        "it has no reference images; give reference=DIR")


def reference_key(cfg: dict, prompt: str, side: tuple[int, int], extractor: str,
                  embed: Callable[[list], np.ndarray]) -> str:
    """The key of a prompt's reference set under `extractor`, its features computed with `embed` and cached first."""
    count, folder, grammar = int(cfg["reference_count"]), cfg.get("reference"), cfg["model"].get("prompt_grammar")
    files = reference_files(folder)[:count] if folder is not None else []
    source = ([(str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in files] if folder is not None
              else [(grammar, prompt, SEED)])
    key = config_hash({"source": source, "count": count, "side": list(side), "features": extractor,
                       "weights": clip_weights(cfg.get("clip"))})  # a retrained extractor: computed again
    target = cache_dir() / f"{key}.npy"
    if not target.is_file():
        images = ([read_image(p, *side) for p in files] if folder is not None
                  else world(grammar, "model.prompt_grammar").references(prompt, count, side[0], SEED))
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(embed(images), dtype=np.float32), allow_pickle=False)
    return key


def reference_features(key: Any) -> np.ndarray | None:
    """A cached reference set's features, or None when not cached or `key` (read from a table) is no key sdlab makes."""
    target = cache_dir() / f"{key}.npy"
    if not (isinstance(key, str) and KEY.fullmatch(key) and target.is_file()):
        return None
    try:
        return np.load(target, allow_pickle=False)
    except (OSError, ValueError):
        return None
