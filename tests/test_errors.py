"""Bad input: one clear line naming the bad value and what is allowed, exit code 2, nothing half-written."""

from __future__ import annotations

import json
import re

import pytest
from cli_helpers import run_cli

from sdlab.config import ModelSpec, generation_params
from sdlab.errors import UserError
from sdlab.models.loading import load_model
from sdlab.models.model_files import check_weights_folder
from sdlab.bench.run import load_params


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_scheduler_lists_valid_names(tmp_path):
    result = run_cli("scheduler=eulr", cwd=tmp_path)
    assert_one_line_error(result, "'eulr'", "euler_a", "dpmpp_2m_karras")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("arg,fragment", [
    ("model=sd99", "'sd99'"),
    ("experiment=nope", "'nope'"),
    ("foo=1", "'foo'"),
    ("scheduler.bogus=1", "'scheduler.bogus'"),
])
def test_unknown_choices_and_keys(tmp_path, arg, fragment):
    assert_one_line_error(run_cli(arg, cwd=tmp_path), fragment)


def test_bad_model_path_and_missing_cache_are_one_line(tmp_path):
    result = run_cli("model=sd15", f"model.path={tmp_path / 'missing'}", cwd=tmp_path)
    assert_one_line_error(result, "missing", "does not exist")
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("results.csv"))
    result = run_cli("model=sd15", cwd=tmp_path)
    assert_one_line_error(result, "stable-diffusion-v1-5/stable-diffusion-v1-5", "model.path=DIR")


def test_out_of_range_parameter_exits_2(tmp_path):
    assert_one_line_error(run_cli("num_inference_steps=0", cwd=tmp_path), "num_inference_steps=0", ">= 1")


@pytest.mark.parametrize("cfg,fragment", [
    ({"num_inference_steps": 0}, "num_inference_steps=0"),
    ({"guidance_scale": -1}, "guidance_scale=-1"),
    ({"width": 0}, "width=0"),
    ({"height": -8}, "height=-8"),
    ({"eta": 1.5}, "eta=1.5"),
    ({"seed": "abc"}, "seed='abc'"),
    ({"seeds": []}, "seeds=[]"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"num_inference_steps": 2.5}, "num_inference_steps=2.5"),
])
def test_generation_params_name_the_bad_value(cfg, fragment):
    with pytest.raises(UserError) as info:
        generation_params(cfg, 64)
    assert fragment in str(info.value)


def test_params_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_params(bad)
    bad.write_text(json.dumps({"promt": "x"}))
    with pytest.raises(UserError, match=r"unknown key 'promt' \(did you mean prompt\?\); allowed: prompt, "):
        load_params(bad)
    bad.write_text(json.dumps({"Steps": 2}))  # an image tool's name, capitalised: it was 'did you mean seeds?'
    with pytest.raises(UserError, match=r"unknown key 'Steps' \(did you mean steps\?\); allowed: prompt, .*, model, "
                                        r"or the image tools' steps, cfg_scale, sampler_name, sampler_index$"):
        load_params(bad)
    bad.write_text(json.dumps({"cfg": 5}))  # ComfyUI's name, as the command line knows it
    with pytest.raises(UserError, match=r"unknown key 'cfg' \(did you mean guidance_scale\?\)"):
        load_params(bad)
    bad.write_text(json.dumps({"seed": "7"}))
    with pytest.raises(UserError, match="seed='7' should be int"):
        load_params(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_params(tmp_path / "absent.json")
    bad.write_text('{"seed": 1, "prompt": "x", "seed": 2}')  # it ran seed 2 in silence: JSON leaves a repeat undefined
    with pytest.raises(UserError, match=f"^params={re.escape(str(bad))} sets 'seed' twice; keep one$"):
        load_params(bad)
    bad.write_text('{"scheduler_options": {"shift": 1, "shift": 2}}')
    with pytest.raises(UserError, match="sets 'shift' twice; keep one"):
        load_params(bad)


def make_pipeline_folder(root, suffix: str):
    root.mkdir(parents=True)
    (root / "model_index.json").write_text("{}")
    for component in ("unet", "vae", "text_encoder"):
        (root / component).mkdir(parents=True)
        (root / component / f"weights{suffix}").write_bytes(b"\x80\x04not really a pickle")
    return root


def test_pickle_weights_are_refused_without_unpickling(tmp_path, monkeypatch):
    import pickle

    import torch

    def forbidden(*a, **k):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    folder = make_pipeline_folder(tmp_path / "pickled", ".bin")
    with pytest.raises(UserError, match="refusing pickle weights.*safetensors only"):
        check_weights_folder(folder)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04")
    with pytest.raises(UserError, match="refusing pickle checkpoint"):
        load_model(ModelSpec("sd15", path=str(ckpt)))


def test_a_single_file_checkpoint_is_refused_saying_how_to_make_it_a_folder(tmp_path):
    """An A1111-style model.safetensors is what many users hold: the line says how diffusers turns it into a folder."""
    single = tmp_path / "v1-5-pruned-emaonly.safetensors"
    single.write_bytes(b"\x08\0\0\0\0\0\0\0{}      ")
    with pytest.raises(UserError, match=r"is a single-file checkpoint; sdlab loads diffusers folders: convert it once "
                                        r"with diffusers' from_single_file\(\.\.\.\)\.save_pretrained\(DIR\)"):
        check_weights_folder(single)


def test_folder_without_weights_is_refused(tmp_path):
    folder = make_pipeline_folder(tmp_path / "empty", ".txt")
    with pytest.raises(UserError, match="no .safetensors weights"):
        check_weights_folder(folder)


@pytest.mark.parametrize("args,message", [
    (("experiment=compare_schedulers_quick", "compare.steps=[60]"), "compare.steps must be <= compare.reference_steps=50"),
    (("experiment=compare_schedulers_quick", "compare.steps=[0]"),
     "compare.steps=[0] must be a non-empty list of integers, each >= 1 and <= 1000"),
    (("experiment=compare_schedulers_quick", "~compare.seeds"), "compare.seeds is missing: a study lists"),
    (("experiment=compare_schedulers_quick", "+compare.stepz=[1]"), "unknown config key 'compare.stepz' (did you mean steps?); compare.* keys are"),
    (("experiment=compare_schedulers_quick", "compare.psnr_target=abc"),
     "compare.psnr_target='abc' must be a number >= 0 and <= 1000"),
    (("experiment=compare_schedulers_quick", "compare.steps=0"),
     "compare.steps=0 must be a non-empty list of integers, each >= 1 and <= 1000"),
    (("experiment=schedule_snr", "visit_schedulers=''"), "visit_schedulers='' must be a list of names or mappings"),
    (("experiment=compare_schedulers_quick", "compare.visit_steps=[0]"),
     "compare.visit_steps=[0] must be a non-empty list of integers, each >= 1 and <= 1000"),
    (("experiment=compare_schedulers_quick", "compare.prompts=[]"), "compare.prompts=[] must be a non-empty list of strings"),
    (("experiment=schedule_snr", "schedules=[sigmoid]"),
     "unknown beta_schedule 'sigmoid'; choose one of: linear, scaled_linear, squaredcos_cap_v2"),
    (("experiment=schedule_snr", "schedules=[{beta_schedule: linear, beta_start: x}]"),
     "schedules entry beta_start='x' must be a number in (0, 1)"),
    (("experiment=forward_process", "schedules=[{beta_schedule: linear, beta_strat: 0.001}]"),
     "schedules entry key 'beta_strat' is unknown (did you mean beta_start?); an entry sets name, beta_schedule, "
     "beta_start, beta_end, T"),
    (("experiment=schedule_snr", "schedules=[{beta_schedule: linear, T: 1000000000}]"),
     "schedules entry T=1000000000 must be an integer >= 2 and <= 100000"),
    (("experiment=schedule_snr", "schedules=[{beta_schedule: linear, name: [a]}]"),
     "schedules entry name=['a'] must be a string"),
    # each of these once ran: 24 GB, 8 GB, a million-step solve, a traceback, twice the images
    (("experiment=schedule_families", "families=[{config: {beta_schedule: linear, num_train_timesteps: 1000000000}}]"),
     "families config: num_train_timesteps=1000000000 must be an integer in [1, 100000]"),
    (("experiment=schedule_snr", "visit_schedulers=[{name: euler, num_train_timesteps: 1000000000}]"),
     "scheduler 'euler': option 'num_train_timesteps' is not one a run sets; the options are: timestep_spacing, "
     "use_karras_sigmas, rescale_betas_zero_snr, final_sigmas_type, steps_offset, shift, use_dynamic_shifting"),
    (("experiment=schedule_families", "families=[{config: sd15, options: {num_train_timesteps: 1000000000}}]"),
     "scheduler 'ddim': option 'num_train_timesteps' is not one a run sets"),
    (("experiment=schedule_families", "families=[{config: sd15, steps: 1000000}]"),
     "families steps=1000000 must be an integer >= 1 and <= 1000"),
    (("experiment=schedule_families", "families=[{config: sd15, sampler: dpm++_2m}]"),
     "unknown scheduler 'dpm++_2m' (did you mean dpmpp_2m?); choose one of: ddim, "),
    (("experiment=schedule_snr", "visit_schedulers=[{name: eulr}]"),
     "unknown scheduler 'eulr' (did you mean euler?); choose one of: ddim, "),
    (("experiment=schedule_families", "families=[{config: sd15, options: 5}]"),
     "families options=5 must be a mapping"),
    (("experiment=schedule_families", "families=[{config: sd15, stepz: 4}]"),
     "families entry has no key 'stepz' (did you mean steps?); its keys are: name, config, options, sampler, steps"),
    (("experiment=schedule_families", "families=[{config: sd15, flux_sigmas: maybe}]"),
     "families flux_sigmas='maybe' must be true or false"),
    (("experiment=schedule_families", "families=[{config: flux_dev, width: 100000000}]"),
     "families width=100000000 must be an integer >= 8 and <= 4096"),
    (("experiment=schedule_snr", "visit_schedulers=[{foo: 1}]"),
     "visit_schedulers entry {'foo': 1} needs the name of a scheduler, e.g. {name: euler}"),
    (("experiment=article_b8_schedulers", "reference_scheduler=euler_a"),
     "reference_scheduler='euler_a' is stochastic; pick a deterministic one"),
    (("experiment=article_b8_schedulers", "reference_steps=1000000"),
     "reference_steps=1000000 must be an integer >= 0 and <= 1000 or null"),
    (("experiment=article_d2_timestep_embedding", "timestep_embedding.dim=100000"),
     "timestep_embedding.dim=100000 must be an integer >= 2 and <= 8192"),
    (("experiment=article_f2_distance_nfe", "distance.schedulers=[ddim,ddim]"),
     "distance.schedulers=['ddim', 'ddim'] repeats 'ddim'; list each once"),
    (("experiment=schedule_snr", "model=sd3_tiny", "schedules=[linear]"),
     "`schedules` are DDPM beta schedules (alpha_bar), and their samplers do not fit model=sd3_tiny"),
    (("experiment=schedule_families", "families=[{config: nope}]"), "unknown families config 'nope'"),
    (("experiment=schedule_families", "families=[{config: sd3, options: {shift: 3.0}}, {config: sd3, options: {shift: 6.0}}]"),
     "families entries 1 and 2 are both drawn as 'sd3 ddim 28 steps'; give each its own name:"),
    (("experiment=schedule_snr", "model=sd3_tiny", "visit_schedulers=[euler,heun]"),  # drawn only beside schedules
     "visit_schedulers=['euler', 'heun'] mark steps on `schedules`, which this run does not draw (it draws families): "
     "name a family's sampler instead, e.g. '+families=[{config: model, sampler: euler}]'"),
    (("experiment=schedule_families", "visit_schedulers=[heun]"),
     "visit_schedulers=['heun'] mark steps on `schedules`, which this run does not draw (it draws families)"),
    (("experiment=article_a3_schedule", "report_timesteps=-7"),
     "report_timesteps [-7] out of range; the schedules have t = 0 .. 999"),
    (("experiment=article_a3_schedule", "report_timesteps=[0,-7,5000]"),
     "report_timesteps [-7, 5000] out of range; the schedules have t = 0 .. 999"),
    (("experiment=article_a3_schedule", "schedules=[{beta_schedule: linear, T: 100}]", "report_timesteps=[100]"),
     "report_timesteps [100] out of range; the schedules have t = 0 .. 99"),
    (("experiment=forward_process", "timesteps=[5000]"),
     "timesteps [5000] out of range; the schedules have t = 0 .. 999"),
    (("experiment=forward_process", "spaces=[pixels]"), "spaces=['pixels'] must list pixel and/or latent"),
    (("experiment=compare_schedulers_quick", "compare.schedulers=5"),
     "compare.schedulers=5 must be a non-empty list of strings"),  # as typed, not read as [5]
    (("experiment=forward_process", "spaces=3"), "spaces=3 must be a non-empty list of strings"),
    (("experiment=forward_process", "images=5"), "images=5 must be a non-empty list of strings or null"),
    (("experiment=schedule_snr", "schedules=5"), "schedules=5 must be a list of names or mappings or null"),
    (("experiment=schedule_snr", "visit_schedulers=5"),
     "visit_schedulers=5 must be a list of names or mappings or null"),
    (("experiment=schedule_snr", "visit_schedulers=[nope]"), "unknown scheduler 'nope'"),
    (("experiment=article_c2_img2img", "image=5"), "image=5 must be an image file path or null"),
    (("experiment=clip_tokens", "prompts=[]"), "prompts=[] must be a non-empty list of strings"),
    (("experiment=guidance_grid", "guidance_scales=[a]"), "guidance_scales=['a'] must be a non-empty list of numbers"),
    (("experiment=guidance_grid", "guidance_scales=[1,-2]"),
     "guidance_scales=[1, -2] must be a non-empty list of numbers, each >= 0 and <= 1000"),
    (("experiment=guidance_grid", "guidance_scales=[]"), "guidance_scales=[] must be a non-empty list of numbers"),
    (("experiment=article_b8_schedulers", "schedulers=[]"), "schedulers=[] must be a non-empty list of strings"),
    (("experiment=article_c2_img2img", "strengths=[0.5,1.5]"), "strength 1.5 must be in (0, 1]"),
    (("experiment=article_c2_img2img", "strengths=[0.05,1.0]", "num_inference_steps=10"),  # a traceback, no image
     "strength 0.05 x 10 steps leaves no denoising step (img2img runs int(strength x steps)); raise "
     "num_inference_steps to 20 or the strength to 0.1"),
    (("experiment=article_c1_pipeline_by_hand", "guidance_scale=1"),
     "guidance_scale=1.0 must be > 1 here: the loop by hand always applies guidance"),
    (("experiment=article_c1_pipeline_by_hand", "scheduler=euler"),
     "scheduler=euler: job pipeline_by_hand writes out DDIM's update and runs diffusers' pipeline with DDIM to compare; "
     "drop scheduler= (or give scheduler=ddim)"),
    (("experiment=article_c1_pipeline_by_hand", "model=sd3_tiny"),
     "job pipeline_by_hand writes out the SD 1.x epsilon loop; model=sd3_tiny is a sd3 flow model"),
    (("experiment=trajectory", "frames=0"), "frames=0 must be an integer >= 2 and <= 10000 or null"),
    (("experiment=trajectory", "frames=abc"), "frames='abc' must be an integer >= 2 and <= 10000 or null"),
    (("experiment=vae_roundtrip", "num_images=-1"), "num_images=-1 must be an integer >= 1 and <= 1000 or null"),
    (("experiment=article_a2_noise", "noise.size=-5"), "noise.size=-5 must be an integer >= 1 and <= 4096"),
    (("experiment=article_a2_noise", "noise.seed=null"), "noise.seed=null must be an integer in [0, 2**63-1]"),
    (("experiment=article_a2_noise", "noise.seed=99999999999999999999"),
     "noise.seed=99999999999999999999 must be an integer in [0, 2**63-1]"),
    (("experiment=compare_schedulers_quick", "compare.seeds=[1,1]"),
     "compare.seeds=[1, 1] must be a non-empty list of distinct integers in [0, 2**63-1]"),
    # a repeat makes the same images again, counted as more seeds: n=8 and a narrow interval from 2 seeds
    (("experiment=compare_schedulers_quick", "compare.schedulers=[ddim,euler,ddim]"),
     "compare.schedulers=['ddim', 'euler', 'ddim'] repeats 'ddim'; list each once"),
    (("experiment=compare_schedulers_quick", "compare.steps=[4,8,4]"), "compare.steps=[4, 8, 4] repeats 4; list each once"),
    (("experiment=compare_schedulers_quick", "compare.prompts=[a,a]"), "compare.prompts=['a', 'a'] repeats 'a'; list each once"),
    (("experiment=article_b2_toy_predictor", "toy_predictor.shape=[1024,1024,1024]"),
     "toy_predictor.n x shape = 50 x [1024, 1024, 1024] is 53687091200 numbers, above the 100000000 a toy holds"),
    (("experiment=article_d2_timestep_embedding", "timestep_embedding.dim=8000", "timestep_embedding.rows=100000"),
     "timestep_embedding.rows=100000 must be an integer >= 1 and <= 1000"),
    (("experiment=article_b6_ddim_steps", "ddim_steps.steps=[10]"),  # a failed row: a ValueError of an empty array
     "ddim_steps.steps=[10] needs two step counts or more: the figure is the error against the steps"),
    # D2 drew 1000 rows of 5000 asked, without a word: a pixel row each, the heatmap's most
    (("experiment=article_d2_timestep_embedding", "timestep_embedding.rows=5000"),
     "timestep_embedding.rows=5000 must be an integer >= 1 and <= 1000"),
    (("experiment=article_b2_toy_predictor", "toy_predictor.shape=[]"),
     "toy_predictor.shape=[] must be a non-empty list of integers, each >= 1 and <= 1024"),
    (("experiment=article_b3_unet_levels", "toy_unet.configs=[[0]]"),
     "toy_unet.configs=[[0]] must be a non-empty list of non-empty integer lists, each >= 1 and <= 4096"),
    (("experiment=article_b3_unet_levels", "toy_unet.size=3"),
     "toy_unet.size=3 must be divisible by 4 for the 3 levels of configuration [64, 128, 256]"),
    (("experiment=article_b3_unet_levels", "toy_unet.configs=[[48,100]]"),
     "toy_unet.configs entry [48, 100]: every width must be a multiple of 32"),
    (("experiment=article_b4_vae_compression", "vae_compression.sizes=[100]"),
     "vae_compression.sizes [100] must be multiples of vae_compression.factor=8"),
    (("experiment=article_b5_cfg_toy", "cfg_toy.dim=0"), "cfg_toy.dim=0 must be an integer >= 1"),
    (("experiment=article_b6_ddim_steps", "ddim_steps.steps=[0]"),
     "ddim_steps.steps=[0] must be a non-empty list of integers, each >= 1"),
    (("experiment=article_b6_ddim_steps", "ddim_steps.steps=[2000]"), "ddim_steps.steps [2000] must be <= ddim_steps.T=1000"),
    (("experiment=article_b6_ddim_steps", "ddim_steps.schedule=cosine"),
     "ddim_steps.schedule='cosine' must be one of: linear, scaled_linear, squaredcos_cap_v2"),
    (("experiment=article_d2_timestep_embedding", "timestep_embedding.rows=x"),
     "timestep_embedding.rows='x' must be an integer >= 1"),
])
def test_a_bad_recipe_value_is_one_line_before_any_folder_or_model(args, message, run_sdlab, tmp_path, capsys):
    from sdlab.models import loading as models

    loads = models.CACHE.load_count
    assert run_sdlab(*args, "threads=1", f"hydra.run.dir={tmp_path / 'run'}") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sdlab: error: {message}"), lines
    assert not (tmp_path / "run").exists() and models.CACHE.load_count == loads


@pytest.mark.parametrize("class_name, accepted", [("T5EncoderModel", True), ("CLIPTextModel", False)])
def test_a_whole_t5_checkpoint_loads_its_encoder_and_other_extra_tensors_are_refused(tmp_path, class_name, accepted):
    """A T5 file may carry the decoder its encoder-only class skips; a CLIP text encoder's extra tensors are refused."""
    import torch
    from safetensors.torch import save_file

    from sdlab.models.architectures import ARCHITECTURES
    from sdlab.models.model_files import check_component_weights, expected_weights, safetensors_tensors

    tiny = (ARCHITECTURES["sd3_tiny"].config("text_encoder_3") if class_name == "T5EncoderModel"
            else ARCHITECTURES["tiny"].config("text_encoder"))
    config = {"_class_name": class_name, "architectures": [class_name], **tiny}
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder" / "config.json").write_text(json.dumps(config))
    want = expected_weights("text_encoder", config, tmp_path / "text_encoder" / "config.json", tensors_held=10**6)
    tensors = {name: torch.zeros(shape) for name, shape in want.shapes.items() if name not in want.tied}
    save_file({**tensors, "decoder.block.0.layer.0.weight": torch.zeros(2)},
              str(tmp_path / "text_encoder" / "model.safetensors"))
    held = {path: safetensors_tensors(path) for path in [tmp_path / "text_encoder" / "model.safetensors"]}
    if accepted:
        check_component_weights(tmp_path, "text_encoder", config, held)
    else:
        with pytest.raises(UserError, match=r"1 tensors are not a text_encoder's \(e.g. decoder.block.0"):
            check_component_weights(tmp_path, "text_encoder", config, held)


def test_an_error_line_on_a_terminal_starts_over_a_half_drawn_progress_bar(tmp_path):
    """Ctrl-C in the middle of denoising left `denoising:  38%|███▊ | 3/8 [...]sdlab: error: interrupted; ...` on the
    terminal: the bar ends no line, so the error line is written from the start of the line, clearing it; into a file
    or pipe it is written as it is."""
    import os
    import subprocess
    import sys

    code = ("import sys; sys.stderr.write('denoising:  38%|###'); sys.stderr.flush(); "
            "from sdlab.app.compose import fail; fail('interrupted', 130)")
    primary, secondary = os.openpty()
    done = subprocess.run([sys.executable, "-c", code], stderr=secondary, cwd=tmp_path, timeout=60)
    os.close(secondary)
    shown = os.read(primary, 4096).decode()
    os.close(primary)
    assert done.returncode == 130 and shown == "denoising:  38%|###\r\x1b[Ksdlab: error: interrupted\r\n"
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert piped.stderr == "denoising:  38%|###sdlab: error: interrupted\n"
