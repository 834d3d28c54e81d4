"""Schedules, x0 and SNR of DDPM (Ho et al. 2020, eq. 4, 0-based t) and rectified flow (SD3, x_t = (1 - sigma) x_0 +
sigma eps, v = eps - x_0): both x_t = a_t x_0 + s_t eps, so log-SNR = 2 log(a_t / s_t) puts them on one axis."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sdlab.config import Field, check_fields, suggestion
from sdlab.errors import UserError, choose
from sdlab.lazy import pandas as pd

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
MAX_BETA = 0.999
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "T": 1000}
BETA = Field("number", rule="a number in (0, 1)")
ENTRY_FIELDS = {"name": Field("str", plain=True), "beta_start": BETA, "beta_end": BETA,
                "T": Field("int", 2, 100_000)}  # T: a typo, not memory
ENTRY_KEYS = ("name", "beta_schedule", *SD_BETAS)  # beta_schedule: one of SCHEDULES


def beta_schedule_spec(item: Any) -> dict[str, Any]:
    """A DDPM beta schedule given by name (with SD's betas) or as a dict, checked, with its label."""
    if isinstance(item, str):
        item = {"beta_schedule": item}
    if not isinstance(item, dict):
        raise UserError(f"schedules entry {item!r} must be a schedule name, 'model', 'scheduler' "
                        "or a dict with beta_schedule")
    if unknown := [key for key in item if key not in ENTRY_KEYS]:
        raise UserError(f"schedules entry key {unknown[0]!r} is unknown{suggestion(str(unknown[0]), ENTRY_KEYS)}; "
                        f"an entry sets {', '.join(ENTRY_KEYS)}")
    given = {k: v for k, v in item.items() if v is not None}
    given.update(check_fields(given, ENTRY_FIELDS, "schedules entry "))
    spec = {"beta_schedule": given.get("beta_schedule", "linear"), **{k: given.get(k, v) for k, v in SD_BETAS.items()}}
    choose("beta_schedule", spec["beta_schedule"], SCHEDULES)
    if not 0 < spec["beta_start"] <= spec["beta_end"] < 1:
        raise UserError(f"need 0 < beta_start <= beta_end < 1, got {spec['beta_start']} and {spec['beta_end']}")
    default = (f"squaredcos_cap_v2 T={spec['T']}" if spec["beta_schedule"] == "squaredcos_cap_v2"
               else f"{spec['beta_schedule']} {spec['beta_start']:g}->{spec['beta_end']:g} T={spec['T']}")
    return {"label": given.get("name") or default, **spec}


def model_kind(config: dict[str, Any]) -> str:
    """The model kind a scheduler config was made for: 'flow' for flow matching, else its prediction_type."""
    flow = (str(config.get("_class_name", "")).startswith("FlowMatch") or bool(config.get("use_flow_sigmas"))
            or config.get("prediction_type") == "flow_prediction"
            or ("shift" in config and "beta_schedule" not in config))
    return "flow" if flow else str(config.get("prediction_type") or "epsilon")


def betas(schedule: str, T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
          s: float = 0.008) -> np.ndarray:
    """beta_t: 'linear', 'scaled_linear' (linear in sqrt(beta)), 'squaredcos_cap_v2' (Nichol & Dhariwal 2021 eq. 17)."""
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
    """SNR_dB = 10 log10(alpha_bar / (1 - alpha_bar)); inf at alpha_bar = 1."""
    alpha_bar = np.asarray(alpha_bar, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(alpha_bar / (1.0 - alpha_bar))


def log_snr_db(lam) -> np.ndarray:
    """SNR in dB from the log-SNR: 10 log10(e^lambda)."""
    return 10.0 * np.asarray(lam, dtype=np.float64) / math.log(10.0)


def alpha_bar_at(alphas_cumprod, timestep):
    """alpha_bar at (possibly fractional) timesteps, linearly interpolated between integer ones; a float for one."""
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    found = np.interp(np.asarray(timestep, dtype=np.float64), np.arange(len(alphas_cumprod)), alphas_cumprod)
    return float(found) if found.ndim == 0 else found


def x0_pred(x_t, model_output, alpha_bar: float, prediction_type: str = "epsilon"):
    """x0 from an epsilon (Ho et al. 2020, eq. 15), v (Salimans & Ho 2022) or sample prediction."""
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


def schedule_table(betas: np.ndarray) -> pd.DataFrame:
    """Per-timestep alpha, alpha_bar, signal_frac and noise_frac (a and s of x_t), snr and the samplers' sigma =
    1/sqrt(snr) (x_t / sqrt(alpha_bar) = x_0 + sigma eps: Karras et al. 2022, Table 1; 14.6 at SD 1.5's t=999)."""
    beta = np.asarray(betas, dtype=np.float64)
    alpha = 1.0 - beta
    alpha_bar = np.cumprod(alpha)
    snr = alpha_bar / (1.0 - alpha_bar)
    return pd.DataFrame({"t": np.arange(len(beta)), "beta": beta, "alpha": alpha, "alpha_bar": alpha_bar,
                         "signal_frac": np.sqrt(alpha_bar), "noise_frac": np.sqrt(1.0 - alpha_bar), "snr": snr,
                         "snr_db": 10.0 * np.log10(snr), "sigma": np.sqrt((1.0 - alpha_bar) / alpha_bar)})


def zero_crossing(alpha_bar) -> int:
    """First t with alpha_bar_t <= 0.5, i.e. SNR_t <= 1 (0 dB); -1 if the schedule never gets there."""
    below = np.flatnonzero(np.asarray(alpha_bar) <= 0.5)
    return int(below[0]) if below.size else -1


def shift_sigma(sigma, shift: float) -> np.ndarray:
    """Timestep shift sigma' = shift sigma / (1 + (shift - 1) sigma) (SD3, Esser et al. 2024, eq. 23)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def unshift_sigma(sigma_shifted, shift: float) -> np.ndarray:
    """The inverse of eq. 23: sigma = sigma' / (shift - (shift - 1) sigma'), the time before shifting."""
    sigma_shifted = np.asarray(sigma_shifted, dtype=np.float64)
    return sigma_shifted / (shift - (shift - 1.0) * sigma_shifted)


def image_seq_len(width: int, height: int, vae_scale: int = 8, patch: int = 2) -> int:
    """Latent tokens of an image in SD3/Flux: (height / 8 / 2) (width / 8 / 2), 8x VAE and 2x2 patches."""
    return (int(height) // vae_scale // patch) * (int(width) // vae_scale // patch)


def dynamic_shift_mu(seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                     max_shift: float = 1.15) -> float:
    """Flux's mu, linear in the image sequence length (diffusers FluxPipeline `calculate_shift`); shift = exp(mu)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * m + base_shift - m * base_seq_len


def log_snr(signal, noise) -> np.ndarray:
    """lambda = log(a^2 / s^2) = 2 log(a / s) for x_t = a x_0 + s eps (natural log; +inf at s = 0, -inf at a = 0)."""
    with np.errstate(divide="ignore"):
        return 2.0 * (np.log(np.asarray(signal, dtype=np.float64)) - np.log(np.asarray(noise, dtype=np.float64)))


def flow_crossing(shift: float) -> float:
    """Normalised time where the shifted sigma' = 0.5 (log-SNR = 0): sigma = 1 / (1 + shift), from eq. 23."""
    return 1.0 / (1.0 + shift)


def flow_log_snr_table(shift: float, T: int = 1000) -> pd.DataFrame:
    """Per flow timestep: t = i/T (unshifted sigma), signal_frac 1 - sigma', noise_frac sigma' (eq. 23), log-SNR."""
    t = np.arange(1, T + 1, dtype=np.float64) / T
    sigma = shift_sigma(t, shift)
    return pd.DataFrame({"t": t, "signal_frac": 1.0 - sigma, "noise_frac": sigma,
                         "log_snr": log_snr(1.0 - sigma, sigma)})


def ddpm_log_snr_table(alpha_bar) -> pd.DataFrame:
    """Per DDPM timestep: t = (timestep + 1)/T, signal_frac, noise_frac (the noise's std, not the samplers' sigma) and
    log-SNR = log(alpha_bar / (1 - alpha_bar)) (-inf at a zero terminal SNR, Lin et al. 2024)."""
    alpha_bar = np.asarray(alpha_bar, dtype=np.float64)
    signal, noise = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    t = np.arange(1, len(alpha_bar) + 1, dtype=np.float64) / len(alpha_bar)
    return pd.DataFrame({"t": t, "signal_frac": signal, "noise_frac": noise, "log_snr": log_snr(signal, noise)})


def log_snr_crossing(t, lam) -> float:
    """The t where log-SNR first falls through 0 (signal and noise equal), linearly interpolated; nan if never."""
    t, lam = np.asarray(t, dtype=np.float64), np.asarray(lam, dtype=np.float64)
    below = np.flatnonzero(lam <= 0.0)
    if not below.size:
        return float("nan")
    i = int(below[0])
    if i == 0 or lam[i] == 0.0:
        return float(t[i])
    return float(t[i - 1] + (t[i] - t[i - 1]) * lam[i - 1] / (lam[i - 1] - lam[i]))
