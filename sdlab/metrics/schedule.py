"""Noise schedules and signal-to-noise ratios of discrete-time diffusion.

Forward process (DDPM, Ho et al. 2020): q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I),
with alpha_t = 1 - beta_t and alpha_bar_t = prod_{s<=t} alpha_s. Timesteps are 0-based, as in diffusers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
MAX_BETA = 0.999


def betas(
    schedule: str,
    T: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    s: float = 0.008,
) -> np.ndarray:
    """beta_t for 'linear' (linspace), 'scaled_linear' (linspace in sqrt(beta), squared) or 'squaredcos_cap_v2' (beta_t = min(1 - f(t+1)/f(t), 0.999), f(t) = cos²((t/T + s)/(1 + s) · π/2))."""
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=np.float64) ** 2
    if schedule == "squaredcos_cap_v2":
        t = np.arange(T + 1, dtype=np.float64) / T
        f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return np.minimum(1.0 - f[1:] / f[:-1], MAX_BETA)
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")


def alpha_bar_from_betas(betas: np.ndarray) -> np.ndarray:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s)."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def snr_db_from_alpha_bar(alpha_bar) -> np.ndarray:
    """SNR_dB = 10 log10(alpha_bar / (1 - alpha_bar))."""
    alpha_bar = np.asarray(alpha_bar, dtype=np.float64)
    return 10.0 * np.log10(alpha_bar / (1.0 - alpha_bar))


def schedule_table(betas: np.ndarray) -> pd.DataFrame:
    """Per-timestep table: alpha = 1 - beta, alpha_bar = prod alpha, signal/noise fractions sqrt(alpha_bar), sqrt(1 - alpha_bar), snr = alpha_bar/(1 - alpha_bar), sigma = 1/sqrt(snr)."""
    beta = np.asarray(betas, dtype=np.float64)
    alpha = 1.0 - beta
    alpha_bar = np.cumprod(alpha)
    snr = alpha_bar / (1.0 - alpha_bar)
    return pd.DataFrame(
        {
            "t": np.arange(len(beta)),
            "beta": beta,
            "alpha": alpha,
            "alpha_bar": alpha_bar,
            "signal_frac": np.sqrt(alpha_bar),
            "noise_frac": np.sqrt(1.0 - alpha_bar),
            "snr": snr,
            "snr_db": 10.0 * np.log10(snr),
            "sigma": np.sqrt((1.0 - alpha_bar) / alpha_bar),
        }
    )


def zero_crossing(alpha_bar) -> int:
    """First t with alpha_bar_t <= 0.5, i.e. SNR_t <= 1 (0 dB); -1 if the schedule never gets there."""
    below = np.flatnonzero(np.asarray(alpha_bar) <= 0.5)
    return int(below[0]) if below.size else -1


def scheduler_visits(scheduler, num_inference_steps: int) -> pd.DataFrame:
    """Timesteps a diffusers scheduler visits for N steps, with sigma and SNR_dB = 10 log10(alpha_bar/(1 - alpha_bar)) at each.

    alpha_bar is linearly interpolated for fractional timesteps. sigma is read from
    `scheduler.sigmas` when that array is aligned with `scheduler.timesteps` (N visited
    timesteps plus the final sigma), otherwise it is sqrt((1 - alpha_bar)/alpha_bar).
    """
    # 1. Let the scheduler lay out its own sampling grid.
    scheduler.set_timesteps(num_inference_steps)
    timestep = np.asarray(scheduler.timesteps, dtype=np.float64)

    # 2. alpha_bar at each (possibly fractional) visited timestep.
    alphas_cumprod = np.asarray(scheduler.alphas_cumprod, dtype=np.float64)
    alpha_bar = np.interp(timestep, np.arange(len(alphas_cumprod)), alphas_cumprod)

    # 3. sigma: the scheduler's own when aligned, otherwise from alpha_bar.
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(timestep) + 1:
        sigma = np.asarray(sigmas, dtype=np.float64)[: len(timestep)]
    else:
        sigma = np.sqrt((1.0 - alpha_bar) / alpha_bar)

    return pd.DataFrame(
        {
            "step": np.arange(len(timestep)),
            "timestep": timestep,
            "sigma": sigma,
            "snr_db": snr_db_from_alpha_bar(alpha_bar),
        }
    )
