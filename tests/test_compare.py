"""The scheduler comparison: reference distances, ranking, and the quick study on the tiny model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sdlab.errors import UserError
from sdlab.jobs.compare import distances, ranking, reachable_target
from sdlab.jobs.recipes import Study


def test_reference_distance_is_zero_for_the_reference_itself():
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    images = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(2)]
    for score in distances(latents, images, latents.clone(), [im.copy() for im in images]):
        assert score["latent_rmse"] == 0.0 and math.isinf(score["psnr"]) and score["ssim"] == pytest.approx(1.0)
    moved = distances(latents + 0.1, images, latents, images)[0]
    assert moved["latent_rmse"] == pytest.approx(0.1, rel=1e-4)


def test_ranking_picks_the_fewest_nfe_reaching_the_target():
    summary = pd.DataFrame({
        "scheduler": ["a", "a", "b", "b"], "num_inference_steps": [5, 10, 5, 10], "nfe_mean": [5, 10, 9, 19],
        "psnr_mean": [25.0, 31.0, 30.5, 40.0], "time_total_s_mean": [0.1, 0.2, 0.2, 0.4], "stochastic": False,
    })
    table = ranking(summary, 30.0).set_index("scheduler")
    assert table.loc["a", "nfe_to_psnr_30db"] == 10 and table.loc["b", "nfe_to_psnr_30db"] == 9
    assert list(table.index) == ["b", "a"]
    assert (table["psnr_target_db"] == 30.0).all() and (table["target"] == "configured").all()


def test_ranking_falls_back_to_a_target_the_run_reaches():
    summary = pd.DataFrame({
        "scheduler": ["a", "a", "b", "b", "c"], "num_inference_steps": [4, 8, 4, 8, 8], "nfe_mean": [4, 8, 4, 8, 8],
        "psnr_mean": [18.0, 22.5, 20.0, 25.9, 14.0], "time_total_s_mean": 0.1, "stochastic": False, "n": 2,
    })
    assert reachable_target(summary, 20.0) == (20.0, "configured")
    target, source = reachable_target(summary, 30.0)  # nobody reaches 30 dB: median of bests (22.5) -> 22 dB
    assert target == 22.0 and "out of reach" in source
    table = ranking(summary, target, source).set_index("scheduler")
    assert table.loc["a", "nfe_to_psnr_22db"] == 8 and table.loc["b", "nfe_to_psnr_22db"] == 8
    assert math.isnan(table.loc["c", "nfe_to_psnr_22db"]) and list(table.index) == ["b", "a", "c"]


@pytest.mark.parametrize("block,fragment", [
    ({"schedulers": ["eulr"]}, "unknown scheduler 'eulr'"),
    ({"reference_scheduler": "euler_a"}, "is stochastic"),
    ({"steps": [500]}, "reference_steps"),
])
def test_study_validation(block, fragment):
    base = {"schedulers": ["ddim"], "steps": [2], "seeds": [0], "prompts": ["x"], "reference_steps": 10}
    with pytest.raises(UserError, match=fragment):
        Study(**{**base, **block})


def test_quick_study_runs_on_tiny(run_sdlab, tmp_path):
    code = run_sdlab("experiment=compare_schedulers_quick", "model=tiny", "compare.steps=[2,3]",
                     "compare.reference_steps=6", f"hydra.run.dir={tmp_path}")
    assert code == 0
    runs = pd.read_parquet(tmp_path / "results.parquet")
    assert len(runs) == 5 * 2 * 2  # schedulers x steps x seeds
    heun = runs[runs["scheduler"] == "heun"].groupby("num_inference_steps")["nfe"].first()
    assert heun.to_dict() == {2: 3, 3: 5}
    assert runs[runs["scheduler"] == "euler_a"]["reference"].str.startswith("own limit").all()
    assert runs["adherence_all"].isin([True, False]).all()  # the quick prompt is a dataset caption
    summary = pd.read_parquet(tmp_path / "summary.parquet")
    assert {"psnr_mean", "psnr_lo", "psnr_hi", "nfe_mean", "time_total_s_mean", "adherence_all_mean"} <= set(summary.columns)
    assert (summary["n"] == 2).all() and summary["psnr_lo"].isna().all()  # two seeds: no interval drawn
    ranked = pd.read_parquet(tmp_path / "ranking.parquet")
    target = ranked["psnr_target_db"].iloc[0]
    assert ranked[f"nfe_to_psnr_{target:g}db"].notna().any()  # never empty by construction
    visits = pd.read_parquet(tmp_path / "visits.parquet")
    assert set(visits["num_inference_steps"]) == {4, 8}  # the steps compared
    for name in ("convergence_nfe.png", "convergence_seconds.png", "visits.png"):
        image = np.asarray(Image.open(tmp_path / name).convert("L"))
        assert image.shape[0] > 200 and image.std() > 5


def test_the_runs_scheduler_shift_reaches_every_sampler_of_the_study(run_sdlab, tmp_path):
    """`scheduler.shift=` on a flow model's study shifts the timesteps every sampler visits (it was ignored)."""
    visited = {}
    for shift in (1, 6):
        out = tmp_path / f"shift{shift}"
        assert run_sdlab("experiment=compare_schedulers_quick", "model=sd3_tiny", f"scheduler.shift={shift}",
                         "compare.steps=[2]", "compare.seeds=[0]", "compare.prompts=[a red circle]",
                         "compare.reference_steps=3", "compare.visit_steps=[4]", "threads=1", f"hydra.run.dir={out}") == 0
        visits = pd.read_parquet(out / "visits.parquet")
        visited[shift] = visits[visits["step"] == 1].set_index("scheduler")["sigma"]
    # a larger shift keeps the sampler at higher noise longer: sigma' = s sigma / (1 + (s - 1) sigma)
    assert (visited[6] > visited[1] + 0.05).all() and len(visited[1]) == 4


def test_the_figure_title_says_when_no_scheduler_reached_the_configured_target():
    """A lowered target read as though it were the one asked for: '19 dB' with no word that none reached 30 dB."""
    from sdlab.jobs.compare import claim

    study = Study(schedulers=("euler",), steps=(4,), seeds=(0,), prompts=("x",), reference_steps=50)
    ranked = pd.DataFrame({"scheduler": ["euler", "ddim"], "nfe_to_psnr_19db": [4.0, math.nan]})
    source = "reachable: median best PSNR of this run (configured 30 dB is out of reach)"
    assert claim(ranked, 19.0, source, study) == (
        "fewest NFE to a mean PSNR of 19 dB to the reference dpmpp_2m x 50 steps: euler 4\n"
        "(no scheduler reaches the configured 30 dB: 19 dB is this run's median best, floored)")
    ranked = pd.DataFrame({"scheduler": ["euler"], "nfe_to_psnr_30db": [8.0]})
    assert claim(ranked, 30.0, "configured", study) == (
        "fewest NFE to a mean PSNR of 30 dB to the reference dpmpp_2m x 50 steps: euler 8")


def test_the_seconds_figure_ranks_by_seconds():
    """convergence_seconds.png repeated the NFE title above an axis of seconds."""
    from sdlab.jobs.compare import claim

    study = Study(schedulers=("euler", "heun"), steps=(4,), seeds=(0,), prompts=("x",), reference_steps=50)
    ranked = pd.DataFrame({"scheduler": ["heun", "euler"], "nfe_to_psnr_30db": [8.0, 15.0], "seconds": [0.74, 0.46]})
    assert claim(ranked, 30.0, "configured", study, "seconds") == (
        "fewest wall seconds per image to a mean PSNR of 30 dB to the reference dpmpp_2m x 50 steps: "
        "euler 0.46 s, heun 0.74 s")


def test_the_title_says_when_a_compared_sampler_also_solves_the_reference():
    """The quick study's winner, dpmpp_2m, was scored against 50 steps of dpmpp_2m, unsaid: it nears its own limit."""
    from sdlab.jobs.compare import claim

    study = Study(schedulers=("euler", "dpmpp_2m"), steps=(8,), seeds=(0,), prompts=("x",), reference_steps=50)
    ranked = pd.DataFrame({"scheduler": ["dpmpp_2m", "euler"], "nfe_to_psnr_30db": [8.0, math.nan]})
    assert claim(ranked, 30.0, "configured", study) == (
        "fewest NFE to a mean PSNR of 30 dB to the reference dpmpp_2m x 50 steps: dpmpp_2m 8\n"
        "(dpmpp_2m also solves the reference: it nears its own 50-step limit, a head start over the others)")


def test_the_nfe_axis_is_ticked_at_the_nfe_values_used(tmp_path, monkeypatch):
    """The quick study's NFE 4, 7, 8 and 15 were read off ticks at 5 and 10 only."""
    from sdlab.bench import figures

    seen = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, target: seen.setdefault("fig", fig) and target)
    summary = pd.DataFrame([{"scheduler": name, "num_inference_steps": s, "stochastic": False, "nfe_mean": nfe, "n": 2,
                             "psnr_mean": 20.0 + nfe, "psnr_lo": math.nan, "psnr_hi": math.nan}
                            for name, nfes in (("euler", (4, 8)), ("heun", (7, 15))) for s, nfe in zip((4, 8), nfes)])
    figures.convergence(summary, "nfe", ["psnr"], tmp_path / "c.png", xlabel="NFE, log scale")
    ax = seen["fig"].axes[0]
    assert list(ax.get_xticks()) == [4, 7, 8, 15] and ax.get_xscale() == "log"


def test_the_timesteps_listed_on_flux_are_those_its_generation_visits(run_sdlab, tmp_path):
    """Flux's pipeline passes its own sigmas linspace(1, 1/N, N): the study's visits are the trajectory's timesteps."""
    study = tmp_path / "study"
    assert run_sdlab("experiment=compare_schedulers_quick", "model=flux_tiny", "compare.schedulers=[euler,unipc]",
                     "compare.steps=[2]", "compare.seeds=[0]", "compare.prompts=[a red circle]",
                     "compare.reference_steps=3", "compare.visit_steps=[5]", "threads=1", f"hydra.run.dir={study}") == 0
    listed = pd.read_parquet(study / "visits.parquet").groupby("scheduler")["timestep"].apply(list)
    for name in ("euler", "unipc"):  # unipc runs on its own flow sigmas: the pipeline passes it none
        out = tmp_path / name
        assert run_sdlab("experiment=trajectory", "model=flux_tiny", f"scheduler={name}", "num_inference_steps=5",
                         "threads=1", f"hydra.run.dir={out}") == 0
        visited = pd.read_parquet(out / "results.parquet")["timestep"].tolist()
        assert listed[name] == pytest.approx(visited, abs=1e-3), name


def test_the_study_generates_at_the_given_width_and_height(run_sdlab, tmp_path):
    """width= and height= were dropped without a word: every image and the reference were made at the native size."""
    assert run_sdlab("experiment=compare_schedulers_quick", "model=tiny", "width=32", "height=48",
                     "compare.schedulers=[ddim,euler]", "compare.steps=[2]", "compare.seeds=[0]",
                     "compare.reference_steps=3", "compare.visit_steps=[4]", "threads=1", f"hydra.run.dir={tmp_path}") == 0
    runs = pd.read_parquet(tmp_path / "results.parquet")
    assert set(zip(runs["width"], runs["height"])) == {(32, 48)}


def test_the_snr_curve_runs_clear_of_the_rows_of_visited_timesteps(tmp_path, monkeypatch):
    """visits.png drew the schedule's SNR curve across every scheduler's row of ticks."""
    from sdlab.bench import figures

    seen = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, target: seen.setdefault("fig", fig) and target)
    visits = pd.DataFrame([{"scheduler": name, "num_inference_steps": steps, "timestep": t}
                           for name in ("ddim", "euler") for steps in (4, 8) for t in np.linspace(999, 0, steps)])
    t = np.arange(1000)
    figures.schedule_visits(visits, pd.DataFrame({"t": t, "snr_db": 30 - 0.05 * t}), tmp_path / "v.png")
    fig = seen["fig"]
    fig.canvas.draw()
    rows = [ax.get_window_extent() for ax in fig.axes if ax.collections]
    [snr] = [ax for ax in fig.axes if ax.lines]
    assert len(rows) == 2 and not any(snr.get_window_extent().overlaps(box) for box in rows)


def test_each_visits_panel_says_where_each_sampler_stops_calling_the_model(tmp_path, monkeypatch):
    """The quick study's visits.png showed dpmpp_2m never calling the model below t=250 at 4 steps, unsaid."""
    from sdlab.bench import figures

    seen = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, target: seen.setdefault("fig", fig) and target)
    visits = pd.DataFrame([{"scheduler": name, "num_inference_steps": 4, "timestep": t}
                           for name, ts in (("ddim", (999, 666, 333, 0)), ("dpmpp_2m", (999, 750, 500, 250)),
                                            ("euler", (999, 666, 333, 0)))
                           for t in ts])
    t = np.arange(1000)
    figures.schedule_visits(visits, pd.DataFrame({"t": t, "snr_db": 30 - 0.05 * t}), tmp_path / "v.png")
    titles = [" ".join(ax.get_title().split()) for ax in seen["fig"].axes]
    assert titles[1] == "timesteps visited at 4 steps; last at t=0 for ddim, euler; t=250 for dpmpp_2m"
    assert seen["fig"].get_label() == titles[1]  # its caption: the headline the run prints


def test_the_study_generates_with_the_given_negative_prompt(run_sdlab, tmp_path):
    """negative_prompt= was dropped without a word: every image and the reference were made without it."""
    common = ("experiment=compare_schedulers_quick", "model=tiny", "compare.schedulers=[ddim]", "compare.steps=[2]",
              "compare.seeds=[0]", "compare.reference_steps=3", "compare.visit_steps=[4]", "threads=1")
    assert run_sdlab(*common, "negative_prompt=a blue square", f"hydra.run.dir={tmp_path / 'with'}") == 0
    assert run_sdlab(*common, f"hydra.run.dir={tmp_path / 'without'}") == 0
    runs = {name: pd.read_parquet(tmp_path / name / "results.parquet") for name in ("with", "without")}
    assert set(runs["with"]["negative_prompt"]) == {"a blue square"} and set(runs["without"]["negative_prompt"]) == {""}
    assert runs["with"]["latent_rmse"].tolist() != runs["without"]["latent_rmse"].tolist()  # other images, not a label


def test_the_convergence_title_speaks_of_dashed_lines_only_when_it_draws_some(tmp_path, monkeypatch):
    """A study of euler alone was titled '(dashed: stochastic, against its own high-step limit)': no line was dashed."""
    from sdlab.bench import figures
    from sdlab.bench.captions import read_captions

    for stochastic in (False, True):
        summary = pd.DataFrame([{"scheduler": "euler", "num_inference_steps": s, "stochastic": stochastic, "nfe_mean": s,
                                 "n": 2, "psnr_mean": 20.0 + s, "psnr_lo": math.nan, "psnr_hi": math.nan} for s in (4, 8)])
        figures.convergence(summary, "nfe", ["psnr"], tmp_path / f"{stochastic}.png", xlabel="NFE", title="fewest NFE")
    captions = read_captions(tmp_path)
    assert "dashed" not in captions["False.png"] and "(dashed: stochastic, against its own" in captions["True.png"]


def test_a_sampler_whose_images_equal_the_reference_reaches_any_target_first(tmp_path, monkeypatch):
    """Images identical to the reference (PSNR infinite) were dropped as missing: dpmpp_2m at the reference's own steps
    had psnr_n=0, no mean, ranked after ddim, and the target fell to the others' median. Its mean is infinite, it
    reaches any target, the title says so and the figure marks it at the panel's top edge."""
    from sdlab.bench import figures
    from sdlab.jobs.compare import claim, summarize

    runs = pd.DataFrame([{"scheduler": s, "num_inference_steps": 4, "seed": seed, "nfe": 4, "time_total_s": 0.1,
                          "latent_rmse": 0.0 if s == "dpmpp_2m" else 0.2, "ssim": 1.0 if s == "dpmpp_2m" else 0.8,
                          "psnr": math.inf if s == "dpmpp_2m" else 24.0 + seed}
                         for s in ("ddim", "dpmpp_2m") for seed in range(3)])
    summary = summarize(runs, []).set_index("scheduler")
    assert summary.loc["dpmpp_2m", "psnr_n"] == 3 and math.isinf(summary.loc["dpmpp_2m", "psnr_mean"])
    assert summary.loc["dpmpp_2m", "psnr_identical"] == 3 and summary.loc["ddim", "psnr_identical"] == 0
    assert summary.loc["ddim", "psnr_mean"] == pytest.approx(25.0)
    summary = summary.reset_index()
    assert reachable_target(summary, 30.0) == (30.0, "configured")
    ranked = ranking(summary, 30.0)
    assert ranked["scheduler"].tolist() == ["dpmpp_2m", "ddim"] and ranked["nfe_to_psnr_30db"].iloc[0] == 4
    study = Study(schedulers=("ddim", "dpmpp_2m"), steps=(4,), seeds=(0, 1, 2), prompts=("x",), reference_steps=4)
    title = claim(ranked, 30.0, "configured", study)
    assert ("\n(triangles on a panel's edge: dpmpp_2m, images identical to the reference: PSNR infinite, latent RMSE "
            "0)") in title, title
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or path)
    figures.convergence(summary, "nfe", ["psnr", "latent_rmse"], tmp_path / "c.png", xlabel="NFE", title=title)
    for ax, marker, edge in ((drawn[0].axes[0], "^", 1), (drawn[0].axes[1], "v", 0)):
        marks = [line for line in ax.lines if line.get_marker() == marker]
        assert len(marks) == 1 and list(marks[0].get_ydata()) == [edge] and list(marks[0].get_xdata()) == [4]
