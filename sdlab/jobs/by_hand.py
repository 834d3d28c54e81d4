"""The latent-diffusion inference pipeline written out by hand, checked against diffusers; and image-to-image."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from sdlab.bench.captions import at_ends
from sdlab.bench.figures import image_strip
from sdlab.bench.records import identity, ordered
from sdlab.bench.scorers import build_scorers, score_images
from sdlab.bench.worlds import world
from sdlab.config import Run, image_params
from sdlab.errors import UserError
from sdlab.jobs import JobContext, job, read_recipe
from sdlab.jobs.analysis import read_image
from sdlab.jobs.recipes import Img2img
from sdlab.lazy import pandas as pd, torch
from sdlab.metrics.image import cover, psnr
from sdlab.metrics.toy import ddim_step
from sdlab.models.generate import decode_latents, to_pil
from sdlab.models.loading import adapter_class, load_model, published_scheduler_config
from sdlab.models.noise import process_of
from sdlab.models.schedulers import resolved_config, seed_noise


def encode_text(model, texts: list[str]) -> torch.Tensor:
    """CLIP hidden states of `texts`, padded to the tokenizer's 77 tokens (what the UNet cross-attends to)."""
    ids = model.tokenizer(texts, padding="max_length", max_length=model.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids
    return model.text_encoder(ids.to(model.device))[0]


def ddim_by_hand(model, prompt: str, negative_prompt: str, seed: int, steps: int, guidance_scale: float,
                 height: int, width: int) -> torch.Tensor:
    """Text-to-image latents with classifier-free guidance and the DDIM update written from its equation (eta = 0)."""
    scheduler, unet = model.scheduler, model.denoiser
    # 1. encode the prompt and the negative (empty) prompt
    uncond, cond = encode_text(model, [negative_prompt, prompt]).chunk(2)
    # 2. initial noise x_T ~ N(0, I) in latent space, from a CPU generator
    x = torch.randn((1, *model.latent_shape(width, height)), generator=torch.Generator("cpu").manual_seed(seed))
    x = x.to(model.device) * scheduler.init_noise_sigma
    # 3. denoise: eps_w = eps_uncond + w (eps_cond - eps_uncond), then x_{t-1} from DDIM's equation
    scheduler.set_timesteps(steps)
    alpha_bar = scheduler.alphas_cumprod
    stride = scheduler.config.num_train_timesteps // steps
    for t in scheduler.timesteps:
        eps_uncond, eps_cond = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        prev = int(t) - stride
        alpha_bar_prev = alpha_bar[prev] if prev >= 0 else scheduler.final_alpha_cumprod
        x = ddim_step(x, eps, alpha_bar[int(t)], alpha_bar_prev)
    return x


def check_by_hand(run: Run) -> None:
    """The loop by hand is SD 1.x's epsilon loop with guidance: a plain-UNet noise-predicting model, guidance_scale > 1."""
    spec = run.model
    adapter, process = adapter_class(spec), process_of(published_scheduler_config(spec)[0])
    if not (adapter.plain_unet_call and process.predicts_noise):
        raise UserError(f"job pipeline_by_hand writes out the SD 1.x epsilon loop; model={spec.name} is a "
                        f"{adapter.family} {process.kind} model: use model=tiny, mini or sd15")
    if run.scheduler.name != "ddim":
        raise UserError(f"scheduler={run.scheduler.name}: job pipeline_by_hand writes out DDIM's update and runs "
                        "diffusers' pipeline with DDIM to compare; drop scheduler= (or give scheduler=ddim)")
    w = run.params.guidance_scale
    if w <= 1.0:
        raise UserError(f"guidance_scale={w} must be > 1 here: the loop by hand always applies guidance")


@job("pipeline_by_hand", check=check_by_hand, work=lambda run, _: [("ddim", run.params.num_inference_steps, 2)])
def run_pipeline_by_hand(ctx: JobContext) -> pd.DataFrame:
    """C1: the whole loop by hand against diffusers' own pipeline on the same seed and DDIM: max abs difference."""
    check_by_hand(ctx.run)
    spec, params = ctx.run.model, ctx.run.params
    model = load_model(spec)
    model.quiet()
    model.use_scheduler("ddim")
    seed, steps, w, side = params.seeds[0], params.num_inference_steps, params.guidance_scale, spec.resolution
    with torch.inference_mode():
        ours = ddim_by_hand(model, params.prompt, params.negative_prompt, seed, steps, w, side, side)
        theirs = model.run_pipeline(params.prompt, negative_prompt=params.negative_prompt or None,
                                    num_inference_steps=steps, guidance_scale=w, height=side, width=side,
                                    output_type="latent", generator=torch.Generator("cpu").manual_seed(seed)).images
        images = decode_latents(model, torch.cat([ours, theirs]))
    diff_image = (images[0] - images[1]).abs()
    latent_diff, pixel_diff = float((ours - theirs).abs().max()), float(diff_image.max())
    scale = pixel_diff or 1.0
    strip = [*(np.asarray(im) for im in to_pil(images)), (diff_image / scale).permute(1, 2, 0).cpu().numpy()]
    image_strip([strip], ctx.out_dir / "by_hand_vs_diffusers.png",
                col_labels=["by hand (DDIM equation)", "diffusers pipeline", f"|difference| x{1 / scale:.0f}"],
                title=f"the same image: max |difference| {latent_diff:.1e} in latents, "
                      f"{pixel_diff:.1e} in pixels (range [-1, 1]), {steps} DDIM steps")
    return ordered([{
        **identity(ctx, "pipeline_by_hand", spec.name), "scheduler": "ddim",
        **image_params(replace(params, width=side, height=side)), "seed": seed,
        "max_abs_diff_latents": latent_diff, "max_abs_diff_pixels": pixel_diff,
    }])


def check_img2img(run: Run) -> None:
    """Each strength leaves img2img a denoising step (it runs int(strength x steps)), and the input image reads."""
    recipe, steps = read_recipe(run, Img2img), run.params.num_inference_steps
    if short := [s for s in recipe.strengths if int(s * steps) < 1]:
        raise UserError(f"strength {short[0]:g} x {steps} steps leaves no denoising step (img2img runs int(strength x "
                        f"steps)); raise num_inference_steps to {math.ceil(1 / short[0])} or the strength to "
                        f"{1 / steps:g}")
    input_image(recipe, 8, 8, run.limits["max_input_pixels"])


@job("img2img_strength", check=check_img2img,
     work=lambda run, r: [(run.scheduler.name, int(s * run.params.num_inference_steps), 1) for s in r.strengths])
def run_img2img_strength(ctx: JobContext) -> pd.DataFrame:
    """C2: image-to-image from a partly noised encoding of an input image, swept over strength, as one grid."""
    spec, params = ctx.run.model, ctx.run.params
    model = load_model(spec)
    img2img = model.image_to_image()
    img2img.scheduler = model.use_scheduler(ctx.run.scheduler.name, ctx.run.scheduler.options)
    source = input_image(ctx.recipe, params.width, params.height, ctx.run.limits["max_input_pixels"])
    seed, steps, rows, outputs = params.seeds[0], params.num_inference_steps, [], []
    for strength in map(float, ctx.recipe.strengths):
        generator = torch.Generator("cpu").manual_seed(seed)
        seed_noise(img2img.scheduler, [generator])
        with torch.inference_mode():
            image = img2img(params.prompt, image=source, strength=strength, num_inference_steps=steps,
                            guidance_scale=params.guidance_scale, generator=generator).images[0]
        outputs.append(np.asarray(image))
        rows.append({**identity(ctx, "img2img_strength", spec.name), "scheduler": ctx.run.scheduler.name,
                     "scheduler_config": resolved_config(img2img.scheduler),
                     **image_params(params),
                     "seed": seed, "strength": strength, "denoising_steps": int(strength * steps),
                     "psnr_to_input": psnr(np.asarray(source), outputs[-1])})
    frame = pd.DataFrame(rows)
    reads, checked_line = drawn_like(ctx, frame, outputs)
    labels = [f"strength {r.strength:g}\n{r.denoising_steps} step{'s' * (r.denoising_steps != 1)}\n"
              f"{r.psnr_to_input:.1f} dB{read}" for r, read in zip(frame.itertuples(), reads)]
    title = (f"{params.prompt}\nstrength sets how much of the input survives: PSNR to the input " + at_ends(
        [f"{p:.1f} dB" for p in frame["psnr_to_input"]], [f"{s:g}" for s in frame["strength"]], "strength") + checked_line)
    image_strip([[np.asarray(source)] + outputs], ctx.out_dir / "img2img_strength.png",
                col_labels=["input"] + labels, title=title)
    return frame


def drawn_like(ctx: JobContext, frame: pd.DataFrame, outputs: list) -> tuple[list[str], str]:
    """What the adherence check reads in each output (input's caption or prompt): a label line each, a title line."""
    caption, prompt = ctx.recipe.image_caption, ctx.run.params.prompt
    scorers = build_scorers(ctx.run.recipe)
    as_input, as_prompt = (score_images(scorers, outputs, [text] * len(outputs)) for text in (caption or "", prompt))
    if ctx.recipe.image or not any("adherence_all" in row for row in as_input + as_prompt):
        return [""] * len(outputs), ""
    reads, wrong_at = [], {}
    for strength, mine, theirs in zip(frame["strength"], as_input, as_prompt):
        wrong = [k[10:] for k in mine if k != "adherence_all" and not mine[k] and not theirs.get(k, True)]
        for attribute in wrong:
            wrong_at.setdefault(attribute, []).append(f"{strength:g}")
        reads.append("\nthe input's" if mine["adherence_all"] else "\nthe prompt's" if theirs["adherence_all"]
                     else f"\nwrong {', '.join(wrong)}" if wrong else "\ninput + prompt")
    wrong = "; ".join(f"a {k} neither caption names at {', '.join(v)}" for k, v in wrong_at.items())
    return reads, ("\nthe shapes checker reads the input's drawing or the prompt's under each strength"
                   + (f"; {wrong} (the model's error)" if wrong else ""))


def input_image(recipe: Img2img, width: int, height: int, max_pixels: int):
    """The recipe's `image` file (of at most `max_pixels`), or its `image_caption` drawn in the `sample_world`, as a
    PIL image of width x height."""
    if recipe.image:
        return Image.fromarray(read_image(Path(recipe.image), width, height, f"image={recipe.image}", max_pixels))
    return Image.fromarray(cover(Image.fromarray(world(recipe.sample_world).draw(str(recipe.image_caption))), width,
                                 height))
