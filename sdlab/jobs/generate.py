"""The generate job: one PNG and one row per seed, seeds batched `batch_size` at a time."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sdlab.bench.captions import settings_text
from sdlab.bench.plan import call_cells, cell_hash, hash_fields, shared_call
from sdlab.bench.records import (identity, image_relative, ordered, read_table, rows, save_png, versions,
                                 write_table)
from sdlab.bench.resume import complete_rows, set_aside_damaged, sweep_cells, weights_of
from sdlab.bench.scorers import Scorer, build_scorers, identities, score_images
from sdlab.config import IMAGE_PARAMS, Run, config_hash, image_params
from sdlab.jobs import JobContext, job
from sdlab.lazy import pandas as pd
from sdlab.models.generate import BatchResult, chunks, generate_batch, truncated_tokens
from sdlab.models.loading import load_model
from sdlab.models.schedulers import resolved_config
from sdlab.models.text_tokenizers import truncation_warnings

log = logging.getLogger(__name__)
TIMING_KEYS = ("time_text_s", "time_unet_s", "time_vae_s", "time_total_s")
NOT_SAVED = "image not saved: "


def make_ahead(runs: list[Run], sweep_dir: Path) -> list[int]:
    """The indices of `runs` whose cells (sharing the first's call, up to its batch size) one call made ahead."""
    first, key = runs[0], shared_call(runs[0])
    model = load_model(first.model)
    model.use_scheduler(first.scheduler.name, first.scheduler.options)
    if first.threads is not None:
        torch.set_num_threads(first.threads)
    done = set(sweep_cells(sweep_dir, sweep_dir, first.weights)) if first.resume else set()
    covered, cells = call_cells(first.params.batch_size, ((i, images_to_make(run, model, done))
                                                          for i, run in enumerate(runs) if shared_call(run) == key))
    if len(cells) > 1:
        try:
            result = generate_batch(model, first.params, [seed for _, seed, _, _ in cells], strict=False,
                                    requests=[params for params, _, _, _ in cells])
        except (RuntimeError, ValueError) as e:
            log.warning("a shared call of %d images failed (%s: %s); each cell makes its own", len(cells),
                        type(e).__name__, e)
            return covered or [0]
        try:
            result = scored(result, [scorers for *_, scorers in cells], [p.prompt for p, *_ in cells])
        except (RuntimeError, ValueError, OSError) as e:  # each job scores its own image
            log.debug("scoring a shared call failed: %s: %s", type(e).__name__, e)
        model.made.update({cell: result.cell(i) for i, (_, _, cell, _) in enumerate(cells)})
    return covered or [0]


def images_to_make(run: Run, model, done: set[str]) -> list[tuple]:
    """(params, seed, cell hash, scorers) of each image of the run neither `done` nor made ahead already."""
    scorers = build_scorers(run.recipe, str(model.device))
    base = hash_fields({"model": run.model.name, "model_options": run.model.image_options,
                        "scheduler": run.scheduler.name, "scheduler_config": resolved_config(model.scheduler),
                        **image_params(run.params)}, identities(scorers))
    return [(run.params, seed, cell, scorers) for seed in run.params.seeds
            if (cell := cell_hash(base, seed)) not in done and cell not in model.made]


def scored(result: BatchResult, scorers: list[list[Scorer]], prompts: list[str]) -> BatchResult:
    """The call's result with each good image scored by its own cell's `scorers`, cells of equal scorers together."""
    groups: dict[str, list[int]] = {}
    for i, image in enumerate(result.images):
        if image is not None:
            groups.setdefault(config_hash(identities(scorers[i])), []).append(i)
    columns: dict[int, dict] = {}
    for members in groups.values():
        columns.update(zip(members, score_images(scorers[members[0]], [result.images[i] for i in members],
                                                 [prompts[i] for i in members])))
    return replace(result, scores=[columns.get(i) for i in range(len(result.images))])


@job("generate", ahead=make_ahead)
def run_generate(ctx: JobContext) -> pd.DataFrame:
    """Generate the configured seeds and save one PNG (parameters embedded) and one row per image."""
    spec, choice, params = ctx.run.model, ctx.run.scheduler, ctx.run.params
    model = load_model(spec)
    model.use_scheduler(choice.name, choice.options)
    scorers = build_scorers(ctx.run.recipe, str(model.device))
    common = {**job_columns(ctx, model, params),
              "prompt_truncated_tokens": truncated_tokens(model.tokenizer, params.prompt)}
    for warning in truncation_warnings(model, params.prompt):
        log.warning("%s", warning)
    hash_base = hash_fields({**common, "model_options": spec.image_options}, identities(scorers))
    cells = {seed: cell_hash(hash_base, seed) for seed in params.seeds}
    table, order, elsewhere = previous_cells(ctx, set(cells.values()), set(model.made))
    ctx.elsewhere = {h: job.name for h, job in elsewhere.items()}  # its finished mark says where they are
    todo = tuple(s for s in params.seeds if cells[s] not in table and cells[s] not in elsewhere)
    if len(todo) < len(params.seeds):
        where = sorted({p.name for p in elsewhere.values()})
        log.info("resume: %d of %d images already complete%s", len(params.seeds) - len(todo), len(params.seeds),
                 f" (some in sweep job dirs {', '.join(where)})" if where else "")
    stopped = None
    batches = chunks(todo, params.batch_size)
    for i, batch in enumerate(batches, 1):
        new_rows = batch_rows(ctx, model, params, batch, common, hash_base, scorers)
        table.update({row["config_hash"]: row for row in new_rows})
        # an image that could not be saved: no later image can be either
        stopped = next((row["error"] for row in new_rows if str(row.get("error")).startswith(NOT_SAVED)), None)
        if stopped or i == len(batches):
            break
        try:  # a kill loses at most one batch; the caller writes the final table
            write_table(in_order(table, order), ctx.out_dir)
        except OSError as e:
            stopped = f"{type(e).__name__}: {e}"
            break
    if stopped:
        rest = [s for s in todo if cells[s] not in table]
        log.error("stopped: %s; %d image(s) not attempted", stopped, len(rest))
        table.update({cells[s]: failed_row(common, hash_base, s, None, f"not attempted: {stopped}") for s in rest})
    return in_order(table, order)


def job_columns(ctx: JobContext, model, params) -> dict[str, Any]:
    """The columns every image row of an image-making job shares: identity, weights, scheduler, parameters, device."""
    run = ctx.run
    return {**identity(ctx, run.job, run.model.name), "weights": run.weights, "scheduler": run.scheduler.name,
            "scheduler_config": resolved_config(model.scheduler), **image_params(params), "device": str(model.device),
            "versions": versions()}


def previous_cells(ctx: JobContext, wanted: set[str], made: set[str] = frozenset()) -> tuple[
        dict[str, dict], list[str], dict[str, Path]]:
    """Finished rows here by hash, their order, and wanted cells done in other job dirs (redone if resume=false or
    made from other weights than the model's, or its CLIP's, now)."""
    previous = read_table(ctx.out_dir)  # the rows a previous run left (from the CSV twin or the images if damaged)
    table, order = {}, []
    if previous is not None and "config_hash" in previous:
        table = {row["config_hash"]: row for row in rows(complete_rows(ctx.out_dir, previous))}
        set_aside_damaged(ctx.out_dir, [row for row in rows(previous) if row["config_hash"] not in table])
        order = list(previous["config_hash"])
    redo = wanted if not ctx.run.resume else {h for h in wanted & set(table) if weights_of(table[h]) != ctx.run.weights}
    table = {h: row for h, row in table.items() if h not in redo}
    if not ctx.run.resume:
        return table, order, {}
    if redo:
        log.info("resume: %d image(s) here were made from weights that changed since (model=%s or the CLIP that scores "
                 "it): made again", len(redo), ctx.run.model.name)
    sweep_dir, looking = ctx.extra.get("sweep_dir"), wanted - made - set(table)
    elsewhere = sweep_cells(Path(sweep_dir), ctx.out_dir, ctx.run.weights) if sweep_dir and looking else {}
    return table, order, {h: job for h, job in elsewhere.items() if h in looking}


def in_order(table: dict[str, dict], order: list[str]) -> pd.DataFrame:
    """Rows in the order of the previous table, new cells after it in the order they were made."""
    rank = {h: i for i, h in reversed(list(enumerate(order)))}
    return ordered(sorted(table.values(), key=lambda row: rank.get(row["config_hash"], len(rank))))


def batch_rows(ctx: JobContext, model, params, batch: list[int], common: dict, hash_base: dict,
               scorers: list[Scorer] = (), prefix: str = "") -> list[dict]:
    """Generate one batch (taking images `make_ahead` made): saved images' rows, or a failed row per seed."""
    made = [model.made.pop(cell_hash(hash_base, s), None) for s in batch]
    rows = [row for result in made if result is not None
            for row in image_rows(ctx, common, hash_base, result, scorers, prefix)]
    batch = [s for s, result in zip(batch, made) if result is None]
    if not batch:
        return rows
    try:
        result = generate_batch(model, params, batch, strict=False)
    except (RuntimeError, ValueError) as e:
        log.error("seeds %s failed: %s", batch, e)
        return rows + [failed_row(common, hash_base, s, len(batch), f"{type(e).__name__}: {e}") for s in batch]
    return rows + image_rows(ctx, common, hash_base, result, scorers, prefix)


def failed_row(common: dict, hash_base: dict, seed: int, batch_size: int | None, error: str) -> dict:
    """The row of an image that could not be made or saved, naming the error."""
    return {**common, "seed": seed, "overrides": own_overrides(common["overrides"], seed), "batch_size": batch_size,
            "config_hash": cell_hash(hash_base, seed), "status": "error", "error": error}


def own_overrides(overrides: str, seed: int) -> str:
    """The job's overrides as one image's: a `seeds=[...]` list becomes this image's `seed`."""
    parsed = json.loads(overrides) if overrides else {}
    if "seeds" in parsed:
        parsed = {k: v for k, v in parsed.items() if k not in ("seeds", "seed")} | {"seed": str(seed)}
    return json.dumps(parsed)


def describe(ctx: JobContext, overrides: str, seed: int) -> str:
    """An image's cell as `k=v k=v` for log lines (in a sweep, the varying overrides), after the sweep's progress."""
    fixed = set(json.loads(ctx.overrides or "{}")) - set(ctx.extra.get("axes", json.loads(ctx.overrides or "{}")))
    parsed = {k: v for k, v in json.loads(own_overrides(overrides, seed)).items() if k not in fixed} | {"seed": seed}
    progress = f"[{ctx.extra['progress']}] " if "progress" in ctx.extra else ""
    return progress + settings_text(parsed)


PNG_KEYS = (*IMAGE_PARAMS, "seed", "scheduler", "model")  # what a PNG carries to regenerate itself (`params=`)


def image_rows(ctx: JobContext, common: dict, hash_base: dict, result: BatchResult, scorers: list[Scorer] = (),
               prefix: str = "") -> list[dict]:
    """Save each image of a batch and make its row with the scorers' columns; batch timings are shared equally."""
    n = result.size or len(result.seeds)
    rows = []
    good = [image for image in result.images if image is not None]
    scores = iter([score for score in result.scores if score is not None] if result.scores is not None else
                  score_images(scorers, good, [common["prompt"]] * len(good)))
    for i, (image, seed) in enumerate(zip(result.images, result.seeds)):
        if image is None:
            log.error("%s: %s", describe(ctx, common["overrides"], seed), result.errors[i])
            rows.append(failed_row(common, hash_base, seed, n, f"BadOutputError: {result.errors[i]}"))
            continue
        cell = cell_hash(hash_base, seed)
        relative = image_relative(seed, cell, prefix)
        row = {**common, "seed": seed, "overrides": own_overrides(common["overrides"], seed), "nfe": result.nfe,
               "batch_size": n, "call_id": result.call, **{k: getattr(result, k) / n for k in TIMING_KEYS},
               "peak_mem_bytes": result.peak_mem_bytes, **next(scores), "image_path": relative, "config_hash": cell,
               "status": "ok", "error": None}
        options = ctx.run.scheduler.options
        try:
            save_png(image, ctx.out_dir / relative, {**{k: row[k] for k in PNG_KEYS},
                                                     **({"scheduler_options": options} if options else {})}, row=row)
        except OSError as e:
            log.error("%s: image not saved: %s", describe(ctx, common["overrides"], seed), e)
            rows.append(failed_row(common, hash_base, seed, n, f"{NOT_SAVED}{type(e).__name__}: {e}"))
            continue
        log.info("%s: %.2f s (text %.3f, unet %.2f, vae %.3f), nfe %d", describe(ctx, common["overrides"], seed),
                 row["time_total_s"], row["time_text_s"], row["time_unet_s"], row["time_vae_s"], result.nfe)
        rows.append(row)
    return rows
