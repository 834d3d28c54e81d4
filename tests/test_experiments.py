"""Every recipe in experiments/ runs end to end on model=tiny through the `sdlab` command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis_helpers import check_image

from sdlab.jobs import MODEL_FREE_JOBS

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml") if not p.stem.startswith("train_mini"))

# Smallest settings that still exercise each recipe; a recipe not listed runs with its own defaults.
MINIMAL = {
    "generate": ["num_inference_steps=2"],
    "schedule_snr": ["num_inference_steps=4"],
    "forward_process": ["timesteps=[0,500,999]"],
    "vae_roundtrip": ["num_images=2"],
    "clip_tokens": [],
    "clip_similarity": ["prompts=[a red circle,a blue square]"],
    "trajectory": ["num_inference_steps=3", "frames=3"],
    "anatomy": [],
    "guidance_grid": ["num_inference_steps=2", "guidance_scales=[1,7.5]"],
    "prompt_grid": ["num_inference_steps=2", "prompts=[a red circle,a blue square]"],
    **{name: ["compare.schedulers=[ddim,euler]", "compare.steps=[2]", "compare.seeds=[0]", "compare.prompts=[a red circle]",
              "compare.reference_steps=3", "compare.visit_steps=[2]"]
       for name in ("compare_schedulers", "compare_schedulers_quick")},
    "article_a2_noise": ["noise.size=64"],
    "article_a4_forward": ["timesteps=[0,500,999]"],
    "article_a5_vae": ["num_images=2"],
    "article_a7_trajectory": ["num_inference_steps=3", "frames=3"],
    "article_a8_same_seed": ["num_inference_steps=2"],
    "article_a9_params": ["num_inference_steps=2"],
    "article_b2_toy_predictor": ["toy_predictor.n=10"],
    "article_b6_ddim_steps": ["ddim_steps.steps=[5,10,20]"],
    "article_b7_guidance": ["num_inference_steps=2", "guidance_scales=[1,7.5]"],
    "article_b8_schedulers": ["num_inference_steps=2"],
    "article_c1_pipeline_by_hand": ["num_inference_steps=3"],
    "article_c2_img2img": ["num_inference_steps=4", "strengths=[0.5,1.0]"],
    "article_d1_destruction": ["timesteps=[0,500,999]"],
    "article_d3_guidance": ["num_inference_steps=2", "guidance_scales=[7,12.5]"],
    "article_e1_forward_chain": ["timesteps=[0,500,999]"],
    "article_e1_reverse_chain": ["num_inference_steps=3", "frames=3"],
    "article_e2_clip_matrix": ["num_images=3"],
    **{name: ["distance.images=4", "distance.references=8", "distance.kid_subsets=5", "distance.bootstrap=10",
              "distance.prompts=[a red circle]", "distance.schedulers=[ddim]", *axes]
       for name, axes in (("article_f1_distance_guidance", ["distance.guidance_scales=[1,7.5]", "distance.steps=[2]"]),
                          ("article_f2_distance_nfe", ["distance.steps=[1,2]"]))},
}
# Files each recipe must write besides results.{parquet,csv}.
OUTPUTS = {
    "schedule_snr": ["schedule.parquet", "visits.csv", "snr.png", "visits.png"],
    "forward_process": ["forward_strip.png"],
    "vae_roundtrip": ["latent_channels.parquet", "vae_roundtrip.png"],
    "clip_tokens": ["tokens.parquet", "token_counts.png"],
    "clip_similarity": ["text_similarity.png"],
    "trajectory": ["trajectory.gif", "trajectory_strip.png", "images/trajectory_final.png"],
    "anatomy": ["unet_blocks.parquet", "anatomy.png"],
    "guidance_grid": ["guidance_grid.png"],
    "prompt_grid": ["prompt_grid.png"],
    "article_e2_clip_matrix": ["image_text_similarity.png", "image_text_similarity.parquet"],
    "article_a9_params": ["same_params.png"],
    "article_f1_distance_guidance": ["distance_vs_guidance.png"],
    "article_f2_distance_nfe": ["distance_vs_nfe.png"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_on_tiny(recipe, run_sdlab, tmp_path):
    out = tmp_path / recipe
    job = re.search(r"^job: (\w+)", (ROOT / "experiments" / f"{recipe}.yaml").read_text(), re.M).group(1)
    model = [] if job in MODEL_FREE_JOBS else ["model=tiny"]  # toy math refuses a model it would not read
    code = run_sdlab(f"experiment={recipe}", *model, *MINIMAL.get(recipe, []), f"hydra.run.dir={out}")
    assert code == 0
    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) >= 1 and pd.read_csv(out / "results.csv").shape[0] == len(frame)
    if "status" in frame:
        assert (frame["status"] == "ok").all(), frame.get("error")
    for name in OUTPUTS.get(recipe, []):
        assert (out / name).is_file(), name
    for image in [*out.glob("*.png"), *out.glob("*.gif")]:
        check_image(image, min_size=(32, 32))


def test_every_recipe_says_what_it_answers_and_how_to_run_it():
    for recipe in RECIPES:
        text = (ROOT / "experiments" / f"{recipe}.yaml").read_text()
        assert text.startswith("# @package _global_\n# "), recipe
        assert f"sdlab experiment={recipe}" in text or recipe == "generate", recipe
        assert "\njob: " in text, recipe


def clip_wired() -> bool:
    """Whether conf/config.yaml lists the clip group in its defaults."""
    import yaml

    defaults = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())["defaults"]
    return any(isinstance(d, dict) and "clip" in d for d in defaults)


def clip_args(folder: Path) -> list[str]:
    """Select clip=mini at `folder`: a plain group choice once conf/config.yaml lists the clip group, else appended."""
    return ["clip=mini", f"clip.path={folder}"] if clip_wired() else ["+clip=mini", f"++clip.path={folder}"]


def test_guidance_grid_with_a_clip_model_from_the_command_line(run_sdlab, tmp_path):
    from analysis_helpers import tiny_clip

    folder = tmp_path / "clip"
    tiny_clip().model.save_pretrained(str(folder), safe_serialization=True)
    out = tmp_path / "run"
    code = run_sdlab("experiment=guidance_grid", "num_inference_steps=2", "guidance_scales=[1,4]", *clip_args(folder),
                     f"hydra.run.dir={out}")
    assert code == 0
    frame = pd.read_parquet(out / "results.parquet")
    assert frame["clip_score"].between(0, 100).all()
    check_image(out / "clip_vs_guidance.png", min_size=(300, 200))


def test_missing_clip_model_is_one_line_and_exit_2(run_sdlab, tmp_path, capsys):
    code = run_sdlab("experiment=clip_similarity", *clip_args(tmp_path / "no_clip_here"), f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sdlab: error: clip=mini: no CLIP model at") and "no_clip_here" in err[-1]


def test_generate_rows_carry_clip_score_with_a_clip_model(run_sdlab, tmp_path):
    if not clip_wired():
        pytest.skip("conf/config.yaml does not list the clip group yet")
    from analysis_helpers import tiny_clip

    folder = tmp_path / "clip"
    tiny_clip().model.save_pretrained(str(folder), safe_serialization=True)
    out = tmp_path / "run"
    assert run_sdlab("num_inference_steps=2", "seeds=[1,2]", *clip_args(folder), f"hydra.run.dir={out}") == 0
    assert pd.read_parquet(out / "results.parquet")["clip_score"].between(0, 100).all()
    assert run_sdlab("num_inference_steps=2", "clip.path=/x", "clip=nope", f"hydra.run.dir={tmp_path / 'bad'}") == 2


def test_defaults_are_the_mini_model_scored_by_its_own_clip_and_no_other_model_inherits_that_clip():
    from hydra import compose, initialize_config_dir

    def chosen(*overrides):
        config = compose("config", list(overrides))
        return config.model.name, config.clip.name, config.model.mkldnn

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        assert chosen() == ("mini", "mini", "auto")
        assert chosen("experiment=compare_schedulers") == ("mini", "mini", "auto")
        assert chosen("model=tiny") == ("tiny", "none", True)
        assert chosen("model=sd15") == ("sd15", "none", True)
        assert chosen("model=sd15", "clip=openai_l14") == ("sd15", "openai_l14", True)
        assert chosen("model=tiny", "experiment=article_e2_clip_matrix") == ("tiny", "mini", True)


def test_model_mkldnn_switches_the_process_cpu_convolutions(tiny):
    import torch

    from sdlab.models.loading import configured_spec, load_model

    before = torch.backends.mkldnn.enabled
    try:
        cached = load_model(tiny[1])  # the session's tiny model, or a fresh one if a test cleared the cache
        load_model(configured_spec("tiny", resolution=64, mkldnn=False))
        assert not torch.backends.mkldnn.enabled
        assert load_model(tiny[1]) is cached  # cached models switch it back too
        assert torch.backends.mkldnn.enabled
    finally:
        torch.backends.mkldnn.enabled = before


def test_model_mkldnn_auto_runs_the_denoiser_on_direct_convolutions_and_the_vae_on_onednn(tiny):
    import torch

    from sdlab.config import GenerationParams, ModelSpec
    from sdlab.errors import UserError
    from sdlab.models.generate import generate_batch
    from sdlab.models.loading import configured_spec, load_model

    def flags():  # NNPACK's flag is read back through its setter, its one public accessor
        nnpack = torch.backends.nnpack.set_flags(True)[0]
        torch.backends.nnpack.set_flags(nnpack)
        return torch.backends.mkldnn.enabled, nnpack

    before = flags()
    try:
        spec = configured_spec("tiny", resolution=64, mkldnn="auto")
        model = load_model(spec)
        assert flags() == (False, False)  # loading: set for the denoiser
        seen = {"denoiser": set(), "vae": set()}
        hooks = [model.denoiser.register_forward_pre_hook(lambda *_: seen["denoiser"].add(flags())),
                 model.vae.decoder.register_forward_pre_hook(lambda *_: seen["vae"].add(flags()))]
        for guidance in (1.0, 7.5):  # whatever the batch (guidance doubles the denoiser's)
            params = GenerationParams(prompt="a red circle", width=64, height=64, num_inference_steps=1,
                                      guidance_scale=guidance)
            for seeds in ([0], list(range(16))):
                generate_batch(model, params, seeds)
        for hook in hooks:
            hook.remove()
        assert seen == {"denoiser": {(False, False)}, "vae": {(True, True)}}
        load_model(configured_spec("tiny", resolution=64, mkldnn=True))
        assert flags() == (True, True)  # the other settings leave NNPACK to PyTorch
        with pytest.raises(UserError, match="unknown model.mkldnn 'sometimes'"):
            ModelSpec("tiny", mkldnn="sometimes")  # a spec holds only values it may
    finally:
        torch.backends.mkldnn.enabled = before[0]
        torch.backends.nnpack.set_flags(before[1])


# --------------------------------------------------------------------------- the same recipes on every model family

FAMILIES = ("sdxl_tiny", "sd3_tiny", "flux_tiny", "sd2_tiny")
FLOW = ("sd3_tiny", "flux_tiny")
# Recipes whose job is not SD 1.5-specific, with the fewest steps that still exercise them.
FAMILY_RECIPES = {
    "generate": ["num_inference_steps=2"],
    "guidance_grid": ["num_inference_steps=1", "guidance_scales=[1,4]"],
    "prompt_grid": ["num_inference_steps=1", "prompts=[a red circle,a blue square]"],
    "trajectory": ["num_inference_steps=2", "frames=2"],
    "vae_roundtrip": ["num_images=1"],
    "clip_tokens": [],
    "clip_similarity": ["prompts=[a red circle,a blue square,a red circle]"],
    "anatomy": [],
    "schedule_snr": ["num_inference_steps=3"],
    "forward_process": ["timesteps=[0,999]", "spaces=[latent]"],
    "article_c1_pipeline_by_hand": ["num_inference_steps=2"],
    "compare_schedulers_quick": ["compare.steps=[1]", "compare.seeds=[0]", "compare.prompts=[a red circle]",
                                 "compare.reference_steps=2", "compare.visit_steps=[2]"],
    "article_b8_schedulers": ["num_inference_steps=1", "reference_steps=2", "seeds=[0]"],
}
# The samplers each recipe's own lists give a model: flow models get the recipe's `world.flow` ones (Flux, whose
# pipeline sets its own sigmas, `world.flux`'s); they run as the user types the command, with no scheduler override.
SAMPLERS = {
    "compare_schedulers_quick": {"sd3_tiny": ["euler", "heun", "dpmpp_2m", "unipc"],
                                 "flux_tiny": ["euler", "dpmpp_2m", "unipc"]},
    "article_b8_schedulers": {"sd3_tiny": ["euler", "dpmpp_2m", "unipc"],
                              "flux_tiny": ["euler", "dpmpp_2m", "unipc"]},
}
DDPM_SAMPLERS = {"compare_schedulers_quick": ["ddim", "euler", "euler_a", "heun", "dpmpp_2m"],
                 "article_b8_schedulers": ["ddim", "dpmpp_2m", "euler"]}
# Jobs whose math is DDPM's (or SD 1.x's) by nature refuse other models in one line naming the models they serve:
# recipe -> (models refused, start of the message, a model it names).
REFUSES = {"article_c1_pipeline_by_hand": (FAMILIES, "job pipeline_by_hand writes out the SD 1.x epsilon loop", "sd15")}


def check_main_output(recipe: str, model: str, out: Path, frame: pd.DataFrame) -> None:
    """The recipe's main output holds what the job promised for this model."""

    if recipe == "generate":
        images = sorted((out / "images").glob("*.png"))
        assert len(images) == len(frame) == 1
        check_image(images[0], min_size=(64, 64))
    elif recipe in ("guidance_grid", "prompt_grid"):
        check_image(out / f"{recipe}.png", min_size=(128, 64))
        assert len(frame) == 2
    elif recipe == "trajectory":
        from PIL import Image

        assert frame["step"].tolist() == [0, 1] and frame["log_snr"].is_monotonic_increasing
        assert frame["sigma" if model in FLOW else "alpha_bar"].notna().all()
        assert Image.open(out / "trajectory.gif").n_frames == 2 + 1
        check_image(out / "trajectory_strip.png", min_size=(200, 150))
    elif recipe == "vae_roundtrip":
        channels = pd.read_parquet(out / "latent_channels.parquet")
        assert channels["channel"].nunique() == (16 if model in FLOW else 4) and channels["std"].gt(0).all()
        assert frame["psnr_db"].notna().all()
    elif recipe == "clip_tokens":
        tokens = pd.read_parquet(out / "tokens.parquet")
        assert len(tokens) > 10 and tokens["token"].iloc[0] == "<|startoftext|>"
        limits = frame.groupby("encoder", sort=False)["max_tokens"].first().tolist()
        assert limits == {"sdxl_tiny": [77, 77], "sd3_tiny": [77, 77, 32], "flux_tiny": [77, 32]}.get(model, [77])
        assert set(tokens["encoder"]) == set(frame["encoder"])
    elif recipe == "clip_similarity":  # the first text encoder's pooled output: equal prompts, cosine 1
        matrix = frame.pivot(index="prompt_a_index", columns="prompt_b_index", values="cosine").to_numpy()
        assert matrix[0, 2] == pytest.approx(1.0, abs=1e-5) and matrix[0, 1] < 1 - 1e-4
        assert frame["embedding"].iloc[0].startswith(f"model={model} text_encoder pooled output")
        check_image(out / "text_similarity.png", min_size=(200, 150))
    elif recipe == "anatomy":
        blocks = pd.read_parquet(out / ("transformer_blocks.parquet" if model in FLOW else "unet_blocks.parquet"))
        assert (blocks["model"] == model).all() and blocks["params"].sum() > 0
    elif recipe == "schedule_snr" and model in FLOW:  # its own flow schedule beside SD 1.5's, crossing 1/(1 + shift)
        own = frame.iloc[0]
        assert own["family"].startswith(f"model={model} (euler") and own["kind"] == "flow"
        assert own["crossing_t"] == pytest.approx(own["crossing_t_closed_form"], abs=1e-3)
        assert np.isfinite(own["mu"]) == (model == "flux_tiny") and len(own["visited_t"].split()) == 3
        assert frame["family"].iloc[1].startswith("SD 1.5")
        check_image(out / "log_snr.png", min_size=(600, 400))
    elif recipe == "schedule_snr":
        schedule = pd.read_parquet(out / "schedule.parquet")
        assert len(schedule) == 4 * 1000 and len(pd.read_csv(out / "visits.csv")) > 0
    elif recipe == "forward_process":
        assert frame["t"].tolist() == [0, 999]
        if model in FLOW:  # x_t = (1 - t/T) x_0 + (t/T) eps: z_0 itself at t = 0, so it decodes to the VAE's image
            assert frame["sigma"].tolist() == [0.0, 0.999] and frame["signal_frac"].tolist() == pytest.approx([1, 0.001])
            assert frame["psnr_vs_vae_db"].tolist()[0] == float("inf") > frame["psnr_vs_vae_db"].tolist()[1]
            assert frame["alpha_bar"].isna().all()
        else:
            assert frame["psnr_db"].is_monotonic_decreasing
        check_image(out / "forward_strip.png", min_size=(200, 100))
    elif recipe == "compare_schedulers_quick":
        samplers = SAMPLERS[recipe].get(model, DDPM_SAMPLERS[recipe])
        summary = pd.read_parquet(out / "summary.parquet")
        assert sorted(summary["scheduler"]) == sorted(samplers)
        assert summary["nfe_mean"].gt(0).all() and summary["psnr_mean"].notna().all()
        visits = pd.read_csv(out / "visits.csv")
        assert sorted(set(visits["scheduler"])) == sorted(samplers) and visits.groupby("scheduler").size().ge(2).all()
        check_image(out / "visits.png", min_size=(300, 100))
    elif recipe == "article_b8_schedulers":
        assert frame["scheduler"].tolist() == SAMPLERS[recipe].get(model, DDPM_SAMPLERS[recipe])
        assert (frame["reference"] == f"{'euler' if model == 'flux_tiny' else 'heun'} x 2 steps").all() and frame["psnr_to_reference"].notna().all()
        check_image(out / "scheduler_grid.png", min_size=(150, 64))


@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize("recipe", FAMILY_RECIPES)
def test_recipe_runs_on_every_family(recipe, model, run_sdlab, tmp_path, capsys):
    out = tmp_path / recipe
    code = run_sdlab(f"experiment={recipe}", f"model={model}", "threads=1", *FAMILY_RECIPES[recipe],
                     f"hydra.run.dir={out}")
    refused, message, named = REFUSES.get(recipe, ((), "", ""))
    if model in refused:
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"sdlab: error: {message}") and named in err and f"model={model}" in err
        return
    assert code == 0
    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) >= 1 and (frame["model"] == model).all()
    if "status" in frame:
        assert (frame["status"] == "ok").all(), frame.get("error")
    check_main_output(recipe, model, out, frame)


def test_a9_runs_the_articles_parameters_twice_and_gets_the_same_image(run_sdlab, tmp_path):
    article = json.loads((ROOT / "experiments" / "article_a9_params.json").read_text())
    assert {k: article[k] for k in ("seed", "num_inference_steps", "guidance_scale", "negative_prompt")} == {
        "seed": 42, "num_inference_steps": 30, "guidance_scale": 9.0, "negative_prompt": "blurry, low quality, text"}
    assert run_sdlab("experiment=article_a9_params", "model=tiny", "num_inference_steps=2", f"hydra.run.dir={tmp_path}") == 0
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert frame["call"].tolist() == [1, 2] and (frame["negative_prompt"] == "blurry, low quality, text").all()
    first, second = (np.asarray(Image.open(tmp_path / p)) for p in frame["image_path"])
    assert np.array_equal(first, second)
    caption = json.loads((tmp_path / "captions.json").read_text())["same_params.png"]
    assert caption.startswith("the same parameters give the same image: max |difference| 0 of 255 (bit-identical)")


def test_a9_with_more_seeds_makes_each_seed_twice(run_sdlab, tmp_path):
    """Every seed given is generated in both calls and compared with itself: none is dropped after the first."""
    assert run_sdlab("experiment=article_a9_params", "model=tiny", "num_inference_steps=2", "seeds=[3,4]",
                     f"hydra.run.dir={tmp_path}") == 0
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert sorted(zip(frame["seed"], frame["call"])) == [(3, 1), (3, 2), (4, 1), (4, 2)]
    images = {(row.seed, row.call): np.asarray(Image.open(tmp_path / row.image_path)) for row in frame.itertuples()}
    assert all(np.array_equal(images[seed, 1], images[seed, 2]) for seed in (3, 4))
    assert not np.array_equal(images[3, 1], images[4, 1])
    caption = json.loads((tmp_path / "captions.json").read_text())["same_params.png"]
    assert caption.startswith("the same parameters give the same image: max |difference| 0 of 255 (bit-identical)")
    assert "seeds 3, 4" in caption


def test_a9_with_a_failed_image_compares_the_seeds_it_has_and_names_the_one_it_has_not(run_sdlab, tmp_path,
                                                                                     monkeypatch):
    """A seed whose image failed in a call is a failed row and a line of the figure's title, not a crash."""
    from sdlab.models import generate

    real = generate.decode_latents

    def second_black(model, latents):
        images = real(model, latents)
        images[1:2] = 0  # seed 4 of each call
        return images

    monkeypatch.setattr(generate, "decode_latents", second_black)
    assert run_sdlab("experiment=article_a9_params", "model=tiny", "num_inference_steps=2", "seeds=[3,4]",
                     f"hydra.run.dir={tmp_path}") == 1
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert sorted(zip(frame["seed"], frame["call"], frame["status"])) == [
        (3, 1, "ok"), (3, 2, "ok"), (4, 1, "error"), (4, 2, "error")]
    caption = json.loads((tmp_path / "captions.json").read_text())["same_params.png"]
    assert caption.startswith("the same parameters give the same image: max |difference| 0 of 255 (bit-identical)")
    assert "seeds 3, 4" in caption and "seed 4 not compared: call 1 and 2 failed (" in caption
    assert "all-black image for seed 4" in caption
    check_image(tmp_path / "same_params.png")


def test_a9_with_no_image_from_a_call_draws_nothing_and_says_why_in_its_rows(run_sdlab, tmp_path, monkeypatch,
                                                                             capsys):
    from sdlab.models import generate

    real = generate.decode_latents
    monkeypatch.setattr(generate, "decode_latents", lambda model, latents: real(model, latents) * 0)
    assert run_sdlab("experiment=article_a9_params", "model=tiny", "num_inference_steps=2",
                     f"hydra.run.dir={tmp_path}") == 1
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert frame["status"].tolist() == ["error", "error"] and frame["error"].str.contains("all-black").all()
    assert not (tmp_path / "same_params.png").exists() and "Traceback" not in capsys.readouterr().err
