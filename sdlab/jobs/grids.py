"""Grid jobs: one seed (or a few) across guidance scales, prompts or schedulers, as one labelled grid."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from itertools import combinations
from typing import Any

import numpy as np
from PIL import Image

from sdlab.bench.captions import counted, short_prompt, span
from sdlab.bench.figures import curves, image_strip
from sdlab.bench.grid import image_grid
from sdlab.bench.plan import hash_fields
from sdlab.bench.records import ordered
from sdlab.bench.scorers import build_scorers, identities, score_images
from sdlab.config import GenerationParams
from sdlab.jobs import JobContext, Solves, job, own, read_recipe
from sdlab.jobs.analysis import article_reports, check_guided
from sdlab.jobs.generate import batch_rows, job_columns
from sdlab.jobs.recipes import GuidanceGrid, SchedulerGrid
from sdlab.lazy import pandas as pd
from sdlab.metrics.image import background_distance, layout_correlation, psnr
from sdlab.metrics.stats import MIN_N, finite, mean_ci, summarize_ci
from sdlab.models.generate import chunks, generate_batch
from sdlab.models.loading import load_model
from sdlab.models.schedulers import SCHEDULERS

BACKGROUND_ALIKE = 0.15  # border colours closer than this (RGB in [0, 1]) count as the same background
CONVERGED_DB = 30.0  # many-step solves this close to the reference (PSNR) reach the same image to the eye


def cell_rows(ctx: JobContext, model, scorers, params: GenerationParams, cell: dict[str, Any],
              folder: str) -> list[dict]:
    """One generate row per seed of a grid cell; `overrides` gains the cell's value as a `-m` sweep of it would."""
    swept = {k: str(v) for k, v in cell.items() if k in ("guidance_scale", "prompt", "scheduler")}
    overrides = {**json.loads(ctx.overrides or "{}"), **swept}
    common = {**job_columns(ctx, model, params), **cell, "overrides": json.dumps(overrides)}
    hash_base = hash_fields({**common, "model_options": ctx.run.model.image_options}, identities(scorers))
    return [row for batch in chunks(params.seeds, params.batch_size)
            for row in batch_rows(ctx, model, params, batch, common, hash_base, scorers, prefix=f"{folder}_")]


def setup(ctx: JobContext):
    """Pipeline with the configured scheduler, base parameters and the configured scorers."""
    spec = ctx.run.model
    model = load_model(spec)
    model.use_scheduler(ctx.run.scheduler.name, ctx.run.scheduler.options)
    return model, spec, ctx.run.params, build_scorers(ctx.run.recipe, str(model.device))


def drawn_mark(followed) -> str:
    """The shapes checker's word on one image, as its cell says it ("" where it did not judge)."""
    return "" if followed is None or pd.isna(followed) else "prompt drawn" if followed else "NOT the prompt"


def marked_grid(ctx: JobContext, frame: pd.DataFrame, name: str, x_key: str, title: str) -> None:
    """Grid `name`: x_key across, seed down, "NOT the prompt" under each image the shapes checker judged off it."""
    misses = [drawn_mark(a) * (not a) for a in frame.get("adherence_all", [True] * len(frame))]
    image_grid(frame.assign(miss=misses), ctx.out_dir, ctx.out_dir / name, axes=[x_key, "seed"], title=title,
               note="miss")


@job("guidance_grid",
     check=lambda run: check_guided(run, read_recipe(run, GuidanceGrid).guidance_scales, "guidance_scales"),
     work=lambda run, g: [own(run, len(run.params.seeds) * len(g.guidance_scales))])
def run_guidance_grid(ctx: JobContext) -> pd.DataFrame:
    """The same seed(s) and prompt at each of `guidance_scales`: guidance_grid.png (and clip_vs_guidance.png)."""
    model, spec, params, scorers = setup(ctx)
    frame = ordered([row for w in map(float, ctx.recipe.guidance_scales) for row in cell_rows(
        ctx, model, scorers, replace(params, guidance_scale=w), {"guidance_scale": w}, f"cfg{w:g}")])
    panels, claim = guidance_panels(frame[frame["status"] == "ok"])
    steps = counted(params.num_inference_steps, "step")
    title = "\n".join(filter(None, [f"{short_prompt(params.prompt)} ({spec.name}, {steps})", claim]))
    title += article_reports(ctx.run)
    marked_grid(ctx, frame, "guidance_grid.png", "guidance_scale", title)
    if panels:
        curves(panels, ctx.out_dir / "clip_vs_guidance.png", title=title)
    return frame


def guidance_panels(ok: pd.DataFrame) -> tuple[list[dict], str]:
    """Panels of CLIP score and adherence against w (per seed, mean, 95% interval), and a claim of the paired change."""
    metrics = [m for m in ("clip_score", "adherence_all") if m in ok and ok[m].notna().any()]
    if not metrics:
        return [], ""
    summary = summarize_ci(ok, ["guidance_scale"], metrics)  # sorted by w
    scales = summary["guidance_scale"].to_numpy()
    if len(scales) == 1:  # a grid of one column: a curve of one point and a change from w to itself say nothing
        said = {"clip_score": "CLIP score {:.1f}", "adherence_all": "prompt followed by {:.0%} of images"}
        seeds = counted(ok["seed"].nunique(), "seed")
        return [], (f"at w={scales[0]:g}: {', '.join(said[m].format(ok[m].mean()) for m in metrics)} (n={seeds})"
                    "\none guidance scale: nothing to compare; give two or more guidance_scales")
    panels, claims, rises, peaks = [], [], [], []
    untested = {}  # metric -> seeds paired, too few for an interval
    for metric in metrics:
        percent = metric == "adherence_all"
        name = "prompt followed" if percent else "CLIP score"
        factor, unit, digits = (100.0, "%", 0) if percent else (1.0, "", 1)
        by_seed = ok.pivot_table(index="seed", columns="guidance_scale", values=metric)
        change = (by_seed[scales[-1]] - by_seed[scales[0]]).to_numpy(dtype=float) * factor
        d, lo, hi = mean_ci(change, bounds=(-100.0, 100.0))
        rises += [metric] if lo > 0 else []
        untested.update({metric: finite(change).size} if np.isnan(lo) else {})
        if percent and ok[metric].nunique() == 1:  # a flat line at 0 or 100% is a sentence, not a panel
            claims.append(f"prompt {'followed' if ok[metric].iloc[0] else 'missed'} by all {counted(len(ok), 'image')}")
            continue
        mean, low, high = (summary[f"{metric}_{part}"].to_numpy(dtype=float) * factor for part in ("mean", "lo", "hi"))
        lines = [] if percent else [
            {"x": g["guidance_scale"], "y": g[metric], "style": "-", "color": "0.75",
             "label": f"one line per seed ({ok['seed'].nunique()})" if i == 0 else None}
            for i, (_, g) in enumerate(ok.groupby("seed"))]
        lines.append({"x": scales, "y": mean, "label": f"mean of {counted(ok['seed'].nunique(), 'seed')}",
                      "style": "o-", "color": "black"})
        bands = [{"x": scales, "low": low, "high": high, "label": "95% interval", "color": "C0"}]
        # a score's axis spans at least 10 points, so that a small change looks small, with room beyond the ends
        centre, drawn = float(np.nanmean(mean)), np.concatenate([mean, low, high, ok[metric] * factor])
        bottom, top = min(np.nanmin(drawn), centre - 5), max(np.nanmax(drawn), centre + 5)
        room = 0.05 * (top - bottom)
        panels.append({"lines": lines, "bands": bands if np.isfinite(low).any() else [], "xlabel": "guidance scale w",
                       "ylim": None if percent else (bottom - room, top + room),
                       "ylabel": "prompt followed (% of images)" if percent else "CLIP score = 100 max(cos, 0)"})
        at = [f"{mean[i]:.{digits}f}{unit} at w={scales[i]:g}" for i in (0, len(scales) - 1)]
        best = int(np.nanargmax(mean))
        top = f"{mean[best]:.{digits}f}{unit}"  # a peak inside the range that the last scale falls from
        peaks += [f"{name} peaks at w={scales[best]:g} ({top}) and falls to {at[1]}"] * (
            0 < best and not at[1].startswith(f"{top} "))
        paired = "" if lo == hi == 0 or not np.isfinite(lo) else (
            f": change {d:+.{digits}f} (paired 95% CI {lo:+.{digits}f} to {hi:+.{digits}f}; lower in "
            f"{int((change < 0).sum())} of {counted(len(change), 'seed')})")
        claims.append(f"{name} {at[0]} -> {at[1]}{paired}")
    nouns = {"clip_score": "CLIP score", "adherence_all": "prompt following"}
    span, tested = f"w={scales[0]:g} -> {scales[-1]:g}", [m for m in metrics if m not in untested]
    seeds = max(untested.values(), default=0)
    verdict = "\n".join(filter(None, [", but ".join(filter(None, [
        f"{span} raises {' and '.join(nouns[m] for m in rises)} here" if rises else
        f"{span} does not raise {' or '.join(nouns[m] for m in tested)} here (no paired 95% CI above 0)"
        if tested else "", " and ".join(peaks)])),
        f"not tested whether {span} raises {' or '.join(nouns[m] for m in untested)}\n"
        f"({counted(seeds, 'seed')}; a paired 95% interval needs {MIN_N})" if untested else ""]))
    return panels, "\n".join(claims) + f" (n={counted(ok['seed'].nunique(), 'seed')})\n{verdict}"


@job("prompt_grid", work=lambda run, g: [own(run, len(run.params.seeds) * len(g.prompts))])
def run_prompt_grid(ctx: JobContext) -> pd.DataFrame:
    """The same seed(s) and settings for each of `prompts`: prompt_grid.png (clip_score per image with a clip model)."""
    model, spec, params, scorers = setup(ctx)
    prompts = ctx.recipe.prompts
    rows = []
    for i, prompt in enumerate(prompts):
        label = "\n".join(textwrap.wrap(f"P{i + 1}: {prompt}", 22, max_lines=4, placeholder=" …"))
        cell = {"prompt": prompt, "prompt_index": i, "prompt_label": label}
        rows += cell_rows(ctx, model, scorers, replace(params, prompt=prompt), cell, f"prompt{i}")
    frame, seeds = ordered(rows), params.seeds
    ok = frame[frame["status"] == "ok"]
    title = (f"{counted(len(prompts), 'prompt')} from the same seed {seeds[0] if len(seeds) == 1 else 'in each row'}"
             f", w={params.guidance_scale:g}")
    if "adherence_all" in ok and ok["adherence_all"].notna().any():
        title += f": {int(ok['adherence_all'].sum())}/{len(ok)} images draw their prompt (shapes checker)"
    if len(prompts) > 1 and len(seeds) > 1:
        frame, layout = with_seed_layout(ctx, frame)
        title += f"\n{layout}"
    marked_grid(ctx, frame, "prompt_grid.png", "prompt_label", title + article_reports(ctx.run))
    return frame


def with_seed_layout(ctx: JobContext, frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Does the seed carry the composition (layout correlation) and the background? Columns and a title."""
    ok = frame[frame["status"] == "ok"]
    images = {row.Index: np.asarray(Image.open(ctx.out_dir / row.image_path)) for row in ok.itertuples()}
    pairs: dict[bool, list[float]] = {True: [], False: []}
    alike: dict[bool, list[bool]] = {True: [], False: []}  # same background: same seed (other subject), or same subject
    for a, b in combinations(ok.itertuples(), 2):
        if a.prompt != b.prompt:
            pairs[a.seed == b.seed].append(layout_correlation(images[a.Index], images[b.Index]))
        if (a.prompt == b.prompt) != (a.seed == b.seed):
            alike[a.seed == b.seed].append(background_distance(images[a.Index], images[b.Index]) < BACKGROUND_ALIKE)
    same, other, by_seed, by_subject = (float(np.mean(v)) if v else np.nan for v in (*pairs.values(), *alike.values()))
    frame = frame.assign(layout_r_same_seed=same, layout_r_other_seed=other, background_alike_same_seed=by_seed,
                         background_alike_same_subject=by_subject)
    follows = "the subject word, not the seed" if by_subject > by_seed else "the seed"
    keeps = layout_claim(pairs[True], pairs[False])
    return frame, "\n".join([
        f"{keeps}: layout correlation {same:.2f} between two subjects from one seed "
        f"(n={counted(len(pairs[True]), 'pair')}), {other:.2f} between two subjects from two seeds "
        f"(n={counted(len(pairs[False]), 'pair')}) (brightness, the mean of R, G and B, on an 8x8 grid)",
        f"background alike in {sum(alike[True])}/{len(alike[True])} same-seed, {sum(alike[False])}/{len(alike[False])} "
        f"same-subject pairs: it follows {follows}"])


def layout_claim(same: list[float], other: list[float]) -> str:
    """Whether layouts of one seed correlate more than of two: only a mean difference beyond 2 standard errors (Welch)
    says so either way."""
    if min(len(same), len(other)) < 2:
        return "too few pairs to tell whether the seed keeps the layout"
    difference = float(np.mean(same) - np.mean(other))
    margin = 2 * float(np.sqrt(np.var(same, ddof=1) / len(same) + np.var(other, ddof=1) / len(other)))
    if abs(difference) <= margin:
        return (f"whether the seed keeps the layout is within the noise at this n ({difference:+.2f} +- {margin:.2f}, "
                "2 standard errors)")
    return "the seed keeps the layout" if difference > 0 else "the seed does not keep the layout"


def scheduler_grid_work(run, grid: SchedulerGrid) -> Solves:
    """Each sampler's images at the run's steps, and the reference's and each sampler's many-step solves."""
    seeds, steps = len(run.params.seeds), run.params.num_inference_steps
    solves = dict.fromkeys([grid.reference_scheduler, *grid.schedulers]) if grid.reference_steps else ()
    return [(name, steps, seeds) for name in grid.schedulers] + [(name, grid.reference_steps, seeds) for name in solves]


@job("scheduler_grid", work=scheduler_grid_work)
def run_scheduler_grid(ctx: JobContext) -> pd.DataFrame:
    """The same seed(s), prompt and steps under each of `schedulers`: scheduler_grid.png (`with_reference_distance`)."""
    model, spec, params, scorers = setup(ctx)
    rows, recipe = [], ctx.recipe
    for name in recipe.schedulers:
        model.use_scheduler(name, ctx.run.scheduler.options)
        rows += cell_rows(ctx, model, scorers, params, {"scheduler": name}, name)
    frame = ordered(rows)
    if recipe.reference_steps:
        return with_reference_distance(ctx, model, recipe, params, frame, scorers)
    marked_grid(ctx, frame, "scheduler_grid.png", "scheduler",
                f"{short_prompt(params.prompt)} ({spec.name}, {counted(params.num_inference_steps, 'step')} each)")
    return frame


def lead(interval: dict[str, tuple[float, float, float]]) -> str:
    """Whether the sampler of highest mean PSNR leads all beyond their 95% intervals (mean, lo, hi per sampler)."""
    means = [m for m, _, _ in interval.values()]
    top, gap = max(interval, key=lambda s: interval[s][0]), f"{max(means) - min(means):.1f} dB between means"
    few = [s for s, (_, lo, _) in interval.items() if np.isnan(lo)]
    if few:
        return f"too few seeds for an interval{'' if len(few) == len(interval) else ' for ' + ', '.join(few)} ({gap})"
    if all(interval[top][1] > hi for s, (_, _, hi) in interval.items() if s != top):
        return f"{top} ahead beyond the seed-to-seed noise"
    return f"the intervals overlap ({gap}), no sampler ahead"


def with_reference_distance(ctx: JobContext, model, recipe: SchedulerGrid, params: GenerationParams,
                            frame: pd.DataFrame, scorers) -> pd.DataFrame:
    """Each image's PSNR to the reference solve of its seed, and each sampler's own many-step solve against it."""
    name, steps = recipe.reference_scheduler, recipe.reference_steps
    many = replace(params, num_inference_steps=steps)
    solves = {}
    for scheduler in dict.fromkeys([name, *recipe.schedulers]):
        model.use_scheduler(scheduler, ctx.run.scheduler.options)
        solves[scheduler] = generate_batch(model, many, list(params.seeds))
    reference = solves[name]
    truth = {seed: np.asarray(image) for seed, image in zip(reference.seeds, reference.images)}
    converged = {(scheduler, seed): psnr(truth[seed], np.asarray(image)) for scheduler, solve in solves.items()
                 if scheduler != name for seed, image in zip(solve.seeds, solve.images)}
    drawn = {seed: row.get("adherence_all") for seed, row in
             zip(reference.seeds, score_images(scorers, reference.images, [params.prompt] * len(reference.seeds)))}
    images = {row.Index: np.asarray(Image.open(ctx.out_dir / row.image_path)) for row in frame.itertuples()
              if row.status == "ok"}
    frame = frame.assign(psnr_to_reference=[psnr(truth[r.seed], images[r.Index]) if r.Index in images else np.nan
                                            for r in frame.itertuples()], reference=f"{name} x {steps} steps",
                         own_solve_psnr_to_reference=[converged.get((r.scheduler, r.seed), np.inf)
                                                      for r in frame.itertuples()])
    interval = {s: mean_ci(group["psnr_to_reference"]) for s, group in frame.groupby("scheduler", sort=False)}
    frame["scheduler_label"] = [f"{s}: {interval[s][0]:.1f} dB PSNR" for s in frame["scheduler"]]
    mark = lambda ok: f"\n{drawn_mark(ok)}".rstrip()  # noqa: E731
    strip, labels, best = [], [], []
    for seed, group in frame.groupby("seed", sort=False):
        strip.append([truth[seed]] + [images.get(i, np.zeros_like(truth[seed])) for i in group.index])
        labels.append([f"reference {name} x {steps}{mark(drawn[seed])}"] + [
            f"{r.scheduler}: {r.psnr_to_reference:.1f} dB{mark(getattr(r, 'adherence_all', None))}"
            for r in group.itertuples()])
        best.append(f"{seed} {group.loc[group['psnr_to_reference'].idxmax(), 'scheduler']}")
    winners = {b.split()[1] for b in best}
    shown = lambda lo, hi: "" if np.isnan(lo) else f" [{lo:.1f}, {hi:.1f}]"  # noqa: E731
    lines = [f"{params.prompt!r} at {counted(params.num_inference_steps, 'step')}: PSNR to the {name} x "
             f"{steps}-step solve, mean [95% interval] over {counted(len(strip), 'seed')}:",
             ", ".join(f"{s} {m:.1f}{shown(lo, hi)}" for s, (m, lo, hi) in interval.items()) + " dB: " + lead(interval),
             f"closest per seed: {', '.join(best)}: the ranking "
             + ("flips between seeds" if len(winners) > 1 else "holds on every seed")]
    noisy = list(dict.fromkeys(s for s, _ in converged if SCHEDULERS[s].stochastic))  # need not reach one image
    own = {flag: [v for (s, _), v in converged.items() if (s in noisy) == flag] for flag in (True, False)}
    if own[False]:
        lines.append(f"the reference favours none: each deterministic sampler's own {steps}-step solve is "
                     f"{span(own[False])} dB from it" if min(own[False]) >= CONVERGED_DB else
                     f"each deterministic sampler's own {steps}-step solve is {span(own[False])} dB from the "
                     "reference: they do not converge to one image, so the reference favours its own sampler")
    if noisy:
        lines.append(f"left out as stochastic (fresh noise each step): {', '.join(noisy)}, own {steps}-step solve "
                     f"{span(own[True])} dB from the reference")
    if "adherence_all" in frame:
        drawn_by = frame.groupby("scheduler", sort=False)["adherence_all"].agg(lambda a: f"{int(a.sum())}/{len(a)}")
        lines.append("prompt drawn (shapes checker): " + ", ".join(f"{s} {v}" for s, v in drawn_by.items())
                     + f", reference {sum(bool(v) for v in drawn.values())}/{len(drawn)}")
    image_strip(strip, ctx.out_dir / "scheduler_grid.png", col_labels=labels, row_labels=[f"seed {b.split()[0]}"
                for b in best], title="\n".join(lines), cell_inches=1.9)
    return frame


@job("same_params", work=lambda run, _: [own(run, 2 * len(run.params.seeds))])
def run_same_params(ctx: JobContext) -> pd.DataFrame:
    """Each seed's parameters generated in two calls: both images and their difference a row (same_params.png)."""
    model, spec, params, scorers = setup(ctx)
    frame = ordered([row for i in (1, 2) for row in cell_rows(ctx, model, scorers, params, {"call": i}, f"call{i}")])
    calls = {seed: frame[frame["seed"] == seed].sort_values("call") for seed in params.seeds}
    compared = [seed for seed, rows in calls.items() if (rows["status"] == "ok").all()]
    if not compared:  # nothing to draw: the rows say why
        return frame
    missing = [f"seed {seed} not compared: call {' and '.join(map(str, failed['call']))} failed ({failed['error'].iloc[0]})"
               for seed, rows in calls.items() if seed not in compared for failed in [rows[rows["status"] != "ok"]]]
    pairs = [[np.asarray(Image.open(ctx.out_dir / path).convert("RGB"), dtype=np.int16)
              for path in calls[seed]["image_path"]] for seed in compared]
    diffs = [np.abs(first - second) for first, second in pairs]
    most = max(int(diff.max()) for diff in diffs)
    differ = sum(int((diff > 0).any(axis=-1).sum()) for diff in diffs)
    verdict = "bit-identical" if most == 0 else f"{differ} pixels differ"
    p, seeds = params, "seed" if len(params.seeds) == 1 else "seeds"
    image_strip([[first.astype(np.uint8), second.astype(np.uint8), (diff * (255 // max(most, 1))).astype(np.uint8)]
                 for (first, second), diff in zip(pairs, diffs)],
                ctx.out_dir / "same_params.png", col_labels=["call 1", "call 2", f"|call 1 - call 2|, max {most}"],
                row_labels=[f"seed {seed}" for seed in compared] if len(p.seeds) > 1 else (),
                title="\n".join([f"the same parameters give the same image: max |difference| {most} of 255 "
                                  f"({verdict})", f"prompt {p.prompt!r}, negative {p.negative_prompt!r}", f"{seeds} "
                                  f"{', '.join(map(str, p.seeds))}, {counted(p.num_inference_steps, 'step')}, cfg "
                                  f"{p.guidance_scale:g}, {p.width}x{p.height}, {ctx.run.scheduler.name}", *missing])
                + article_reports(ctx.run), cell_inches=2.2)
    return frame
