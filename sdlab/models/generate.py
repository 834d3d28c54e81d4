"""One generate request -> images, per-phase timings and the denoiser evaluation count."""

from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from sdlab.config import GenerationParams
from sdlab.lazy import torch
from sdlab.models.device import clock
from sdlab.models.families import ModelAdapter
from sdlab.models.memory import call_peak

log = logging.getLogger(__name__)


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
    peak_mem_bytes: int | None  # the call's own peak (None where it cannot be told from earlier calls')
    latents: torch.Tensor | None = None
    errors: dict[int, str] = field(default_factory=dict)  # image index -> why it is bad (its slot is None)
    size: int | None = None  # images in the pipeline call these came from (None: these seeds alone)
    scores: list[dict | None] | None = None  # per image, its scorers' columns when scored with its call (None: not)
    call: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # names the call: its images share one timing

    def cell(self, i: int) -> BatchResult:
        """Image `i` alone, carrying the whole call's timings and size (its row takes its share) and its scores."""
        errors = {0: self.errors[i]} if i in self.errors else {}
        return replace(self, images=[self.images[i]], seeds=[self.seeds[i]], latents=None, errors=errors,
                       size=len(self.seeds), scores=None if self.scores is None else [self.scores[i]])


def truncated_tokens(tokenizer, text: str) -> int:
    """How many tokens of `text` (with BOS/EOS) fall beyond the tokenizer's limit and are dropped (77 for CLIP)."""
    ids = tokenizer(text, truncation=False, add_special_tokens=True)["input_ids"]
    return max(0, len(ids) - tokenizer.model_max_length)


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image, so a seed gives the same image alone or inside a batch."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


@contextmanager
def count_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Count forward calls of `module` (the NFE when it is the denoiser: UNet or transformer)."""
    counter = [0]
    handle = module.register_forward_pre_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
    try:
        yield counter
    finally:
        handle.remove()


def decode_latents(model: ModelAdapter, latents: torch.Tensor) -> torch.Tensor:
    """VAE-decode the model's latents to images in [0, 1], NCHW float (NaN stays NaN for `check_output`)."""
    return (model.decode(latents) / 2 + 0.5).clamp(0, 1)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """NCHW images in [0, 1] to PIL images."""
    array = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]


def check_output(latents: torch.Tensor, images: torch.Tensor, seeds: list[int]) -> dict[int, str]:
    """Each bad image's index (cells of a shared call may share a seed) -> why: NaN/inf latents or pixels, all black."""
    errors = {}
    for i, seed in enumerate(seeds):
        if not torch.isfinite(latents[i]).all():
            errors[i] = f"NaN/inf in the latents of seed {seed}"
        elif not torch.isfinite(images[i]).all():
            errors[i] = f"NaN/inf in the decoded pixels of seed {seed}"
        elif float(images[i].max()) <= 1 / 255:
            errors[i] = f"all-black image for seed {seed}"
    return errors


def warm_up(model: ModelAdapter, params: GenerationParams, seeds: list[int], embeddings: dict[str, torch.Tensor],
            scales: list[float] | None) -> None:
    """One untimed step and decode before a compiled or accelerator model's first call of a shape (lazy kernels)."""
    if not model.spec.compile and model.device.type == "cpu":  # a first eager CPU call costs what later ones do
        return
    shape = (len(seeds), params.width, params.height, model.uses_cfg(params.guidance_scale),
             type(model.scheduler).__name__)
    if shape in model.warm:
        return
    model.warm.add(shape)
    try:
        with torch.inference_mode():
            decode_latents(model, model.denoise(replace(params, num_inference_steps=1), generators(seeds), embeddings,
                                                None, scales))
    except Exception as e:  # noqa: BLE001 - the timed call meets the same fault and names it
        log.debug("warm-up step at %s failed: %s: %s", shape, type(e).__name__, e)


def generate_batch(model: ModelAdapter, params: GenerationParams, seeds: list[int], on_step: Callable | None = None,
                   strict: bool = True, requests: list[GenerationParams] | None = None) -> BatchResult:
    """One image per seed in one call (`requests`: each seed's prompts and scale); a bad one raises if `strict`."""
    device = model.device  # read from the denoiser's parameters: once, not at every phase
    start = clock(device)
    scales = [r.guidance_scale for r in requests] if requests else None
    with call_peak(device) as peak:
        # 1. encode prompt and, under classifier-free guidance, the negative prompt (each distinct text once a call)
        model.embeddings.clear()
        embeddings = model.embeddings_for(params)
        if requests:
            each = [model.embeddings_for(r) for r in requests]
            embeddings = {k: torch.cat([e[k] for e in each]) for k in embeddings}
        t_text = clock(device)
        warm_up(model, params, seeds, embeddings, scales)  # untimed
        t_warm = clock(device)
        # 2. denoise: the sampler loop, counting denoiser calls (cond and uncond run as one batched call)
        with torch.inference_mode(), count_calls(model.denoiser) as nfe:
            latents = model.denoise(params, generators(seeds), embeddings, on_step, scales)
        t_unet = clock(device)
        with torch.inference_mode():
            decoded = decode_latents(model, latents)
    errors = check_output(latents, decoded, seeds)
    if errors and strict:
        raise BadOutputError("; ".join(errors.values()))
    images = [None if i in errors else image for i, image in enumerate(to_pil(decoded.nan_to_num()))]
    end = clock(device)
    return BatchResult(images=images, seeds=list(seeds), nfe=nfe[0], time_text_s=t_text - start,
                       time_unet_s=t_unet - t_warm, time_vae_s=end - t_unet,
                       time_total_s=end - start - (t_warm - t_text), peak_mem_bytes=peak[0], latents=latents,
                       errors=errors)


def chunks(seeds: tuple[int, ...], size: int) -> list[list[int]]:
    """Seeds split into batches of at most `size`."""
    return [list(seeds[i : i + size]) for i in range(0, len(seeds), size)]
