"""Schedulers by model kind: flow matching (SD3, Flux) beside the DDPM family, shift options, and log-SNR by family."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cli_helpers import bare_env, run_cli

from sdlab.errors import CannotRun, UserError
from sdlab.metrics.schedule import (dynamic_shift_mu, flow_crossing, flow_log_snr_table, image_seq_len,
                                    log_snr_crossing, shift_sigma, unshift_sigma)
from sdlab.models.schedulers import (FAMILY_CONFIGS, KINDS, SCHEDULERS, check_fit, check_kind, check_options, check_steps, fitting,
                              make_scheduler, model_kind, timestep_kwargs)

ROOT = Path(__file__).resolve().parent.parent
FLOW = ["ddim", "euler", "heun", "dpmpp_2m", "unipc"]  # the names with a flow solver
SD3, FLUX = FAMILY_CONFIGS["sd3"], FAMILY_CONFIGS["flux_dev"]


def test_every_registered_scheduler_declares_its_kinds():
    for name, spec in SCHEDULERS.items():
        expected = {"epsilon", "v_prediction", "flow"} if name in FLOW else {"epsilon", "v_prediction"}
        assert spec.kinds == expected, name
        assert spec.kinds <= set(KINDS)
    assert fitting("flow") == FLOW
    assert "lcm" in fitting("epsilon") and "lcm" in fitting("v_prediction") and "lcm" not in fitting("flow")
    assert fitting("epsilon") == fitting("v_prediction") == list(SCHEDULERS)


@pytest.mark.parametrize("name,flow_class", [("ddim", "FlowMatchEulerDiscreteScheduler"),
                                             ("euler", "FlowMatchEulerDiscreteScheduler"),
                                             ("heun", "FlowMatchHeunDiscreteScheduler"),
                                             ("dpmpp_2m", "DPMSolverMultistepScheduler"),
                                             ("unipc", "UniPCMultistepScheduler")])
def test_a_name_is_the_same_solver_on_a_flow_model(name, flow_class):
    ddpm, flow = make_scheduler(name, FAMILY_CONFIGS["sd15"]), make_scheduler(name, SD3)
    assert type(ddpm).__name__ == SCHEDULERS[name].cls and type(flow).__name__ == flow_class
    if flow_class.startswith(("DPM", "UniPC")):
        assert flow.config.use_flow_sigmas and flow.config.prediction_type == "flow_prediction"


def test_every_registered_scheduler_has_a_config_file_and_the_new_ones_say_what_they_are():
    files = {p.stem for p in (ROOT / "conf" / "scheduler").glob("*.yaml") if not p.stem.startswith("_")}
    assert files == set(SCHEDULERS)
    for name in ["lcm"]:
        text = (ROOT / "conf" / "scheduler" / f"{name}.yaml").read_text()
        assert text.startswith("# ") and yaml.safe_load(text)["name"] == name
    options = yaml.safe_load((ROOT / "conf" / "common" / "scheduler.yaml").read_text())
    assert options["shift"] is None and options["use_dynamic_shifting"] is None


def test_check_kind_names_the_scheduler_and_kind_and_lists_the_fitting_ones_on_one_line():
    check_kind("euler", "flow")
    check_kind("ddim", "flow")
    check_kind("ddim", "v_prediction")
    with pytest.raises(UserError) as bad:
        check_kind("lms", "flow")
    message = str(bad.value)
    assert "\n" not in message and "'lms'" in message and "'flow'" in message
    assert message.endswith(", ".join(fitting("flow")))
    with pytest.raises(UserError, match="ddim, euler, heun, dpmpp_2m, unipc$"):
        check_kind("dpmpp_2m_karras", "flow")
    with pytest.raises(UserError, match="unknown model kind 'sample'"):
        check_kind("ddim", "sample")


def test_a_flow_solver_says_whether_it_shifts_by_image_size_as_its_diffusers_class_does():
    """The plan reads `dynamic_shifting` without diffusers; the class's own signature is the truth it must match."""
    import inspect

    import diffusers

    for name in FLOW:
        solver = SCHEDULERS[name].on("flow")
        takes = "use_dynamic_shifting" in inspect.signature(getattr(diffusers, solver.cls).__init__).parameters
        assert solver.dynamic_shifting == takes, name


def test_check_fit_refuses_a_solver_without_dynamic_shifting_unless_the_run_turns_it_off():
    only_dynamic = "use one of: ddim, euler, dpmpp_2m, unipc$"
    with pytest.raises(CannotRun, match="^scheduler 'heun' has no dynamic .*; " + only_dynamic):
        check_fit("heun", FLUX)
    check_fit("heun", FLUX, {"use_dynamic_shifting": False})
    check_fit("heun", SD3)  # SD3 shifts by a fixed amount
    check_fit("euler", FLUX)
    with pytest.raises(CannotRun, match="^scheduler 'lms' does not fit a model of kind 'flow'; schedulers for this "
                                        "model: ddim, euler, dpmpp_2m, unipc$"):  # not heun, which it refuses
        check_fit("lms", FLUX)
    with pytest.raises(CannotRun, match="; schedulers for flow: ddim, euler, heun, dpmpp_2m, unipc$"):
        check_fit("lms", SD3)


def test_model_kind_reads_the_scheduler_config():
    assert model_kind(SD3) == model_kind(FLUX) == "flow"
    assert model_kind(FAMILY_CONFIGS["sd15"]) == model_kind(FAMILY_CONFIGS["sdxl"]) == "epsilon"
    assert model_kind(FAMILY_CONFIGS["sd2_v"]) == "v_prediction"
    assert model_kind({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True, "flow_shift": 5.0}) == "flow"
    # the mini model's DPMSolver config carries flow_shift but is an epsilon model
    assert model_kind({"_class_name": "DPMSolverMultistepScheduler", "flow_shift": 1.0, "use_flow_sigmas": False,
                       "prediction_type": "epsilon", "beta_schedule": "scaled_linear"}) == "epsilon"


def test_a_scheduler_with_no_solver_for_the_kind_is_refused_when_built():
    with pytest.raises(CannotRun, match="scheduler 'euler_a' does not fit a model of kind 'flow'"):
        make_scheduler("euler_a", SD3)
    with pytest.raises(CannotRun, match="scheduler 'dpmpp_2m_sde' does not fit a model of kind 'flow'"):
        make_scheduler("dpmpp_2m_sde", FLUX)


@pytest.mark.parametrize("name", FLOW)
def test_flow_schedulers_build_from_sd3_and_follow_its_static_shift(name):
    scheduler = make_scheduler(name, SD3)
    shift = scheduler.config.get("shift", scheduler.config.get("flow_shift"))
    assert shift == 3.0
    scheduler.set_timesteps(8, **timestep_kwargs(scheduler))
    sigmas = np.unique(np.asarray(scheduler.sigmas, dtype=np.float64)[:-1])  # Heun repeats each sigma
    assert float(scheduler.sigmas[-1]) == 0.0 and sigmas.max() == pytest.approx(1.0, abs=1e-3)
    # every visited sigma is a shifted sigma of a time in (0, 1]: eq. 23 inverts back into it
    t = unshift_sigma(sigmas, 3.0)
    assert np.all((t > 0) & (t <= 1 + 1e-6))
    np.testing.assert_allclose(shift_sigma(t, 3.0), sigmas, rtol=1e-6)


def test_flow_euler_training_sigmas_are_eq_23_of_the_uniform_grid():
    scheduler = make_scheduler("euler", SD3)
    t = np.arange(1000, 0, -1) / 1000
    np.testing.assert_allclose(scheduler.sigmas.numpy(), shift_sigma(t, 3.0), rtol=1e-5)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "unipc"])
@pytest.mark.parametrize("side", [256, 1024])
def test_flux_dynamic_shift_takes_mu_from_the_resolution(name, side):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    scheduler = make_scheduler(name, FLUX)
    assert scheduler.config.use_dynamic_shifting
    kwargs = timestep_kwargs(scheduler, side, side)
    assert kwargs["mu"] == pytest.approx(calculate_shift(image_seq_len(side, side)))
    assert kwargs["mu"] == pytest.approx({256: 0.5, 1024: 1.15}[side])
    if name != "dpmpp_2m":  # DPM-Solver silently falls back to flow_shift without mu; the others refuse
        with pytest.raises(ValueError, match="mu"):
            make_scheduler(name, FLUX).set_timesteps(4)
    scheduler.set_timesteps(4, **kwargs)
    sigmas = np.asarray(scheduler.sigmas, dtype=np.float64)[:-1]
    t = unshift_sigma(sigmas, math.exp(kwargs["mu"]))
    np.testing.assert_allclose(shift_sigma(t, math.exp(kwargs["mu"])), sigmas, rtol=1e-6)
    assert np.all((t > 0) & (t <= 1 + 1e-6))


def test_flux_sigmas_as_the_flux_pipeline_passes_them():
    scheduler = make_scheduler("euler", FLUX)
    mu = timestep_kwargs(scheduler, 1024, 1024)["mu"]
    scheduler.set_timesteps(4, sigmas=np.linspace(1.0, 1 / 4, 4), mu=mu)
    np.testing.assert_allclose(scheduler.sigmas.numpy()[:-1], shift_sigma([1.0, 0.75, 0.5, 0.25], math.exp(mu)),
                               rtol=1e-6)


def test_heun_has_no_dynamic_shifting_so_flux_gets_a_one_line_refusal():
    with pytest.raises(UserError) as bad:
        make_scheduler("heun", FLUX)
    assert "\n" not in str(bad.value) and str(bad.value).endswith("ddim, euler, dpmpp_2m, unipc")
    assert isinstance(bad.value, CannotRun)  # a sweep skips the cell
    heun = make_scheduler("heun", SD3, {"shift": 6.0})
    assert heun.config.shift == 6.0


def test_shift_is_an_option_checked_for_every_flow_scheduler():
    assert check_options("euler", {"shift": 6.0, "use_dynamic_shifting": False}) == {
        "shift": 6.0, "use_dynamic_shifting": False}
    assert make_scheduler("dpmpp_2m", SD3, {"shift": 6}).config.flow_shift == 6  # renamed for the solver
    assert make_scheduler("unipc", SD3).config.flow_shift == 3.0  # the model's shift carries over
    assert make_scheduler("euler", FLUX, {"use_dynamic_shifting": False}).config.use_dynamic_shifting is False
    fixed = make_scheduler("euler", FLUX, {"use_dynamic_shifting": False, "shift": 6.0})
    assert fixed.config.shift == 6.0 and timestep_kwargs(fixed, 1024, 1024) == {}
    with pytest.raises(UserError, match="add scheduler.use_dynamic_shifting=false to use a fixed shift"):
        make_scheduler("unipc", FLUX, {"shift": 6.0})
    for value, fragment in [("abc", "scheduler.shift='abc' must be a positive finite number"),
                            (True, "positive finite"),
                            (0.0, "must be a positive finite number"), (float("nan"), "positive finite")]:
        with pytest.raises(UserError, match=fragment):
            check_options("euler", {"shift": value})
    with pytest.raises(UserError, match="scheduler.use_dynamic_shifting='yes' must be true or false"):
        check_options("euler", {"use_dynamic_shifting": "yes"})
    with pytest.raises(UserError, match=r"scheduler.shift is an option of the flow-matching models \(SD3, Flux\); "
                                        "scheduler 'ddim' on a model of kind 'epsilon' has none"):
        make_scheduler("ddim", FAMILY_CONFIGS["sd15"], {"shift": 3.0})
    with pytest.raises(UserError, match="scheduler.shift is an option of the flow-matching models"):
        check_options("lms", {"shift": 3.0})
    with pytest.raises(UserError, match="scheduler 'dpmpp_2m' has no option 'flow_shift'"):
        check_options("dpmpp_2m", {"flow_shift": 3.0}, "flow")


def test_check_steps_for_flow_and_ddpm_models():
    for name in fitting("flow"):
        config = SD3 if name == "heun" else FLUX
        check_steps(name, config, {}, 28, "flux", width=1024, height=1024)
        check_steps(name, config, {"shift": 6.0} if name == "heun" else {}, 1000, "flux")
    check_steps("euler", SD3, {"shift": 12.0}, 50, "sd3")
    check_steps("lcm", FAMILY_CONFIGS["sd15"], {}, 4, "sd15")
    with pytest.raises(UserError, match="more than the 1000 timesteps"):
        check_steps("euler", SD3, {}, 1001, "sd3")
    with pytest.raises(UserError, match="^model flux: scheduler 'pndm' does not fit a model of kind 'flow'"):
        check_steps("pndm", FLUX, {}, 4, "model flux")


def test_flow_log_snr_matches_the_closed_form():
    for shift in (1.0, 3.0, math.exp(0.5), math.exp(1.15), 6.0):
        table = flow_log_snr_table(shift)
        sigma = shift * table["t"] / (1 + (shift - 1) * table["t"])
        np.testing.assert_allclose(table["noise_frac"], sigma, rtol=1e-12)
        finite = (table["t"] < 1).to_numpy()
        sigma = sigma.to_numpy()[finite]
        np.testing.assert_allclose(table["log_snr"][finite], np.log(((1 - sigma) / sigma) ** 2), rtol=1e-9)
        np.testing.assert_allclose(np.exp(table["log_snr"][finite]), ((1 - sigma) / sigma) ** 2, rtol=1e-9)
        assert table["log_snr"].iloc[-1] == -np.inf
        assert log_snr_crossing(table["t"], table["log_snr"]) == pytest.approx(flow_crossing(shift), abs=1e-4)
    assert flow_crossing(3.0) == 0.25 and shift_sigma(flow_crossing(3.0), 3.0) == pytest.approx(0.5)
    assert dynamic_shift_mu(image_seq_len(1024, 1024)) == pytest.approx(1.15)


def test_log_snr_crossing_interpolates_and_says_nan_when_never():
    assert log_snr_crossing([0.1, 0.2, 0.3], [2.0, 1.0, -1.0]) == pytest.approx(0.25)
    assert math.isnan(log_snr_crossing([0.1, 0.2], [2.0, 1.0]))


def test_schedule_families_recipe_tables_crossings_and_figure(tmp_path, one_thread):
    from analysis_helpers import check_image, context
    from sdlab.jobs import get_job

    ctx = context("schedule_families", tmp_path)
    rows = get_job(ctx.run.job)(ctx).set_index("family")
    assert len(rows) == 5 and (rows["status"] == "ok").all()
    assert list(rows["kind"]) == ["epsilon", "v_prediction", "flow", "flow", "flow"]
    # flow: crossing at the unshifted time 1/(1 + shift), with shift = exp(mu) for Flux
    expected = {"SD3 (flow, shift 3.0)": 0.25, "Flux 256 px (dynamic shift)": 1 / (1 + math.exp(0.5)),
                "Flux 1024 px (dynamic shift)": 1 / (1 + math.exp(1.15))}
    for family, t in expected.items():
        assert rows.loc[family, "crossing_t"] == pytest.approx(t, abs=1e-3)
        assert rows.loc[family, "crossing_t_closed_form"] == pytest.approx(t, abs=1e-9)
        assert rows.loc[family, "log_snr_t1"] == -np.inf
    assert rows["mu"].dropna().round(4).tolist() == [0.5, 1.15]
    # DDPM: SD 1.5 crosses 0 dB at timestep 354 (test_schedule.py); zero-SNR rescaling ends at -inf
    assert rows.loc["SD 1.5 (epsilon, scaled_linear)", "crossing_t"] == pytest.approx(0.355, abs=1e-3)
    assert np.isfinite(rows.loc["SD 1.5 (epsilon, scaled_linear)", "log_snr_t1"])
    assert rows.loc["SD 2 v-pred, zero terminal SNR", "log_snr_t1"] == -np.inf
    assert rows.loc["Flux 256 px (dynamic shift)", "visited_t"] == "1.000 0.750 0.500 0.250"
    assert len(rows.loc["SD3 (flow, shift 3.0)", "visited_t"].split()) == 28
    curves = pd.read_parquet(tmp_path / "log_snr.parquet")
    assert curves.groupby("family").size().eq(1000).all()
    visits = pd.read_csv(tmp_path / "family_visits.csv")
    assert visits.groupby("family", sort=False).size().tolist() == [26, 25, 28, 4, 28]
    check_image(tmp_path / "log_snr.png", min_size=(600, 400))


def test_shift_from_the_command_line_is_checked_before_any_work(tmp_path):
    result = run_cli("experiment=schedule_snr", "scheduler=euler", "scheduler.shift=abc", "threads=1", cwd=tmp_path,
                     env=bare_env(PYTHONPATH=str(ROOT)))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == "sdlab: error: scheduler.shift='abc' must be a positive finite number"
    assert not (tmp_path / "outputs").exists()


def test_the_options_read_from_diffusers_source_are_its_classes_own():
    """A scheduler's options are read from its source file, not its imported class: both give the same names."""
    import inspect

    import diffusers

    from sdlab.models.schedulers import init_parameters

    for cls in sorted({solver.cls for spec in SCHEDULERS.values() for solver in (spec, spec.on("flow"))}):
        assert init_parameters(cls) == set(inspect.signature(getattr(diffusers, cls).__init__).parameters), cls


@pytest.mark.parametrize("args,says", [
    (("scheduler=ddim", "scheduler.use_karras_sigmas=true"),
     "scheduler 'ddim' has no option 'use_karras_sigmas'; its options are: rescale_betas_zero_snr, steps_offset, "
     "timestep_spacing"),
    (("scheduler=euler", "scheduler.shift=3"), "scheduler.shift is an option of the flow-matching models (SD3, Flux); "
                                               "scheduler 'euler' on a model of kind 'epsilon' has none"),
    # dpmpp_2m's class takes it, but without a flow model's sigmas it changes nothing: it ran, silently the same
    (("scheduler.use_dynamic_shifting=true",), "scheduler.use_dynamic_shifting is an option of the flow-matching "
                                               "models (SD3, Flux); scheduler 'dpmpp_2m' on a model of kind 'epsilon' "
                                               "has none")])
def test_an_option_the_schedulers_class_does_not_take_is_refused_before_torch_is_imported(tmp_path, args, says):
    from test_cli import entry_in_a_new_process

    result = entry_in_a_new_process([*args, "hydra.run.dir=run"], tmp_path, ("torch", "diffusers"))
    assert result.stdout.strip().splitlines()[-1] == "exit 2 []", result.stdout + result.stderr
    assert result.stderr == f"sdlab: error: {says}\n" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_the_planned_denoiser_calls_are_the_timesteps_diffusers_visits_on_every_kind(name):
    from sdlab.models.schedulers import denoiser_calls

    bases = {"epsilon": FAMILY_CONFIGS["sd15"], "flow": FAMILY_CONFIGS["sd3"]}
    for kind in sorted(SCHEDULERS[name].kinds):
        for steps in (1, 2, 7, 25):
            scheduler = make_scheduler(name, bases.get(kind, {**FAMILY_CONFIGS["sd15"], "prediction_type": kind}))
            scheduler.set_timesteps(steps)
            assert denoiser_calls(name, steps) == len(scheduler.timesteps), (kind, steps)


def test_each_crossing_is_listed_in_its_own_familys_colour_when_another_never_crosses(tmp_path, monkeypatch):
    from matplotlib.colors import to_hex

    from sdlab.bench.figures import PALETTE
    from sdlab.jobs import schedule

    drawn = {}
    monkeypatch.setattr(schedule, "save_figure", lambda fig, target: drawn.setdefault("fig", fig))
    t = np.linspace(0.01, 1.0, 50)
    curves = pd.DataFrame({"family": ["never"] * 50 + ["crosses"] * 50,
                           "t": np.concatenate([t, t]), "log_snr": np.concatenate([5 - t, 4 - 8 * t])})
    visits = curves.iloc[::10]
    row = {"sampler": "euler", "num_inference_steps": 5, "shift": np.nan, "mu": np.nan}
    rows = [{**row, "family": "never", "crossing_t": np.nan}, {**row, "family": "crosses", "crossing_t": 0.5}]
    schedule.families_figure(curves, visits, rows, tmp_path / "f.png")
    listed = {text.get_text(): to_hex(text.get_color()) for text in drawn["fig"].axes[0].texts}
    assert listed["t = 0.500  crosses"] == to_hex(PALETTE[1])  # the second family's colour, as its curve


def test_schedule_snr_on_flux_draws_the_shift_of_the_size_asked_for(tmp_path):
    # Flux's shift comes from the image size: width=512 height=512 must move mu, the crossing and the label
    out = tmp_path / "run"
    result = run_cli("experiment=schedule_snr", "model=flux_tiny", "width=512", "height=512", "threads=1",
                     f"hydra.run.dir={out}", cwd=tmp_path, env=bare_env(PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    own = pd.read_parquet(out / "results.parquet").iloc[0]
    mu = dynamic_shift_mu(image_seq_len(512, 512))
    assert (own["width"], own["height"]) == (512, 512) and own["mu"] == pytest.approx(mu)
    assert own["crossing_t"] == pytest.approx(1 / (1 + math.exp(mu)), abs=1e-3)
    assert own["family"] == "model=flux_tiny (euler, 512 px)" and own["model"] == "flux_tiny"
    # SD 1.5's schedule beside it owes nothing to a size (its row said 1024 px): the row of a run on flux_tiny
    sd15 = pd.read_parquet(out / "results.parquet").iloc[1]
    assert sd15["family"].startswith("SD 1.5") and pd.isna(sd15["width"]) and sd15["model"] == "flux_tiny", sd15


def test_the_fix_named_when_schedules_meet_a_flow_model_runs_as_written(tmp_path):
    env = bare_env(PYTHONPATH=str(ROOT))
    refused = run_cli("experiment=schedule_snr", "model=sd3_tiny", "schedules=[linear]", "threads=1", cwd=tmp_path, env=env)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    fix = refused.stderr.split("compare its schedule with '", 1)[1].split("'", 1)[0]
    out = tmp_path / "run"
    result = run_cli("experiment=schedule_snr", "model=sd3_tiny", fix, "threads=1", f"hydra.run.dir={out}", cwd=tmp_path,
                     env=env)
    assert result.returncode == 0, result.stderr
    rows = pd.read_parquet(out / "results.parquet")
    assert rows["family"].iloc[0].startswith("model=sd3_tiny") and rows["kind"].iloc[0] == "flow"


def test_the_model_family_is_named_by_the_sampler_and_size_it_is_drawn_with(tmp_path, one_thread):
    # `config: model` with its own sampler and size: the label must not keep the configured scheduler's (dpmpp_2m)
    from analysis_helpers import context
    from sdlab.jobs import get_job

    ctx = context("schedule_snr", tmp_path, schedules=None, visit_schedulers=None,
                  families=[{"config": "model", "sampler": "ddim", "steps": 5, "width": 128, "height": 128}])
    row = get_job(ctx.run.job)(ctx).iloc[0]
    assert (row["sampler"], row["num_inference_steps"], row["width"]) == ("ddim", 5, 128)
    assert row["family"] == "model=tiny (ddim, 128 px)"
