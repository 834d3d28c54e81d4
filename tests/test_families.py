"""Every model family through its adapter: tiny SD 1.x, SD 2.x, SDXL, SD3 and Flux generate, sweep and load."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import bare_env, run_cli

from sdlab.models import loading as models
from sdlab.config import GenerationParams
from sdlab.errors import UserError
from sdlab.models.generate import generate_batch

ROOT = Path(__file__).resolve().parent.parent
TINY = {"sd15_tiny": "sd", "sd2_tiny": "sd", "sdxl_tiny": "sdxl", "sd3_tiny": "sd3", "flux_tiny": "flux"}
KIND = {"sd15_tiny": "epsilon", "sd2_tiny": "v_prediction", "sdxl_tiny": "epsilon", "sd3_tiny": "flow",
        "flux_tiny": "flow"}
PIPELINE = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline",
            "flux": "FluxPipeline"}


def tiny_model(name: str, **overrides):
    model = models.load_model(models.configured_spec(name, **overrides))
    model.pipe.set_progress_bar_config(disable=True)
    model.use_scheduler("euler")
    return model


def params(**kw) -> GenerationParams:
    return GenerationParams(**{"prompt": "a red circle", "width": 64, "height": 64, "num_inference_steps": 3, **kw})


@pytest.fixture
def batches():
    """The batch of every denoiser call while the context runs: `with batches(model) as seen`."""
    from contextlib import contextmanager

    @contextmanager
    def watch(model):
        seen = []
        hook = model.denoiser.register_forward_pre_hook(
            lambda _, args, kwargs: seen.append(len((args or [None])[0] if args else next(iter(kwargs.values())))),
            with_kwargs=True)
        try:
            yield seen
        finally:
            hook.remove()

    return watch


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_tiny_family_generates_finite_images_with_exact_nfe(name, one_thread, batches):
    model = tiny_model(name)
    assert (model.family, model.kind, model.pipeline_class) == (TINY[name], KIND[name], PIPELINE[TINY[name]])
    assert type(model.pipe).__name__ == model.pipeline_class
    with batches(model) as seen:
        result = generate_batch(model, params(guidance_scale=7.5), [0, 1])
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert torch.isfinite(result.latents).all()
    assert tuple(result.latents.shape[1:]) == model.latent_shape(64, 64)
    assert np.asarray(result.images[0], float).std() > 0
    assert result.nfe == 3  # one denoiser call per Euler step ...
    distilled = name == "flux_tiny"  # ... with cond + uncond batched into it, except Flux's distilled guidance
    assert seen == [2] * 3 if distilled else seen == [4] * 3
    assert model.uses_cfg(7.5) is not distilled


@pytest.mark.parametrize("name", ["sd2_tiny", "sdxl_tiny"])
def test_heun_costs_two_calls_per_step_in_every_unet_family(name, one_thread):
    model = tiny_model(name)
    model.use_scheduler("heun")
    assert generate_batch(model, params(num_inference_steps=4), [0]).nfe == 2 * 4 - 1  # the last step is Euler


def test_flow_heun_costs_two_calls_per_step_on_a_transformer(one_thread):
    model = tiny_model("sd3_tiny")
    assert type(model.use_scheduler("heun")).__name__ == "FlowMatchHeunDiscreteScheduler"
    assert generate_batch(model, params(num_inference_steps=4), [0]).nfe == 2 * 4 - 1


def test_guidance_one_skips_the_unconditional_branch(one_thread, batches):
    model = tiny_model("sdxl_tiny")
    with batches(model) as seen:
        assert generate_batch(model, params(guidance_scale=1.0), [0]).nfe == 3
    assert seen == [1, 1, 1]


def test_prompt_embeddings_are_cached_per_model_and_prompt(one_thread):
    model = tiny_model("sd3_tiny")
    first = model.encode("a cached blue square")
    assert model.encode("a cached blue square") is first
    assert set(first) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert first["pooled_prompt_embeds"].shape == (1, 64)  # both CLIP projections, concatenated


def test_sd3_without_t5_has_no_third_encoder_and_still_generates(one_thread):
    model = tiny_model("sd3_tiny", t5=False)
    assert model.pipe.text_encoder_3 is None
    assert generate_batch(model, params(), [0]).images[0].size == (64, 64)


def test_flow_latents_carry_the_vae_shift_factor():
    model = tiny_model("flux_tiny")
    shift, scale = model.pipe.vae.config.shift_factor, model.pipe.vae.config.scaling_factor
    z = torch.randn(1, *model.latent_shape(64, 64))
    assert torch.allclose(model.unscale(z), z / scale + shift)
    assert torch.allclose(model.scale(model.unscale(z)), z, atol=1e-6)


@pytest.mark.parametrize("name,flow_class", [("euler", "FlowMatchEulerDiscreteScheduler"),
                                             ("ddim", "FlowMatchEulerDiscreteScheduler"),
                                             ("dpmpp_2m", "DPMSolverMultistepScheduler")])
def test_a_sampler_name_runs_its_flow_solver_on_a_flow_model(name, flow_class, one_thread):
    model = tiny_model("flux_tiny")
    assert type(model.use_scheduler(name)).__name__ == flow_class
    result = generate_batch(model, params(), [0])
    assert result.nfe == 3 and np.isfinite(np.asarray(result.images[0], dtype=float)).all()


def test_a_scheduler_with_no_flow_solver_is_one_line_listing_the_fitting_ones():
    model = tiny_model("sd3_tiny")
    with pytest.raises(UserError, match="scheduler 'dpmpp_2m_karras' does not fit a model of kind 'flow'; schedulers "
                                        "for flow: ddim, euler"):
        model.use_scheduler("dpmpp_2m_karras")
    with pytest.raises(UserError, match="scheduler 'euler_a' does not fit a model of kind 'flow'"):
        tiny_model("flux_tiny").use_scheduler("euler_a")


def test_a_sweep_pairing_a_model_with_a_scheduler_it_cannot_run_skips_that_cell(run_sdlab, tmp_path, capsys):
    """The cell whose model cannot run its scheduler is named and skipped; the others run; none is refused whole."""
    import pandas as pd

    code = run_sdlab("-m", "model=sd3_tiny,tiny", "scheduler=lms", "num_inference_steps=2", "threads=1",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 0
    out = capsys.readouterr().out
    assert "skipping 1 of 2 cells their model cannot run: model=sd3_tiny (" in out
    assert "scheduler 'lms' does not fit a model of kind 'flow'" in out
    assert pd.read_csv(tmp_path / "sweep" / "results.csv")["model"].tolist() == ["tiny"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each tiny family's pipeline saved as a safetensors diffusers folder, with the scheduler it was built with."""
    import diffusers

    folders = {}
    for name in TINY:
        folder = tmp_path_factory.mktemp(name)
        model = tiny_model(name)
        built_with = getattr(diffusers, model.base_scheduler_class).from_config(model.base_scheduler_config)
        swapped, model.scheduler = model.scheduler, built_with
        try:
            model.pipe.save_pretrained(folder, safe_serialization=True)
        finally:
            model.scheduler = swapped
        scheduler = models.published_scheduler_config(models.configured_spec(name))[0]  # as the Hub publishes it
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
        folders[name] = folder
    return folders


@pytest.mark.parametrize("name", sorted(TINY))
def test_model_path_detects_the_family_from_model_index(name, saved, one_thread):
    folder = saved[name]
    assert not list(folder.rglob("*.bin")) and list(folder.rglob("*.safetensors"))
    # model=sd15 names the wrong family on purpose: the folder's model_index.json decides
    model = models.load_model(models.configured_spec("sd15", path=str(folder), resolution=64))
    assert (model.family, model.kind) == (TINY[name], KIND[name])
    model.use_scheduler("euler")
    built = tiny_model(name)
    a = generate_batch(model, params(), [3]).images[0]
    b = generate_batch(built, params(), [3]).images[0]
    assert np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 1


@pytest.mark.parametrize("name,removed", [("sdxl_tiny", "text_encoder_2"), ("sdxl_tiny", "tokenizer_2"),
                                          ("sd3_tiny", "text_encoder_3"), ("flux_tiny", "transformer")])
def test_a_component_model_index_names_but_the_folder_lacks_is_named(name, removed, saved, tmp_path):
    """diffusers named the pipeline folder for a missing encoder, and loaded SDXL without its second tokenizer until
    generation failed on an overflow: the missing component is named before anything loads."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(saved[name], folder)
    shutil.rmtree(folder / removed)
    with pytest.raises(UserError, match=f"^{folder / removed} is missing: model_index.json names it"):
        models.adapter_class(models.configured_spec("sd15", path=str(folder)))


@pytest.mark.parametrize("damage", [{"merges.txt": "garbage\n"}, {"vocab.json": '{"a": 0}'}])
def test_a_tokenizer_its_library_cannot_read_is_one_line_naming_the_folder(damage, tmp_path):
    """The tokenizers library raises a bare Exception (`Error while initializing BPE`): it was a traceback, exit 1."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "mini", folder)
    for name, text in damage.items():
        (folder / "tokenizer" / name).write_text(text)
    with pytest.raises(UserError, match=f"^model.path={folder} cannot be loaded: "):
        models.load_model(models.configured_spec("sd15", path=str(folder), resolution=64))


@pytest.mark.parametrize("name,given", [("sd3_tiny", "64 (text_encoder: 32, text_encoder_2: 32)"),
                                        ("flux_tiny", "32 (text_encoder: 32)")])
def test_a_transformer_pooling_other_text_encoders_is_refused_before_loading(name, given, saved, tmp_path):
    """SD3 pools its CLIP encoders' projections, Flux its CLIP's hidden state: a transformer from a model whose pooled
    width differs loaded, and its first call failed with torch's shape message, exit 1."""
    import shutil

    from test_bad_input import replaced_by_a_consistent

    folder = tmp_path / "model"
    shutil.copytree(saved[name], folder)
    replaced_by_a_consistent(folder, "transformer", pooled_projection_dim=48)
    spec = models.configured_spec("sd15", path=str(folder))
    with pytest.raises(UserError, match=rf"^{folder}/transformer/config.json: pooled_projection_dim=48, but its "
                                        rf"text encoders give {re.escape(given)}; the folder mixes components"):
        models.check_folder(models.adapter_class(spec), spec)


def test_an_sd3_folder_without_t5_loads_when_t5_is_left_out(saved, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(saved["sd3_tiny"], folder)
    for part in ("text_encoder_3", "tokenizer_3"):
        shutil.rmtree(folder / part)
    assert models.adapter_class(models.configured_spec("sd3", path=str(folder), t5=False)).family == "sd3"


def fake_hub(tmp_path: Path, repo_id: str, folder: Path) -> Path:
    """A local Hugging Face cache holding `folder` as the snapshot of `repo_id` (refs/main -> its hash)."""
    repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots").mkdir(parents=True)
    os.symlink(folder, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    return tmp_path / "hub"


@pytest.mark.parametrize("name,tiny", [("sdxl", "sdxl_tiny"), ("sd3", "sd3_tiny"), ("flux_dev", "flux_tiny")])
def test_model_name_loads_its_repo_from_a_local_cache_offline(name, tiny, saved, tmp_path, monkeypatch, one_thread):
    from huggingface_hub import constants

    spec = models.configured_spec(name, resolution=64)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(fake_hub(tmp_path, spec.repo_id, saved[tiny])))
    model = models.load_model(spec)
    assert model.family == TINY[tiny]
    model.use_scheduler("euler")
    assert generate_batch(model, params(), [0]).images[0].size == (64, 64)


def sdlab_env(cwd: Path) -> dict[str, str]:
    return bare_env(HOME=str(cwd), PYTHONPATH=str(ROOT))  # this checkout's sdlab, a home with no model cache


@pytest.mark.parametrize("args,message", [
    (("experiment=compare_schedulers_quick", "model=flux_tiny", "compare.schedulers=[euler,heun]"),
     "on model=flux_tiny: scheduler 'heun' has no dynamic (resolution-dependent) shifting, which this model's "
     "scheduler uses; use one of: ddim, euler, dpmpp_2m, unipc"),
    (("experiment=article_b8_schedulers", "model=sd3_tiny", "schedulers=[euler,lms]"),
     "on model=sd3_tiny: scheduler 'lms' does not fit a model of kind 'flow'; schedulers for flow: ddim, euler, "
     "heun, dpmpp_2m, unipc"),
    (("experiment=compare_schedulers_quick", "model=sd3_tiny", "compare.reference_scheduler=pndm"),
     "on model=sd3_tiny: scheduler 'pndm' does not fit a model of kind 'flow'"),
])
def test_a_listed_sampler_that_cannot_run_on_the_model_is_one_line_before_any_work(args, message, tmp_path,
                                                                                    run_sdlab, capsys):
    assert run_sdlab(*args, "threads=1", f"hydra.run.dir={tmp_path / 'out'}") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sdlab: error: {message}"), lines
    assert not (tmp_path / "out").exists()


def test_a_missing_model_is_one_line_naming_the_repo_and_exit_2(tmp_path):
    result = run_cli("model=sd3", "num_inference_steps=2", "threads=1", cwd=tmp_path, env=sdlab_env(tmp_path),
                     timeout=600, HF_HUB_CACHE=str(tmp_path / "empty"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "stabilityai/stable-diffusion-3.5-medium is not in the local Hugging Face cache" in lines[0]
    assert "hf download stabilityai/stable-diffusion-3.5-medium" in lines[0]


def test_the_command_line_runs_a_cached_flow_model_offline(saved, tmp_path):
    hub = fake_hub(tmp_path, "black-forest-labs/FLUX.1-dev", saved["flux_tiny"])
    result = run_cli("model=flux_dev", "model.resolution=64", "num_inference_steps=2", "threads=1", cwd=tmp_path,
                     env=sdlab_env(tmp_path), timeout=600, HF_HUB_CACHE=str(hub))
    assert result.returncode == 0, result.stderr[-2000:]
    (table,) = tmp_path.glob("outputs/generate/*/results.csv")
    row = pd.read_csv(table).iloc[0]
    assert (row["model"], row["scheduler"], row["status"], row["nfe"]) == ("flux_dev", "euler", "ok", 2)


def test_a_sweep_over_families_gives_ok_rows(tmp_path):
    result = run_cli("-m", "model=sd15_tiny,sdxl_tiny,sd3_tiny,flux_tiny", "num_inference_steps=2", "threads=1",
                     cwd=tmp_path, env=sdlab_env(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (table,) = tmp_path.glob("outputs/generate/multirun_*/results.csv")
    frame = pd.read_csv(table)
    assert sorted(frame["model"]) == ["flux_tiny", "sd15_tiny", "sd3_tiny", "sdxl_tiny"]
    assert (frame["status"] == "ok").all() and (frame["nfe"] == 2).all()
    schedulers = dict(zip(frame["model"], frame["scheduler"]))
    assert schedulers == {"sd15_tiny": "dpmpp_2m", "sdxl_tiny": "dpmpp_2m", "sd3_tiny": "euler",
                          "flux_tiny": "euler"}  # each family's default


def test_a_sweep_of_ddpm_and_flow_models_runs_every_sampler_on_both(tmp_path):
    """ddim and dpmpp_2m on Flux run the flow solvers of the same names: all 8 cells, none skipped."""
    import json

    result = run_cli("-m", "model=sdxl_tiny,flux_tiny", "seed=1,2", "scheduler=ddim,dpmpp_2m", "num_inference_steps=4",
                     "threads=1", cwd=tmp_path, env=sdlab_env(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipping" not in result.stdout + result.stderr
    (table,) = tmp_path.glob("outputs/generate/multirun_*/results.csv")
    frame = pd.read_csv(table)
    assert len(frame) == 8 and (frame["status"] == "ok").all() and (frame["nfe"] == 4).all()
    classes = {(row.model, row.scheduler): json.loads(row.scheduler_config)["class"] for row in frame.itertuples()}
    assert classes == {("sdxl_tiny", "ddim"): "DDIMScheduler", ("sdxl_tiny", "dpmpp_2m"): "DPMSolverMultistepScheduler",
                       ("flux_tiny", "ddim"): "FlowMatchEulerDiscreteScheduler",
                       ("flux_tiny", "dpmpp_2m"): "DPMSolverMultistepScheduler"}
    flux = json.loads(frame[(frame["model"] == "flux_tiny") & (frame["scheduler"] == "dpmpp_2m")].iloc[0]
                      ["scheduler_config"])
    assert flux["use_flow_sigmas"] is True and flux["prediction_type"] == "flow_prediction"


def test_pooled_text_embeddings_read_below_the_projection():
    from sdlab.metrics.clip import pooled_text_embeddings

    model = tiny_model("sd3_tiny")
    pooled = pooled_text_embeddings(model.pipe.text_encoder, model.tokenizer, ["a red circle", "a blue square"])
    assert pooled.shape == (2, 32) and np.isfinite(pooled).all()  # hidden size, not the projection's


# --------------------------------------------------------------------------- tokens per text encoder

PIRATE = "a pirate ship sailing through a storm, dramatic lighting, oil painting"


def clip_tokens(tmp_path: Path, caplog=None, **model) -> pd.DataFrame:
    from analysis_helpers import config_for, context
    from sdlab.jobs import get_job

    base = config_for("clip_tokens")["model"]
    return get_job("clip_tokens")(context("clip_tokens", tmp_path, prompts=[PIRATE, "a red circle"],
                                          model={**base, **model}))


def test_clip_tokens_counts_every_text_encoder_of_a_folder_model_at_its_own_limit(saved, tmp_path, caplog):
    from sdlab.models.tokenizer import tiny_t5_tokenizer

    rows = clip_tokens(tmp_path, name="sd3", family="sd3", path=str(saved["sd3_tiny"]), max_sequence_length=20)
    by = rows.set_index(["encoder", "prompt"])
    assert rows["encoder"].unique().tolist() == ["text_encoder", "text_encoder_2", "text_encoder_3"]
    assert rows.groupby("encoder")["max_tokens"].first().tolist() == [77, 77, 20]
    t5_ids = tiny_t5_tokenizer()(PIRATE)["input_ids"]
    assert by.loc[("text_encoder", PIRATE), "n_tokens"] == 15 and not by.loc[("text_encoder_2", PIRATE), "truncated"]
    t5 = by.loc[("text_encoder_3", PIRATE)]
    assert t5["n_tokens"] == len(t5_ids) > 20 and t5["n_kept"] == 20 and t5["truncated"]
    assert t5["warning"].startswith(f"text_encoder_3 (T5): {len(t5_ids)} tokens > 20")
    tokens = pd.read_parquet(tmp_path / "tokens.parquet")
    kept = tokens[(tokens["encoder"] == "text_encoder_3") & (tokens["prompt"] == PIRATE) & tokens["kept"]]
    assert len(kept) == 20 and kept["token"].iloc[-1] == "</s>" and kept["token"].iloc[0] != "<|startoftext|>"
    # without model.max_sequence_length, T5 keeps the family's 256 capped by the tokenizer's own 32
    rows = clip_tokens(tmp_path / "default", name="sd3", family="sd3", path=str(saved["sd3_tiny"]))
    assert rows.groupby("encoder")["max_tokens"].first().tolist() == [77, 77, 32]


def test_clip_tokens_names_each_encoder_it_leaves_out(saved, tmp_path, caplog):
    import shutil

    rows = clip_tokens(tmp_path / "no_t5", name="sd3", family="sd3", path=str(saved["sd3_tiny"]), t5=False)
    assert rows["encoder"].unique().tolist() == ["text_encoder", "text_encoder_2"]
    assert "text_encoder_3 (T5) is left out (model.t5=false)" in caplog.text
    rows = clip_tokens(tmp_path / "arch", name="flux_dev_arch", family="flux")
    assert rows["encoder"].unique().tolist() == ["text_encoder"]
    assert "text_encoder_2 (T5) is not counted: T5's vocabulary is not packaged with model=flux_dev_arch" in caplog.text
    broken = shutil.copytree(saved["flux_tiny"], tmp_path / "broken")
    shutil.rmtree(broken / "tokenizer_2")
    with pytest.raises(UserError, match=f"^{broken / 'tokenizer_2'} is missing: model_index.json names it"):
        clip_tokens(tmp_path / "broken_out", name="flux_dev", family="flux", path=str(broken))


# --------------------------------------------------------------------------- few-step models

def test_a_distilled_model_samples_in_its_own_few_steps_without_guidance_unless_told(saved, tmp_path, run_sdlab):
    """model=sdxl_turbo on an SDXL folder whose scheduler samples trailing timesteps, as SDXL-Turbo's does."""
    import json
    import shutil

    folder = shutil.copytree(saved["sdxl_tiny"], tmp_path / "turbo")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "_class_name": "EulerAncestralDiscreteScheduler",
                                       "timestep_spacing": "trailing"}))
    out = tmp_path / "one"
    assert run_sdlab("model=sdxl_turbo", f"model.path={folder}", "model.resolution=64", "threads=1",
                     f"hydra.run.dir={out}") == 0
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert (row["status"], row["scheduler"], row["num_inference_steps"], row["guidance_scale"], row["nfe"]) == (
        "ok", "euler_a", 1, 0.0, 1)
    assert json.loads(row["scheduler_config"])["timestep_spacing"] == "trailing"
    # the command line still wins over the model's sampling defaults (and so does a recipe: Hydra composes it later)
    out = tmp_path / "two"
    assert run_sdlab("model=sdxl_turbo", f"model.path={folder}", "model.resolution=64", "num_inference_steps=2",
                     "guidance_scale=2", "threads=1", f"hydra.run.dir={out}") == 0
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert (row["num_inference_steps"], row["guidance_scale"], row["nfe"]) == (2, 2.0, 2)


def test_a_long_prompt_warns_once_per_text_encoder_that_cuts_it():
    from sdlab.models.text_tokenizers import truncation_warnings

    words = " ".join(["red circle"] * 20)  # 40 CLIP tokens + BOS/EOS: CLIP keeps it, the tiny T5 (32) does not
    n_t5 = len(tiny_model("sd3_tiny").pipe.tokenizer_3(words)["input_ids"])
    assert truncation_warnings(tiny_model("sd3_tiny"), words) == [
        f"the prompt is {n_t5} tokens for text_encoder_3 (T5), past its 32: the last {n_t5 - 32} are dropped "
        "(text_encoder (CLIP), text_encoder_2 (CLIP) read all of it)"]
    assert truncation_warnings(tiny_model("sd3_tiny", t5=False), words) == []
    assert truncation_warnings(tiny_model("sd15_tiny"), words * 2) == [
        "the prompt is 82 tokens for text_encoder (CLIP), past its 77: the last 5 are dropped"]


def test_flux_unpack_inverts_diffusers_packing():
    """The adapter's unpacking of Flux's 2x2-patch tokens is the inverse of FluxPipeline's packing."""
    from types import SimpleNamespace

    import torch
    from diffusers import FluxPipeline

    from sdlab.models.families.flux import Flux

    x = torch.randn(2, 16, 12, 8)  # NCHW latents of a 64 x 96 px image (width 64, height 96)
    packed = FluxPipeline._pack_latents(x, 2, 16, 12, 8)
    assert torch.equal(Flux.unpack(SimpleNamespace(vae_scale_factor=8), packed, width=64, height=96), x)
