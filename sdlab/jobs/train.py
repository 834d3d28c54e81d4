"""The train_mini job: train sdlab-mini's VAE, CLIP and UNet stages (or all in order) from a Hydra recipe."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
import torch

from sdlab.bench.records import identity, ordered, versions
from sdlab.errors import choose
from sdlab.jobs import JobContext, job
from sdlab.mini import data
from sdlab.mini.train_clip import train_clip
from sdlab.mini.train_unet import train_unet
from sdlab.mini.train_vae import train_vae

log = logging.getLogger(__name__)
STAGES = ("vae", "clip", "unet")
EXTRA_STAGES = ("vae_decoder",)  # decoder-only VAE refinement: the latents stay fixed, so it can run beside unet


def run_one(name: str, cfg: dict, root: Path) -> dict:
    """Train one stage from the `train` config; returns its summary row."""

    seed = int(cfg["seed"])
    settings = cfg[name]
    export = Path(cfg["export"]) if cfg.get("export") else None
    images, captions, attributes = data.cached_set(root / "cache", seed=0, count=int(cfg["num_images"]))
    if name in ("vae", "vae_decoder"):
        return train_vae(settings, images, root / name, export, seed)
    if name == "clip":
        return train_clip(settings, images, attributes, root / "clip", export, seed)
    return train_unet(settings, images, attributes, root / "unet", export, seed)


@job("train_mini")
def run_train_mini(ctx: JobContext) -> pd.DataFrame:
    """Train the stage named by `train.stage` (vae, clip, unet, vae_decoder or all); one summary row per stage."""
    cfg = ctx.run.recipe["train"]
    stage = str(cfg["stage"])
    choose("train.stage", stage, STAGES + EXTRA_STAGES + ("all",))
    torch.set_num_threads(int(cfg.get("threads", 2)))
    root = Path(cfg["out"])
    rows = []
    for name in STAGES if stage == "all" else (stage,):
        began = time.monotonic()
        summary = run_one(name, cfg, root)
        rows.append({**identity(ctx, "train_mini"), "device": "cpu",
                     "versions": versions(), "time_total_s": time.monotonic() - began, **summary})
        log.info("stage %s done: %s", name, summary)
    return ordered(rows)
