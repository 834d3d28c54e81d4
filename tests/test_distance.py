"""The distribution-distance recipes (F1 against guidance, F2 against NFE): their tables, their claims, bad values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis_helpers import check_image
from test_bad_input import assert_refused

from sdlab.bench.scorers import unit_cmmd
from sdlab.jobs.distance import distances
from sdlab.jobs.recipes import DistanceStudy
from sdlab.metrics.distribution import cmmd

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["model=tiny", "threads=1", "distance.images=4", "distance.references=8", "distance.kid_subsets=5",
         "distance.bootstrap=10", "distance.prompts=[a red circle,a blue square]"]


def test_guidance_recipe_writes_a_distance_per_guidance_scale_with_n(run_sdlab, tmp_path):
    out = tmp_path / "f1"
    assert run_sdlab("experiment=article_f1_distance_guidance", *SMALL, "distance.guidance_scales=[1,3,9]",
                     "distance.steps=[2]", f"hydra.run.dir={out}") == 0
    frame = pd.read_parquet(out / "results.parquet")
    assert sorted(frame["guidance_scale"]) == [1, 3, 9] and (frame["n"] == 8).all() and (frame["n_reference"] == 16).all()
    assert frame[["kid", "kid_sd", "fd", "fd_sd", "cmmd", "precision", "recall"]].notna().all().all()
    assert (frame["fd_sd"] > 0).all() and frame["features"].str.startswith("mini CLIP").all()
    check_image(out / "distance_vs_guidance.png", min_size=(400, 400))
    assert not (out / "distance_vs_nfe.png").exists()


def test_nfe_recipe_writes_a_distance_per_scheduler_and_nfe_with_n(run_sdlab, tmp_path):
    out = tmp_path / "f2"
    assert run_sdlab("experiment=article_f2_distance_nfe", *SMALL, "distance.schedulers=[ddim,heun]",
                     "distance.steps=[1,2]", f"hydra.run.dir={out}") == 0
    frame = pd.read_parquet(out / "results.parquet").set_index(["scheduler", "num_inference_steps"])
    assert frame.loc[("ddim", 2), "nfe"] == 2 and frame.loc[("heun", 2), "nfe"] == 3  # Heun: two calls a step but the last
    assert (frame["n"] == 8).all() and frame["kid"].notna().all() and frame["fd"].notna().all()
    check_image(tmp_path / "f2" / "distance_vs_nfe.png", min_size=(400, 400))


def frame_of(kid: list[float], x: str, values: list[float], scheduler: str = "ddim") -> pd.DataFrame:
    """Rows as the job writes them, with the given KID means (sd 0.1) at `values` of `x`."""
    other = "nfe" if x == "guidance_scale" else "guidance_scale"
    return pd.DataFrame({x: values, other: 3.0, "kid": kid, "kid_sd": 0.1, "fd": np.asarray(kid) * 10,
                         "fd_sd": 1.0, "scheduler": scheduler, "num_inference_steps": 25,
                         "stochastic": False, "kid_real_vs_real": 0.0, "fd_real_vs_real": 1.0,
                         "n": 128, "n_reference": 512, "prompts": "a | b", "features": "mini CLIP (d=64)"})


def test_guidance_claim_names_the_minimum_and_says_u_shaped_only_when_it_clears_both_ends(tmp_path):
    from sdlab.bench.captions import read_captions
    from sdlab.jobs.distance import guidance_figure

    guidance_figure(frame_of([2.0, 0.5, 1.5], "guidance_scale", [1, 3, 9]), tmp_path / "u.png", "mini")
    guidance_figure(frame_of([2.0, 1.9, 1.5], "guidance_scale", [1, 3, 9]), tmp_path / "end.png", "mini")
    guidance_figure(frame_of([0.6, 0.5, 1.5], "guidance_scale", [1, 3, 9]), tmp_path / "half.png", "mini")
    captions = read_captions(tmp_path)
    assert "KID lowest at w = 3 (0.5" in captions["u.png"] and "U-shaped: higher beyond +- 1 sd at both ends" in captions["u.png"]
    assert "higher beyond +- 1 sd at w = 9 (1.5 +- 0.1), within the noise at w = 1 (0.6 +- 0.1)" in captions["half.png"]
    assert "no U on mini: lowest at an end" in captions["end.png"] and "w = 9" in captions["end.png"]
    guidance_figure(frame_of([2.0, 0.5], "guidance_scale", [1, 9]), tmp_path / "two.png", "mini")
    two = read_captions(tmp_path)["two.png"]  # it said 'no U on mini: lowest at an end' of two points
    assert "two guidance scales cannot show a U: give three or more" in two and "no U" not in two, two


def test_a_distance_study_of_one_value_each_says_why_it_draws_no_figure(run_sdlab, tmp_path, capsys):
    """F1 with one guidance scale ended well with a table and no distance_vs_guidance.png, without a word why."""
    assert run_sdlab("experiment=article_f1_distance_guidance", *SMALL, "distance.guidance_scales=[3]",
                     "distance.steps=[2]", f"hydra.run.dir={tmp_path}") == 0
    assert not list(tmp_path.glob("*.png"))
    assert ("no figure: one guidance scale (3) and one step count (2) give nothing to draw a distance against; give two "
            "or more distance.guidance_scales or distance.steps") in capsys.readouterr().out


def test_nfe_claim_ranks_schedulers_by_fewest_nfe_to_a_distance_all_reach(tmp_path):
    from sdlab.bench.captions import read_captions
    from sdlab.jobs.distance import nfe_figure

    frame = pd.concat([frame_of([3.0, 1.0, 0.6], "nfe", [2, 4, 8], "ddim"),
                       frame_of([2.0, 0.55, 0.5], "nfe", [2, 4, 8], "dpmpp_2m")])
    nfe_figure(frame, tmp_path / "nfe.png", "mini")
    caption = read_captions(tmp_path)["nfe.png"]
    assert "fewest NFE to KID <= 0.6 (every" in caption and "dpmpp_2m 4, ddim 8" in caption
    assert "for 2 of 2 deterministic schedulers" in caption


@pytest.mark.parametrize("args, fragment", [
    (["distance.images=2"], "distance.images=2 must be an integer >= 4"),
    (["distance.schedulers=[ddim,nope]"], "unknown scheduler 'nope'"),
    (["distance.prompts=[a lighthouse at dawn]"], "'a lighthouse at dawn' names nothing the shapes world draws"),
    (["clip=none"], "compares CLIP image features: pick clip=mini"),
    (["distance.bootstrap=0"], "distance.bootstrap=0 must be an integer >= 10"),
    (["distance.kid_subsets=1"], "distance.kid_subsets=1 must be an integer >= 2 and <= 10000 (one subset has no spread"),
])
def test_a_wrong_distance_value_is_one_line_and_exit_2(run_sdlab, tmp_path, capsys, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    assert_refused(run_sdlab, capsys, tmp_path, ["experiment=article_f1_distance_guidance", *args], fragment)


def test_the_recipes_cmmd_is_the_scorers_cmmd_on_unit_embeddings():
    rng = np.random.default_rng(0)
    generated, real = rng.normal(1.0, 3.0, (40, 8)), rng.normal(0.0, 2.0, (50, 8))  # lengths far from 1
    study = DistanceStudy(guidance_scales=(1.0,), schedulers=("ddim",), steps=(2,), prompts=("a red circle",),
                          images=4, references=4, kid_subsets=2, bootstrap=10)
    assert distances(generated, real, study)["cmmd"] == pytest.approx(unit_cmmd(generated, real)[0], rel=1e-12)
    assert unit_cmmd(generated, real)[0] != pytest.approx(cmmd(generated, real), rel=1e-3)


def test_the_nfe_figure_reads_near_its_target_and_says_whose_it_is(tmp_path, monkeypatch):
    """F2 on mini: KID 0.27-0.6 around the target 0.412 sat in a squeezed linear band ticked at 0 and 1 only; its
    two-line label stood taller than the panel into the FD panel's; and the title did not say 0.412 is Euler's own."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from sdlab.bench import figures
    from sdlab.bench.captions import read_captions
    from sdlab.jobs.distance import nfe_figure

    drawn, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k))
    kids = {"ddim": [15.5, 0.61, 0.27, 0.30], "euler": [1.24, 1.18, 0.47, 0.412], "heun": [22.9, 0.40, 0.28, 0.31],
            "dpmpp_2m": [1.55, 0.53, 0.36, 0.34]}
    frame = pd.concat([frame_of(kid, "nfe", [2, 4, 8, 16], name) for name, kid in kids.items()])
    frame = frame.assign(num_inference_steps=frame["nfe"], kid_sd=0.27, kid_real_vs_real=-0.084)
    nfe_figure(frame, tmp_path / "nfe.png", "mini")
    whose = "KID <= 0.412 (every deterministic scheduler gets there: euler's own at 16 steps, the highest any ends at)"
    assert whose in read_captions(tmp_path)["nfe.png"]
    fig = drawn[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    kid_ax, fd_ax = fig.axes
    ticks = [t for t in kid_ax.get_yticks() if 0.412 / 2 <= t <= 0.412 * 2]
    assert len(ticks) >= 2, kid_ax.get_yticks()  # the contest near the target can be read off the axis
    labels = [ax.yaxis.label.get_window_extent(renderer) for ax in (kid_ax, fd_ax)]
    for ax, label in zip((kid_ax, fd_ax), labels):
        box = ax.get_window_extent(renderer)
        assert box.y0 <= label.y0 and label.y1 <= box.y1, ax.get_ylabel()
    assert not labels[0].overlaps(labels[1])


@pytest.mark.parametrize("kids, fds", [
    ({"ddim": [15.5, 0.61, 0.27, 0.30], "heun": [23.5, 0.40, 0.28, 0.31]},  # the default run: heun's 2 steps far out
     {"ddim": [149.9, 39.6, 31.8, 32.5], "heun": [180.2, 36.5, 33.6, 32.3]}),
    ({"ddim": [19.7, 0.13, -0.31, -0.29], "heun": [20.1, -0.36, -0.33, -0.32]},  # a small n: unbiased KIDs below 0
     {"ddim": [105.0, 39.6, 31.8, 32.5], "heun": [107.9, 36.5, 33.6, 32.3]}),
])
def test_the_nfe_figures_axes_label_every_value_they_draw(tmp_path, monkeypatch, kids, fds):
    """F2 with negative KIDs (unbiased, at a small n) made its linear band +-2e-09 and stacked tick labels 2e-09 ...
    0 on each other; a KID of 23.5 or an FD of 180 sat above the last labelled tick (5, 100), read as about 6 and 105."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from sdlab.bench import figures
    from sdlab.jobs.distance import nfe_figure

    drawn, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k))
    frame = pd.concat([frame_of(kid, "nfe", [2, 4, 8, 16], name).assign(fd=fds[name]) for name, kid in kids.items()])
    nfe_figure(frame.assign(num_inference_steps=frame["nfe"], kid_sd=0.27, kid_real_vs_real=-0.08), tmp_path / "n.png",
               "mini")
    renderer = FigureCanvasAgg(drawn[0]).get_renderer()
    for ax, metric in zip(drawn[0].axes, ("kid", "fd")):
        values, (low, high) = frame[metric], ax.get_ylim()
        assert ax.yaxis.get_transform().linthresh >= values.abs().max() / 1000, metric
        shown = [(tick, label) for tick, label in zip(ax.get_yticks(), ax.get_yticklabels())
                 if low <= tick <= high and label.get_text()]
        assert min(t for t, _ in shown) <= values.min() and max(t for t, _ in shown) >= values.max(), (metric, shown)
        boxes = [label.get_window_extent(renderer) for _, label in shown]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), (metric, shown)
