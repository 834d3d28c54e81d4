"""The forward_process job: q(x_t | x_0) at chosen timesteps, in pixel space and in latent space (decoded)."""

from __future__ import annotations

import math

import pandas as pd
import torch

from sdlab.errors import UserError
from sdlab.figures import image_strip
from sdlab.jobs import JobContext, job
from sdlab.jobs.analysis import (base_row, decode, encode, image_size, input_images, loaded_model,
                                 model_scheduler_config, number_list, to_model, to_uint8)
from sdlab.jobs.schedule import schedule_spec
from sdlab.metrics.diffusion import q_sample, snr_db
from sdlab.metrics.image import psnr
from sdlab.metrics.schedule import alpha_bar_from_betas, betas
from sdlab.records import ordered
from sdlab.schedulers import model_kind


def noise_like(x: torch.Tensor, seed: int) -> torch.Tensor:
    """eps ~ N(0, I) shaped like x, drawn on the CPU from `seed` (the same eps on any device)."""
    return torch.randn(x.shape, generator=torch.Generator("cpu").manual_seed(seed)).to(x.device, x.dtype)


@job("forward_process")
def run_forward(ctx: JobContext) -> pd.DataFrame:
    """Noise one image at each timestep with a fixed eps, in pixels and in VAE latents; strip figure and PSNR per t."""
    cfg = ctx.config
    model, spec = loaded_model(ctx)
    width, height = image_size(cfg, spec)
    seed = int(cfg.get("seed") or 0)

    # 1. The schedules (the model's by default) and the requested timesteps.
    model_config = model_scheduler_config(spec)
    items = cfg.get("schedules") or ["model"]
    if "model" in items and model_kind(model_config) == "flow":
        raise UserError(f"job forward_process noises with the model's DDPM schedule (alpha_bar); model={spec.name} "
                        f"is a flow-matching {spec.family} model without one: use model=tiny, sd15_tiny, sd2_tiny or "
                        f"sdxl_tiny, or name DDPM schedules, e.g. schedules=[scaled_linear]")
    schedules = [schedule_spec(item, model_config) for item in items]
    spaces = list(cfg.get("spaces") or ["pixel", "latent"])
    if not set(spaces) <= {"pixel", "latent"} or not spaces:
        raise UserError(f"spaces={spaces} must list pixel and/or latent")
    timesteps = number_list(cfg, "timesteps", integer=True)
    bad = [t for t in timesteps if not all(0 <= t < s["T"] for s in schedules)]
    if bad:
        raise UserError(f"timesteps {bad} out of range; the schedules have t = 0 .. {min(s['T'] for s in schedules) - 1}")

    # 2. x_0 in pixels and z_0 in latents, each with its own fixed eps.
    name, image, _ = input_images(cfg, width, height, 1)[0]
    x0 = to_model([image], model)
    z0 = encode(model, x0) if "latent" in spaces else None
    vae_only = to_uint8(decode(model, z0))[0] if z0 is not None else None
    eps = {"pixel": noise_like(x0, seed), "latent": noise_like(z0, seed) if z0 is not None else None}

    # 3. x_t and decoded z_t at each t, PSNR against x_0, for every schedule.
    rows, strips, labels, names = [], [], [], []
    for s in schedules:
        alpha_bar = alpha_bar_from_betas(betas(s["beta_schedule"], s["T"], s["beta_start"], s["beta_end"]))
        for space in spaces:
            strip, label = [image], ["x_0"]
            for t in timesteps:
                ab = float(alpha_bar[t])
                if space == "pixel":
                    noised = to_uint8(q_sample(x0, ab, eps["pixel"]))[0]
                else:
                    noised = to_uint8(decode(model, q_sample(z0, ab, eps["latent"])))[0]
                value = psnr(image, noised)
                rows.append({**base_row(ctx, "forward_process", spec), "schedule": s["label"], "space": space, "t": t,
                             "alpha_bar": ab, "signal_frac": math.sqrt(ab), "noise_frac": math.sqrt(1 - ab),
                             "snr_db": snr_db(ab), "psnr_db": value,
                             "psnr_vs_vae_db": psnr(vae_only, noised) if space == "latent" else None,
                             "seed": seed, "image": name, "width": width, "height": height})
                strip.append(noised)
                label.append(f"t={t}\n{value:.1f} dB")
            strips.append(strip)
            labels.append(label)
            space_name = "pixel x_t" if space == "pixel" else "latent z_t, decoded"
            names.append(space_name if len(schedules) == 1 else f"{s['label']}\n{space_name}")

    # 4. Strip: one row per (schedule, space).
    image_strip(strips, ctx.out_dir / "forward_strip.png", col_labels=labels, row_labels=names,
                title=f"q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), eps seed {seed}; PSNR vs x_0")
    return ordered(rows)
