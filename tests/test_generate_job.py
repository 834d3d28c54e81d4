"""The generate job end to end through the command line: rows, PNGs, sweeps, grids, the model cache."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from PIL import Image

from sdlab.models import loading as models
from sdlab.bench.records import read_png_metadata


def test_default_job_writes_ok_rows_and_pngs_with_parameters(run_sdlab, tmp_path):
    out = tmp_path / "run"
    assert run_sdlab("num_inference_steps=3", "seeds=[3,4]", f"hydra.run.dir={out}") == 0
    frame = pd.read_parquet(out / "results.parquet")
    assert list(frame["status"]) == ["ok", "ok"]
    assert list(frame["seed"]) == [3, 4]
    assert (frame["nfe"] == 3).all()
    assert pd.read_csv(out / "results.csv")["seed"].tolist() == [3, 4]
    for row in frame.itertuples():
        meta = read_png_metadata(out / row.image_path)
        assert meta["seed"] == row.seed and meta["num_inference_steps"] == 3
        assert Image.open(out / row.image_path).size == (64, 64)
    assert json.loads(frame["scheduler_config"][0])["class"] == "DPMSolverMultistepScheduler"
    assert {"adherence_colour", "adherence_shape", "adherence_all"} <= set(frame.columns)  # a dataset caption
    assert (frame["time_unet_s"] > 0).all() and (frame["time_total_s"] >= frame["time_unet_s"]).all()


def test_multirun_loads_once_and_collects_one_table_and_grid(run_sdlab, tmp_path):
    models.clear_cache()
    before = models.CACHE.load_count
    sweep = tmp_path / "sweep"
    code = run_sdlab("-m", "seed=1,2", "guidance_scale=1,7.5", "num_inference_steps=2", f"hydra.sweep.dir={sweep}")
    assert code == 0
    assert models.CACHE.load_count - before == 1
    frame = pd.read_csv(sweep / "results.csv")
    assert sorted(zip(frame["seed"], frame["guidance_scale"])) == [(1, 1.0), (1, 7.5), (2, 1.0), (2, 7.5)]
    assert (frame["status"] == "ok").all()
    assert all((sweep / p).is_file() for p in frame["image_path"])
    grid = np.asarray(Image.open(sweep / "grid.png").convert("L"))
    assert grid.shape[0] > 200 and grid.shape[1] > 200
    assert grid.std() > 10  # images, not a blank canvas


def test_guidance_1_skips_unconditional_branch_and_changes_image(run_sdlab, tmp_path):
    sweep = tmp_path / "sweep"
    assert run_sdlab("-m", "guidance_scale=1,7.5", "num_inference_steps=2", f"hydra.sweep.dir={sweep}") == 0
    frame = pd.read_parquet(sweep / "results.parquet").sort_values("guidance_scale")
    a, b = (np.asarray(Image.open(sweep / p), dtype=float) for p in frame["image_path"])
    assert np.abs(a - b).max() > 0


def test_params_json_runs_as_is(run_sdlab, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({
        "prompt": "a pirate ship sailing through a storm", "seed": 42, "num_inference_steps": 2,
        "guidance_scale": 5, "width": 48, "height": 40, "negative_prompt": "blurry",
    }))
    out = tmp_path / "run"
    assert run_sdlab(f"params={params}", f"hydra.run.dir={out}") == 0
    row = pd.read_parquet(out / "results.parquet").iloc[0]
    assert (row["seed"], row["width"], row["height"], row["negative_prompt"]) == (42, 48, 40, "blurry")
    assert Image.open(out / row["image_path"]).size == (48, 40)


def test_command_line_wins_over_params_json(run_sdlab, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"seed": 42, "num_inference_steps": 2}))
    out = tmp_path / "run"
    assert run_sdlab(f"params={params}", "seed=5", f"hydra.run.dir={out}") == 0
    assert pd.read_parquet(out / "results.parquet")["seed"].tolist() == [5]


def test_long_prompt_is_a_warning_and_a_recorded_count(run_sdlab, tmp_path, caplog):
    prompt = "a " + "very " * 90 + "red circle"
    assert run_sdlab(f"prompt='{prompt}'", "num_inference_steps=2", f"hydra.run.dir={tmp_path}") == 0
    row = pd.read_parquet(tmp_path / "results.parquet").iloc[0]
    assert row["status"] == "ok"
    assert row["prompt_truncated_tokens"] == 95 - 77  # 93 one-token words + BOS/EOS
    assert "dropped" in (tmp_path / "cli.log").read_text()


def test_a_model_that_would_not_fit_unloads_the_least_recently_used_first(tmp_path, monkeypatch, caplog):
    """A sweep over models keeps each loaded while memory allows; one whose weights would not fit in what is free
    unloads the one used longest ago, and says so, instead of running out of memory with both."""
    import logging
    import shutil

    copy = tmp_path / "mini_copy"
    shutil.copytree(models.model_folder(models.configured_spec("mini")), copy)
    cache = models.ModelCache()
    first, second = models.configured_spec("mini"), models.configured_spec("mini", path=str(copy))
    cache.load(first)
    monkeypatch.setattr(models, "free_bytes", lambda device: 2**40)  # room for both
    cache.load(second)
    assert cache.load_count == 2 and len(cache.models) == 2
    cache.load(first)  # used again: now the second is the one used longest ago
    monkeypatch.setattr(models, "free_bytes", lambda device: 2**40 if len(cache.models) < 2 else 1)  # room for two
    third = models.configured_spec("mini", path=str(copy), attention="eager")
    with caplog.at_level(logging.INFO, logger=models.log.name):
        cache.load(third)
    assert cache.load_count == 3 and [m.spec for m in cache.models.values()] == [first, third]
    assert "unloaded model mini to make room for mini" in caplog.text
