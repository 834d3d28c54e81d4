"""KID and FD of each cell's images against real images of the same prompts, on CLIP features: FID vs w and NFE."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from sdlab.bench.captions import counted
from sdlab.bench.figures import PALETTE, curves
from sdlab.bench.records import identity, ordered
from sdlab.bench.worlds import world
from sdlab.config import Run
from sdlab.errors import UserError
from sdlab.jobs import JobContext, job, read_recipe
from sdlab.jobs.analysis import check_guided
from sdlab.jobs.compare import Progress
from sdlab.jobs.recipes import DistanceStudy
from sdlab.lazy import pandas as pd
from sdlab.metrics.distribution import clip_cmmd, frechet_distance, kid, precision_recall
from sdlab.models.clip import load_clip
from sdlab.models.generate import chunks, generate_batch
from sdlab.models.loading import load_model
from sdlab.models.schedulers import SCHEDULERS

log = logging.getLogger(__name__)
FLOOR_SEED = 1  # a second draw of real images, as many as one cell generates: the distance of a perfect generator
WHY_KID = "KID is unbiased at any n, FD is biased upward at small n (see real vs real)"
PANEL = (8.0, 3.2)  # inches: wide enough for the claim lines
NFE_PANEL = (8.0, 4.4)  # and tall enough for a symlog axis's two-line label


def check_study(run: Run) -> None:
    """A CLIP model gives the features, and the `sample_world` renders real images of every prompt."""
    study = read_recipe(run, DistanceStudy)
    check_guided(run, study.guidance_scales, "distance.guidance_scales")
    if (run.recipe.get("clip") or {}).get("name") in (None, "none"):
        raise UserError("job distribution_distance compares CLIP image features: pick clip=mini or clip=openai_l14")
    source = world(run.recipe.get("sample_world"))
    for prompt in study.prompts:
        if not source.references(prompt, 1, 8, 0):
            raise UserError(f"distance.prompts: {prompt!r} names nothing the {run.recipe.get('sample_world')} world "
                            f"draws, so it has no real images; e.g. {source.example!r}")


def embed(clip, images: list) -> np.ndarray:
    """CLIP image embeddings of `images`, 64 at a time."""
    return np.concatenate([clip.image_embeddings(part) for part in chunks(images, 64)])


def distances(generated: np.ndarray, real: np.ndarray, study: DistanceStudy) -> dict:
    """KID (over subsets of half the images), FD with its bootstrap sd, CMMD, precision and recall."""
    # the bootstrap resamples' mean sits above FD (duplicates shrink the covariance): only their spread is used
    n = len(generated)
    rng = np.random.default_rng(0)
    resampled = [frechet_distance(generated[rng.integers(n, size=n)], real) for _ in range(study.bootstrap)]
    mean, sd = kid(generated, real, subsets=study.kid_subsets, subset_size=n // 2)
    precision, recall = precision_recall(generated, real)
    return {"n": n, "n_reference": len(real), "kid": mean, "kid_sd": sd, "fd": frechet_distance(generated, real),
            "fd_sd": float(np.std(resampled)),
            "cmmd": clip_cmmd(generated, real), "precision": precision, "recall": recall}


@job("distribution_distance", check=check_study, work=lambda run, study: [
    (name, steps, study.images * len(study.prompts) * len(study.guidance_scales))
    for name in study.schedulers for steps in study.steps])
def run_distance(ctx: JobContext) -> pd.DataFrame:
    """A row per cell with its distances to the real images; distance_vs_guidance.png and distance_vs_nfe.png."""
    run, study = ctx.run, ctx.recipe
    params, seeds = run.params, list(range(study.images))
    clip, source = load_clip(run.recipe.get("clip")), world(run.recipe.get("sample_world"))
    side = min(params.width, params.height)
    # 1. the real images: the reference set, and a second draw of one cell's size (the floor at this n)
    real = embed(clip, [im for p in study.prompts for im in source.references(p, study.references, side, 0)])
    floor = distances(embed(clip, [im for p in study.prompts
                                   for im in source.references(p, study.images, side, FLOOR_SEED)]), real, study)
    features = f"{clip.name} CLIP image embeddings (d={real.shape[1]})"
    # 2. every cell: the same seeds of every prompt, embedded and compared with the real images
    model = load_model(run.model)
    model.quiet()
    cells = [(name, steps, w) for name in study.schedulers for steps in study.steps for w in study.guidance_scales]
    progress, rows = Progress(sum(steps for _, steps, _ in cells)), []
    for name, steps, w in cells:
        progress.step(f"{name} x {counted(steps, 'step')} at w={w:g}: {counted(len(seeds), 'seed')} x "
                      f"{counted(len(study.prompts), 'prompt')}", steps)
        model.use_scheduler(name, run.scheduler.options)
        images, seconds, nfe = [], 0.0, 0
        for prompt in study.prompts:
            for batch in chunks(tuple(seeds), params.batch_size):
                cell = replace(params, prompt=prompt, guidance_scale=w, num_inference_steps=steps, seeds=tuple(batch))
                result = generate_batch(model, cell, batch)
                images, seconds, nfe = images + result.images, seconds + result.time_total_s, result.nfe
        rows.append({**identity(ctx, "distribution_distance", run.model.name), "scheduler": name,
                     "stochastic": SCHEDULERS[name].stochastic, "num_inference_steps": steps, "nfe": nfe,
                     "guidance_scale": w, "prompts": " | ".join(study.prompts), "features": features,
                     **distances(embed(clip, images), real, study),
                     **{f"{k}_real_vs_real": floor[k] for k in ("kid", "fd")}, "time_total_s": seconds / len(images)})
    frame = ordered(rows)
    if len(study.guidance_scales) > 1:
        guidance_figure(frame, ctx.out_dir / "distance_vs_guidance.png", run.model.name)
    if len(study.steps) > 1:
        nfe_figure(frame, ctx.out_dir / "distance_vs_nfe.png", run.model.name)
    if len(study.guidance_scales) == len(study.steps) == 1:
        log.warning("no figure: one guidance scale (%g) and one step count (%d) give nothing to draw a distance against; "
                    "give two or more distance.guidance_scales or distance.steps", *study.guidance_scales, *study.steps)
    return frame


def panels(frame: pd.DataFrame, x: str, label, xlabel: str) -> list[dict]:
    """KID and FD against `x`, +- 1 sd bands, a line per `label(row)`, the real-vs-real floor dotted (symlog by NFE)."""
    out = []
    for metric, ylabel in (("kid", "KID (lower: closer to real)"), ("fd", "FD (Fréchet distance)")):
        lines, bands = [], []
        for i, (name, part) in enumerate(frame.assign(group=frame.apply(label, axis=1)).groupby("group", sort=False)):
            part, color = part.sort_values(x), PALETTE[i % len(PALETTE)]
            lines.append({"x": part[x], "y": part[metric], "label": name, "color": color,
                          "style": "o--" if part["stochastic"].iloc[0] else "o-"})
            bands.append({"x": part[x], "low": part[metric] - part[f"{metric}_sd"],
                          "high": part[metric] + part[f"{metric}_sd"], "color": color})
        floor = frame[f"{metric}_real_vs_real"].iloc[0]
        lowest = min(floor, (frame[metric] - frame[f"{metric}_sd"]).min())
        lines.append({"x": [frame[x].min(), frame[x].max()], "y": [floor, floor], "style": ":", "color": "0.4",
                      "label": f"real vs real, same n: {floor:.3g}"})
        band = "over subsets of n/2 images" if metric == "kid" else "over bootstrap resamples of the images"
        top = (frame[metric] + frame[f"{metric}_sd"]).max()
        scale = symlog([line["y"].iloc[-1] for line in lines[:-1]], lowest, top) if x == "nfe" else {}
        out.append({"lines": lines, "bands": bands, "xlabel": xlabel, "ylabel": ylabel, "logx": x == "nfe",
                    "ylim": (lowest - 0.1 * abs(lowest) - 0.05, None),
                    "title": f"{metric.upper()} to real images (band: +- 1 sd {band})", **scale})
    return out


def symlog(lasts: list[float], low: float, top: float) -> dict:
    """A symlog axis linear up to a 1-2-5 number past twice the curves' last values (and a thousandth of the farthest
    value: unbiased KIDs may end at or below 0), ticked through that band and out to past `low` and `top`."""
    wanted = max(2 * max(abs(v) for v in lasts), max(abs(low), abs(top)) / 1000, 1e-12)
    decade = 10.0 ** np.floor(np.log10(wanted))
    linthresh = next(m * decade for m in (1, 2, 5, 10) if m * decade >= wanted)
    band = [k * linthresh / 5 for k in range(-5, 6) if k * linthresh / 5 > low - linthresh / 5]
    ticks = [*(-t for t in reversed(outward(linthresh, -low))), *band, *outward(linthresh, top)]
    return {"symlog": linthresh, "linscale": 3.0, "yticks": (ticks, [f"{t:g}" for t in ticks])}


def outward(linthresh: float, reach: float) -> list[float]:
    """Ticks past `linthresh` up to the first at or past `reach`: 1-2-5 steps, or where those are more than 3 (too close
    for their labels) the decades and that first."""
    if reach <= linthresh:
        return []
    decades = int(np.ceil(np.log10(reach / linthresh) - 1e-9))
    steps = [linthresh * m * 10.0 ** k for k in range(decades) for m in (2, 5, 10)]
    steps = steps[:next(i for i, t in enumerate(steps) if t >= reach * (1 - 1e-9)) + 1]
    return steps if len(steps) <= 3 else [*steps[2:-1:3], steps[-1]]


def about(frame: pd.DataFrame, model: str) -> str:
    """The title lines that say what was compared: n, the references, the features, and why KID leads."""
    row = frame.iloc[0]
    prompts = len(row["prompts"].split(" | "))
    return (f"{model}: n = {counted(row['n'], 'image')} per point ({counted(prompts, 'prompt')} x "
            f"{counted(row['n'] // prompts, 'seed')}) against {counted(row['n_reference'], 'real image')} of the same "
            f"prompts;\nfeatures: {row['features']}; {WHY_KID}")


def guidance_figure(frame: pd.DataFrame, target, model: str) -> None:
    """Distance against guidance scale: each curve's minimum and whether it stands clear of both ends (a U shape)."""
    claims, points = [], []
    for (name, steps), part in frame.groupby(["scheduler", "num_inference_steps"], sort=False):
        part = part.sort_values("guidance_scale")
        w, kid_mean, sd = (part[c].to_numpy(dtype=float) for c in ("guidance_scale", "kid", "kid_sd"))
        best, fd_best = int(np.argmin(kid_mean)), part["guidance_scale"].iloc[int(np.argmin(part["fd"]))]
        ends = [f"w = {w[end]:g} ({kid_mean[end]:.3g} +- {sd[end]:.2g})" for end in (0, len(w) - 1)]
        clear = [kid_mean[best] + sd[best] < kid_mean[end] - sd[end] for end in (0, len(w) - 1)]
        shape = ("two guidance scales cannot show a U: give three or more" if len(w) < 3 else
                 f"no U on {model}: lowest at an end" if best in (0, len(w) - 1) else
                 "U-shaped: higher beyond +- 1 sd at both ends" if all(clear) else
                 "within the noise of both ends: no U resolved at this n" if not any(clear) else
                 f"higher beyond +- 1 sd at {ends[clear.index(True)]}, within the noise at {ends[clear.index(False)]}: "
                 "half a U at this n")
        claims.append(f"{name} x {counted(steps, 'step')}: KID lowest at w = {w[best]:g} "
                      f"({kid_mean[best]:.3g} +- {sd[best]:.2g}), "
                      f"FD lowest at w = {fd_best:g};\n{shape}")
        points.append({"x": [w[best]], "y": [kid_mean[best]], "marker": "v", "color": "black", "size": 40,
                       "notes": [f"min at w = {w[best]:g}"]})
    drawn = panels(frame, "guidance_scale", lambda r: f"{r['scheduler']} x {counted(r['num_inference_steps'], 'step')}",
                   "guidance scale w")
    drawn[0]["points"] = points
    curves(drawn, target, title=";\n".join([*claims, about(frame, model)]), panel_inches=PANEL)


def nfe_figure(frame: pd.DataFrame, target, model: str) -> None:
    """Distance against NFE: the fewest NFE reaching what every deterministic scheduler reaches, and where it falls."""
    several_w = frame["guidance_scale"].nunique() > 1
    label = lambda r: f"{r['scheduler']}, w = {r['guidance_scale']:g}" if several_w else r["scheduler"]  # noqa: E731
    groups = {name: part.sort_values("nfe") for name, part in frame.groupby(frame.apply(label, axis=1), sort=False)}
    deterministic = {name: part for name, part in groups.items() if not part["stochastic"].iloc[0]}
    worst = max(deterministic, key=lambda name: deterministic[name]["kid"].iloc[-1], default=None)
    target_kid = deterministic[worst]["kid"].iloc[-1] if worst else np.nan
    whose = (f": {worst}'s own at {counted(deterministic[worst]['num_inference_steps'].iloc[-1], 'step')}, "
             "the highest any ends at") if worst else ""
    first = {name: part.loc[part["kid"] <= target_kid, "nfe"].min() for name, part in groups.items()}
    reached = sorted((nfe, name) for name, nfe in first.items() if np.isfinite(nfe))
    falls = sum(part["kid"].iloc[-1] + part["kid_sd"].iloc[-1] < part["kid"].iloc[0] - part["kid_sd"].iloc[0]
                for part in deterministic.values())
    near = frame.loc[(frame["kid"] - target_kid).abs().nsmallest(len(groups)).index, "kid_sd"].median()
    title = (f"fewest NFE to KID <= {target_kid:.3g} (every deterministic scheduler gets there{whose}): "
             + ", ".join(f"{name} {nfe:g}" for nfe, name in reached) + f" (KID sd near it: {near:.2g});"
             + f"\nKID falls from fewest to most NFE (beyond +- 1 sd) for {falls} of {len(deterministic)} deterministic "
             f"schedulers{' (dashed: stochastic)' * bool(frame['stochastic'].any())}; "
             f"w = {', '.join(f'{w:g}' for w in frame['guidance_scale'].unique())};\n")
    drawn = panels(frame, "nfe", label, "denoiser evaluations (NFE, log scale)")
    drawn[0]["lines"].append({"x": [frame["nfe"].min(), frame["nfe"].max()], "y": [target_kid] * 2, "style": "--",
                              "color": "0.3", "label": f"target KID {target_kid:.3g}"})
    curves(drawn, target, title=title + about(frame, model), panel_inches=NFE_PANEL)
