"""Stage 1: the AutoencoderKL, trained on rendered images with L2 + L1 reconstruction and a tiny KL term."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from sdlab.lazy import no_grad, torch
from sdlab.mini import data
from sdlab.mini.architecture import initial, to_tensor, to_uint8
from sdlab.mini.checker import adherence
from sdlab.mini.export import save_component
from sdlab.mini.loop import Stage, run_stage, summary

log = logging.getLogger(__name__)


def vae_stage(settings: dict[str, Any], images: np.ndarray, seed: int) -> Stage:
    """The VAE stage over a cached uint8 image set; `decoder_only` freezes the encoder (and so the latents)."""
    torch.manual_seed(seed)
    vae = initial("vae", settings)
    batch_size = int(settings["batch_size"])
    kl_weight, l1_weight = float(settings["kl_weight"]), float(settings["l1_weight"])
    decoder_only, sample_posterior = bool(settings.get("decoder_only")), bool(settings.get("sample_posterior", True))
    foreground_weight = float(settings.get("foreground_weight", 0.0))
    latent_rgb_weight = float(settings.get("latent_rgb_weight", 0.0))
    latent_rgb = torch.nn.Conv2d(vae.config.latent_channels, 3, 1)  # colour read linearly off the latents
    if decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)

    def loss(step: int) -> dict[str, torch.Tensor]:
        chosen = images[np.random.default_rng([seed, step]).integers(len(images), size=batch_size)]
        x = to_tensor(chosen)
        with torch.set_grad_enabled(not decoder_only):
            posterior = vae.encode(x).latent_dist
        z = (posterior.sample(generator=torch.Generator().manual_seed(seed * 1_000_003 + step)) if sample_posterior
             else posterior.mean)
        y = vae.decode(z).sample
        differs = (chosen != chosen[:, :1, :1, :]).any(axis=-1)  # the corner pixel is always background
        w = 1.0 + foreground_weight * torch.from_numpy(differs).float()[:, None]
        mse, l1 = torch.nn.functional.mse_loss(y, x), (y - x).abs().mean()
        weighted = ((w * ((y - x) ** 2 + l1_weight * (y - x).abs())).mean() / w.mean())
        kl = posterior.kl().mean() / z[0].numel()
        pooled = torch.nn.functional.avg_pool2d(x, x.shape[-1] // z.shape[-1])
        linear = torch.nn.functional.mse_loss(latent_rgb(posterior.mean), pooled)
        return {"loss": weighted + kl_weight * kl + latent_rgb_weight * linear, "loss_mse": mse, "loss_l1": l1,
                "loss_kl": kl, "loss_latent_rgb": linear}

    return Stage("vae_decoder" if decoder_only else "vae", vae, loss, ema_decay=float(settings.get("ema_decay", 0.0)),
                 extra={"latent_rgb": latent_rgb} if latent_rgb_weight and not decoder_only else {})


@no_grad
def posterior_means(vae, images: np.ndarray, batch_size: int = 64) -> list[torch.Tensor]:
    """The posterior means of uint8 `images`, one tensor per batch of `batch_size`."""
    return [vae.encode(to_tensor(images[i : i + batch_size])).latent_dist.mean
            for i in range(0, len(images), batch_size)]


@no_grad
def round_trip(vae, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 `images` encoded (posterior mean) and decoded again."""
    return np.concatenate([to_uint8(vae.decode(z).sample) for z in posterior_means(vae, images, batch_size)])


def psnr_db(images: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB, 8-bit) of `recon` against `images`."""
    mse = ((recon.astype(np.float64) - images.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def checker_agreement(recon: np.ndarray, attributes: list) -> dict[str, float]:
    """Share of `recon` images in which the analytic checker reads each attribute of `attributes` correctly."""
    agree = [adherence(image, attrs) for image, attrs in zip(recon, attributes)]
    return {name: float(np.mean([a[name] for a in agree])) for name in agree[0]}


def vae_quality(vae, count: int = 256) -> dict[str, float]:
    """Round-trip PSNR of the VAE over `count` evaluation images, and what the checker still reads after it."""
    images, _, attributes = data.eval_batch(0, count)
    recon = round_trip(vae, images)
    psnr, kept = psnr_db(images, recon), checker_agreement(recon, attributes)
    return {"vae_psnr_mean_db": float(psnr.mean()), "vae_psnr_min_db": float(psnr.min()), "vae_images": count,
            **{f"vae_round_trip_{name}": value for name, value in kept.items()}}


def train_vae(settings: dict[str, Any], images: np.ndarray, folder: Path, export: Path | None, seed: int) -> dict:
    """Train (or resume) the VAE, set its scaling factor, export it; returns summary numbers."""
    stage = vae_stage(settings, images, seed)
    frame = run_stage(stage, settings, folder)
    vae = (stage.ema or stage.model).eval()
    # Scaling factor: SD's 1 / std of the training latents (unchanged when only the decoder trained).
    scale = float(vae.config.scaling_factor if settings.get("decoder_only") else
                  1.0 / torch.cat(posterior_means(vae, images[: int(settings.get("scale_images", 2048))])).std())
    vae.register_to_config(scaling_factor=scale)
    quality = vae_quality(vae, int(settings.get("eval_images", 256)))
    log.info("vae: scaling_factor %.4f, %s", scale, quality)
    if export is not None:
        save_component(vae, export / "vae")
    return {**summary(stage, frame), "scaling_factor": scale, "psnr_db": quality["vae_psnr_mean_db"],
            "round_trip_colour": quality["vae_round_trip_colour"], "round_trip_shape": quality["vae_round_trip_shape"]}
