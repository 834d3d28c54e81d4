"""Sweep cells that share a pipeline call: many cells per call, each still its own job dir, row, PNG and fate."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sdlab.bench.resume import read_manifest
from sdlab.config import GenerationParams, generation_params
from sdlab.errors import UserError
from sdlab.models import generate
from sdlab.models.families import family
from sdlab.models.loading import configured_spec, load_model

PROMPTS = "prompt='a small red circle in the centre on a blue background','a big green square, on the left'"
SWEEP = ("-m", PROMPTS, "seed=1,2", "guidance_scale=1,7.5", "num_inference_steps=2", "threads=1")


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=int)


@pytest.fixture
def black_second_image(monkeypatch):
    """The second image of every call of more than one image decodes all black."""
    real = generate.decode_latents

    def decode(model, latents):
        images = real(model, latents)
        if len(latents) > 1:
            images[1] = 0
        return images

    monkeypatch.setattr(generate, "decode_latents", decode)


def test_cells_share_calls_and_keep_their_own_rows_and_images(run_sdlab, tmp_path):
    assert run_sdlab(*SWEEP, f"hydra.sweep.dir={tmp_path / 'shared'}") == 0
    assert run_sdlab(*SWEEP, "hydra.launcher.ahead=false", f"hydra.sweep.dir={tmp_path / 'alone'}") == 0
    shared = pd.read_parquet(tmp_path / "shared" / "results.parquet")
    alone = pd.read_parquet(tmp_path / "alone" / "results.parquet")
    assert len(shared) == 8 and (shared["status"] == "ok").all()
    assert shared["batch_size"].tolist() == [4] * 8  # 2 prompts x 2 seeds per guidance scale, one call each
    assert alone["batch_size"].tolist() == [1] * 8
    assert shared["config_hash"].tolist() == alone["config_hash"].tolist()
    assert len({p.split("/")[0] for p in shared["image_path"]}) == 8  # a job dir each
    for path in shared["image_path"]:  # the same image within one level as when made alone
        assert np.abs(pixels(tmp_path / "shared" / path) - pixels(tmp_path / "alone" / path)).max() <= 1
    call = shared.groupby("guidance_scale")["time_total_s"]
    assert (call.nunique() == 1).all()  # each cell takes an equal share of its call's time


def test_a_bad_image_in_a_shared_call_fails_only_its_cell(run_sdlab, tmp_path, black_second_image):
    assert run_sdlab("-m", "seed=1,2,3", "num_inference_steps=2", "threads=1", f"hydra.sweep.dir={tmp_path}") == 1
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert frame["status"].tolist() == ["ok", "error", "ok"] and "all-black" in frame["error"].iloc[1]
    assert frame["batch_size"].tolist() == [3, 3, 3]


def test_a_bad_image_fails_only_its_cell_when_another_cell_of_the_call_has_its_seed(run_sdlab, tmp_path,
                                                                                    black_second_image):
    assert run_sdlab("-m", PROMPTS, "seed=1,2", "num_inference_steps=2", "threads=1",
                     f"hydra.sweep.dir={tmp_path}") == 1
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert frame["batch_size"].tolist() == [4] * 4  # two prompts at each seed in one call
    assert frame["status"].tolist().count("error") == 1, frame[["prompt", "seed", "status", "error"]]
    bad = frame[frame["status"] == "error"].iloc[0]
    twin = frame[(frame["seed"] == bad["seed"]) & (frame["prompt"] != bad["prompt"])].iloc[0]
    assert twin["status"] == "ok" and (tmp_path / twin["image_path"]).is_file()


def test_a_rerun_makes_only_the_missing_cells(run_sdlab, tmp_path):
    sweep = f"hydra.sweep.dir={tmp_path}"
    assert run_sdlab(*SWEEP, sweep) == 0
    first = pd.read_parquet(tmp_path / "results.parquet")
    (tmp_path / first["image_path"][2]).unlink()
    (tmp_path / first["image_path"][5]).unlink()
    assert run_sdlab(*SWEEP, sweep) == 0
    again = pd.read_parquet(tmp_path / "results.parquet")
    remade = [a != b for a, b in zip(first["run_id"], again["run_id"])]
    assert remade == [i in (2, 5) for i in range(8)]
    assert again.loc[[2, 5], "batch_size"].tolist() == [1, 1]  # different guidance scales: a call each


def test_a_sweep_killed_in_its_second_call_keeps_every_cell_of_the_first(run_sdlab, tmp_path, monkeypatch, capsys):
    """A kill loses at most the call under way: the cells a finished call made are written before the next call,
    although the sweep's job order (seeds slowest) interleaves them with cells of the next call."""
    from sdlab.jobs import generate as generate_job

    calls, real = [], generate_job.generate_batch

    def second_call_interrupted(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    def leave(code):  # the command leaves at once (os._exit); this test's process stays
        raise SystemExit(code)

    monkeypatch.setattr(generate_job, "generate_batch", second_call_interrupted)
    monkeypatch.setattr(os, "_exit", leave)
    sweep = f"hydra.sweep.dir={tmp_path}"
    assert run_sdlab(*SWEEP, sweep) == 130
    assert calls == [4, 4]  # guidance 1 (2 prompts x 2 seeds), then guidance 7.5, interrupted
    finished = [job for job in tmp_path.iterdir() if (job / "results.parquet").is_file()]
    assert sorted(float(pd.read_parquet(job / "results.parquet")["guidance_scale"][0]) for job in finished) == [1.0] * 4
    assert len(read_manifest(tmp_path)["spent"]) == 1  # the report's wall time counts the interrupted command too
    monkeypatch.setattr(generate_job, "generate_batch", real)
    capsys.readouterr()
    assert run_sdlab(*SWEEP, sweep) == 0
    assert "4 finished before: not run again" in capsys.readouterr().out
    again = pd.read_parquet(tmp_path / "results.parquet")
    assert (again["status"] == "ok").all() and len(again) == 8
    assert again.loc[again["guidance_scale"] == 7.5, "batch_size"].tolist() == [4] * 4
    assert len(read_manifest(tmp_path)["spent"]) == 2


def test_guidance_scales_above_one_share_a_call_each_image_guided_by_its_own(run_sdlab, tmp_path):
    sweep = ("-m", "seed=1,2", "guidance_scale=1.5,7.5,12", "num_inference_steps=2", "threads=1")
    assert run_sdlab(*sweep, f"hydra.sweep.dir={tmp_path / 'shared'}") == 0
    assert run_sdlab(*sweep, "hydra.launcher.ahead=false", f"hydra.sweep.dir={tmp_path / 'alone'}") == 0
    shared = pd.read_parquet(tmp_path / "shared" / "results.parquet")
    alone = pd.read_parquet(tmp_path / "alone" / "results.parquet")
    assert shared["batch_size"].tolist() == [6] * 6 and shared["guidance_scale"].tolist() == alone["guidance_scale"].tolist()
    for path in shared["image_path"]:
        assert np.abs(pixels(tmp_path / "shared" / path) - pixels(tmp_path / "alone" / path)).max() <= 1
    first = pixels(tmp_path / "shared" / shared["image_path"][0])
    assert np.abs(first - pixels(tmp_path / "shared" / shared["image_path"][4])).max() > 8  # w = 1.5 against 12


def test_images_with_different_prompts_in_one_call_match_each_made_alone(tiny):
    model, _ = tiny
    base = GenerationParams(prompt="a small red circle", negative_prompt="blue", width=64, height=64,
                            num_inference_steps=2, guidance_scale=7.5)
    requests = [base, replace(base, prompt="a big green square"), replace(base, negative_prompt=""),
                replace(base, guidance_scale=2.0)]
    together = generate.generate_batch(model, base, [1, 2, 3, 4], requests=requests).images
    for request, seed, image in zip(requests, [1, 2, 3, 4], together):
        alone = generate.generate_batch(model, request, [seed]).images[0]
        assert np.abs(np.asarray(image, int) - np.asarray(alone, int)).max() <= 1


@pytest.mark.parametrize("side, expected", [(512, 4), (256, 16), (64, 64)])
def test_batch_size_auto_fills_the_pixel_budget_up_to_the_most_per_call(side, expected):
    params = generation_params({"batch_size": "auto", "seed": 1}, side)
    assert params.batch_size == expected
    assert generation_params({"batch_size": 3, "seed": 1}, side).batch_size == 3  # an explicit value wins


def test_a_wrong_batch_size_is_one_line_and_nothing_is_written(run_sdlab, tmp_path, capsys):
    assert run_sdlab("batch_size=big", f"hydra.run.dir={tmp_path / 'run'}") == 2
    assert capsys.readouterr().err.strip() == "sdlab: error: batch_size='big' must be a positive integer or auto"
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="batch_size=0 must be >= 1"):
        GenerationParams(batch_size=0)
    assert run_sdlab("limits.batch_pixels=0", f"hydra.run.dir={tmp_path / 'run'}") == 2
    assert capsys.readouterr().err.strip() == "sdlab: error: limits.batch_pixels=0 must be a positive integer"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["sdxl_tiny", "sd3_tiny"])
def test_each_image_of_a_call_takes_its_own_guidance_scale_on_every_cfg_family(name, one_thread):
    model = load_model(configured_spec(name))
    base = GenerationParams(prompt="a red circle", width=64, height=64, num_inference_steps=2, guidance_scale=3.0)
    requests = [base, replace(base, guidance_scale=7.5)]
    together = generate.generate_batch(model, base, [1, 2], requests=requests).images
    for request, seed, image in zip(requests, [1, 2], together):
        alone = generate.generate_batch(model, request, [seed]).images[0]
        assert np.abs(np.asarray(image, int) - np.asarray(alone, int)).max() <= 1


def test_a_guidance_distilled_model_takes_one_scale_per_call():
    assert family("sd").guidance_group(3.0) == family("sd").guidance_group(7.5) != family("sd").guidance_group(1.0)
    assert family("flux").guidance_group(3.0) != family("flux").guidance_group(7.5)


def test_a_sweep_looks_through_its_job_dirs_once_per_shared_call_not_once_per_cell(run_sdlab, tmp_path, monkeypatch):
    from sdlab.bench import resume
    from sdlab.jobs import generate as generate_job

    looks, real = [], resume.sweep_cells
    monkeypatch.setattr(generate_job, "sweep_cells", lambda *a: looks.append(a) or real(*a))
    assert run_sdlab(*SWEEP, f"hydra.sweep.dir={tmp_path}") == 0
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == 8
    assert len(looks) == 2  # one per shared call (guidance 1, guidance 7.5), none per cell


def test_the_images_of_a_shared_call_are_scored_together(run_sdlab, tmp_path, monkeypatch):
    from sdlab.jobs import generate as generate_job

    calls, real = [], generate_job.score_images
    monkeypatch.setattr(generate_job, "score_images", lambda scorers, images, prompts: calls.append(
        (len(images), sorted(set(prompts)))) or real(scorers, images, prompts))
    assert run_sdlab(*SWEEP, f"hydra.sweep.dir={tmp_path / 'shared'}") == 0
    assert len(calls) == 2 and all(n == 4 and len(prompts) == 2 for n, prompts in calls)  # one per call, none per cell
    calls.clear()
    assert run_sdlab(*SWEEP, "hydra.launcher.ahead=false", f"hydra.sweep.dir={tmp_path / 'alone'}") == 0
    assert [n for n, _ in calls] == [1] * 8
    shared, alone = (pd.read_parquet(tmp_path / name / "results.parquet") for name in ("shared", "alone"))
    assert shared["clip_score"].notna().all() and shared["adherence_all"].notna().all()
    assert np.abs(shared["clip_score"] - alone["clip_score"]).max() < 0.5  # images within one level, scores alike
    assert (shared["adherence_all"] == alone["adherence_all"]).all()


def test_a_submitit_task_shares_calls_between_the_cells_of_its_chunk(run_sdlab, tmp_path):
    sweep = ("-m", "seed=1,2,3,4", "guidance_scale=1,7.5", "num_inference_steps=2", "threads=1")
    assert run_sdlab(*sweep, "hydra/launcher=submitit_local", "hydra.sweeper.cells_per_task=4",
                     f"hydra.sweep.dir={tmp_path / 'tasks'}") == 0
    assert run_sdlab(*sweep, f"hydra.sweep.dir={tmp_path / 'here'}") == 0
    tasks = pd.read_parquet(tmp_path / "tasks" / "results.parquet")
    here = pd.read_parquet(tmp_path / "here" / "results.parquet")
    assert (tasks["status"] == "ok").all() and len(tasks) == 8
    # seeds vary slowest: each task of 4 cells holds 2 seeds x 2 guidance scales, one call per guidance group
    assert tasks["batch_size"].tolist() == [2] * 8
    assert tasks["config_hash"].tolist() == here["config_hash"].tolist()
    for path in tasks["image_path"]:
        assert np.abs(pixels(tmp_path / "tasks" / path) - pixels(tmp_path / "here" / path)).max() <= 1


def test_cells_of_one_call_whose_scores_differ_are_each_scored_by_their_own_scorers():
    """Cells may share a call yet differ in what decides a score (a set scorer's reference set): each image is scored
    by its own cell's scorers, the images of equal scorers together."""
    from sdlab.bench.scorers import Scorer, ScorerKind
    from sdlab.jobs.generate import scored

    calls = []

    def scorer(reference: str) -> Scorer:
        def score(images, prompts):
            calls.append((reference, len(images)))
            return [{"reference": reference, "prompt_seen": p} for p in prompts]
        return Scorer("ref", ScorerKind(lambda cfg, device: score, ("reference",)), score, reference)

    a, b = [scorer("a")], [scorer("b")]
    result = generate.BatchResult(images=["i0", None, "i2", "i3"], seeds=[0, 1, 2, 3], nfe=1, time_text_s=0,
                                  time_unet_s=0, time_vae_s=0, time_total_s=0, peak_mem_bytes=0)
    out = scored(result, [a, a, b, a], ["p0", "p1", "p2", "p3"])
    assert out.scores == [{"reference": "a", "prompt_seen": "p0"}, None, {"reference": "b", "prompt_seen": "p2"},
                          {"reference": "a", "prompt_seen": "p3"}]
    assert sorted(calls) == [("a", 2), ("b", 1)]
