"""A cheap stand-in for VAE decoding: a linear map from latent channels to RGB, fitted to one decoded image."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_linear_preview(latents: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Least-squares (C + 1) x 3 map from latent channels (and a bias) to `image` ([-1, 1], NCHW) pooled per latent pixel."""
    target = F.adaptive_avg_pool2d(image.float(), latents.shape[-2:])
    x = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    return torch.linalg.lstsq(x, y).solution


def linear_preview(latents: torch.Tensor, weights: torch.Tensor, scale: int) -> torch.Tensor:
    """Images in [-1, 1], NCHW, `scale` times the latent size (bilinear), through a map from `fit_linear_preview`."""
    n, _, h, w = latents.shape
    x = torch.cat([latents.float().cpu(), torch.ones(n, 1, h, w)], dim=1)
    rgb = torch.einsum("nchw,cd->ndhw", x, weights)
    return F.interpolate(rgb, scale_factor=scale, mode="bilinear", align_corners=False).clamp(-1, 1)
