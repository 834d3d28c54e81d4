"""The forward_process job: q(x_t | x_0) at chosen timesteps, in pixel space and in latent space (decoded)."""

from __future__ import annotations

import numpy as np

from sdlab.bench.figures import image_strip
from sdlab.bench.records import identity, ordered
from sdlab.config import Run
from sdlab.errors import UserError
from sdlab.jobs import JobContext, job, read_recipe
from sdlab.jobs.analysis import input_images, model_scheduler_config, to_model, to_uint8
from sdlab.jobs.recipes import ForwardProcess
from sdlab.jobs.schedule import schedule_spec
from sdlab.lazy import pandas as pd, torch
from sdlab.metrics.image import psnr
from sdlab.metrics.schedule import log_snr_db
from sdlab.models.loading import load_model
from sdlab.models.noise import PROCESSES, process_of


def forward_schedules(run: Run) -> list[dict]:
    """The schedules with their noise process (`model`: the model's; a beta schedule: DDPM's), timesteps checked."""
    recipe, model_config = read_recipe(run, ForwardProcess), model_scheduler_config(run)
    schedules = [{**schedule_spec(item, model_config),
                  "process": process_of(model_config) if item == "model" else PROCESSES["epsilon"]}
                 for item in recipe.schedules or ["model"]]
    if bad := [t for t in recipe.timesteps if not all(0 <= t < s["T"] for s in schedules)]:
        raise UserError(f"timesteps {bad} out of range; the schedules have t = 0 .. {min(s['T'] for s in schedules) - 1}")
    return schedules


@job("forward_process", check=forward_schedules)
def run_forward(ctx: JobContext) -> pd.DataFrame:
    """Noise one image at each timestep with a fixed eps, in pixels and in VAE latents; strip figure and PSNR per t."""
    recipe, spec = ctx.recipe, ctx.run.model
    model = load_model(spec)
    width, height = ctx.run.params.width, ctx.run.params.height
    seed, spaces, timesteps = recipe.seed or 0, list(recipe.spaces), recipe.timesteps
    schedules = forward_schedules(ctx.run)
    name, image, _ = input_images(recipe, width, height, 1, ctx.run.limits["max_input_pixels"])[0]
    x0 = to_model([image], model)
    z0 = model.encode_image(x0) if "latent" in spaces else None
    vae_only = to_uint8(model.decode(z0))[0] if z0 is not None else None
    clean = {"pixel": x0, "latent": z0}
    # eps ~ N(0, I) drawn on the CPU from `seed`: the same eps on any device
    eps = {space: torch.randn(x.shape, generator=torch.Generator("cpu").manual_seed(seed)).to(x.device, x.dtype)
           for space, x in clean.items() if x is not None}
    rows, strips, labels, names = [], [], [], []
    for s in schedules:
        process, levels = s["process"], s["process"].training_levels(s)
        for space in spaces:
            strip, label = [image], ["x_0"]
            for t in timesteps:
                level = levels[t]
                noised = process.noised(clean[space], eps[space], level)
                noised = to_uint8(noised if space == "pixel" else model.decode(noised))[0]
                value = psnr(image, noised)
                a, b = process.coefficients(level)
                rows.append({**identity(ctx, "forward_process", spec.name), "schedule": s["label"], "space": space, "t": t,
                             **level, "signal_frac": a, "noise_frac": b,
                             "snr_db": float(log_snr_db(process.log_snr(level))), "psnr_db": value,
                             "psnr_vs_vae_db": psnr(vae_only, noised) if space == "latent" else None,
                             "seed": seed, "image": name, "width": width, "height": height})
                strip.append(noised)
                label.append(f"t={t}\n{value:.1f} dB")
            strips.append(strip)
            labels.append(label)
            space_name = "pixel x_t" if space == "pixel" else "latent z_t, decoded"
            names.append(space_name if len(schedules) == 1 else f"{s['label']}\n{space_name}")
    law = " / ".join(dict.fromkeys(s["process"].equation.replace(" | ", "|") for s in schedules))
    image_strip(strips, ctx.out_dir / "forward_strip.png", col_labels=labels, row_labels=names,
                title=f"{psnr_headline(rows)}\n{law}, eps seed {seed}; each panel: t and PSNR vs x_0",
                horizontal_row_labels=True)
    return ordered(rows)


SPACE_NAMES = {"pixel": "in pixels", "latent": "in decoded latents"}


def widest_gap(values: dict[str, list[float]]) -> int:
    """Index of the timestep where the schedules' values spread most (finite values only; the middle one if none)."""
    table = np.array(list(values.values()), dtype=float)
    spread = np.where(np.isfinite(table).all(axis=0), table.max(axis=0) - table.min(axis=0), -np.inf)
    return int(spread.argmax()) if np.isfinite(spread).any() else table.shape[1] // 2


def psnr_headline(rows: list[dict]) -> str:
    """The strip's headline: which schedule keeps more signal where PSNRs differ most, or one's first and last PSNR."""
    frame = pd.DataFrame(rows)
    spaces = list(dict.fromkeys(frame["space"]))
    lines, spans = [], []
    for space in spaces:
        where = f" {SPACE_NAMES[space]}" if len(spaces) > 1 else ""
        groups = list(frame[frame["space"] == space].groupby("schedule", sort=False))
        values, timesteps = {name: g["psnr_db"].tolist() for name, g in groups}, groups[0][1]["t"].tolist()
        if len(values) == 1:
            [psnrs] = values.values()
            spans.append(f"{psnrs[0]:.1f}{'' if len(psnrs) == 1 else f' -> {psnrs[-1]:.1f}'} dB{where}")
            continue
        i = widest_gap(values)
        ranked = sorted(values, key=lambda name: values[name][i], reverse=True)
        best, worst = ranked[0], ranked[-1]
        a, b = values[best][i], values[worst][i]
        if f"{a:.1f}" == f"{b:.1f}":  # the widest gap under 0.1 dB: so is every other
            lines.append(f"the schedules keep the same signal{where}: PSNRs within 0.1 dB of each other at every t")
        else:
            more = f"more signal than {worst}" if len(ranked) == 2 else f"the most signal, {worst} the least"
            lines.append(f"{best} keeps {more}{where}: {a:.1f} vs {b:.1f} dB PSNR at t={timesteps[i]}")
    if spans:
        span = f"at t={timesteps[0]}" if len(timesteps) == 1 else f"from t={timesteps[0]} to t={timesteps[-1]}"
        lines.append(f"PSNR vs x_0 {span}: {', '.join(spans)}")
    return "\n".join(lines)
