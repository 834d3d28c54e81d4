"""Grid jobs: one seed (or a few) across guidance scales, prompts or schedulers, as one labelled grid."""

from __future__ import annotations

import json
import logging
import textwrap
import time
from dataclasses import replace
from typing import Any

import pandas as pd

from sdlab.config import GenerationParams, config_hash, generation_params, scheduler_choice
from sdlab.figures import curves, image_grid
from sdlab.generate import BadOutputError, chunks, generate_batch
from sdlab.jobs import JobContext, job
from sdlab.jobs.analysis import base_row, number_list, pipeline, str_list
from sdlab.metrics.clip import ClipModel, load_clip
from sdlab.models import base_scheduler_config
from sdlab.records import ordered, save_png, versions
from sdlab.schedulers import make_scheduler, resolved_config

log = logging.getLogger(__name__)
TIMING_KEYS = ("time_text_s", "time_unet_s", "time_vae_s", "time_total_s")
HASH_KEYS = ("model", "scheduler_config", "num_inference_steps", "guidance_scale", "prompt", "negative_prompt",
             "width", "height", "eta", "seed")


def scored(clip: ClipModel | None, images, prompts: list[str]) -> tuple[list[float | None], float]:
    """CLIP scores of images against their prompts (None each without a clip model) and the seconds it took."""
    if clip is None:
        return [None] * len(images), 0.0
    start = time.perf_counter()
    scores = clip.clip_score(images, prompts)
    return scores, time.perf_counter() - start


def cell_rows(ctx: JobContext, pipe, spec, clip, params: GenerationParams, cell: dict[str, Any],
              folder: str) -> list[dict]:
    """Generate one grid cell's seeds and return one generate-style row per image (plus clip_score).

    Each row's `overrides` adds the cell's guidance_scale or prompt, as a `-m` sweep of it would, so the run's
    grid.png and a sweep's collected grid label by it; config_hash is the generate job's for the same image.
    """
    swept = {k: str(v) for k, v in cell.items() if k in ("guidance_scale", "prompt", "scheduler")}
    overrides = {**json.loads(ctx.overrides or "{}"), **swept}
    common = {**base_row(ctx, ctx.config["job"], spec), "scheduler": scheduler_choice(ctx.config["scheduler"]).name,
              "scheduler_config": resolved_config(pipe.scheduler), "num_inference_steps": params.num_inference_steps,
              "guidance_scale": params.guidance_scale, "prompt": params.prompt, "negative_prompt": params.negative_prompt,
              "width": params.width, "height": params.height, "eta": params.eta, "device": str(pipe.device),
              "versions": versions(), **cell, "overrides": json.dumps(overrides)}
    rows = []
    for batch in chunks(params.seeds, params.batch_size):
        hashes = [config_hash({**{k: common.get(k) for k in HASH_KEYS}, "seed": s}) for s in batch]
        try:
            result = generate_batch(pipe, spec.key, params, batch)
        except (BadOutputError, RuntimeError, ValueError) as e:
            log.error("%s seeds %s failed: %s", cell, batch, e)
            rows += [{**common, "seed": s, "batch_size": len(batch), "config_hash": h, "status": "error",
                      "error": f"{type(e).__name__}: {e}"} for s, h in zip(batch, hashes)]
            continue
        scores, clip_s = scored(clip, result.images, [params.prompt] * len(batch))
        n = len(batch)
        for image, seed, h, score in zip(result.images, batch, hashes, scores):
            path = f"images/{folder}_seed{seed}.png"
            save_png(image, ctx.out_dir / path, {k: common[k] for k in ("prompt", "negative_prompt", "num_inference_steps",
                     "guidance_scale", "width", "height", "eta", "scheduler", "model")} | {"seed": seed})
            rows.append({**common, "seed": seed, "nfe": result.nfe, "batch_size": n,
                         **{k: getattr(result, k) / n for k in TIMING_KEYS}, "peak_mem_bytes": result.peak_mem_bytes,
                         "image_path": path, "config_hash": h, "clip_score": score, "time_clip_s": clip_s / n})
    return rows


def setup(ctx: JobContext):
    """Pipeline with the configured scheduler, base parameters and the clip model (or None)."""
    pipe, spec = pipeline(ctx)
    choice = scheduler_choice(ctx.config["scheduler"])
    pipe.scheduler = make_scheduler(choice.name, base_scheduler_config(spec), choice.options)
    clip = load_clip(ctx.config.get("clip"), str(pipe.device))
    return pipe, spec, generation_params(ctx.config, spec.resolution), clip


def grid_axes(frame: pd.DataFrame, x_key: str) -> list[str]:
    """x_key across columns, seed down rows when there is more than one."""
    return [x_key] + (["seed"] if frame["seed"].nunique() > 1 else [])


@job("guidance_grid")
def run_guidance_grid(ctx: JobContext) -> pd.DataFrame:
    """The same seed(s) and prompt at each of `guidance_scales`: guidance_grid.png, clip_vs_guidance.png with a clip model."""
    pipe, spec, params, clip = setup(ctx)
    scales = number_list(ctx.config, "guidance_scales")
    rows = []
    for scale in scales:
        cell = replace(params, guidance_scale=scale)
        rows += cell_rows(ctx, pipe, spec, clip, cell, {"guidance_scale": scale}, f"cfg{scale:g}")
    frame = ordered(rows)
    ok = frame[frame["status"] == "ok"]
    image_grid(frame, ctx.out_dir, ctx.out_dir / "guidance_grid.png", axes=grid_axes(frame, "guidance_scale"),
               title=f"{params.prompt[:70]} ({spec.name}, {params.num_inference_steps} steps)")
    if clip is not None and len(ok):
        lines = [{"x": g["guidance_scale"], "y": g["clip_score"], "label": f"seed {seed}", "style": "o-"}
                 for seed, g in ok.groupby("seed")]
        if ok["seed"].nunique() > 1:
            mean = ok.groupby("guidance_scale")["clip_score"].mean()
            lines.append({"x": mean.index, "y": mean.values, "label": "mean", "style": "-", "color": "black"})
        curves([{"lines": lines, "xlabel": "guidance scale w", "ylabel": "CLIP score = 100 max(cos, 0)",
                 "title": f"clip={clip.name}: {params.prompt[:70]}"}], ctx.out_dir / "clip_vs_guidance.png")
    return frame


@job("prompt_grid")
def run_prompt_grid(ctx: JobContext) -> pd.DataFrame:
    """The same seed(s) and settings for each of `prompts`: prompt_grid.png (clip_score per image with a clip model)."""
    pipe, spec, params, clip = setup(ctx)
    prompts = str_list(ctx.config, "prompts")
    rows = []
    for i, prompt in enumerate(prompts):
        label = "\n".join(textwrap.wrap(f"P{i + 1}: {prompt}", 22, max_lines=4, placeholder=" …"))
        cell = replace(params, prompt=prompt)
        rows += cell_rows(ctx, pipe, spec, clip, cell, {"prompt": prompt, "prompt_index": i, "prompt_label": label},
                          f"prompt{i}")
    frame = ordered(rows)
    image_grid(frame, ctx.out_dir, ctx.out_dir / "prompt_grid.png", axes=grid_axes(frame, "prompt_label"))
    return frame


@job("scheduler_grid")
def run_scheduler_grid(ctx: JobContext) -> pd.DataFrame:
    """The same seed(s), prompt and step count under each of `schedulers`: scheduler_grid.png; rows carry nfe and times."""
    pipe, spec, params, clip = setup(ctx)
    rows = []
    for name in str_list(ctx.config, "schedulers"):
        pipe.scheduler = make_scheduler(name, base_scheduler_config(spec))
        rows += cell_rows(ctx, pipe, spec, clip, params, {"scheduler": name}, name)
    frame = ordered(rows)
    image_grid(frame, ctx.out_dir, ctx.out_dir / "scheduler_grid.png", axes=grid_axes(frame, "scheduler"),
               title=f"{params.prompt[:70]} ({spec.name}, {params.num_inference_steps} steps each)")
    return frame
