"""Pre-flight as pure functions: a recipe in the model's world, warnings, the sweep plan, nearest-prompt claims."""

from __future__ import annotations

import numpy as np
import pytest

from sdlab.jobs.clip import nearest_claim
from sdlab.app.preflight import model_warnings, sweep_plan
from sdlab.bench.run import in_model_world
from sdlab.bench.worlds import world
from sdlab.errors import UserError

RECIPE = {"prompts": ["a pirate ship"], "world": {"shapes": {"prompts": ["a red circle", "a blue square"]}}}


def test_a_recipe_speaks_the_model_world_unless_the_user_overrides():
    mini = {**RECIPE, "model": {"name": "mini", "prompt_grammar": "shapes"}}
    sd = {**RECIPE, "model": {"name": "sd15", "prompt_grammar": None}}
    assert in_model_world(mini, set())["prompts"] == ["a red circle", "a blue square"]
    assert in_model_world(sd, set())["prompts"] == ["a pirate ship"]
    assert in_model_world(mini, {"prompts"})["prompts"] == ["a pirate ship"]


def test_grammar_and_size_warnings_name_what_is_wrong():
    cfg = {"model": {"name": "mini", "resolution": 64, "prompt_grammar": "shapes"}, "prompt": "a cat, on a red sofa"}
    warnings = model_warnings(cfg, 512, 512)
    assert "does not know: cat, sofa" in warnings[0]
    assert "width=512 height=512 differ from model=mini's native 64x64 px" in warnings[1]
    assert model_warnings({**cfg, "prompt": "a small red circle on the left on a blue background"}, 64, 64) == []
    assert world("shapes").unknown_words("A Large RED Triangle, at the top") == []
    listed = ["a red circle", "a pirate ship", "a blue square", "a ship"]
    assert model_warnings({**cfg, "prompt": "a red circle"}, 64, 64, None, listed) == [  # P2 and P4 in its figures
        "prompts P2, P4 are outside model=mini's shapes grammar (it does not know: pirate, ship); it knows prompts "
        f"like {world('shapes').example!r}"]


def test_sweep_plan_counts_jobs_and_images():
    from sdlab.config import LIMITS, GenerationParams, ModelSpec, Run, SchedulerChoice

    def run(job, seeds=(0,)):
        return Run(job, ModelSpec("mini"), SchedulerChoice("euler"), GenerationParams(seeds=seeds), LIMITS,
                   {"job": job, "seeds": list(seeds)})

    assert sweep_plan([run("generate", (1, 2, 3)), run("generate")]) == "2 jobs, 4 images"
    assert sweep_plan([run("generate"), run("anatomy")]) == "2 jobs"


def test_sweep_plan_counts_a_cell_typed_twice_once():
    from sdlab.config import LIMITS, GenerationParams, ModelSpec, Run, SchedulerChoice

    def run(seed):
        return Run("generate", ModelSpec("mini"), SchedulerChoice("euler"), GenerationParams(seeds=(seed,)), LIMITS,
                   {"seed": seed})

    assert sweep_plan([run(1), run(1), run(2)]) == "3 jobs (1 repeats another's values: made once), 2 images"


def test_nearest_claim_reads_the_first_row():
    matrix = np.array([[1.0, 0.84, -0.61], [0.84, 1.0, -0.62], [-0.61, -0.62, 1.0]])
    assert nearest_claim(matrix) == "P1 is closest to P2 (0.84) and farthest from P3 (-0.61)"


def test_diagonal_claim_counts_images_that_pick_their_own_caption():
    from sdlab.jobs.clip import diagonal_claim

    cos = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.7, 0.0, 0.3]])
    assert diagonal_claim(cos) == "2 of 3 images closest to their own caption; matched cos 0.67 vs unmatched 0.18"


@pytest.mark.parametrize("recipe, overrides, used", [
    ("compare_schedulers_quick", {"compare.schedulers": ["ddim"], "compare.reference_scheduler": "heun"},
     ["dpmpp_2m", "ddim", "heun"]),
    ("compare_schedulers_quick", {"compare.schedulers": "euler"}, ["dpmpp_2m", "euler"]),  # one name: a list of one
    ("article_b8_schedulers", {"schedulers": "lms"}, ["dpmpp_2m", "lms", "heun"]),
    ("schedule_snr", {"visit_schedulers": ["heun", {"name": "ddim", "timestep_spacing": "trailing"}]},
     ["dpmpp_2m", "heun", "ddim"]),
    ("schedule_snr", {"visit_schedulers": "euler"}, ["dpmpp_2m", "euler"]),
])
def test_schedulers_used_reads_every_form_a_recipe_lists(recipe, overrides, used):
    from analysis_helpers import config_for
    from sdlab.app.preflight import schedulers_used
    from sdlab.bench.run import parse
    from sdlab.jobs import check_recipe

    config = config_for(recipe)
    for key, value in overrides.items():
        block, _, name = key.rpartition(".")
        (config[block] if block else config)[name] = value
    run = parse(config)
    assert schedulers_used(run, check_recipe(run)) == used


FLOW_RECIPE = {"compare": {"schedulers": ["ddim", "euler"], "reference_scheduler": "dpmpp_2m", "steps": [5, 10]},
               "world": {"flow": {"compare": {"schedulers": ["heun", "unipc"], "reference_scheduler": "euler"}},
                         "flux": {"compare": {"schedulers": ["unipc"]}}}}


def test_a_recipe_takes_the_samplers_of_the_model_kind_and_family_key_by_key():
    sd3 = in_model_world({**FLOW_RECIPE, "model": {"name": "sd3_tiny", "family": "sd3"}}, set())["compare"]
    assert sd3 == {"schedulers": ["heun", "unipc"], "reference_scheduler": "euler", "steps": [5, 10]}
    flux = in_model_world({**FLOW_RECIPE, "model": {"name": "flux_tiny", "family": "flux"}}, set())["compare"]
    assert flux["schedulers"] == ["unipc"] and flux["reference_scheduler"] == "euler"
    sd = in_model_world({**FLOW_RECIPE, "model": {"name": "tiny"}}, set())["compare"]
    assert sd == FLOW_RECIPE["compare"]
    typed = {**FLOW_RECIPE, "model": {"name": "sd3_tiny", "family": "sd3"},
             "compare": {**FLOW_RECIPE["compare"], "schedulers": ["dpmpp_2m"]}}
    assert in_model_world(typed, {"compare.schedulers"})["compare"]["schedulers"] == ["dpmpp_2m"]


def test_a_single_guidance_scale_is_a_list_of_one_and_its_bounds_are_checked():
    import pytest

    from sdlab.errors import UserError
    from analysis_helpers import config_for
    from sdlab.bench.run import parse
    from sdlab.jobs import check_recipe
    from sdlab.config import rules_of
    from sdlab.jobs.recipes import GuidanceGrid

    check_recipe(parse(config_for("guidance_grid", guidance_scales=5)))
    assert rules_of(GuidanceGrid)["guidance_scales"].check("guidance_scales", 5) == [5.0]
    with pytest.raises(UserError, match=r"^guidance_scales=-2 must be a non-empty list of numbers, each >= 0"):
        check_recipe(parse(config_for("guidance_grid", guidance_scales=-2)))



def test_a_prompt_world_is_a_plugin_the_shapes_world_registers():
    shapes = world("shapes")
    assert shapes.unknown_words("a big red circle on a sofa") == ["big", "sofa"]
    [(name, image, caption)] = shapes.samples(1, 32, None)
    assert image.shape == (32, 32, 3) and shapes.unknown_words(caption) == []
    circle = shapes.draw("a large red circle in the centre on a blue background")
    assert tuple(circle[0, 0]) != tuple(circle[32, 32])  # a shape on a background
    with pytest.raises(UserError, match=r"sample_world='dots' is not an installed prompt world; worlds are: shapes"):
        world("dots")


@pytest.mark.parametrize("args, message", [
    (("sample_world=dots",), "sample_world='dots' is not an installed prompt world; worlds are: shapes"),
    (("experiment=article_c2_img2img", "image_caption=a cat"),
     "'a cat' is not a whole caption of the shapes grammar"),
])
def test_a_bad_world_or_caption_is_one_line_before_anything_is_written(run_sdlab, tmp_path, capsys, monkeypatch,
                                                                        args, message):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab(*args, "model=tiny") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "outputs").exists()


def test_a_negative_prompt_a_guidance_distilled_model_never_reads_is_said(run_sdlab, tmp_path, capsys):
    # Flux runs no unconditional branch: negative_prompt would change nothing, and the row would still record it
    assert run_sdlab("model=flux_tiny", "negative_prompt=blue", "num_inference_steps=1", "threads=1",
                     f"hydra.run.dir={tmp_path / 'flux'}") == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "negative_prompt='blue'" in line]
    assert len(said) == 1 and said[0].endswith(
        "negative_prompt='blue' is not used by model=flux_tiny: its family (flux) is guidance-distilled, "
        "with no unconditional branch for it to steer away from"), said
    assert run_sdlab("model=sd3_tiny", "negative_prompt=blue", "num_inference_steps=1", "threads=1",
                     f"hydra.run.dir={tmp_path / 'sd3'}") == 0
    assert "is not used by" not in capsys.readouterr().out


def test_a_word_with_digits_symbols_or_another_script_is_named_whole():
    """`3d` was named `d`, `8k` `k`, and `#1`, `$5` and `猫` not at all: a prompt of them got no warning."""
    from sdlab.bench.worlds import world

    shapes = world("shapes")
    assert shapes.unknown_words("a red circle 3d, 8k #1 $5 猫 (small)") == ["3d", "8k", "#1", "$5", "猫"]
    assert shapes.unknown_words("a small red circle, in the centre; on a blue background.") == []


def test_a_negative_prompt_at_guidance_one_is_said_once_per_sweep(run_sdlab, tmp_path, capsys):
    # at w <= 1 the pipelines skip the unconditional branch, the only place a negative prompt is read
    assert run_sdlab("-m", "model=tiny", "negative_prompt=blue", "guidance_scale=1,7.5", "num_inference_steps=1",
                     "threads=1", f"hydra.sweep.dir={tmp_path / 'sweep'}") == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "negative_prompt='blue'" in line]
    assert len(said) == 1 and said[0].endswith(
        "negative_prompt='blue' is not used at guidance_scale=1: only classifier-free guidance (above 1) runs the "
        "unconditional branch it steers away from"), said
    assert run_sdlab("model=tiny", "negative_prompt=blue", "num_inference_steps=1", "threads=1",
                     f"hydra.run.dir={tmp_path / 'guided'}") == 0
    assert "is not used at" not in capsys.readouterr().out
