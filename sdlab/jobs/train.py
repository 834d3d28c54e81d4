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
from sdlab.config import POSITIVE, SEED_RULE, Field, check_fields, check_threads, checked
from sdlab.errors import UserError, choose
from sdlab.jobs import JobContext, job, read_recipe
from sdlab.mini import data
from sdlab.mini.train_clip import train_clip
from sdlab.mini.train_flow import train_flow
from sdlab.mini.train_unet import train_unet
from sdlab.mini.train_vae import train_vae
from sdlab.models.model_files import check_component_files, check_component_folder

log = logging.getLogger(__name__)
STAGES = ("vae", "clip", "unet")
EXTRA_STAGES = ("vae_decoder",  # decoder-only VAE refinement: the latents stay fixed, so it can run beside unet
                "flow")  # mini_flow's transformer on mini's frozen parts (experiment=train_mini_flow)
# Each stage's keys as sdlab.mini reads them, checked before training; `steps`, `batch_size` and `lr` have no default.
NEEDED = ("steps", "batch_size", "lr")
LOOP_RULES = {"steps": Field("int", 1), "batch_size": Field("int", 1),
              "lr": Field("number", 1e-12, 1, rule="a number in (0, 1]"), "warmup": Field("int", 0),
              "weight_decay": Field("number", 0, 1), "checkpoint_every": Field("int", 1),
              "ema_decay": Field("number", 0, 1 - 1e-12, rule="a number in [0, 1)"),
              "max_minutes": Field("number", 0, 1e6, optional=True), "clip": Field("number", 1e-6, 1e6),
              "init_from": Field("str", optional=True)}
WEIGHT = Field("number", 0, 1e6)
VAE_RULES = {**LOOP_RULES, "kl_weight": WEIGHT, "l1_weight": WEIGHT, "foreground_weight": WEIGHT,
             "latent_rgb_weight": WEIGHT, "eval_images": Field("int", 1, 100_000), "scale_images": Field("int", 1),
             "decoder_only": Field("bool", plain=True), "sample_posterior": Field("bool", plain=True)}
CAPTION_RULES = {"uncond_probability": Field("number", 0, 1), "caption_noise": Field("number", 0, 1),
                 "partial_captions": Field("number", 0, 1)}
UNET_RULES = {**LOOP_RULES, **CAPTION_RULES, "snr_gamma": Field("number", 1e-6, 1e6, optional=True)}
FLOW_RULES = {**LOOP_RULES, **CAPTION_RULES, "frozen_from": Field("str"), "shift": Field("number", 0.01, 100),
              "logit_mean": Field("number", -5, 5), "logit_std": Field("number", 0.01, 10)}
STAGE_RULES = {"vae": VAE_RULES, "vae_decoder": VAE_RULES, "clip": LOOP_RULES, "unet": UNET_RULES, "flow": FLOW_RULES}
EXPORTS = {"unet": "the unet stage reads the trained vae/ and text_encoder/ from it",
           "flow": "the flow stage writes its SD3 folder into it"}
INITIAL = {"vae": "vae", "vae_decoder": "vae", "unet": "unet", "flow": "transformer"}  # what each `init_from` holds


@dataclass(frozen=True)
class Train:
    """The `train:` block: the stage (or all), seed, threads, folders, images, each stage's settings (sdlab.mini's)."""

    block = "train"
    stage: str = MISSING
    seed: int = checked(MISSING, **SEED_RULE)
    out: str = checked(MISSING, "str", plain=False)
    num_images: int = checked(MISSING, "int", 1, 1_000_000, plain=False)
    threads: int = checked(2, **POSITIVE)
    export: str | None = checked(None, "str", plain=False, optional=True)
    vae: dict[str, Any] | None = None
    clip: dict[str, Any] | None = None
    unet: dict[str, Any] | None = None
    vae_decoder: dict[str, Any] | None = None
    flow: dict[str, Any] | None = None

    def __post_init__(self):
        choose("train.stage", str(self.stage), STAGES + EXTRA_STAGES + ("all",))
        for name in STAGES if self.stage == "all" else (self.stage,):
            settings = getattr(self, name)
            if not isinstance(settings, dict):
                hint = ": use experiment=train_mini_flow" if name == "flow" else ""
                raise UserError(f"train.stage={self.stage} needs a train.{name} block{hint}")
            if missing := [key for key in NEEDED if key not in settings]:
                raise UserError(f"train.{name}.{missing[0]} is missing: each stage sets {', '.join(NEEDED)}")
            check_fields(settings, STAGE_RULES[name], f"train.{name}.")
            if name in EXPORTS and not self.export:
                raise UserError(f"train.stage={self.stage} needs train.export: {EXPORTS[name]}")
        if self.stage == "flow":
            patch = (self.flow.get("architecture") or {}).get("patch_size", 1)
            Field("choice", choices=(1, 2)).check("train.flow.architecture.patch_size", patch)


def train_folders(train: Train) -> dict[str, Path]:
    """Where training writes (`train.out`, and `train.export` when set), each refused unless sdlab may write there."""
    given = {"train.out": train.out, **({"train.export": train.export} if train.export else {})}
    return {key: checked_folder(value, key) for key, value in given.items()}


def check_train(run) -> None:
    """Pre-flight: threads within the limits, output folders sdlab's, `init_from` and frozen parts as safetensors."""
    train = read_recipe(run, Train)
    check_threads("train.threads", train.threads, run.limits)
    train_folders(train)
    for name in STAGES if train.stage == "all" else (train.stage,):
        if name in INITIAL and (init_from := getattr(train, name).get("init_from")):
            check_component_folder(Path(str(init_from)).expanduser(), f"train.{name}.init_from={init_from}",
                                   INITIAL[name])
    if train.stage == "unet":
        check_parts("train.export", train.export, ("vae", "text_encoder"), EXPORTS["unet"])
    if train.stage == "flow":
        check_parts("train.flow.frozen_from", train.flow["frozen_from"], ("vae", "clip"),
                    "a trained sdlab-mini folder is needed: its vae/ and clip/")


def check_parts(key: str, folder: str, parts: tuple[str, ...], why: str) -> None:
    """Pre-flight: `folder` holds each of the trained `parts` (config.json, safetensors), else one line naming which."""
    if missing := [part for part in parts if not (Path(str(folder)).expanduser() / part / "config.json").is_file()]:
        raise UserError(f"{key}={folder} has no {' or '.join(part + '/' for part in missing)} ({why})")
    for part in parts:
        check_component_files(Path(str(folder)).expanduser() / part)


def run_one(name: str, train: Train, root: Path) -> dict:
    """Train one stage; returns its summary row."""
    seed, settings = int(train.seed), getattr(train, name)
    export = Path(train.export) if train.export else None
    images, _, attributes = data.cached_set(root / "cache", seed=0, count=int(train.num_images))
    if name in ("vae", "vae_decoder"):
        return train_vae(settings, images, root / name, export, seed)
    trainer = {"clip": train_clip, "flow": train_flow, "unet": train_unet}[name]
    return trainer(settings, images, attributes, root / name, export, seed)


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
