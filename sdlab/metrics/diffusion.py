"""Forward noising and clean-image prediction of DDPM-style diffusion, on numpy arrays or torch tensors.

x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eps ~ N(0, I) (Ho et al. 2020, eq. 4);
rectified flow (SD3, Flux): x_t = (1 - sigma) x_0 + sigma eps, velocity v = eps - x_0 (Esser et al. 2024, eq. 2).
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


def x0_from_velocity(x_t, v, sigma: float):
    """Rectified flow: x0_pred = x_t - sigma v, since x_t = (1 - sigma) x_0 + sigma eps and v = eps - x_0."""
    return x_t - float(sigma) * v


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


def log_snr(alpha_bar: float) -> float:
    """lambda = ln(alpha_bar / (1 - alpha_bar)) (Kingma et al. 2021); inf at alpha_bar = 1."""
    alpha_bar = float(alpha_bar)
    if alpha_bar >= 1.0 or alpha_bar <= 0.0:
        return math.inf if alpha_bar >= 1.0 else -math.inf
    return math.log(alpha_bar / (1.0 - alpha_bar))


def flow_log_snr(sigma: float) -> float:
    """Rectified flow lambda = 2 ln((1 - sigma)/sigma) (signal 1 - sigma, noise sigma); inf at sigma = 0, -inf at 1."""
    sigma = float(sigma)
    return math.inf if sigma <= 0.0 else (-math.inf if sigma >= 1.0 else 2.0 * math.log((1.0 - sigma) / sigma))


def log_snr_db(lam: float) -> float:
    """SNR in dB from the log-SNR: 10 log10(e^lambda)."""
    return 10.0 * float(lam) / math.log(10.0)
