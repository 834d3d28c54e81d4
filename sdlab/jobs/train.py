"""The train_mini job: train sdlab-mini's VAE, CLIP and UNet stages (or all in order) from a Hydra recipe."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sdlab.bench.ownership import adopt, checked_folder
from sdlab.bench.records import identity, ordered, versions
from sdlab.config import check_threads
from sdlab.errors import UserError
from sdlab.jobs import JobContext, job, read_recipe
from sdlab.jobs.recipes import EXPORTS, STAGES, Train
from sdlab.lazy import pandas as pd, torch
from sdlab.mini import data
from sdlab.mini.architecture import check_overrides
from sdlab.mini.train_clip import train_clip
from sdlab.mini.train_flow import train_flow
from sdlab.mini.train_unet import train_unet
from sdlab.mini.train_vae import train_vae
from sdlab.models.model_files import check_component_files, check_component_folder

log = logging.getLogger(__name__)
INITIAL = {"vae": "vae", "vae_decoder": "vae", "unet": "unet", "flow": "transformer"}  # what each `init_from` holds


def train_folders(train: Train) -> dict[str, Path]:
    """Where training writes (`train.out`, and `train.export` when set), each refused unless sdlab may write there."""
    given = {"train.out": train.out, **({"train.export": train.export} if train.export else {})}
    return {key: checked_folder(value, key) for key, value in given.items()}


def check_train(run) -> None:
    """Pre-flight: threads, output folders, frozen parts and `init_from` folders, and the architecture overrides."""
    train = read_recipe(run, Train)
    check_threads("train.threads", train.threads, run.limits)
    train_folders(train)
    if train.stage == "unet":
        check_parts("train.export", train.export, ("vae", "text_encoder"), EXPORTS["unet"])
    if train.stage == "flow":
        check_parts("train.flow.frozen_from", train.flow["frozen_from"], ("vae", "clip"),
                    "a trained sdlab-mini folder is needed: its vae/ and clip/")
    for name in STAGES if train.stage == "all" else (train.stage,):
        settings = getattr(train, name)
        if name == "clip":
            for tower in ("text", "vision"):
                check_overrides(tower, settings.get(tower), f"train.clip.{tower}")
        elif init_from := settings.get("init_from"):
            check_component_folder(Path(str(init_from)).expanduser(), f"train.{name}.init_from={init_from}",
                                   INITIAL[name])
            if settings.get("architecture"):
                raise UserError(f"train.{name}.architecture is not used with train.{name}.init_from (a model read "
                                "from a folder keeps its own config); give one of them")
        else:
            check_overrides(INITIAL[name], settings.get("architecture"), f"train.{name}.architecture")


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


@job("train_mini", check=check_train)
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
