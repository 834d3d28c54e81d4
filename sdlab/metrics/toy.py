"""Small numerical toys that explain diffusion sampling without a model: x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps."""

from __future__ import annotations

import math

import numpy as np

from sdlab.lazy import pandas as pd
from sdlab.metrics.schedule import alpha_bar_from_betas, betas

DDIM_STEPS = (5, 10, 20, 50, 100, 200, 500, 1000)
CFG_SCALES = (1, 3, 5, 7.5, 10, 15, 20)
KNEE_CUT = 0.10  # the article's knee: where a doubling of the steps cuts the error by less than this


def ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, eta: float = 0.0, noise=None):
    """DDIM step (Song et al. 2021, eq. 12, sigma_t of eq. 16), numpy or torch; ab_prev < ab_t with eta = 0 inverts."""
    alpha_bar_t, alpha_bar_prev = float(alpha_bar_t), float(alpha_bar_prev)
    x0_pred = (x_t - math.sqrt(1.0 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)
    sigma_t = 0.0
    if eta > 0:
        if noise is None:
            raise ValueError("eta > 0 needs `noise` (a standard normal sample shaped like x_t)")
        sigma_t = eta * math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)) * math.sqrt(
            1.0 - alpha_bar_t / alpha_bar_prev)
    x_prev = math.sqrt(alpha_bar_prev) * x0_pred + math.sqrt(1.0 - alpha_bar_prev - sigma_t**2) * eps
    return x_prev + sigma_t * noise if sigma_t > 0 else x_prev


def trailing_timesteps(T: int, steps: int) -> np.ndarray:
    """Descending 'trailing' grid t_k = round(T - k T/N) - 1, k = 0..N-1: always starts at T-1, N = T visits every t."""
    return np.round(T - np.arange(steps) * T / steps).astype(int) - 1


def gaussian_prior_eps(x_t: np.ndarray, alpha_bar: float, mu: float, var: float) -> np.ndarray:
    """Bayes-optimal E[eps | x_t] for x0 ~ N(mu, var): sqrt(1 - ab)(x_t - sqrt(ab) mu)/(ab var + 1 - ab)."""
    return math.sqrt(1.0 - alpha_bar) * (x_t - math.sqrt(alpha_bar) * mu) / (alpha_bar * var + 1.0 - alpha_bar)


def ddim_perfect_predictor_mse(x0, T: int = 1000, steps_list=DDIM_STEPS, schedule: str = "linear",
                               seed: int = 0) -> pd.DataFrame:
    """Round-trip MSE of N-step DDIM inversion then sampling (trailing grid) with the exact E[eps | x_t] of a Gaussian
    prior fitted to x0 (`mse`: the ODE's discretisation error) and with the oracle eps (`mse_oracle`: rounding only)."""
    x0 = np.asarray(x0, dtype=np.float64)
    alpha_bar = alpha_bar_from_betas(betas(schedule, T))
    mu, var = float(x0.mean()), float(x0.var())
    z = np.random.default_rng(seed).standard_normal(x0.shape)
    rows = []
    for steps in steps_list:
        # Noise levels from clean (alpha_bar = 1) up to t = T-1, then the prior's DDIM there (inversion) and back.
        levels = np.concatenate([[1.0], alpha_bar[trailing_timesteps(T, steps)[::-1]]])
        x, there_and_back = x0, np.concatenate([levels, levels[-2::-1]])
        for alpha_bar_t, alpha_bar_next in zip(there_and_back[:-1], there_and_back[1:]):
            x = ddim_step(x, gaussian_prior_eps(x, alpha_bar_t, mu, var), alpha_bar_t, alpha_bar_next)
        mse = float(np.mean((x - x0) ** 2))
        # Oracle eps from the known x0, sampling down from a forward-noised x_T.
        x = math.sqrt(levels[-1]) * x0 + math.sqrt(1.0 - levels[-1]) * z
        for alpha_bar_t, alpha_bar_prev in zip(levels[:0:-1], levels[-2::-1]):
            eps = (x - math.sqrt(alpha_bar_t) * x0) / math.sqrt(1.0 - alpha_bar_t)
            x = ddim_step(x, eps, alpha_bar_t, alpha_bar_prev)
        rows.append({"steps": int(steps), "mse": mse, "mse_oracle": float(np.mean((x - x0) ** 2))})
    return pd.DataFrame(rows)


def cut_per_doubling(steps, mse) -> np.ndarray:
    """Share of the error a doubling of steps removes between counts a < b: 1 - (mse_b / mse_a) ** (1 / log2(b / a))."""
    steps, mse = np.asarray(steps, dtype=np.float64), np.asarray(mse, dtype=np.float64)
    return 1.0 - (mse[1:] / mse[:-1]) ** (1.0 / np.log2(steps[1:] / steps[:-1]))


def knee(steps, mse) -> int:
    """Step count at maximum distance below the chord of (log10 steps, mse), both min-max normalised (Kneedle, Satopää
    et al. 2011); MSE stays linear, as a power law has no knee on log-log axes; steps[0] when the MSE is flat."""
    steps, mse = np.asarray(steps, dtype=np.float64), np.asarray(mse, dtype=np.float64)
    order = np.argsort(steps)
    steps, mse = steps[order], mse[order]
    x = np.log10(steps)
    x = (x - x[0]) / (x[-1] - x[0])
    y_span = mse.max() - mse.min()
    if y_span == 0:
        return int(steps[0])
    y = (mse - mse.min()) / y_span
    chord = y[0] + (y[-1] - y[0]) * x
    return int(steps[np.argmax(chord - y)])


def cfg_simulation(scales=CFG_SCALES, dim: int = 768, seed: int = 0, gap: float = 0.25,
                   noise: float = 0.5) -> pd.DataFrame:
    """CFG (Ho & Salimans 2022) on random vectors leaning to a signal d: per w cos(eps_w, d), |eps_w|, amplification."""
    rng = np.random.default_rng(seed)
    eps_uncond = rng.standard_normal(dim)
    d = rng.standard_normal(dim)
    d /= np.linalg.norm(d)
    n = rng.standard_normal(dim)
    direction = d + noise * n / np.linalg.norm(n)
    eps_cond = eps_uncond + gap * np.linalg.norm(eps_uncond) * direction / np.linalg.norm(direction)
    rows = []
    for w in scales:
        eps_w = eps_uncond + w * (eps_cond - eps_uncond)
        norm = float(np.linalg.norm(eps_w))
        rows.append({"scale": float(w), "cosine_to_signal": float(eps_w @ d / norm), "norm": norm,
                     "amplification": norm / float(np.linalg.norm(eps_cond))})
    return pd.DataFrame(rows)


def norm_threshold_scale(df: pd.DataFrame, factor: float = 3.0) -> float:
    """Smallest sampled-range w with |eps_w| / |eps_cond| >= factor; nan if never reached. eps_w = eps_u + w (eps_c -
    eps_u) makes the squared ratio a quadratic in w, solved from three scales or more (Ho & Salimans 2022, eq. 6)."""
    df = df.sort_values("scale")
    scale = df["scale"].to_numpy(dtype=np.float64)
    amplification = df["amplification"].to_numpy(dtype=np.float64)
    above = np.flatnonzero(amplification >= factor)
    if above.size == 0:
        return math.nan
    i = int(above[0])
    if i == 0:
        return float(scale[0])
    if len(np.unique(scale)) >= 3:
        a, b, c = np.polyfit(scale, amplification**2, 2)
        roots = np.roots([a, b, c - factor**2])
        crossing = [r.real for r in roots if abs(r.imag) < 1e-9 and scale[i - 1] <= r.real <= scale[i]]
        if crossing:
            return float(min(crossing))
    frac = (factor - amplification[i - 1]) / (amplification[i] - amplification[i - 1])
    return float(scale[i - 1] + frac * (scale[i] - scale[i - 1]))


def toy_noise_predictor_mse(T: int = 200, n: int = 50, shape=(1, 32, 32), bins: int = 10, seed: int = 0,
                            schedule: str = "linear") -> pd.DataFrame:
    """DDPM loss E|eps - eps_hat(x_t, t)|² per timestep bin [t_lo, t_hi) for eps_hat = 0 (-> 1), eps_hat ~ N(0, I) (-> 2)
    and the exact eps (-> 0), on n samples x0 ~ U(-1, 1)^shape at t ~ U{0..T-1} (an empty bin: count 0, NaN MSEs)."""
    rng = np.random.default_rng(seed)
    alpha_bar = alpha_bar_from_betas(betas(schedule, T))
    x0 = rng.uniform(-1.0, 1.0, size=(n, *shape))
    eps = rng.standard_normal((n, *shape))
    t = rng.integers(0, T, size=n)
    ab = alpha_bar[t].reshape(n, *([1] * len(shape)))
    x_t = np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * eps
    eps_random = rng.standard_normal((n, *shape))
    eps_exact = (x_t - np.sqrt(ab) * x0) / np.sqrt(1.0 - ab)
    axes = tuple(range(1, 1 + len(shape)))
    per_sample = pd.DataFrame({"t": t, "mse_zero": np.mean(eps**2, axis=axes),
                               "mse_random": np.mean((eps_random - eps) ** 2, axis=axes),
                               "mse_perfect": np.mean((eps_exact - eps) ** 2, axis=axes)})
    edges = np.linspace(0, T, bins + 1).round().astype(int)
    per_sample["bin"] = np.searchsorted(edges, per_sample["t"], side="right") - 1
    grouped = per_sample.groupby("bin")
    table = pd.DataFrame({"t_lo": edges[:-1], "t_hi": edges[1:]})
    table["count"] = grouped.size().reindex(range(bins), fill_value=0).to_numpy()
    for col in ("mse_zero", "mse_random", "mse_perfect"):
        table[col] = grouped[col].mean().reindex(range(bins)).to_numpy()
    return table


def timestep_frequencies(dim: int, downscale_freq_shift: float = 0.0, max_period: float = 10000.0) -> np.ndarray:
    """The angular frequency w_k = max_period^(-k/(dim/2 - shift)) of each of the embedding's dim // 2 sinusoids."""
    half_dim = dim // 2
    return np.exp(-math.log(max_period) * np.arange(half_dim) / (half_dim - downscale_freq_shift))


def sinusoidal_timestep_embedding(timesteps, dim: int, flip_sin_to_cos: bool = True, downscale_freq_shift: float = 0.0,
                                  max_period: float = 10000.0, scale: float = 1.0) -> np.ndarray:
    """[sin(t w_k), cos(t w_k)], w_k = max_period^(-k/(dim/2 - shift)), as diffusers get_timestep_embedding."""
    timesteps = np.asarray(timesteps, dtype=np.float64).reshape(-1)
    freqs = timestep_frequencies(dim, downscale_freq_shift, max_period)
    angles = scale * timesteps[:, None] * freqs[None, :]
    sin, cos = np.sin(angles), np.cos(angles)
    emb = np.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2 == 1:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb
