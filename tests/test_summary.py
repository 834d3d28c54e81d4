"""Summary by swept value: n, means, range-respecting and paired intervals, the best value, the files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from sdlab.bench.summary import ALL, owns_summary, rank, summary_table, sweep_axes, swept_parameters, write_summary

AXES = ("seed", "guidance_scale", "scheduler")  # what the sweep's manifest says varies


def sweep_frame() -> pd.DataFrame:
    """3 seeds x guidance {1, 7.5} x scheduler {a, b}: guidance 7.5 scores 40 more on every seed."""
    rows = []
    for seed in (1, 2, 3):
        for g in (1, 7.5):
            for s in ("a", "b"):
                rows.append({"seed": seed, "guidance_scale": g, "scheduler": s, "status": "ok", "nfe": 8,
                             "clip_score": 50.0 + (40 if g == 7.5 else 0) + seed * (3 if s == "a" else 1),
                             "adherence_all": g == 7.5 or seed == 1, "time_total_s": 0.2 + 0.01 * seed,
                             "image_path": f"{seed}{g}{s}.png",
                             "overrides": json.dumps({"seed": str(seed), "guidance_scale": f"{g:g}", "scheduler": s})})
    rows.append({**rows[0], "status": "error", "clip_score": None, "error": "boom"})  # failed rows are not counted
    return pd.DataFrame(rows)


def test_swept_parameters_are_the_grid_axes_without_seed():
    assert swept_parameters(sweep_frame(), AXES) == ["guidance_scale", "scheduler"]
    study = sweep_frame().drop(columns="overrides")  # a job that varies schedulers and steps itself
    study["num_inference_steps"] = [4, 8] * (len(study) // 2) + [4] * (len(study) % 2)
    assert sweep_axes(study) == ["seed", "scheduler", "num_inference_steps", "guidance_scale"]


def test_every_value_has_n_mean_and_an_interval_inside_the_range():
    table = summary_table(sweep_frame(), AXES)
    single = table[table["parameter2"].isna()].set_index(["parameter", "value", "metric"])
    row = single.loc[("guidance_scale", "7.5", "clip_score")]
    assert row["n"] == 6 and row["mean"] == pytest.approx(90 + (3 + 6 + 9 + 1 + 2 + 3) / 6)
    assert 0 <= row["lo"] < row["mean"] < row["hi"] <= 100
    assert single.loc[(ALL, ALL, "clip_score"), "n"] == 12
    adherence = single.loc[("guidance_scale", "1", "adherence_all")]
    assert adherence["mean"] == pytest.approx(2 / 6) and 0 <= adherence["lo"] and adherence["hi"] <= 1
    assert (table["lo"].dropna() >= 0).all() and (table.loc[table["metric"] == "clip_score", "hi"].dropna() <= 100).all()
    assert "seed" not in set(table["metric"]) and "guidance_scale" not in set(table["metric"])


def test_pairs_of_parameters_and_no_interval_below_three():
    table = summary_table(sweep_frame(), AXES)
    pairs = table[table["parameter2"].notna()]
    assert len(pairs[pairs["metric"] == "clip_score"]) == 4  # 2 guidance x 2 schedulers
    cell = pairs[(pairs["value"] == "1") & (pairs["value2"] == "b") & (pairs["metric"] == "clip_score")].iloc[0]
    assert cell["n"] == 3 and not math.isnan(cell["lo"])
    two = sweep_frame()
    two = two[two["seed"] != 3]
    small = summary_table(two, AXES)
    assert small.loc[small["parameter2"].notna(), "lo"].isna().all()  # n = 2 per pair: no interval


def test_differences_are_paired_by_seed_and_the_other_swept_values():
    table = summary_table(sweep_frame(), AXES)
    row = table[(table["parameter"] == "guidance_scale") & table["parameter2"].isna() & (table["value"] == "1")
                & (table["metric"] == "clip_score")].iloc[0]
    assert row["delta_vs"] == "7.5" and row["n_paired"] == 6
    # every pair differs by exactly -40, so the paired interval is a point, unlike the unpaired spread of seeds
    assert row["delta_mean"] == pytest.approx(-40) and row["delta_hi"] - row["delta_lo"] == pytest.approx(0, abs=1e-9)
    assert row["hi"] - row["lo"] > 5


def test_differences_are_taken_against_the_rankings_best_never_a_value_with_one_image():
    frame = sweep_frame()
    frame = pd.concat([frame, frame.iloc[[0]].assign(guidance_scale=15.0, clip_score=99.0,
                                                     overrides=json.dumps({"guidance_scale": "15"}))])
    table = summary_table(frame, AXES)
    single = table[table["parameter2"].isna() & (table["parameter"] == "guidance_scale")]
    assert set(single.loc[single["metric"] == "clip_score", "delta_vs"]) == {"7.5"}  # 15 has one image at 99
    assert single.loc[single["metric"] == "time_total_s", "delta_vs"].iloc[0] == "1"  # costs: the cheapest


def test_the_images_of_one_call_are_one_measurement_of_its_time():
    """Images made in one pipeline call each hold a share of its time: n counts calls, no interval comes from copies
    of one number, and two values made in the same call are not compared on it."""
    frame = sweep_frame()
    frame["call_id"] = frame["guidance_scale"].map(lambda g: f"call-{g}")  # each scale's 6 images: one call
    frame["time_total_s"] = frame["guidance_scale"].map({1: 0.2, 7.5: 0.3})
    table = summary_table(frame, AXES)
    single = table[table["parameter2"].isna()].set_index(["parameter", "value", "metric"])
    one = single.loc[("guidance_scale", "7.5", "time_total_s")]
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.3) and math.isnan(one["lo"])  # not [0.3, 0.3] from 6
    assert single.loc[(ALL, ALL, "time_total_s"), "n"] == 2
    both = single.loc[("scheduler", "b", "time_total_s")]  # a and b shared every call: a difference of 0 by making
    assert both["n_paired"] == 0 and math.isnan(both["delta_mean"])
    assert single.loc[("guidance_scale", "7.5", "clip_score"), "n"] == 6  # scores are the images' own
    seeds = frame.assign(call_id=frame["seed"].map(str) + frame["guidance_scale"].map(str),  # a call per seed
                         time_total_s=frame["time_total_s"] + 0.01 * frame["seed"])
    apart = summary_table(seeds, AXES)
    row = apart[apart["parameter2"].isna() & (apart["value"] == "7.5") & (apart["metric"] == "time_total_s")].iloc[0]
    assert row["n"] == 3 and row["lo"] < row["mean"] < row["hi"]
    assert row["delta_vs"] == "1" and row["n_paired"] == 3  # one pair of calls a seed, both schedulers in it
    assert row["delta_mean"] == pytest.approx(0.1)


def test_a_single_run_with_several_images_gets_overall_rows(tmp_path):
    frame = sweep_frame()
    frame = frame[(frame["guidance_scale"] == 1) & (frame["scheduler"] == "a")].drop(columns="overrides")
    table = write_summary(frame, tmp_path)
    assert set(table["parameter"]) == {ALL}
    assert (tmp_path / "summary.csv").is_file() and (tmp_path / "summary.parquet").is_file()
    assert not (tmp_path / "summary.png").exists()  # a single run draws no figure (no matplotlib on that path)
    assert not list(tmp_path.glob(".*tmp*"))


def test_summary_figure_and_a_study_summary_left_alone(tmp_path):
    from PIL import Image

    write_summary(sweep_frame(), tmp_path, AXES, figure=True)
    image = np.asarray(Image.open(tmp_path / "summary.png").convert("L"))
    assert image.shape[0] > 300 and image.shape[1] > 400 and image.std() > 10
    assert owns_summary(tmp_path)
    study = tmp_path / "study"
    study.mkdir()
    pd.DataFrame({"scheduler": ["ddim"], "psnr_mean": [20.0]}).to_parquet(study / "summary.parquet")
    assert not owns_summary(study)


def test_the_summary_plot_of_twenty_values_fits_the_page_with_no_overlapping_labels():
    from sdlab.bench.figures import PAGE_INCHES, draw_summary

    names = [f"a_long_scheduler_name_number_{i}" for i in range(20)]
    frame = pd.DataFrame([{"seed": seed, "scheduler": s, "guidance_scale": g, "status": "ok", "nfe": 8,
                           "clip_score": 60.0 + i + seed + g, "overrides": json.dumps({"scheduler": s, "guidance_scale": str(g)})}
                          for i, s in enumerate(names) for g in (1, 5) for seed in (1, 2, 3)])
    ranking = rank(frame, ("scheduler", "guidance_scale"))
    fig = draw_summary(summary_table(frame, ("scheduler", "guidance_scale"), ranking), ranking)
    fig.canvas.draw()
    assert fig.get_figwidth() == PAGE_INCHES and fig.get_figwidth() * fig.dpi <= 1400
    bottom = fig.axes[0]  # one metric (clip_score; nfe is constant): the scheduler panel first
    labels = [t for t in bottom.get_xticklabels() if t.get_text()]
    assert len({t.get_text() for t in labels}) == 20 and len({t.get_rotation() for t in labels}) == 1  # cut, still apart
    # parallel rotated labels clear each other when the ticks' spacing across the text exceeds its height
    spacing = min(np.diff([t.get_window_extent().x1 for t in labels]))
    across = spacing * math.sin(math.radians(labels[0].get_rotation()))
    assert 0 < labels[0].get_rotation() <= 90 and across > 1.15 * labels[0].get_fontsize() * fig.dpi / 72
    assert bottom.get_legend() is not None and len(bottom.get_legend().get_texts()) == 2  # lines: guidance 1 and 5
    assert fig.axes[1].get_legend() is None  # 20 lines would need a 20-entry legend: one line of means instead
    assert all(not ax.get_legend() or len(ax.get_legend().get_texts()) <= 5 for ax in fig.axes)


def long_prompt_sweep(timed: bool = False) -> pd.DataFrame:
    """Four long prompts x guidance 1 and 7.5 x three seeds, their CLIP scores (and, `timed`, total times) apart by
    prompt and guidance."""
    prompts = [f"a {size} {colour} shape somewhere on a {bg} background" for size, colour, bg in
               (("small", "red", "blue"), ("large", "green", "black"), ("small", "yellow", "white"), ("large", "blue", "red"))]
    return pd.DataFrame([{"seed": seed, "prompt": p, "guidance_scale": g, "status": "ok", "nfe": 25,
                          "clip_score": 40.0 + 10 * i + 20 * (g > 1) + seed,
                          **({"time_total_s": 0.1 * (1 + (g > 1)) + i} if timed else {}),
                          "overrides": json.dumps({"prompt": p, "guidance_scale": str(g)})}
                         for i, p in enumerate(prompts) for g in (1, 7.5) for seed in (1, 2, 3)])


def test_a_legend_of_long_prompts_stays_within_its_column_and_leaves_the_panels_the_page():
    """Four long prompts as the lines of the guidance panel: their legend wraps into rows within its column instead of
    one row wider than the page, which squeezed every panel into a quarter of it."""
    from sdlab.bench.figures import draw_summary

    frame = long_prompt_sweep()
    ranking = rank(frame, ("prompt", "guidance_scale"))
    fig = draw_summary(summary_table(frame, ("prompt", "guidance_scale"), ranking), ranking)
    fig.canvas.draw()
    page = fig.get_figwidth() * fig.dpi
    panels = [ax.get_window_extent() for ax in fig.axes]
    assert max(p.x1 for p in panels) - min(p.x0 for p in panels) > 0.75 * page
    legend = fig.axes[1].get_legend().get_window_extent()
    assert legend.x1 <= page and legend.width <= fig.axes[1].get_window_extent().width * 1.05


def test_a_few_long_prompts_are_tick_labels_in_full_wrapped_level_and_apart():
    """Four prompts on the prompt axis: each label is the whole prompt in a few level lines, not the middle cut out of
    it ("a small re… background" told the prompts apart only by their ends)."""
    from sdlab.bench.figures import draw_summary

    frame = long_prompt_sweep()
    ranking = rank(frame, ("prompt", "guidance_scale"))
    fig = draw_summary(summary_table(frame, ("prompt", "guidance_scale"), ranking), ranking)
    fig.canvas.draw()
    labels = [t for t in fig.axes[-2].get_xticklabels() if t.get_text()]  # the prompt column's bottom panel
    assert sorted(" ".join(t.get_text().split("\n")) for t in labels) == sorted(set(frame["prompt"]))
    assert {t.get_rotation() for t in labels} == {0.0} and all(t.get_text().count("\n") <= 2 for t in labels)
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda box: box.x0)
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))


def test_the_summary_plot_keeps_every_text_on_its_page_uncropped(tmp_path):
    """summary.png is saved as laid out (cropping draws it twice): the suptitle, legends, tick labels (long, rotated)
    and axis labels must all lie inside the figure."""
    import matplotlib.text
    from PIL import Image

    from sdlab.bench.figures import draw_summary, summary_figure

    frame = long_prompt_sweep(timed=True)
    ranking = rank(frame, ("prompt", "guidance_scale"))
    summary = summary_table(frame, ("prompt", "guidance_scale"), ranking)
    fig = draw_summary(summary, ranking)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.get_figwidth() * fig.dpi, fig.get_figheight() * fig.dpi
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
    assert len(texts) > 20
    for text in texts:
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, text.get_text()
    summary_figure(summary, tmp_path / "summary.png", ranking)
    assert Image.open(tmp_path / "summary.png").size == (round(width), round(height))


def test_a_symlog_axis_says_so_in_its_label(tmp_path, monkeypatch):
    """A symmetric-log y axis reads like a log axis but is linear near 0: its label names the scale and the range."""
    from sdlab.bench import figures

    seen = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, target: seen.setdefault("fig", fig) and target)
    figures.curves([{"lines": [{"x": [1, 2, 4], "y": [5.0, 0.5, -0.1]}], "ylabel": "KID", "symlog": 1.0},
                    {"lines": [{"x": [1, 2, 4], "y": [5.0, 0.5, 0.1]}], "ylabel": "FD"}], tmp_path / "c.png")
    first, second = (ax.get_ylabel() for ax in seen["fig"].axes)
    assert first == "KID\n(symmetric log scale, linear within +-1)" and second == "FD"


def test_the_summary_plot_draws_the_total_time_not_its_stages():
    from sdlab.bench.figures import draw_summary

    frame = pd.DataFrame([{"seed": seed, "guidance_scale": g, "status": "ok", "nfe": 25, "clip_score": 60.0 + g + seed,
                           "time_total_s": 0.1 * g + 0.01 * seed, "time_unet_s": 0.09 * g + 0.01 * seed,
                           "time_text_s": 0.001 * seed, "time_vae_s": 0.01 * g,
                           "overrides": json.dumps({"guidance_scale": str(g)})}
                          for g in (1, 7.5) for seed in (1, 2, 3)])
    ranking = rank(frame, ("guidance_scale",))
    fig = draw_summary(summary_table(frame, ("guidance_scale",), ranking), ranking)
    assert [ax.get_ylabel() for ax in fig.axes] == ["clip_score", "time_total (s)"]


def test_the_convergence_figures_name_each_metrics_unit(tmp_path, monkeypatch):
    """convergence_nfe.png and convergence_seconds.png: PSNR in dB, a time in s; a metric without a unit by its name."""
    from sdlab.bench import figures

    seen = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, target: seen.setdefault("fig", fig) and target)
    summary = pd.DataFrame([{"scheduler": name, "num_inference_steps": n, "stochastic": False, "nfe_mean": n, "n": 3,
                             **{f"{m}_{part}": v for m in ("psnr", "ssim", "time_total_s")
                                for part, v in (("mean", n), ("lo", n - 0.5), ("hi", n + 0.5))}}
                            for name in ("euler", "ddim") for n in (2, 4, 8)])
    figures.convergence(summary, "nfe", ["psnr", "ssim", "time_total_s"], tmp_path / "c.png", xlabel="NFE")
    assert [ax.get_ylabel() for ax in seen["fig"].axes] == ["psnr (dB)", "ssim", "time_total (s)"]


@pytest.mark.parametrize("counts,note", [
    ((2, 2), "no bands: n=2 images a point, fewer than the 3 an interval needs"),
    ((4, 4), "bands: 95% interval across the n=4 images of each point"),
    ((2, 5), "bands: 95% interval across the n=2-5 images of each point; none where n < 3"),
])
def test_the_convergence_figure_says_what_its_bands_are_and_their_n(tmp_path, counts, note):
    """compare_schedulers_quick has 2 seeds: its figure drew no band and did not say why, nor any n."""
    from sdlab.bench.captions import read_captions
    from sdlab.bench.figures import convergence

    summary = pd.DataFrame([{"scheduler": "euler", "num_inference_steps": s, "stochastic": False, "nfe_mean": s, "n": n,
                             "psnr_mean": 20.0 + s, "psnr_lo": 19.0 + s if n >= 3 else math.nan,
                             "psnr_hi": 21.0 + s if n >= 3 else math.nan} for s, n in zip((4, 8), counts)])
    convergence(summary, "nfe", ["psnr"], tmp_path / "c.png", xlabel="NFE", title="fewest NFE")
    assert read_captions(tmp_path)["c.png"].startswith(f"fewest NFE; {note}")


def test_the_summary_plot_shows_bytes_as_mib():
    from sdlab.bench.figures import draw_summary

    frame = pd.DataFrame([{"seed": seed, "guidance_scale": g, "status": "ok", "nfe": 25, "clip_score": 60.0 + g + seed,
                           "peak_mem_bytes": (700 + 10 * g) * 2**20, "overrides": json.dumps({"guidance_scale": str(g)})}
                          for g in (1, 7.5) for seed in (1, 2, 3)])
    ranking = rank(frame, ("guidance_scale",))
    fig = draw_summary(summary_table(frame, ("guidance_scale",), ranking), ranking)
    memory = next(ax for ax in fig.axes if ax.get_ylabel() == "peak_mem (MiB)")
    assert memory.get_lines()[0].get_ydata().tolist() == [710.0, 775.0]


@pytest.mark.parametrize("horizontal", [False, True], ids=["rotated", "flat"])
def test_row_labels_are_cut_line_by_line_either_way(tmp_path, monkeypatch, horizontal):
    from sdlab.bench import figures

    labels, real = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure",
                        lambda fig, target: labels.extend(ax.get_ylabel() for ax in fig.axes) or real(fig, target))
    row = "guidance 7.5, euler\nseed 12345678, steps 25"  # each line fits the 28 characters, the whole does not
    figures.image_strip([[np.zeros((8, 8, 3), np.uint8)]], tmp_path / "s.png", row_labels=[row],
                        horizontal_row_labels=horizontal)
    assert labels[0] == row


def test_the_summary_plot_draws_a_mean_outside_its_interval_without_raising():
    """A summary frame with a category's mean below and another's above its interval: no negative error bar."""
    from sdlab.bench.figures import draw_summary

    frame = sweep_frame().query("guidance_scale == 1")
    summary = summary_table(frame, ("seed", "scheduler"), rank(frame, ("scheduler",)))
    rows = summary.index[summary["parameter"].eq("scheduler") & summary["metric"].eq("clip_score")]
    assert len(rows) == 2
    summary.loc[rows, ["lo", "hi"]] = summary.loc[rows, "mean"].to_numpy()[:, None] + [[1.0, 2.0], [-2.0, -1.0]]
    fig = draw_summary(summary)
    assert [ax.get_xlabel() for ax in fig.axes][-1] == "scheduler"


@pytest.mark.parametrize("seconds", [(0.035, 0.07, 0.11, 0.15, 0.18, 0.27), (0.3, 0.45, 0.6, 0.8, 1.1, 1.5)])
def test_the_seconds_figure_has_a_labelled_tick_near_each_samplers_seconds(tmp_path, monkeypatch, seconds):
    """compare_schedulers_quick's times span less than a decade: ticked at 1, 2, 5 only, they had two labels."""
    from sdlab.bench import figures

    seen = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, target: seen.setdefault("fig", fig) and target)
    summary = pd.DataFrame([{"scheduler": name, "num_inference_steps": n, "stochastic": False, "nfe_mean": n, "n": 2,
                             "time_total_s_mean": seconds[2 * i + j], "psnr_mean": 20.0 + 5 * j, "psnr_lo": math.nan,
                             "psnr_hi": math.nan} for i, name in enumerate(("euler", "ddim", "heun"))
                            for j, n in enumerate((4, 8))])
    figures.convergence(summary, "time_total_s", ["psnr"], tmp_path / "c.png", xlabel="wall seconds per image")
    fig = seen["fig"]
    fig.canvas.draw()
    ax, (low, high) = fig.axes[0], fig.axes[0].get_xlim()
    ticks = [float(t.get_text()) for t in ax.get_xticklabels() if t.get_text() and low <= t.get_position()[0] <= high]
    assert len(ticks) >= 4, ticks
    assert all(min(abs(math.log(s / t)) for t in ticks) <= math.log(1.5) for s in seconds), ticks


def test_a_convergence_title_wider_than_its_figure_wraps_to_it(tmp_path, monkeypatch):
    """The seconds figure's 100-character claim ran past its one-column figure, widening the cropped PNG to the title
    and leaving the panels in a margin twice their width."""
    from sdlab.bench import figures

    seen = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, target: seen.setdefault("fig", fig) and target)
    summary = pd.DataFrame([{"scheduler": name, "num_inference_steps": n, "stochastic": False, "nfe_mean": n, "n": 2,
                             "time_total_s_mean": 0.1 * (i + 1) * n, "psnr_mean": 20.0 + 5 * j, "psnr_lo": math.nan,
                             "psnr_hi": math.nan} for i, name in enumerate(("euler", "ddim")) for j, n in enumerate((4, 8))])
    title = ("fewest wall seconds per image to a mean PSNR of 30 dB to the reference dpmpp_2m x 50 steps: dpmpp_2m "
             "0.093 s, euler 0.14 s, heun 0.22 s")
    figures.convergence(summary, "time_total_s", ["psnr"], tmp_path / "c.png", xlabel="seconds", title=title)
    fig = seen["fig"]
    fig.canvas.draw()
    extent = fig.get_suptitle() and fig._suptitle.get_window_extent()
    assert extent.x0 >= 0 and extent.x1 <= fig.bbox.width
    assert " ".join(fig.get_suptitle().split()).startswith(title)


def test_the_summary_plot_shows_the_scores_before_a_cost_it_has_no_room_for():
    """Past its six panels, the plot keeps each ranked score (adherence by attribute) and leaves out peak memory."""
    from sdlab.bench.figures import draw_summary

    frame = long_prompt_sweep(timed=True)
    frame["peak_mem_bytes"] = [2**30 * (1 + (g > 1)) for g in frame["guidance_scale"]]
    for k, name in enumerate(("adherence_all", "adherence_shape", "adherence_colour", "adherence_size")):
        frame[name] = [float((seed + k + i) % 2) for i, seed in enumerate(frame["seed"])]
    ranking = rank(frame, ("prompt", "guidance_scale"))
    assert {"adherence_shape", "adherence_colour", "adherence_size"} <= set(ranking["metric"])
    fig = draw_summary(summary_table(frame, ("prompt", "guidance_scale"), ranking), ranking)
    shown = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert shown == ["clip_score", "adherence_all", "time_total (s)", "adherence_shape", "adherence_colour",
                     "adherence_size"], shown


def test_an_index_a_job_numbers_its_rows_by_is_no_measurement():
    """prompt_grid's `prompt_index` had a mean and interval in summary.csv and a panel in summary.png, the same-params
    job's `call` a mean of 1.5: inputs, summarised as if measured."""
    from sdlab.bench.summary import metric_columns

    frame = pd.DataFrame({"prompt_index": [0, 1, 2], "call": [1, 2, 1], "step": [0, 1, 2], "timestep": [999, 500, 1],
                          "position": [0, 1, 2], "clip_score": [90.0, 80.0, 70.0]})
    assert metric_columns(frame) == ["clip_score"]
