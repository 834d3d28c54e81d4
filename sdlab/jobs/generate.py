"""The generate job: one PNG and one row per seed, seeds batched `batch_size` at a time."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pandas as pd

from sdlab.config import config_hash, generation_params, model_spec, scheduler_choice
from sdlab.generate import BadOutputError, BatchResult, chunks, generate_batch, truncated_tokens
from sdlab.jobs import JobContext, job
from sdlab.metrics.clip import load_clip
from sdlab.mini.checker import adherence_columns
from sdlab.models import base_scheduler_config, device_of, load_pipeline
from sdlab.records import ordered, save_png, versions, write_table
from sdlab.resume import complete_rows
from sdlab.schedulers import make_scheduler, resolved_config

log = logging.getLogger(__name__)
TIMING_KEYS = ("time_text_s", "time_unet_s", "time_vae_s", "time_total_s")


def cell_hash(base: dict[str, Any], seed: int) -> str:
    """Hash of everything that decides one image: model, scheduler, parameters and its seed."""
    return config_hash({**base, "seed": seed})


@job("generate")
def run_generate(ctx: JobContext) -> pd.DataFrame:
    """Generate the configured seeds and save one PNG (parameters embedded) and one row per image."""
    cfg = ctx.config
    spec = model_spec(cfg["model"])
    choice = scheduler_choice(cfg["scheduler"])
    params = generation_params(cfg, spec.resolution)
    pipe = load_pipeline(spec)
    pipe.scheduler = make_scheduler(choice.name, base_scheduler_config(spec), choice.options)
    device = str(device_of(pipe))
    clip = load_clip(cfg.get("clip"), device=device)
    common = {
        "run_id": ctx.run_id,
        "experiment": ctx.experiment,
        "job": "generate",
        "model": spec.name,
        "scheduler": choice.name,
        "scheduler_config": resolved_config(pipe.scheduler),
        "num_inference_steps": params.num_inference_steps,
        "guidance_scale": params.guidance_scale,
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "width": params.width,
        "height": params.height,
        "eta": params.eta,
        "prompt_truncated_tokens": truncated_tokens(pipe.tokenizer, params.prompt),
        "overrides": ctx.overrides,
        "device": device,
        "versions": versions(),
    }
    if common["prompt_truncated_tokens"]:
        log.warning("prompt is longer than %d tokens: the last %d are dropped", pipe.tokenizer.model_max_length,
                    common["prompt_truncated_tokens"])
    hash_base = hash_fields(common, cfg)
    done = reusable_rows(ctx, hash_base, params.seeds)
    rows_by_seed: dict[int, dict] = {seed: row for seed, row in done.items()}
    if done:
        log.info("resume: %d of %d images already complete", len(done), len(params.seeds))
    todo = tuple(s for s in params.seeds if s not in done)
    batches = list(chunks(todo, params.batch_size))
    for i, batch in enumerate(batches, 1):
        new_rows = batch_rows(ctx, pipe, spec.key, params, batch, common, hash_base, clip)
        rows_by_seed.update({row["seed"]: row for row in new_rows})
        if i < len(batches):  # a kill loses at most one batch; the caller writes the final table
            write_table(ordered(rows_by_seed.values()), ctx.out_dir)
    return ordered(rows_by_seed[s] for s in params.seeds)


def hash_fields(common: dict, cfg: dict) -> dict:
    """What decides an image besides its seed (plus the clip model, which decides clip_score)."""
    keys = ("model", "scheduler_config", "num_inference_steps", "guidance_scale", "prompt", "negative_prompt",
            "width", "height", "eta")
    return {**{k: common[k] for k in keys}, "clip": cfg.get("clip")}


def batch_rows(ctx: JobContext, pipe, model_key: tuple, params, batch: list[int], common: dict, hash_base: dict,
               clip=None, prefix: str = "") -> list[dict]:
    """Generate one batch: saved images and their rows, or one failed row per seed naming the error."""
    try:
        result = generate_batch(pipe, model_key, params, batch, strict=False)
    except (RuntimeError, ValueError) as e:
        log.error("seeds %s failed: %s", batch, e)
        return [failed_row(common, hash_base, s, len(batch), e) for s in batch]
    return image_rows(ctx, common, hash_base, result, clip, prefix)


def failed_row(common: dict, hash_base: dict, seed: int, batch_size: int, error: BaseException) -> dict:
    """The row of an image that could not be made or saved, naming the error."""
    return {**common, "seed": seed, "batch_size": batch_size, "config_hash": cell_hash(hash_base, seed),
            "status": "error", "error": f"{type(error).__name__}: {error}"}


def reusable_rows(ctx: JobContext, hash_base: dict, seeds: tuple[int, ...]) -> dict[int, dict]:
    """Rows of this job's seeds already complete in the run dir with the same cell hash (when resuming)."""
    if not ctx.config.get("resume", True):
        return {}
    previous = complete_rows(ctx.out_dir)
    if previous.empty or "config_hash" not in previous:
        return {}
    by_hash = {row["config_hash"]: row for row in previous.to_dict("records")}
    return {s: by_hash[cell_hash(hash_base, s)] for s in seeds if cell_hash(hash_base, s) in by_hash}


def image_name(prefix: str, seed: int, cell: str) -> str:
    """Where a cell's image goes: its seed and config hash, so two cells of one dir never share a file."""
    return f"images/{prefix}seed{seed}-{cell[:8]}.png"


def describe(overrides: str, seed: int) -> str:
    """The job's overrides and the image's seed as `k=v k=v` for log lines."""
    parsed = {**(json.loads(overrides) if overrides else {}), "seed": seed}
    return " ".join(f"{k}={v}" for k, v in parsed.items())


PNG_KEYS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "width", "height", "eta",
            "scheduler", "model")


def png_record(row: dict, cfg: dict) -> dict:
    """What a PNG carries to regenerate itself with `sdlab params=IMAGE.png`: the row's parameters and the
    scheduler options the run set."""
    options = scheduler_choice(cfg["scheduler"]).options if cfg.get("scheduler") else {}
    return {**{k: row[k] for k in PNG_KEYS}, **({"scheduler_options": options} if options else {})}


def image_rows(ctx: JobContext, common: dict, hash_base: dict, result: BatchResult, clip=None,
               prefix: str = "") -> list[dict]:
    """Save each image of a batch and make its row (clip_score with a clip model); batch timings are shared equally."""
    n = len(result.seeds)
    rows = []
    good = [image for image in result.images if image is not None]
    start = time.perf_counter()
    scores = iter(clip.clip_score(good, [common["prompt"]] * len(good)) if clip and good else [None] * n)
    clip_s = (time.perf_counter() - start) / n if clip else None
    for image, seed in zip(result.images, result.seeds):
        if image is None:
            log.error("%s: %s", describe(ctx.overrides, seed), result.errors[seed])
            rows.append(failed_row(common, hash_base, seed, n, BadOutputError(result.errors[seed])))
            continue
        score = next(scores)
        cell = cell_hash(hash_base, seed)
        relative = image_name(prefix, seed, cell)
        row = {
            **common,
            "seed": seed,
            "nfe": result.nfe,
            "batch_size": n,
            **{k: getattr(result, k) / n for k in TIMING_KEYS},
            "peak_mem_bytes": result.peak_mem_bytes,
            "clip_score": score,
            "time_clip_s": clip_s,
            **adherence_columns(image, common["prompt"]),
            "image_path": relative,
            "config_hash": cell,
            "status": "ok",
            "error": None,
        }
        save_png(image, ctx.out_dir / relative, png_record(row, ctx.config))
        log.info("%s: %.2f s (text %.3f, unet %.2f, vae %.3f), nfe %d", describe(ctx.overrides, seed),
                 row["time_total_s"], row["time_text_s"], row["time_unet_s"], row["time_vae_s"], result.nfe)
        rows.append(row)
    return rows
