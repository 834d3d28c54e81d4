import math

import numpy as np
import pytest
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, KDPM2DiscreteScheduler

from sdlab.metrics.schedule import (
    alpha_bar_from_betas,
    betas,
    ddpm_log_snr_table,
    log_snr_crossing,
    schedule_table,
    snr_db_from_alpha_bar,
    zero_crossing,
)
from sdlab.models.noise import PROCESSES

VP, FLOW = PROCESSES["epsilon"], PROCESSES["flow"]
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012)
TABLE_COLUMNS = ["t", "beta", "alpha", "alpha_bar", "signal_frac", "noise_frac", "snr", "snr_db", "sigma"]


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("beta_start,beta_end", [(0.00085, 0.012), (1e-4, 0.02)])
def test_betas_match_diffusers(schedule, beta_start, beta_end):
    reference = DDPMScheduler(
        beta_schedule=schedule, beta_start=beta_start, beta_end=beta_end, num_train_timesteps=1000
    ).betas.numpy()
    ours = betas(schedule, T=1000, beta_start=beta_start, beta_end=beta_end)
    assert ours.shape == (1000,)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-7)


def test_betas_rejects_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule"):
        betas("sigmoid")


def test_cosine_is_capped_and_s_matters():
    b = betas("squaredcos_cap_v2")
    assert b.max() == pytest.approx(0.999)
    assert np.all(np.diff(b) >= 0)
    assert not np.allclose(betas("squaredcos_cap_v2", s=0.0)[:10], b[:10])


def test_sd_linear_schedule_landmarks():
    table = schedule_table(betas("linear", T=1000, **SD_BETAS))
    assert round(table.snr_db.iloc[0], 2) == 30.70
    assert round(table.snr_db.iloc[999], 2) == -28.01
    assert zero_crossing(table.alpha_bar) == 284
    assert round(table.alpha_bar.iloc[500], 3) == 0.161


def test_scaled_linear_differs_from_linear():
    linear = schedule_table(betas("linear", **SD_BETAS))
    scaled = schedule_table(betas("scaled_linear", **SD_BETAS))
    # Same endpoints in beta, so the same t=0 value ...
    assert scaled.snr_db.iloc[0] == pytest.approx(linear.snr_db.iloc[0])
    # ... but sqrt-space interpolation keeps betas smaller in between: more signal left.
    assert zero_crossing(scaled.alpha_bar) == 354
    assert round(scaled.alpha_bar.iloc[500], 3) == 0.276
    assert round(scaled.snr_db.iloc[999], 2) == -23.30
    assert np.all(scaled.alpha_bar.iloc[1:-1].to_numpy() > linear.alpha_bar.iloc[1:-1].to_numpy())


def test_schedule_table_columns_and_identities():
    table = schedule_table(betas("scaled_linear", **SD_BETAS))
    assert list(table.columns) == TABLE_COLUMNS
    assert table.t.tolist() == list(range(1000))
    np.testing.assert_allclose(table.signal_frac**2 + table.noise_frac**2, 1.0)
    np.testing.assert_allclose(table.sigma, 1.0 / np.sqrt(table.snr))
    np.testing.assert_allclose(table.snr_db, snr_db_from_alpha_bar(table.alpha_bar))
    np.testing.assert_allclose(table.alpha_bar, alpha_bar_from_betas(table.beta))
    assert table.snr.is_monotonic_decreasing


def test_sigma_matches_euler_training_sigmas():
    table = schedule_table(betas("scaled_linear", **SD_BETAS))
    euler = EulerDiscreteScheduler(beta_schedule="scaled_linear", **SD_BETAS)
    # EulerDiscreteScheduler's sigmas before set_timesteps are the training sigmas, descending.
    np.testing.assert_allclose(table.sigma.to_numpy()[::-1], euler.sigmas.numpy()[:-1], rtol=1e-4)


def test_zero_crossing_edges():
    assert zero_crossing([0.9, 0.6, 0.5, 0.2]) == 2
    assert zero_crossing([0.9, 0.8]) == -1


def test_scheduler_visits_ddim_integer_timesteps():
    ddim = DDIMScheduler(beta_schedule="scaled_linear", **SD_BETAS)
    visits = VP.visits(ddim, 10)
    assert list(visits.columns) == ["step", "timestep", "sigma", "snr_db"]
    assert visits.timestep.tolist() == list(range(900, -1, -100))
    table = schedule_table(betas("scaled_linear", **SD_BETAS))
    expected = table.set_index("t").loc[visits.timestep.astype(int)]
    np.testing.assert_allclose(visits.sigma, expected.sigma, rtol=1e-4)
    np.testing.assert_allclose(visits.snr_db, expected.snr_db, atol=1e-3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scheduler_visits_euler_uses_scheduler_sigmas_and_interpolates():
    euler = EulerDiscreteScheduler(beta_schedule="scaled_linear", **SD_BETAS)
    visits = VP.visits(euler, 7)
    assert len(visits) == 7
    assert visits.step.tolist() == list(range(7))
    np.testing.assert_allclose(visits.sigma, euler.sigmas.numpy()[:7])
    # linspace spacing gives fractional timesteps, e.g. 999 * 5/6 = 832.5
    assert any(t != math.floor(t) for t in visits.timestep)
    # interpolated alpha_bar and the scheduler's sigma agree to a fraction of a dB
    np.testing.assert_allclose(visits.snr_db, -20 * np.log10(visits.sigma), atol=0.1)
    assert visits.snr_db.is_monotonic_increasing


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scheduler_visits_falls_back_when_sigmas_not_aligned():
    kdpm2 = KDPM2DiscreteScheduler(beta_schedule="scaled_linear", **SD_BETAS)
    visits = VP.visits(kdpm2, 5)
    assert len(visits) == len(kdpm2.timesteps) != len(kdpm2.sigmas) - 1
    np.testing.assert_allclose(visits.sigma, 10 ** (-visits.snr_db / 20), rtol=1e-9)


def test_scheduler_visits_of_flow_matching_read_the_flow_sigma():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sd3 = FlowMatchEulerDiscreteScheduler(shift=3.0)
    visits = FLOW.visits(sd3, 4)
    np.testing.assert_allclose(visits.sigma, sd3.sigmas.numpy()[:4])
    np.testing.assert_allclose(visits.timestep, 1000 * visits.sigma, rtol=1e-5)
    with np.errstate(divide="ignore"):  # the first visit is pure noise: sigma 1, -inf dB
        np.testing.assert_allclose(visits.snr_db, 20 * np.log10((1 - visits.sigma) / visits.sigma))
    flux = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    assert len(FLOW.visits(flux, 3, mu=1.15)) == 3  # Flux's resolution-dependent shift needs mu


def test_ddpm_log_snr_is_the_natural_log_of_alpha_bar_over_one_minus_alpha_bar():
    table = schedule_table(betas("scaled_linear", **SD_BETAS))
    lam = ddpm_log_snr_table(table.alpha_bar)
    assert lam.t.iloc[0] == 0.001 and lam.t.iloc[-1] == 1.0
    np.testing.assert_allclose(lam.log_snr, np.log(table.snr), rtol=1e-9)
    np.testing.assert_allclose(lam.signal_frac**2 + lam.noise_frac**2, 1.0)
    # the interpolated crossing sits between timesteps 353 and 354 (alpha_bar = 0.5 first reached at 354)
    assert 354 / 1000 < log_snr_crossing(lam.t, lam.log_snr) <= 355 / 1000


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sigma_is_the_samplers_sigma_and_noise_frac_the_noise_coefficient_in_every_table():
    """schedule, visits, log_snr and family_visits: `sigma` where a table has it is the sampler's sigma (VP:
    k-diffusion's sqrt((1 - alpha_bar) / alpha_bar), 14.6 at SD 1.5's t=999; flow: its own sigma), `noise_frac` the
    noise coefficient s of x_t = a x_0 + s eps (VP: sqrt(1 - alpha_bar), 0.998 there; flow: sigma again)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    euler = EulerDiscreteScheduler(beta_schedule="scaled_linear", **SD_BETAS)
    ab = euler.alphas_cumprod.double().numpy()
    at = lambda timestep: np.interp(timestep, np.arange(len(ab)), ab)  # noqa: E731
    curve, family_visits, _, _ = VP.log_snr_steps(euler, 10)
    tables = {"schedule": (schedule_table(betas("scaled_linear", **SD_BETAS)), lambda f: f["alpha_bar"]),
              "visits": (VP.visits(EulerDiscreteScheduler(beta_schedule="scaled_linear", **SD_BETAS), 10),
                         lambda f: at(f["timestep"])),
              "log_snr": (curve, lambda f: ab[np.rint(f["t"] * len(ab)).astype(int) - 1]),
              "family_visits": (family_visits, lambda f: at(f["timestep"]))}
    for name, (frame, alpha_bar) in tables.items():
        ab_rows = np.asarray(alpha_bar(frame), dtype=float)
        if "sigma" in frame:
            np.testing.assert_allclose(frame["sigma"], np.sqrt((1 - ab_rows) / ab_rows), rtol=1e-4, err_msg=name)
        if "noise_frac" in frame:
            np.testing.assert_allclose(frame["noise_frac"], np.sqrt(1 - ab_rows), rtol=1e-4, err_msg=name)
    assert {"noise_frac", "log_snr"} <= set(curve) and {"noise_frac", "log_snr"} <= set(family_visits)
    assert schedule_table(betas("scaled_linear", **SD_BETAS))["sigma"].iloc[-1] == pytest.approx(14.61, abs=0.01)

    sd3 = FlowMatchEulerDiscreteScheduler(shift=3.0)
    curve, family_visits, _, _ = FLOW.log_snr_steps(sd3, 4)
    sigmas = sd3.sigmas.numpy()[:4]
    np.testing.assert_allclose(family_visits["noise_frac"], sigmas)
    np.testing.assert_allclose(family_visits.get("sigma", sigmas), sigmas)
    np.testing.assert_allclose(curve["noise_frac"] + curve["signal_frac"], 1.0)
