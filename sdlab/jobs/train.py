"""The train_mini job: train sdlab-mini's VAE, CLIP and UNet stages (or all in order) from a Hydra recipe."""

from __future__ import annotations

import logging
import time
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sdlab.bench.ownership import adopt, checked_folder
from sdlab.bench.records import identity, ordered, versions
from sdlab.config import Field, check_fields
from sdlab.errors import UserError, choose
from sdlab.jobs import JobContext, job, read_recipe
from sdlab.mini import data
from sdlab.mini.train_clip import train_clip
from sdlab.mini.train_flow import train_flow
from sdlab.mini.train_unet import train_unet
from sdlab.mini.train_vae import train_vae

log = logging.getLogger(__name__)
STAGES = ("vae", "clip", "unet")
EXTRA_STAGES = ("vae_decoder",  # decoder-only VAE refinement: the latents stay fixed, so it can run beside unet
                "flow")  # mini_flow's transformer on mini's frozen parts (experiment=train_mini_flow)
# The flow stage's own keys (the rest are the loop's, as in unet); checked before anything is trained.
FLOW_RULES = {"frozen_from": Field("str"), "shift": Field("number", 0.01, 100), "logit_mean": Field("number", -5, 5),
              "logit_std": Field("number", 0.01, 10), "caption_noise": Field("number", 0, 1),
              "partial_captions": Field("number", 0, 1), "uncond_probability": Field("number", 0, 1)}


@dataclass(frozen=True)
class Train:
    """The `train:` block: which stage (or all in order), the seed, threads, where to write and export, how many
    training images, and each stage's own settings (read by sdlab.mini)."""

    block = "train"
    stage: str = MISSING
    seed: int = MISSING
    out: str = MISSING
    num_images: int = MISSING
    threads: int = 2
    export: str | None = None
    vae: dict[str, Any] | None = None
    clip: dict[str, Any] | None = None
    unet: dict[str, Any] | None = None
    vae_decoder: dict[str, Any] | None = None
    flow: dict[str, Any] | None = None

    def __post_init__(self):
        choose("train.stage", str(self.stage), STAGES + EXTRA_STAGES + ("all",))
        if self.stage == "flow":
            if not isinstance(self.flow, dict):
                raise UserError("train.stage=flow needs a train.flow block: use experiment=train_mini_flow")
            check_fields(dict(self.flow), FLOW_RULES, "train.flow.")
            patch = (self.flow.get("architecture") or {}).get("patch_size", 1)
            Field("choice", choices=(1, 2)).check("train.flow.architecture.patch_size", patch)


def train_folders(train: Train) -> dict[str, Path]:
    """Where training writes (`train.out`, and `train.export` when set), each refused unless sdlab may write there."""
    given = {"train.out": train.out, **({"train.export": train.export} if train.export else {})}
    return {key: checked_folder(value, key) for key, value in given.items()}


def check_train(run) -> None:
    """Pre-flight: the output folders are sdlab's, and the flow stage's frozen parts are there."""
    train = read_recipe(run, Train)
    train_folders(train)
    if train.stage == "flow":
        frozen = Path(str(train.flow["frozen_from"])).expanduser()
        missing = [part for part in ("vae", "clip") if not (frozen / part / "config.json").is_file()]
        if missing:
            raise UserError(f"train.flow.frozen_from={train.flow['frozen_from']} has no {' or '.join(missing)}/ "
                            f"(a trained sdlab-mini folder is needed: its vae/ and clip/)")


def run_one(name: str, train: Train, root: Path) -> dict:
    """Train one stage; returns its summary row."""
    seed, settings = int(train.seed), getattr(train, name)
    export = Path(train.export) if train.export else None
    images, captions, attributes = data.cached_set(root / "cache", seed=0, count=int(train.num_images))
    if name in ("vae", "vae_decoder"):
        return train_vae(settings, images, root / name, export, seed)
    if name == "clip":
        return train_clip(settings, images, attributes, root / "clip", export, seed)
    if name == "flow":
        return train_flow(settings, images, attributes, root / "flow", export, seed)
    return train_unet(settings, images, attributes, root / "unet", export, seed)


@job("train_mini", Train, check=check_train)
def run_train_mini(ctx: JobContext) -> pd.DataFrame:
    """Train the stage named by `train.stage` (vae, clip, unet, vae_decoder, flow or all); one summary row per stage."""
    train = ctx.recipe
    for folder in train_folders(train).values():  # marked as sdlab's: a later run may resume and export there
        adopt(folder)
    torch.set_num_threads(int(train.threads))
    root = Path(train.out)
    rows = []
    for name in STAGES if train.stage == "all" else (str(train.stage),):
        began = time.monotonic()
        summary = run_one(name, train, root)
        rows.append({**identity(ctx, "train_mini"), "device": "cpu",
                     "versions": versions(), "time_total_s": time.monotonic() - began, **summary})
        log.info("stage %s done: %s", name, summary)
    return ordered(rows)
