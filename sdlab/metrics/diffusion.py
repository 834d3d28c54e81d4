"""Forward noising and clean-image prediction of DDPM-style diffusion, on numpy arrays or torch tensors.

x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eps ~ N(0, I) (Ho et al. 2020, eq. 4).
"""

from __future__ import annotations

import math

import numpy as np

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def q_sample(x0, alpha_bar: float, eps):
    """x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps."""
    alpha_bar = float(alpha_bar)
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1.0 - alpha_bar) * eps


def x0_pred(x_t, model_output, alpha_bar: float, prediction_type: str = "epsilon"):
    """x0_pred = (x_t - sqrt(1 - ab) eps)/sqrt(ab) for epsilon, sqrt(ab) x_t - sqrt(1 - ab) v for v_prediction, the output itself for sample."""
    alpha_bar = float(alpha_bar)
    if prediction_type == "epsilon":
        return (x_t - math.sqrt(1.0 - alpha_bar) * model_output) / math.sqrt(alpha_bar)
    if prediction_type == "v_prediction":
        return math.sqrt(alpha_bar) * x_t - math.sqrt(1.0 - alpha_bar) * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def guided(uncond, cond, scale: float):
    """Classifier-free guidance eps_w = eps_uncond + w (eps_cond - eps_uncond) (Ho & Salimans 2022)."""
    return uncond + float(scale) * (cond - uncond)


def alpha_bar_at(alphas_cumprod, timestep: float) -> float:
    """alpha_bar at a (possibly fractional) timestep, linearly interpolated between integer timesteps."""
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    return float(np.interp(float(timestep), np.arange(len(alphas_cumprod)), alphas_cumprod))


def snr_db(alpha_bar: float) -> float:
    """SNR_dB = 10 log10(alpha_bar / (1 - alpha_bar)); inf at alpha_bar = 1."""
    alpha_bar = float(alpha_bar)
    return math.inf if alpha_bar >= 1.0 else 10.0 * math.log10(alpha_bar / (1.0 - alpha_bar))
