"""The trajectory job: x_t and x0_pred at every sampler step of one generation pass, as a frame strip and a GIF."""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sdlab.bench.captions import counted, short_prompt
from sdlab.bench.figures import image_strip, write_gif
from sdlab.bench.records import identity, ordered, save_png
from sdlab.config import image_params
from sdlab.jobs import JobContext, job, own
from sdlab.jobs.analysis import to_uint8
from sdlab.lazy import pandas as pd
from sdlab.metrics.image import psnr
from sdlab.metrics.schedule import log_snr_db
from sdlab.models.generate import chunks, generate_batch
from sdlab.models.loading import load_model
from sdlab.models.preview import fit_linear_preview, linear_preview
from sdlab.models.schedulers import resolved_config

REFERENCES = {"vae": "the final image", "linear": "the final latents, both through the linear preview"}
FINAL_LABELS = {"vae": "final", "linear": "final latents\n(linear preview)"}
SETTLED_DB = 30.0  # x0_pred this close to the final image: the composition is decided
LABEL_PX = 16  # the GIF's label letters, in a band of LABEL_PX + 6 below each frame


def to_final(row: dict) -> str:
    """How close a step's x0_pred is to the final image, as its label says it: its PSNR, or `= final` once equal."""
    db = row["x0_pred_psnr_vs_final_db"]
    return "= final" if np.isinf(db) else f"{db:.1f} dB"


def step_name(index: int, count: int, steps: int) -> str:
    """`step 1 of 20` (from 1), or `model call 1 of 40` for a sampler calling the model more than it steps (Heun)."""
    return f"{'step' if count == steps else 'model call'} {index + 1} of {count}"


def strip_steps(count: int, frames: int, keep: int | None = None) -> list[int]:
    """`frames` evenly spaced indices of `count` steps; `keep` replaces the nearest one, the first and last aside."""
    picks = sorted(set(np.linspace(0, count - 1, min(count, frames)).round().astype(int).tolist()))
    if keep is None or keep in picks:
        return picks
    nearest = min(picks[1:-1] or picks, key=lambda i: abs(i - keep))
    return sorted(set(picks) - {nearest} | {keep})


class TrajectoryRecorder:
    """Keeps every step the model hands `on_step` (see ModelAdapter.denoise) and the seconds spent capturing them."""

    def __init__(self, model):
        self.model = model
        self.steps: list[dict] = []
        self.capture_s = 0.0

    def on_step(self, step: dict) -> None:
        self.steps.append(step)
        self.capture_s += step["capture_s"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def labelled(image: np.ndarray, text: str, scale: int) -> Image.Image:
    """An image upscaled (nearest) by `scale` with a text band below."""
    big = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    canvas = Image.new("RGB", (big.width, big.height + LABEL_PX + 6), "white")
    canvas.paste(big, (0, 0))
    ImageDraw.Draw(canvas).text((3, big.height + 1), text, fill="black", font=ImageFont.load_default(LABEL_PX))
    return canvas


def side_by_side(images: list[Image.Image]) -> Image.Image:
    """RGB images of one height pasted left to right."""
    return Image.fromarray(np.hstack([np.asarray(image) for image in images]))


def frame_renderer(model, result, preview: str) -> Callable[[list[torch.Tensor]], list[np.ndarray]]:
    """A function from step latents to uint8 frames; `linear` fits its map to the final image of `result`."""
    if preview == "vae":  # 1xCxhxw latents decoded 8 at a time
        return lambda latents: [image for part in chunks(latents, 8)
                                for image in to_uint8(model.decode(torch.cat(part).to(model.device)))]
    image = torch.from_numpy(np.asarray(result.images[0], dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    weights = fit_linear_preview(result.latents[:1].cpu(), image)
    scale = image.shape[-1] // result.latents.shape[-1]
    return lambda latents: to_uint8(linear_preview(torch.cat(latents), weights, scale))


@job("trajectory", work=lambda run, _: [own(run)])
def run_trajectory(ctx: JobContext) -> pd.DataFrame:
    """A row per step (noise level, log-SNR, x0_pred PSNR to the final image), trajectory_strip.png, trajectory.gif."""
    recipe, spec, choice, seed = ctx.recipe, ctx.run.model, ctx.run.scheduler, ctx.run.params.seeds[0]
    params = replace(ctx.run.params, seeds=(seed,), batch_size=1)
    model = load_model(spec)
    model.use_scheduler(choice.name, choice.options)
    with TrajectoryRecorder(model) as recorder:
        result = generate_batch(model, params, [seed], on_step=recorder.on_step)
    request = {**image_params(params), "seed": seed}
    save_png(result.images[0], ctx.out_dir / "images" / "trajectory_final.png",
             {**request, "scheduler": choice.name, "model": spec.name})

    # x_t and x0_pred of every step decoded (VAE or the linear preview), timed apart from generation
    start = time.perf_counter()
    steps = recorder.steps
    render = frame_renderer(model, result, recipe.preview)
    x_t = render([s["x_t"] for s in steps])
    x0 = render([s["denoised"] for s in steps])
    # under `linear` x0_pred is measured against the final latents' preview: it never matches the VAE's image
    final = np.asarray(result.images[0]) if recipe.preview == "vae" else render([result.latents[:1].cpu()])[0]
    # a step whose x0_pred is the final latents is the final image, not a decode in another batch a level off
    final_latents = result.latents[:1].float().cpu()
    x0 = [final if torch.equal(s["denoised"], final_latents) else frame for s, frame in zip(steps, x0)]
    time_decode = time.perf_counter() - start
    timing = {"nfe": result.nfe, "time_generate_s": result.time_total_s - recorder.capture_s,
              "time_unet_s": result.time_unet_s - recorder.capture_s, "time_capture_s": recorder.capture_s,
              "time_decode_trajectory_s": time_decode, "preview": recipe.preview}
    common = {**identity(ctx, "trajectory", spec.name), "scheduler": choice.name,
              "scheduler_config": resolved_config(model.scheduler), **request, **timing}
    rows = [{**common, "step": s["i"], "timestep": s["t"], **{k: s[k] for k in ("alpha_bar", "sigma", "log_snr")},
             "snr_db": float(log_snr_db(s["log_snr"])), "x_t_std": float(s["x_t"].std()),
             "x0_pred_std": float(s["denoised"].std()),
             "x0_pred_psnr_vs_final_db": psnr(final, x0[i])} for i, s in enumerate(steps)]
    named = partial(step_name, count=len(steps), steps=params.num_inference_steps)
    settled = next((i for i, r in enumerate(rows) if r["x0_pred_psnr_vs_final_db"] >= SETTLED_DB), None)
    stays = len(rows)  # the first step from which every step is as close
    while stays and rows[stays - 1]["x0_pred_psnr_vs_final_db"] >= SETTLED_DB:
        stays -= 1
    claim = (f"x0_pred first reaches {SETTLED_DB:g} dB PSNR at {named(settled)}"
             + (f", stays above it from {named(stays)}" if stays != settled else "")
             if settled is not None else f"x0_pred never reaches {SETTLED_DB:g} dB PSNR")
    calls = f" ({len(steps)} model calls)" if len(steps) != params.num_inference_steps else ""
    picks = strip_steps(len(steps), recipe.frames, keep=settled)  # the step the claim names is one of the panels
    labels = [f"{named(i)}\n{model.noise.step_label(steps[i])}" for i in picks]
    x0_labels = [f"{label}\n{to_final(rows[i])}" for label, i in zip(labels, picks)]
    image_strip([[x_t[i] for i in picks] + [final], [x0[i] for i in picks]], ctx.out_dir / "trajectory_strip.png",
                col_labels=[labels + [FINAL_LABELS[recipe.preview]], x0_labels], row_labels=["x_t", "x0_pred"],
                title=f"{choice.name}, {counted(params.num_inference_steps, 'step')}{calls}, "
                      f"{'cfg' if model.guidance == 'cfg' else 'distilled guidance'} {params.guidance_scale:g}, "
                      f"seed {seed}: {short_prompt(params.prompt)}\n"
                      f"{claim} (dB: x0_pred against {REFERENCES[recipe.preview]})")
    scale = max(1, 256 // min(params.width, params.height))
    frames = [side_by_side([labelled(x_t[i], f"x_t  {named(i)} {model.noise.step_label(s)}", scale),
                            labelled(x0[i], f"x0_pred {to_final(rows[i])}"
                                     + " to final" * bool(np.isfinite(rows[i]["x0_pred_psnr_vs_final_db"])), scale)])
              for i, s in enumerate(steps)]
    last = FINAL_LABELS[recipe.preview].replace("\n", " ")
    frames.append(side_by_side([labelled(final, last, scale), labelled(final, last, scale)]))
    write_gif(frames, ctx.out_dir / "trajectory.gif", duration_ms=recipe.gif_ms)
    return ordered(rows)
