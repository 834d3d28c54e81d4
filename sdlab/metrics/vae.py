"""Autoencoder bookkeeping: compression ratio and per-channel latent statistics."""

from __future__ import annotations

import math

import numpy as np

from sdlab.lazy import pandas as pd


def downsampling_factor(block_out_channels) -> int:
    """Spatial factor f = 2^(number of encoder blocks - 1) of an SD AutoencoderKL (8 for SD)."""
    return 2 ** (len(block_out_channels) - 1)


def latent_shape(height: int, width: int, latent_channels: int = 4, factor: int = 8) -> tuple[int, int, int]:
    """(C_z, H/f, W/f) of the latent of an HxW image."""
    return (latent_channels, height // factor, width // factor)


def compression_ratio(image_shape, latent_shape) -> float:
    """Pixel values / latent values = (3 H W)/(C_z H/f W/f); 3 f²/C_z = 48 for SD (f = 8, C_z = 4)."""
    return math.prod(image_shape) / math.prod(latent_shape)


def latent_channel_stats(latents) -> pd.DataFrame:
    """Per-channel mean, std, min and max of one CxHxW latent."""
    z = np.asarray(latents, dtype=np.float64)
    flat = z.reshape(z.shape[0], -1)
    return pd.DataFrame({"channel": np.arange(z.shape[0]), "mean": flat.mean(axis=1), "std": flat.std(axis=1),
                         "min": flat.min(axis=1), "max": flat.max(axis=1)})


def channel_image(channel) -> np.ndarray:
    """One latent channel min-max scaled to a uint8 grey image (constant channels give mid grey)."""
    c = np.asarray(channel, dtype=np.float64)
    span = c.max() - c.min()
    return np.rint((np.full_like(c, 0.5) if span == 0 else (c - c.min()) / span) * 255).astype(np.uint8)
