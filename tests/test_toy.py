import math

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.models.embeddings import get_timestep_embedding

from sdlab.metrics.toy import (
    cfg_simulation,
    cut_per_doubling,
    ddim_perfect_predictor_mse,
    ddim_step,
    gaussian_prior_eps,
    knee,
    norm_threshold_scale,
    sinusoidal_timestep_embedding,
    toy_noise_predictor_mse,
    trailing_timesteps,
)

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012)


def _sd_ddim(num_inference_steps=50):
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, **SD_BETAS)
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


def _alpha_bars(scheduler, timestep):
    prev = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_bar_prev = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    return scheduler.alphas_cumprod[timestep], alpha_bar_prev


# --------------------------------------------------------------------------- DDIM step


@pytest.mark.parametrize("index", [0, 17, 49])
def test_ddim_step_matches_diffusers_eta0(index):
    scheduler = _sd_ddim(50)
    timestep = int(scheduler.timesteps[index])
    gen = torch.Generator().manual_seed(index)
    x_t = torch.randn(2, 4, 8, 8, generator=gen)
    eps = torch.randn(2, 4, 8, 8, generator=gen)
    expected = scheduler.step(eps, timestep, x_t, eta=0.0).prev_sample
    ours = ddim_step(x_t, eps, *_alpha_bars(scheduler, timestep))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_ddim_step_matches_diffusers_with_eta():
    scheduler = _sd_ddim(25)
    timestep = int(scheduler.timesteps[5])
    gen = torch.Generator().manual_seed(1)
    x_t, eps, z = (torch.randn(1, 4, 8, 8, generator=gen) for _ in range(3))
    expected = scheduler.step(eps, timestep, x_t, eta=0.7, variance_noise=z).prev_sample
    ours = ddim_step(x_t, eps, *_alpha_bars(scheduler, timestep), eta=0.7, noise=z)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="noise"):
        ddim_step(x_t, eps, *_alpha_bars(scheduler, timestep), eta=0.7)


def test_ddim_step_numpy_and_inversion_roundtrip():
    rng = np.random.default_rng(0)
    x_t, eps = rng.standard_normal(16), rng.standard_normal(16)
    x_prev = ddim_step(x_t, eps, 0.3, 0.8)
    assert isinstance(x_prev, np.ndarray)
    # eta = 0 with a fixed eps is an invertible map between noise levels
    np.testing.assert_allclose(ddim_step(x_prev, eps, 0.8, 0.3), x_t, rtol=1e-12, atol=1e-12)
    # landing at alpha_bar = 1 returns x0_pred
    np.testing.assert_allclose(ddim_step(x_t, eps, 0.3, 1.0), (x_t - math.sqrt(0.7) * eps) / math.sqrt(0.3))


def test_trailing_timesteps():
    assert trailing_timesteps(1000, 5).tolist() == [999, 799, 599, 399, 199]
    assert trailing_timesteps(1000, 1000).tolist() == list(range(999, -1, -1))
    for steps in (3, 7, 13, 333):
        grid = trailing_timesteps(1000, steps)
        assert len(grid) == steps and grid[0] == 999 and np.all(np.diff(grid) < 0)


# --------------------------------------------------------------------------- DDIM round-trip toy


def test_gaussian_prior_eps_is_the_posterior_mean():
    rng = np.random.default_rng(0)
    mu, var, alpha_bar = 0.3, 0.5, 0.4
    x0 = mu + math.sqrt(var) * rng.standard_normal(400_000)
    eps = rng.standard_normal(x0.shape)
    x_t = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps
    eps_hat = gaussian_prior_eps(x_t, alpha_bar, mu, var)
    mse = np.mean((eps_hat - eps) ** 2)
    assert mse == pytest.approx(alpha_bar * var / (alpha_bar * var + 1 - alpha_bar), rel=0.01)
    assert mse < np.mean((1.05 * eps_hat - eps) ** 2) and mse < np.mean((0.95 * eps_hat - eps) ** 2)


@pytest.fixture(scope="module")
def ddim_table():
    x0 = np.sin(np.linspace(0, 4 * np.pi, 256))
    return ddim_perfect_predictor_mse(x0)


def test_ddim_toy_discretization_error_shrinks(ddim_table):
    assert ddim_table.steps.tolist() == [5, 10, 20, 50, 100, 200, 500, 1000]
    assert ddim_table.mse.is_monotonic_decreasing
    assert ddim_table.mse.iloc[0] > 0.1
    assert ddim_table.mse.iloc[-1] < 1e-4
    assert ddim_table.mse.iloc[0] / ddim_table.mse.iloc[-1] > 1000


def test_ddim_toy_oracle_is_exact_for_any_step_count(ddim_table):
    assert (ddim_table.mse_oracle < 1e-25).all()


def test_ddim_toy_knee(ddim_table):
    assert knee(ddim_table.steps, ddim_table.mse) == 20


def test_every_doubling_of_ddim_steps_cuts_the_error_by_far_more_than_the_articles_knee(ddim_table):
    assert cut_per_doubling([1, 2, 8], [1.0, 0.5, 0.125]) == pytest.approx([0.5, 0.5])
    cuts = cut_per_doubling(ddim_table.steps, ddim_table.mse)
    assert len(cuts) == 7 and (cuts > 0.6).all() and (cuts < 0.75).all()


def test_knee_definition():
    assert knee([1, 10, 100, 1000], [1.0, 0.01, 0.009, 0.008]) == 10
    assert knee([1000, 1, 100, 10], [0.008, 1.0, 0.009, 0.01]) == 10
    assert knee([1, 10, 100, 1000], [1.0, 0.9, 0.8, 0.0]) == 1
    assert knee([1, 10, 100], [0.5, 0.5, 0.5]) == 1


# --------------------------------------------------------------------------- CFG


def test_cfg_simulation_shape_and_trends():
    df = cfg_simulation()
    assert list(df.columns) == ["scale", "cosine_to_signal", "norm", "amplification"]
    assert df.scale.tolist() == [1, 3, 5, 7.5, 10, 15, 20]
    assert df.amplification.iloc[0] == pytest.approx(1.0)
    assert df.cosine_to_signal.is_monotonic_increasing
    assert df.norm.is_monotonic_increasing
    # alignment saturates at cos(cond - uncond, d) = 1/sqrt(1 + noise²)
    assert df.cosine_to_signal.iloc[-1] < 1 / math.sqrt(1 + 0.5**2)
    # |eps_w| ≈ |eps_uncond| sqrt(1 + w² gap²) for an offset nearly orthogonal to eps_uncond
    expected = math.sqrt(1 + (20 * 0.25) ** 2) / math.sqrt(1 + 0.25**2)
    assert df.amplification.iloc[-1] == pytest.approx(expected, rel=0.05)


def test_cfg_threshold_scale():
    df = cfg_simulation()
    w = norm_threshold_scale(df, factor=3.0)
    assert 10 < w < 15
    assert norm_threshold_scale(df, factor=100.0) != norm_threshold_scale(df, factor=100.0)  # nan
    synthetic = pd.DataFrame({"scale": [1, 2, 3], "amplification": [1.0, 2.0, 3.0]})  # |eps_w| / |eps_c| = w
    assert norm_threshold_scale(synthetic, 2.5) == pytest.approx(2.5)
    assert norm_threshold_scale(synthetic, 0.5) == 1.0
    assert norm_threshold_scale(synthetic, 3.0) == pytest.approx(3.0)
    assert math.isnan(norm_threshold_scale(synthetic, 4.0))
    # the squared ratio is a quadratic in w: solved from the seven scales, not read off the line between two
    dense = cfg_simulation(scales=tuple(np.linspace(1, 20, 19_001)))
    assert w == pytest.approx(norm_threshold_scale(dense, factor=3.0), abs=1e-6)


# --------------------------------------------------------------------------- training objective


def test_toy_noise_predictor_mse():
    df = toy_noise_predictor_mse()
    assert list(df.columns) == ["t_lo", "t_hi", "count", "mse_zero", "mse_random", "mse_perfect"]
    assert len(df) == 10 and df["count"].sum() == 50
    assert df.t_lo.iloc[0] == 0 and df.t_hi.iloc[-1] == 200
    filled = df[df["count"] > 0]
    np.testing.assert_allclose(filled.mse_zero, 1.0, atol=0.06)
    np.testing.assert_allclose(filled.mse_random, 2.0, atol=0.15)
    assert (filled.mse_perfect < 1e-20).all()


def test_toy_noise_predictor_empty_bins_are_nan():
    df = toy_noise_predictor_mse(n=3, bins=10)
    assert df["count"].sum() == 3
    assert df.loc[df["count"] == 0, "mse_zero"].isna().all()
    assert (df["count"] == 0).sum() >= 7


# --------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("dim", [320, 7])
@pytest.mark.parametrize("flip,shift", [(True, 0.0), (False, 1.0)])
def test_timestep_embedding_matches_diffusers(dim, flip, shift):
    timesteps = [0, 1, 10, 250.5, 999]
    expected = get_timestep_embedding(
        torch.tensor(timesteps), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift
    ).numpy()
    ours = sinusoidal_timestep_embedding(timesteps, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    assert ours.shape == (5, dim)
    np.testing.assert_allclose(ours, expected, atol=2e-4)


def test_timestep_embedding_sd_layout():
    emb = sinusoidal_timestep_embedding([0, 999], 320)
    np.testing.assert_allclose(emb[0, :160], 1.0)  # cos(0) first with flip_sin_to_cos=True
    np.testing.assert_allclose(emb[0, 160:], 0.0)
    assert emb[1, 0] == pytest.approx(math.cos(999.0))  # highest frequency is exactly 1
    assert not np.allclose(emb[1], emb[0])
