"""One generate request -> images, per-phase timings and the UNet evaluation count."""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from sdlab.config import GenerationParams
from sdlab.models import device_of, use_batch_options

_TEXT_EMBEDDINGS: dict[tuple, torch.Tensor] = {}


class BadOutputError(RuntimeError):
    """A generation produced NaN or an all-black image."""


@dataclass
class BatchResult:
    """Images of one pipeline call and what it cost; timings cover the whole batch."""

    images: list[Image.Image | None]
    seeds: list[int]
    nfe: int
    time_text_s: float
    time_unet_s: float
    time_vae_s: float
    time_total_s: float
    peak_mem_bytes: int
    latents: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)  # seed -> why its image is bad (its slot is None)


def text_embedding(pipe, model_key: tuple, text: str) -> torch.Tensor:
    """The text encoder's hidden states for `text`, cached per (model, text) for the process."""
    key = (model_key, text)
    if key not in _TEXT_EMBEDDINGS:
        embeds, _ = pipe.encode_prompt(text, device_of(pipe), 1, False)
        _TEXT_EMBEDDINGS[key] = embeds.detach()
    return _TEXT_EMBEDDINGS[key]


def truncated_tokens(tokenizer, text: str) -> int:
    """How many tokens of `text` (with BOS/EOS) fall beyond the tokenizer's limit and are dropped (77 for CLIP)."""
    ids = tokenizer(text, truncation=False, add_special_tokens=True)["input_ids"]
    return max(0, len(ids) - tokenizer.model_max_length)


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image, so a seed gives the same image alone or inside a batch."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


@contextmanager
def count_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Count forward calls of `module` (the NFE when it is the UNet)."""
    counter = [0]
    handle = module.register_forward_pre_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
    try:
        yield counter
    finally:
        handle.remove()


def peak_memory_bytes(device: torch.device) -> int:
    """Peak accelerator memory, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """VAE-decode SD latents to images in [0, 1], NCHW float (NaN stays NaN for `check_output`)."""
    vae = pipe.vae
    scaled = latents.to(vae.dtype) / vae.config.scaling_factor
    image = vae.decode(scaled, return_dict=False)[0]
    return (image.float() / 2 + 0.5).clamp(0, 1)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """NCHW images in [0, 1] to PIL images."""
    array = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]


def check_output(latents: torch.Tensor, images: torch.Tensor, seeds: list[int]) -> dict[int, str]:
    """Each bad image's seed -> why: NaN/inf latents or pixels, or all black."""
    errors = {}
    for i, seed in enumerate(seeds):
        if not torch.isfinite(latents[i]).all():
            errors[seed] = f"NaN/inf in the latents of seed {seed}"
        elif not torch.isfinite(images[i]).all():
            errors[seed] = f"NaN/inf in the decoded pixels of seed {seed}"
        elif float(images[i].max()) <= 1 / 255:
            errors[seed] = f"all-black image for seed {seed}"
    return errors


def generate_batch(
    pipe,
    model_key: tuple,
    params: GenerationParams,
    seeds: list[int],
    callback_on_step_end: Callable | None = None,
    strict: bool = True,
) -> BatchResult:
    """One image per seed in one pipeline call, phases timed apart; a bad image raises, or is None if not `strict`."""
    start = time.perf_counter()
    do_cfg = params.guidance_scale > 1.0
    n = len(seeds)
    # 1. encode prompt and negative prompt (cached)
    with torch.inference_mode():
        prompt_embeds = text_embedding(pipe, model_key, params.prompt).repeat(n, 1, 1)
        negative_embeds = None
        if do_cfg:
            negative_embeds = text_embedding(pipe, model_key, params.negative_prompt).repeat(n, 1, 1)
    t_text = time.perf_counter()
    # 2. denoise: the UNet loop with classifier-free guidance
    use_batch_options(model_key, n * (2 if do_cfg else 1))
    with torch.inference_mode(), count_calls(pipe.unet) as nfe:
        latents = pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            width=params.width,
            height=params.height,
            eta=params.eta,
            generator=generators(seeds),
            output_type="latent",
            callback_on_step_end=callback_on_step_end,
        ).images
    t_unet = time.perf_counter()
    # 3. decode latents
    with torch.inference_mode():
        decoded = decode_latents(pipe, latents)
    errors = check_output(latents, decoded, seeds)
    if errors and strict:
        raise BadOutputError("; ".join(errors.values()))
    images = [None if seed in errors else image for seed, image in zip(seeds, to_pil(decoded.nan_to_num()))]
    end = time.perf_counter()
    return BatchResult(
        images=images,
        seeds=list(seeds),
        nfe=nfe[0],
        time_text_s=t_text - start,
        time_unet_s=t_unet - t_text,
        time_vae_s=end - t_unet,
        time_total_s=end - start,
        peak_mem_bytes=peak_memory_bytes(device_of(pipe)),
        latents=latents,
        errors=errors,
    )


def chunks(seeds: tuple[int, ...], size: int) -> list[list[int]]:
    """Seeds split into batches of at most `size`."""
    return [list(seeds[i : i + size]) for i in range(0, len(seeds), size)]
