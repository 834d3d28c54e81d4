"""Rendered dataset splits cached as .npy images + JSON captions, and their conversion to tensors."""

from __future__ import annotations

import json
from dataclasses import astuple
from pathlib import Path

import numpy as np
import torch

from sdlab.io import atomic_path, atomic_write_text
from sdlab.mini import data


def cached_set(folder: Path, seed: int, count: int, split: data.Split = "train"):
    """Items 0..count-1 of (seed, split) as data.batch draws them, kept in `folder` so every stage renders them once."""
    stem = Path(folder) / f"images_seed{seed}_{split}_{count}"
    npy, meta = stem.with_suffix(".npy"), stem.with_suffix(".json")
    if npy.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        return np.load(npy), info["captions"], [data.Attributes(*a) for a in info["attributes"]]
    images, captions, attributes = data.batch(seed, 0, count, split)
    with atomic_path(npy) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, images, allow_pickle=False)
    atomic_write_text(meta, json.dumps({"captions": captions, "attributes": [astuple(a) for a in attributes]}))
    return images, captions, attributes


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) images as float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float (N, 3, H, W) images in [-1, 1] as uint8 (N, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def all_captions(split: data.Split = "train") -> list[str]:
    """Every caption of the grammar for the combinations of a split: each combination in every template."""
    return [data.caption(attrs, template) for attrs in data.combinations(split)
            for template in range(len(data.CAPTION_TEMPLATES))]
