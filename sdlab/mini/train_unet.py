"""Stage 3: the UNet, epsilon prediction on frozen VAE latents conditioned on frozen CLIP text states."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from sdlab.io import atomic_path
from sdlab.lazy import no_grad, safetensors_torch, torch
from sdlab.mini import data
from sdlab.mini.architecture import SCHEDULER, initial
from sdlab.mini.export import save_component, save_pipeline_files
from sdlab.mini.loop import Stage, run_stage, summary
from sdlab.mini.train_clip import combination_index, token_ids
from sdlab.mini.train_vae import posterior_means
from sdlab.models.model_files import SAFE_LOCAL
from sdlab.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


@no_grad
def encode_text(text_encoder, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """Last hidden states (N, 77, d) of captions padded to 77 tokens, exactly as the pipeline encodes them."""
    ids = token_ids(load_tokenizer(), captions, padding="max_length")
    return torch.cat([text_encoder(ids[i : i + batch_size])[0] for i in range(0, len(ids), batch_size)])


def cached(path: Path, build, key: str) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors cache whose metadata matches `key`, else built and written."""
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") == key:
                return safetensors_torch.load_file(str(path))
    tensors = build()
    with atomic_path(path) as tmp:
        safetensors_torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": key})
    return tensors


def fingerprint(module) -> str:
    """A short digest of a module's weights: the frozen parts a cache was computed with."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().numpy().tobytes())
    return digest.hexdigest()[:16]


def partial_table(split: data.Split = "train") -> tuple[list[str], np.ndarray]:
    """Distinct partial captions of a split's combinations, and each (combination, keep set)'s row among them."""
    captions: dict[str, int] = {}  # each distinct caption's row, in order of first use
    table = [[captions.setdefault(data.partial_caption(attrs, keep), len(captions)) for keep in data.keep_sets()]
             for attrs in data.combinations(split)]
    return list(captions), np.array(table, dtype=np.int64)


def training_latents(vae, images: np.ndarray, folder: Path) -> torch.Tensor:
    """z0 = scaling_factor * posterior mean of every training image (cached in folder)."""
    return cached(folder / "latents.safetensors",
                  lambda: {"z0": torch.cat(posterior_means(vae, images, 128)) * vae.config.scaling_factor},
                  f"{fingerprint(vae.encoder)}:{vae.config.scaling_factor:.6g}:{len(images)}")["z0"]


def conditioning(export: Path, images: np.ndarray, folder: Path, partial: bool):
    """Training latents, text states of the train captions, the empty caption and (`partial`) the partial ones."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    vae = AutoencoderKL.from_pretrained(str(export / "vae"), **SAFE_LOCAL)
    latents = training_latents(vae.eval(), images, folder)
    text_encoder = CLIPTextModel.from_pretrained(str(export / "text_encoder"), **SAFE_LOCAL)
    captions, key = data.all_captions("train"), fingerprint(text_encoder)
    text = cached(folder / "text_states.safetensors",
                  lambda: {"states": encode_text(text_encoder, captions), "empty": encode_text(text_encoder, [""])},
                  f"{key}:{len(captions)}")
    if not partial:
        return latents, text["states"], text["empty"], None
    shorter, table = partial_table("train")
    states = cached(folder / "partial_states.safetensors", lambda: {"states": encode_text(text_encoder, shorter)},
                    f"{key}:{len(shorter)}")["states"]
    return latents, text["states"], text["empty"], (states, table)


def caption_rows(rng: np.random.Generator, combos: np.ndarray, templates: int, captions: int,
                 noise: float) -> np.ndarray:
    """Caption-table rows for images of `combos`: a random template each; with probability `noise` any caption."""
    rows = combos * templates + rng.integers(templates, size=len(combos))
    mislabelled = rng.random(len(combos)) < noise
    rows[mislabelled] = rng.integers(captions, size=int(mislabelled.sum()))
    return rows


def text_draws(settings: dict[str, Any], attributes: list[data.Attributes], items: int, captions: int,
               table: np.ndarray | None):
    """A step's draw from its rng: `batch_size` items, their caption rows, partial rows (else -1), empty or not."""
    combos, templates = combination_index(attributes), len(data.CAPTION_TEMPLATES)
    batch_size, p_uncond = int(settings["batch_size"]), float(settings["uncond_probability"])
    # Web alt-text is often wrong; mislabelled images make the conditional distribution broad, as in SD,
    # so classifier-free guidance has the sharpening to do that it does there.
    p_noise, p_partial = float(settings.get("caption_noise", 0.0)), float(settings.get("partial_captions", 0.0))
    if p_partial and table is None:
        raise ValueError("partial_captions > 0 needs the partial captions' text states")

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        pick = rng.integers(items, size=batch_size)
        rows = caption_rows(rng, combos[pick], templates, captions, p_noise)
        shorter_rows = np.full(batch_size, -1)
        if p_partial:
            # A partial caption of the combination the (possibly mislabelled) caption names; never the full one.
            shorter = np.flatnonzero(rng.random(batch_size) < p_partial)
            keep = rng.integers(len(data.keep_sets()) - 1, size=len(shorter))
            shorter_rows[shorter] = table[rows[shorter] // templates, keep]
        return pick, (rows, shorter_rows, rng.random(batch_size) < p_uncond)

    return draw


def gather_text(choice: tuple[np.ndarray, np.ndarray, np.ndarray], full: torch.Tensor, partial: torch.Tensor | None,
                empty: torch.Tensor) -> torch.Tensor:
    """The batch of text tensors (states or pooled embeddings) a `text_draws` draw names."""
    rows, shorter_rows, uncond = choice
    out = full[rows].clone()
    shorter = np.flatnonzero(shorter_rows >= 0)
    if len(shorter):
        out[shorter] = partial[shorter_rows[shorter]]
    out[uncond] = empty[0]
    return out


def unet_stage(settings: dict[str, Any], latents: torch.Tensor, states: torch.Tensor, empty: torch.Tensor,
               attributes: list[data.Attributes], seed: int,
               partial: tuple[torch.Tensor, np.ndarray] | None = None) -> Stage:
    """UNet stage: eps prediction at t ~ U{0..999}, min-SNR-weighted MSE (Hang et al. 2023); `partial` states, table."""
    from diffusers import DDPMScheduler

    draw = text_draws(settings, attributes, len(latents), len(states), partial and partial[1])
    torch.manual_seed(seed)
    unet = initial("unet", settings)
    alphas_cumprod = DDPMScheduler.from_config(SCHEDULER).alphas_cumprod
    gamma = settings.get("snr_gamma")

    def loss(step: int) -> dict[str, torch.Tensor]:
        pick, choice = draw(np.random.default_rng([seed, step]))
        c = gather_text(choice, states, partial and partial[0], empty)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        z0 = latents[pick]
        t = torch.randint(0, len(alphas_cumprod), (len(pick),), generator=generator)
        eps = torch.randn(z0.shape, generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        per_item = (unet(zt, t, c).sample - eps).pow(2).mean(dim=(1, 2, 3))
        mse = per_item.mean()
        if gamma:
            snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
            per_item = per_item * torch.clamp(snr, max=float(gamma)) / snr
        return {"loss": per_item.mean(), "loss_mse": mse}

    return Stage("unet", unet, loss, ema_decay=float(settings.get("ema_decay", 0.0)))


def train_unet(settings: dict[str, Any], images: np.ndarray, attributes: list[data.Attributes], folder: Path,
               export: Path, seed: int) -> dict:
    """Train (or resume) the UNet on frozen parts read from `export`, then write unet/ and the pipeline files."""
    latents, states, empty, partial = conditioning(export, images, folder, bool(settings.get("partial_captions")))
    log.info("unet: latents %s (std %.3f), text states %s, partial captions %s", tuple(latents.shape),
             latents.std(), tuple(states.shape), None if partial is None else tuple(partial[0].shape))
    stage = unet_stage(settings, latents, states, empty, attributes, seed, partial)
    frame = run_stage(stage, settings, folder)
    save_component((stage.ema or stage.model).eval(), export / "unet")
    save_pipeline_files(export)
    return summary(stage, frame)
