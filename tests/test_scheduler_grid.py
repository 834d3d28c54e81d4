"""The scheduler grid with a reference solve: each image's distance to it, on the grid and in the rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy import stats


def test_scheduler_grid_measures_each_image_against_a_many_step_reference(run_sdlab, tmp_path, one_thread):
    assert run_sdlab("experiment=article_b8_schedulers", "model=tiny", "num_inference_steps=2",
                     "reference_steps=20", "threads=1", f"hydra.run.dir={tmp_path}") == 0
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert sorted(frame["scheduler"].unique()) == ["ddim", "dpmpp_2m", "euler"]
    assert np.isfinite(frame["psnr_to_reference"]).all() and (frame["psnr_to_reference"] > 0).all()
    assert set(frame["reference"]) == {"heun x 20 steps"}  # a sampler outside the contest
    mean = frame.groupby("scheduler")["psnr_to_reference"].mean()
    assert set(frame["scheduler_label"]) == {f"{s}: {v:.1f} dB PSNR" for s, v in mean.items()}
    assert (tmp_path / "scheduler_grid.png").is_file()
    caption = json.loads((tmp_path / "captions.json").read_text())["scheduler_grid.png"]
    assert caption.startswith("'a small red circle in the centre on a blue background' at 2 steps: PSNR to the heun x "
                              "20-step solve, mean [95% interval] over 6 seeds: ddim ")
    ddim = frame[frame["scheduler"] == "ddim"]["psnr_to_reference"]
    lo, hi = stats.t.interval(0.95, len(ddim) - 1, loc=ddim.mean(), scale=stats.sem(ddim))  # over the 6 seeds
    assert f"ddim {ddim.mean():.1f} [{lo:.1f}, {hi:.1f}]" in caption
    assert "closest per seed: 42 " in caption and "the ranking " in caption  # flips between seeds, or holds
    own = frame["own_solve_psnr_to_reference"]  # each contestant's own 20-step solve against the reference
    assert np.isfinite(own).all() and frame.groupby(["scheduler", "seed"])["own_solve_psnr_to_reference"].nunique().eq(1).all()
    assert f"own 20-step solve is {own.min():.1f}-{own.max():.1f} dB from" in caption


def test_a_contestant_that_is_the_reference_sampler_is_its_own_solve(run_sdlab, tmp_path, one_thread):
    assert run_sdlab("experiment=article_b8_schedulers", "schedulers=[heun,ddim]", "reference_steps=4",
                     "model=tiny", "num_inference_steps=2", "seeds=[0,1]", "threads=1", f"hydra.run.dir={tmp_path}") == 0
    frame = pd.read_parquet(tmp_path / "results.parquet").set_index("scheduler")
    assert np.isinf(frame.loc["heun", "own_solve_psnr_to_reference"]).all()
    caption = json.loads((tmp_path / "captions.json").read_text())["scheduler_grid.png"]
    assert "dB: too few seeds for an interval (" in caption  # two seeds: no interval drawn or claimed
    assert np.isfinite(frame.loc["ddim", "own_solve_psnr_to_reference"]).all()


def test_the_runs_scheduler_options_reach_every_sampler_of_the_grid(run_sdlab, tmp_path, one_thread):
    """`scheduler.shift=1.5` on a study of several samplers shifts each of them, the reference too; it was ignored."""
    assert run_sdlab("experiment=article_b8_schedulers", "model=sd3_tiny", "scheduler.shift=1.5", "num_inference_steps=1",
                     "reference_steps=2", "seeds=[0]", "threads=1", f"hydra.run.dir={tmp_path}") == 0
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert sorted(frame["scheduler"]) == ["dpmpp_2m", "euler", "unipc"]
    shifts = [json.loads(c).get("shift", json.loads(c).get("flow_shift")) for c in frame["scheduler_config"]]
    assert shifts == [1.5, 1.5, 1.5]


def test_an_option_one_listed_sampler_lacks_is_one_line_before_any_work(run_sdlab, tmp_path, capsys):
    assert run_sdlab("experiment=article_b8_schedulers", "model=tiny", "scheduler.use_karras_sigmas=true",
                     "threads=1", f"hydra.run.dir={tmp_path / 'r'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scheduler 'ddim' has no option 'use_karras_sigmas'" in err[0]
    assert not (tmp_path / "r").exists()


def test_no_sampler_is_called_level_or_ahead_while_one_has_too_few_seeds_for_an_interval():
    from sdlab.jobs.grids import lead

    nan = float("nan")
    both = {"euler": (20.0, 18.0, 22.0), "ddim": (19.0, 17.0, 21.0)}
    assert lead(both) == "the intervals overlap (1.0 dB between means), no sampler ahead"
    assert lead({**both, "ddim": (12.0, 11.0, 13.0)}) == "euler ahead beyond the seed-to-seed noise"
    too_few = lead({"euler": (20.0, nan, nan), "ddim": (19.0, nan, nan)})
    assert too_few == "too few seeds for an interval (1.0 dB between means)"
    # ddim lost seeds (failed cells): its interval is NaN, which says nothing about overlap
    assert lead({**both, "ddim": (19.0, nan, nan)}) == "too few seeds for an interval for ddim (1.0 dB between means)"
    assert lead({**both, "euler": (20.0, nan, nan)}) == "too few seeds for an interval for euler (1.0 dB between means)"


def test_a_stochastic_sampler_is_left_out_of_the_convergence_claim(run_sdlab, tmp_path, one_thread):
    """euler_a's own solve re-noises each step, so its distance to the reference says nothing of convergence."""
    assert run_sdlab("experiment=article_b8_schedulers", "schedulers=[ddim,euler_a]", "model=tiny",
                     "num_inference_steps=2", "reference_steps=20", "seeds=[0,1]", "threads=1",
                     f"hydra.run.dir={tmp_path}") == 0
    own = pd.read_parquet(tmp_path / "results.parquet").groupby("scheduler")["own_solve_psnr_to_reference"]
    low, high = own.min(), own.max()
    said = {s: f"{low[s]:.1f}" + (f"-{high[s]:.1f}" if f"{low[s]:.1f}" != f"{high[s]:.1f}" else "") for s in low.index}
    caption = json.loads((tmp_path / "captions.json").read_text())["scheduler_grid.png"]
    assert f"each deterministic sampler's own 20-step solve is {said['ddim']} dB" in caption
    assert (f"left out as stochastic (fresh noise each step): euler_a, own 20-step solve {said['euler_a']} dB from "
            "the reference") in caption, caption


def test_one_sampler_at_one_seed_gives_its_distance_once_not_as_a_range(run_sdlab, tmp_path, one_thread):
    """A range of one value read "35.6-35.6 dB"; it is the value."""
    assert run_sdlab("experiment=article_b8_schedulers", "schedulers=[ddim]", "model=tiny", "num_inference_steps=2",
                     "reference_steps=4", "seeds=[0]", "threads=1", f"hydra.run.dir={tmp_path}") == 0
    own = pd.read_parquet(tmp_path / "results.parquet")["own_solve_psnr_to_reference"].iloc[0]
    caption = json.loads((tmp_path / "captions.json").read_text())["scheduler_grid.png"]
    assert f"own 4-step solve is {own:.1f} dB" in caption, caption
    assert f"{own:.1f}-{own:.1f}" not in caption, caption
