"""The scheduler grid with a reference solve: each image's distance to it, on the grid and in the rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd


def test_scheduler_grid_measures_each_image_against_a_many_step_reference(run_sdlab, tmp_path, one_thread):
    assert run_sdlab("experiment=article_b8_schedulers", "model=tiny", "num_inference_steps=2",
                     "reference_steps=20", "threads=1", f"hydra.run.dir={tmp_path}") == 0
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert sorted(frame["scheduler"].unique()) == ["ddim", "dpmpp_2m", "euler"]
    assert np.isfinite(frame["psnr_to_reference"]).all() and (frame["psnr_to_reference"] > 0).all()
    assert set(frame["reference"]) == {"dpmpp_2m x 20 steps"}
    mean = frame.groupby("scheduler")["psnr_to_reference"].mean()
    assert set(frame["scheduler_label"]) == {f"{s}: {v:.1f} dB PSNR" for s, v in mean.items()}
    assert (tmp_path / "scheduler_grid.png").is_file()
    caption = json.loads((tmp_path / "captions.json").read_text())["scheduler_grid.png"]
    assert caption.startswith("at 2 steps, mean PSNR to dpmpp_2m x 20 steps: ddim ")
    assert "closest per seed: 42 " in caption and "the ranking " in caption  # flips between seeds, or holds
