"""One noise process per model kind: how x_t = a x_0 + s eps is parameterised, read from a scheduler, and turned back
into x_0 from the model's output. Jobs ask the model's process (`model.noise`), never its kind.

A level is where x_t stands, as row columns: `alpha_bar` and its sigma for the VP kinds, the flow `sigma` for rectified
flow (its `alpha_bar` None). In every table `sigma` is the samplers' sigma (VP: k-diffusion's
sqrt((1 - alpha_bar) / alpha_bar); flow: sigma of x_t = (1 - sigma) x_0 + sigma eps) and `noise_frac` the noise
coefficient s (VP: sqrt(1 - alpha_bar), the noise's std; flow: sigma again).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sdlab.lazy import pandas as pd
from sdlab.metrics.schedule import (alpha_bar_at, alpha_bar_from_betas, betas, ddpm_log_snr_table, flow_crossing,
                                    flow_log_snr_table, log_snr, log_snr_db, model_kind, schedule_table,
                                    snr_db_from_alpha_bar, unshift_sigma, x0_from_velocity, x0_pred)
from sdlab.models.architectures import SD15_SCHEDULER


class NoiseProcess:
    """x_t = signal x_0 + noise eps at a level; subclasses say how a level is read, and x_0 from the model's output."""

    kind: str
    equation: str
    has_betas: bool  # whether DDPM beta schedules (and their samplers) describe it
    predicts_noise = False  # whether the model's output is the noise eps itself

    def coefficients(self, level: dict[str, Any]) -> tuple[float, float]:
        raise NotImplementedError

    def log_snr(self, level: dict[str, Any]) -> float:
        """lambda = 2 ln(signal / noise) (Kingma et al. 2021)."""
        return float(log_snr(*self.coefficients(level)))

    def visits(self, scheduler, num_inference_steps: int, **set_timesteps) -> pd.DataFrame:
        """Timesteps a scheduler visits for N steps, with sigma and SNR_dB (`set_timesteps` takes Flux's mu)."""
        scheduler.set_timesteps(num_inference_steps, **set_timesteps)
        timestep = np.asarray(scheduler.timesteps, dtype=np.float64)
        sigma, snr_db = self.sigma_and_snr_db(scheduler, timestep)
        return pd.DataFrame({"step": np.arange(len(timestep)), "timestep": timestep, "sigma": sigma, "snr_db": snr_db})

    def noised(self, x0, eps, level: dict[str, Any]):
        """Forward noising q(x_t | x_0): signal x_0 + noise eps."""
        signal, noise = self.coefficients(level)
        return signal * x0 + noise * eps


def vp_level(alpha_bar: float) -> dict[str, float]:
    """A VP level: alpha_bar and k-diffusion's sigma = sqrt((1 - alpha_bar) / alpha_bar) (Karras et al. 2022, eq. 4)."""
    return {"alpha_bar": alpha_bar, "sigma": math.sqrt((1.0 - alpha_bar) / alpha_bar) if alpha_bar > 0 else math.inf}


class VPEpsilon(NoiseProcess):
    """DDPM, x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps with an eps-predicting model (Ho et al. 2020, eq. 4)."""

    kind = "epsilon"
    equation = "q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)"
    has_betas = True
    predicts_noise = True

    def model_schedule(self, config: dict[str, Any]) -> dict[str, Any]:
        """A scheduler config's training schedule as a `schedules` entry {name, beta_schedule, beta_start, beta_end, T}."""
        return {"name": "model", "beta_schedule": config.get("beta_schedule", "linear"),
                "beta_start": config.get("beta_start"), "beta_end": config.get("beta_end"),
                "T": config.get("num_train_timesteps")}

    def log_snr_steps(self, scheduler, steps: int, **set_timesteps) -> tuple[pd.DataFrame, pd.DataFrame, float, float]:
        """(log-SNR per timestep, visits, no shift, no crossing) from the scheduler's alpha_bar (Lin et al. 2024)."""
        alpha_bar = scheduler.alphas_cumprod.double().cpu().numpy()
        scheduler.set_timesteps(steps)
        timestep = np.asarray(scheduler.timesteps, dtype=np.float64)
        ab = alpha_bar_at(alpha_bar, timestep)
        visits = pd.DataFrame({"step": np.arange(len(timestep)), "timestep": timestep, "t": (timestep + 1) / len(alpha_bar),
                               "noise_frac": np.sqrt(1.0 - ab), "log_snr": log_snr(np.sqrt(ab), np.sqrt(1.0 - ab))})
        return ddpm_log_snr_table(alpha_bar), visits, float("nan"), float("nan")

    def training_levels(self, schedule: dict[str, Any]) -> list[dict[str, float | None]]:
        """The level at each training timestep t = 0 .. T-1 of a beta schedule {beta_schedule, T, beta_start, beta_end}."""
        alpha_bar = alpha_bar_from_betas(betas(schedule["beta_schedule"], schedule["T"], schedule["beta_start"],
                                               schedule["beta_end"]))
        return [vp_level(float(ab)) for ab in alpha_bar]

    def snr_curve(self, config: dict[str, Any]) -> pd.DataFrame:
        """SNR (dB) per training timestep t = 0 .. T-1 of the config's betas, else SD 1.5's (schedule_table columns)."""
        c = {**SD15_SCHEDULER, **config}
        return schedule_table(betas(c["beta_schedule"], T=int(c["num_train_timesteps"]), beta_start=float(c["beta_start"]),
                                    beta_end=float(c["beta_end"])))

    def sigma_and_snr_db(self, scheduler, timestep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sigma (the scheduler's if aligned, else sqrt((1 - alpha_bar) / alpha_bar)) and SNR_dB at each timestep."""
        alpha_bar = alpha_bar_at(scheduler.alphas_cumprod, timestep)
        sigmas = getattr(scheduler, "sigmas", None)
        if sigmas is not None and len(sigmas) == len(timestep) + 1:
            sigma = np.asarray(sigmas, dtype=np.float64)[: len(timestep)]
        else:
            sigma = np.sqrt((1.0 - alpha_bar) / alpha_bar)
        return sigma, snr_db_from_alpha_bar(alpha_bar)

    def level(self, scheduler, timestep: float) -> dict[str, float | None]:
        """alpha_bar of the denoiser call under way: 1/(1 + sigma^2) from the scheduler's sigma, else interpolated."""
        sigma = scheduler_sigma(scheduler)
        alpha_bar = alpha_bar_at(scheduler.alphas_cumprod, timestep) if sigma is None else 1.0 / (1.0 + sigma**2)
        return vp_level(float(alpha_bar))

    def step_label(self, step: dict[str, Any]) -> str:
        """Where a sampler step stands, for a frame label: its timestep."""
        return f"t={step['t']:.0f}"

    def coefficients(self, level: dict[str, Any]) -> tuple[float, float]:
        """(signal, noise) = (sqrt(alpha_bar), sqrt(1 - alpha_bar))."""
        return math.sqrt(level["alpha_bar"]), math.sqrt(1.0 - level["alpha_bar"])

    def x0(self, x_t, output, level: dict[str, Any]):
        """x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) (for v: sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v)."""
        return x0_pred(x_t, output, level["alpha_bar"], self.kind)


class VPVelocity(VPEpsilon):
    """DDPM noising with a v-predicting model, v = alpha eps - sigma x_0 (Salimans & Ho 2022)."""

    kind = "v_prediction"
    predicts_noise = False


class RectifiedFlow(NoiseProcess):
    """x_t = (1 - sigma) x_0 + sigma eps with a velocity model v = eps - x_0 (Liu et al. 2022; SD3, Esser et al. 2024)."""

    kind = "flow"
    equation = "x_t = (1 - sigma_t) x_0 + sigma_t eps, sigma_t = t / T (flow matching)"
    has_betas = False

    def model_schedule(self, config: dict[str, Any]) -> dict[str, Any]:
        """A flow scheduler config's training grid as a `schedules` entry: T timesteps, sigma = t / T."""
        return {"name": "model (flow matching)", "T": int(config.get("num_train_timesteps") or 1000)}

    def log_snr_steps(self, scheduler, steps: int, **set_timesteps) -> tuple[pd.DataFrame, pd.DataFrame, float, float]:
        """(log-SNR per timestep, visits, shift, crossing): sigma' by SD3 eq. 23, shift static or exp(Flux's mu)."""
        config, mu = scheduler.config, set_timesteps.get("mu")
        exponential = config.get("time_shift_type", "exponential") == "exponential"
        shift = (math.exp(mu) if exponential else mu) if mu is not None else float(
            config.get("shift", config.get("flow_shift", 1.0)))
        scheduler.set_timesteps(steps, **set_timesteps)
        sigma = np.asarray(scheduler.sigmas, dtype=np.float64)[:-1]
        visits = pd.DataFrame({"step": np.arange(len(sigma)), "timestep": np.asarray(scheduler.timesteps, float),
                               "t": unshift_sigma(sigma, shift), "noise_frac": sigma,
                               "log_snr": log_snr(1.0 - sigma, sigma)})
        return flow_log_snr_table(shift, int(config.num_train_timesteps)), visits, shift, flow_crossing(shift)

    def training_levels(self, schedule: dict[str, Any]) -> list[dict[str, float | None]]:
        """sigma = t / T at each training timestep t = 0 .. T-1, which no shift changes."""
        return [{"alpha_bar": None, "sigma": t / schedule["T"]} for t in range(schedule["T"])]

    def snr_curve(self, config: dict[str, Any]) -> pd.DataFrame:
        """SNR (dB) per training timestep t = 1 .. T, where sigma = t / T whatever the shift."""
        T = int(config.get("num_train_timesteps", 1000))
        t = np.arange(1, T + 1, dtype=np.float64)
        return pd.DataFrame({"t": t, "snr_db": log_snr_db(log_snr(1.0 - t / T, t / T))})

    def sigma_and_snr_db(self, scheduler, timestep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The scheduler's flow sigma at each visit and SNR_dB of ((1 - sigma) / sigma)^2."""
        sigma = np.asarray(scheduler.sigmas, dtype=np.float64)[: len(timestep)]
        return sigma, log_snr_db(log_snr(1.0 - sigma, sigma))

    def level(self, scheduler, timestep: float) -> dict[str, float | None]:
        """The scheduler's flow sigma for the denoiser call under way (its first before any step)."""
        return {"alpha_bar": None, "sigma": scheduler_sigma(scheduler, first=True)}

    def step_label(self, step: dict[str, Any]) -> str:
        """Where a sampler step stands, for a frame label: its flow sigma."""
        return f"sigma={step['sigma']:.2f}"

    def coefficients(self, level: dict[str, Any]) -> tuple[float, float]:
        """(signal, noise) = (1 - sigma, sigma)."""
        return 1.0 - level["sigma"], level["sigma"]

    def x0(self, x_t, output, level: dict[str, Any]):
        """x_0 = x_t - sigma v."""
        return x0_from_velocity(x_t, output, level["sigma"])


PROCESSES = {process.kind: process for process in (VPEpsilon(), VPVelocity(), RectifiedFlow())}


def process_of(config: dict[str, Any]) -> NoiseProcess:
    """The noise process a scheduler config was made for."""
    return PROCESSES[model_kind(config)]


def scheduler_sigma(scheduler, first: bool = False) -> float | None:
    """sigmas[step_index] mid-sampling (`first`: begin_index before the first step); None if it keeps no sigmas."""
    index = getattr(scheduler, "step_index", None)
    if index is None and first:
        index = getattr(scheduler, "begin_index", None) or 0
    sigmas = getattr(scheduler, "sigmas", None)
    if index is not None and sigmas is not None and index < len(sigmas):
        return float(sigmas[index])
    return None
