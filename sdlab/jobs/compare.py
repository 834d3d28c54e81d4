"""Compare schedulers fairly: distance to a high-accuracy reference against NFE and wall seconds, with 95% CIs."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace

import numpy as np

from sdlab.bench.captions import counted
from sdlab.bench.figures import convergence, schedule_visits
from sdlab.bench.records import identity, ordered, write_table
from sdlab.bench.scorers import build_scorers, direction, score_images
from sdlab.config import GenerationParams, image_params
from sdlab.jobs import JobContext, Solves, job
from sdlab.jobs.recipes import Study
from sdlab.lazy import pandas as pd, torch
from sdlab.metrics.image import psnr, ssim
from sdlab.metrics.stats import summarize_ci
from sdlab.models.generate import generate_batch
from sdlab.models.loading import load_model
from sdlab.models.schedulers import SCHEDULERS, make_scheduler, timestep_kwargs

log = logging.getLogger(__name__)
METRICS = ["latent_rmse", "psnr", "ssim"]


def distances(latents: torch.Tensor, images: list, ref_latents: torch.Tensor, ref_images: list) -> list[dict]:
    """Per image: latent RMSE, pixel PSNR (inf when identical) and SSIM against the reference."""
    return [{"latent_rmse": float(torch.sqrt(torch.mean((lat.float() - ref_lat.float()) ** 2))),
             "psnr": psnr(np.asarray(ref), np.asarray(image)), "ssim": ssim(np.asarray(ref), np.asarray(image))}
            for lat, image, ref_lat, ref in zip(latents, images, ref_latents, ref_images)]


def solve(model, name: str, steps: int, base: GenerationParams, prompt: str, options: dict):
    """One batched generation of the study's seeds with scheduler `name` (with `options`) at `steps` steps."""
    model.use_scheduler(name, options)
    return generate_batch(model, replace(base, prompt=prompt, num_inference_steps=steps), list(base.seeds))


def study_work(run, study: Study) -> Solves:
    """Per prompt: the reference solve, each stochastic sampler's own, and every sampler at every step count."""
    limits = [study.reference_scheduler, *(name for name in study.schedulers if SCHEDULERS[name].stochastic)]
    solves = [(n, study.reference_steps) for n in limits] + [(n, k) for n in study.schedulers for k in study.steps]
    return [(name, steps, len(study.seeds) * len(study.prompts)) for name, steps in solves]


@job("compare_schedulers", work=study_work)
def run_compare(ctx: JobContext) -> pd.DataFrame:
    """Every scheduler at every step count on every (prompt, seed), scored against its reference."""
    spec, study = ctx.run.model, ctx.recipe
    model = load_model(spec)
    model.quiet()
    scorers = build_scorers(ctx.run.recipe, str(model.device))
    given = ctx.run.params  # the run's size (else the model's native one), guidance scale and negative prompt
    base = GenerationParams(width=given.width, height=given.height, guidance_scale=given.guidance_scale,
                            negative_prompt=given.negative_prompt, seeds=tuple(study.seeds))
    seeds, rows, options = list(study.seeds), [], ctx.run.scheduler.options  # the user's, for every sampler
    limits = [("deterministic", study.reference_scheduler, f"reference {study.reference_scheduler} x"),
              *((name, name, f"{name}'s own limit,") for name in study.schedulers if SCHEDULERS[name].stochastic)]
    progress = Progress(len(study.prompts) * sum(steps for _, steps, _ in study_work(ctx.run, study)))
    for p, prompt in enumerate(study.prompts, 1):
        # 1. the deterministic reference, and each stochastic sampler's own high-step limit
        references = {}
        for key, name, what in limits:
            progress.step(f"prompt {p}/{len(study.prompts)}: {what} {counted(study.reference_steps, 'step')}",
                          study.reference_steps)
            references[key] = solve(model, name, study.reference_steps, base, prompt, options)
        # 2. every scheduler at every step count, scored against its reference
        for name in study.schedulers:
            own = SCHEDULERS[name].stochastic  # against its own high-step limit
            ref = references[name if own else "deterministic"]
            against = (f"own limit: {name}" if own else study.reference_scheduler) + f" x {study.reference_steps} steps"
            progress.step(f"prompt {p}/{len(study.prompts)}: {name} at {', '.join(map(str, study.steps))} steps",
                          sum(study.steps))
            for steps in study.steps:
                result = solve(model, name, steps, base, prompt, options)
                scores = distances(result.latents, result.images, ref.latents, ref.images)
                extra = score_images(scorers, result.images, [prompt] * len(result.images))
                rows += [{**identity(ctx, "compare_schedulers", spec.name), "scheduler": name,
                          **image_params(replace(base, prompt=prompt, num_inference_steps=steps)), "seed": seed,
                          "nfe": result.nfe, "call_id": result.call, "time_total_s": result.time_total_s / len(seeds),
                          "stochastic": own, "reference": against, **score, **more}
                         for seed, score, more in zip(seeds, scores, extra)]
    runs = ordered(rows)
    write_outputs(ctx, study, model, runs)
    return runs


class Progress:
    """One log line per stage of a long study: denoising steps done of all, the time so far and an estimate left."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def step(self, what: str, count: int) -> None:
        """Log that `what` starts; it takes `count` denoising steps."""
        elapsed = time.perf_counter() - self.start
        left = f", about {elapsed / self.done * (self.total - self.done):.0f} s left" if self.done else ""
        log.info("[%d%% of %d steps, %.0f s%s] %s", 100 * self.done // self.total, self.total, elapsed, left, what)
        self.done += count


def reachable_target(summary: pd.DataFrame, configured: float) -> tuple[float, str]:
    """The PSNR target and why: the configured one if reached, else the median best mean PSNR, floored to a dB."""
    best = summary.groupby("scheduler")["psnr_mean"].max().dropna()
    if best.empty or (best >= configured).any():
        return configured, "configured"
    target = float(math.floor(best.median()))
    return target, f"reachable: median best PSNR of this run (configured {configured:g} dB is out of reach)"


def ranking(summary: pd.DataFrame, target: float, source: str = "configured") -> pd.DataFrame:
    """Per scheduler: the fewest mean NFE whose mean PSNR reaches `target` dB (NaN when never), naming the target."""
    key, rows = f"nfe_to_psnr_{target:g}db", []
    for name, group in summary.sort_values("nfe_mean").groupby("scheduler", sort=False):
        reached = group[group["psnr_mean"] >= target]
        first = reached.iloc[0] if len(reached) else {}
        rows.append({"scheduler": name, "stochastic": bool(group["stochastic"].iloc[0]),
                     key: first.get("nfe_mean", math.nan), "steps": first.get("num_inference_steps", math.nan),
                     "seconds": first.get("time_total_s_mean", math.nan), "n": first.get("n", math.nan),
                     "best_psnr": group["psnr_mean"].max(), "psnr_target_db": target, "target": source})
    return pd.DataFrame(rows).sort_values([key, "best_psnr"], ascending=[True, False], na_position="last")


def claim(ranked: pd.DataFrame, target: float, source: str, study: Study, cost: str = "nfe") -> str:
    """A convergence figure's title: the three fewest NFE (or seconds) to the target, naming the reference solve."""
    key, unit, number = ((f"nfe_to_psnr_{target:g}db", "NFE", "{:.0f}") if cost == "nfe"
                         else ("seconds", "wall seconds per image", "{:.2g} s"))
    reached = ranked.dropna(subset=[key]).sort_values(key, kind="stable").head(3)
    fastest = ", ".join(f"{r.scheduler} {number.format(getattr(r, key))}" for r in reached.itertuples())
    reference = f"the reference {study.reference_scheduler} x {study.reference_steps} steps"
    said = (f"fewest {unit} to a mean PSNR of {target:g} dB to {reference}: {fastest}" if fastest
            else f"no scheduler reaches a mean PSNR of {target:g} dB to {reference}")
    if source != "configured":
        said += (f"\n(no scheduler reaches the configured {study.psnr_target:g} dB: {target:g} dB is this run's median "
                 "best, floored)")
    if exact := [r.scheduler for r in ranked.itertuples() if getattr(r, "best_psnr", 0) == math.inf]:
        said += (f"\n(triangles on a panel's edge: {', '.join(exact)}, images identical to the reference: PSNR "
                 "infinite, latent RMSE 0)")
    if study.reference_scheduler in study.schedulers:
        said += (f"\n({study.reference_scheduler} also solves the reference: it nears its own "
                 f"{study.reference_steps}-step limit, a head start over the others)")
    return said


def summarize(runs: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """Per scheduler and steps: each metric's mean and interval; images identical to the reference (`psnr_identical`)
    count in `psnr_n` and make the mean PSNR infinite, as the mean of values one of which is."""
    keys = ["scheduler", "num_inference_steps"]
    identical = runs.assign(psnr_identical=np.isposinf(runs["psnr"])).groupby(keys)["psnr_identical"].sum()
    summary = summarize_ci(runs.astype({c: float for c in extra}), keys, [*METRICS, *extra, "nfe", "time_total_s"])
    summary = summary.merge(identical.astype(int).reset_index(), on=keys)
    exact = summary["psnr_identical"] > 0
    summary.loc[exact, "psnr_n"] += summary.loc[exact, "psnr_identical"]
    summary.loc[exact, ["psnr_mean", "psnr_lo", "psnr_hi"]] = np.inf, math.nan, np.inf
    summary["stochastic"] = summary["scheduler"].map(lambda n: SCHEDULERS[n].stochastic)
    return summary


def write_outputs(ctx: JobContext, study: Study, model, runs: pd.DataFrame) -> None:
    """Summary with intervals, the ranking, the visited timesteps, and the convergence figures."""
    summary = summarize(runs, [c for c in runs.columns if direction(c) and runs[c].notna().any()])  # with scorers'
    write_table(summary, ctx.out_dir, "summary")
    target, source = reachable_target(summary, study.psnr_target)
    ranked = ranking(summary, target, source)
    write_table(ranked, ctx.out_dir, "ranking")
    log.info("ranking by fewest NFE to a mean PSNR of %g dB (%s): %s", target, source,
             ", ".join(ranked.dropna(subset=[f"nfe_to_psnr_{target:g}db"])["scheduler"]) or "none reach it")
    visits = []
    for name in study.schedulers:
        scheduler = make_scheduler(name, model.base_scheduler_config, ctx.run.scheduler.options)
        for steps in study.visit_steps:  # as the pipeline sets them: Flux's mu at the study's size, and its sigmas
            kwargs = timestep_kwargs(scheduler, ctx.run.params.width, ctx.run.params.height, steps, model.linear_sigmas)
            visits.append(model.noise.visits(scheduler, steps, **kwargs).assign(scheduler=name, num_inference_steps=steps))
    visits = pd.concat(visits, ignore_index=True)
    write_table(visits, ctx.out_dir, "visits")
    for column, cost, label in (("nfe", "nfe", "denoiser evaluations (NFE: UNet or transformer calls), log scale"),
                                ("time_total_s", "seconds", "wall seconds per image, log scale")):
        convergence(summary, column, METRICS, ctx.out_dir / f"convergence_{cost}.png", xlabel=label, psnr_target=target,
                    title=claim(ranked, target, source, study, cost))
    schedule_visits(visits, model.noise.snr_curve(model.base_scheduler_config), ctx.out_dir / "visits.png")
