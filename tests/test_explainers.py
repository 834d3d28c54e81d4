"""The explainer toys behind the article figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from omegaconf import OmegaConf
from PIL import Image

from sdlab.bench.captions import read_captions
from sdlab.errors import UserError
from sdlab.jobs import explainers
from sdlab.jobs.explainers import vae_compression_table
from sdlab.metrics import toy
from sdlab.metrics.toy_unet import level_table


def test_vae_compression_ratio_is_48_and_savings_grow_quadratically():
    table = vae_compression_table([256, 512, 768, 1024])
    assert (table["ratio"] == 48).all()
    assert table["latent_shape"].tolist()[1] == "4x64x64"
    saved = table["saved_values"].to_numpy()
    assert saved[1] / saved[0] == pytest.approx(4.0) and saved[3] / saved[0] == pytest.approx(16.0)
    with pytest.raises(UserError, match="not a multiple of 8"):
        vae_compression_table([100])


def test_vae_compression_figure_shows_the_quadratic_savings_with_their_number(run_sdlab, tmp_path):
    assert run_sdlab("experiment=article_b4_vae_compression", f"hydra.run.dir={tmp_path}") == 0
    assert read_captions(tmp_path)["vae_compression.png"] == (
        "ratio 48x at every size, so the values saved grow as the side squared: 4x the side (256 -> 1024 px) saves "
        "16x as much")


def test_toy_unet_levels_add_up_and_halve_resolution():
    table = level_table((32, 64, 128, 256))
    levels, total = table[table["level"] != "total"], table[table["level"] == "total"].iloc[0]
    assert levels["resolution"].tolist() == ["32x32", "16x16", "8x8", "4x4"]
    assert levels["params"].sum() < total["params"]  # the rest is conv_in/out, time embedding, mid block
    assert levels["params"].is_monotonic_increasing
    # level 0 keeps conv_in's output and its two resnets' at 32x32; its downsampled output is level 1's (16x16)
    assert levels["activation_bytes_fp32"].iloc[0] == 4 * 3 * 32 * 32 * 32
    assert levels["activation_bytes_fp32"].iloc[1] == 4 * (32 + 2 * 64) * 16 * 16


def test_toy_unet_skip_activations_are_what_its_up_blocks_receive():
    """Independently of the table's own hooks: the skips each up block is handed, by resolution."""
    from diffusers import UNet2DModel

    channels = (64, 128, 256)
    with torch.device("meta"):
        unet = UNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=channels,
                           layers_per_block=2, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                           norm_num_groups=32)
    received = []
    for block in unet.up_blocks:
        block.register_forward_pre_hook(lambda m, args: received.extend(t.shape for t in args[1]))
    with torch.no_grad():
        unet(torch.zeros(1, 1, 32, 32, device="meta"), torch.tensor([10], device="meta"))
    by_side = {}
    for shape in received:
        by_side[shape[-1]] = by_side.get(shape[-1], 0) + 4 * int(torch.Size(shape).numel())
    table = level_table(channels)
    levels = table[table["level"] != "total"]
    assert levels["activation_bytes_fp32"].tolist() == [by_side[32], by_side[16], by_side[8]]
    assert table[table["level"] == "total"]["activation_bytes_fp32"].iloc[0] == sum(by_side.values()) == 1_277_952


def test_toy_unet_shares_are_of_the_whole_model_as_its_table_counts(run_sdlab, tmp_path, monkeypatch):
    drawn, real = [], explainers.bar_chart
    monkeypatch.setattr(explainers, "bar_chart", lambda panels, *a, **k: drawn.append(panels) or real(panels, *a, **k))
    assert run_sdlab("experiment=article_b3_unet_levels", f"hydra.run.dir={tmp_path}") == 0
    frame = pd.read_csv(tmp_path / "toy_unet.csv").query("config == '[64, 128, 256]'")
    total = frame[frame["level"] == "total"]["params"].iloc[0]
    deepest = frame[frame["level"] == "2"]["params"].iloc[0]
    assert (total, deepest) == (14_404_225, 8_399_872)
    assert read_captions(tmp_path)["toy_unet.png"].startswith(
        f"deepest level: {deepest / total:.0%} of the model's {total:,} parameters;")
    [(params, _)] = drawn
    assert params["notes"][:3] == [f"{p / total:.0%}" for p in frame["params"].iloc[:3]] == ["5%", "17%", "58%"]
    assert params["title"].endswith("in % of all the model's parameters")


@pytest.mark.parametrize("recipe,table,figure", [
    ("article_a2_noise", "noise_stats", "noise_histogram.png"),
    ("article_b5_cfg_toy", "cfg_toy", "cfg_toy.png"),
    ("article_d2_timestep_embedding", "timestep_embedding", "timestep_embedding.png"),
])
def test_explainer_recipes_write_table_and_figure(run_sdlab, tmp_path, recipe, table, figure):
    assert run_sdlab(f"experiment={recipe}", f"hydra.run.dir={tmp_path}") == 0
    frame = pd.read_parquet(tmp_path / f"{table}.parquet")
    assert len(frame) > 0
    image = np.asarray(Image.open(tmp_path / figure).convert("L"))
    assert image.shape[0] > 150 and image.std() > 5
    if recipe == "article_a2_noise":
        assert abs(frame["mean"].iloc[0]) < 0.01 and abs(frame["std"].iloc[0] - 1) < 0.01
    if recipe == "article_b5_cfg_toy":
        assert 10 < frame["norm_threshold_scale"].iloc[0] < 15


def test_timestep_embedding_draws_the_cosine_its_title_quotes(run_sdlab, tmp_path, monkeypatch):
    drawn, real = [], explainers.save_figure
    monkeypatch.setattr(explainers, "save_figure", lambda fig, target: drawn.append(
        [(ax.get_xlabel(), ax.get_ylabel(), [line.get_xydata().copy() for line in ax.lines]) for ax in fig.axes])
        or real(fig, target))
    assert run_sdlab("experiment=article_d2_timestep_embedding", f"hydra.run.dir={tmp_path}") == 0
    t = np.arange(1000)
    embedding = toy.sinusoidal_timestep_embedding(t, 320)
    cosine = embedding @ embedding[0] / np.linalg.norm(embedding, axis=1) / np.linalg.norm(embedding[0])
    [axes] = drawn
    heat, side, bar = axes  # heatmap, cosine panel, colour bar
    assert heat[:2] == ("embedding dimension (cos half, then sin half)", "timestep t")
    assert side[0] == "cosine similarity to t=0's embedding" and bar[0].startswith("embedding value")
    curve = side[2][0]  # drawn as (cosine, t): t down the shared axis, beside the heatmap's rows
    assert curve[:, 1].tolist() == t.tolist() and curve[:, 0] == pytest.approx(cosine, abs=1e-12)
    half = int(np.flatnonzero(cosine >= 0.5)[-1]) + 1
    assert half == 54 and cosine[half:].max() < 0.5
    caption = read_captions(tmp_path)["timestep_embedding.png"]
    assert caption.split(" | ")[0] == (f"sinusoidal timestep embedding, dim 320: cosine to t=0 is below 0.5 from "
                                       f"t={half} on, {cosine[500]:.2f} at t=500, {cosine[999]:.2f} at t=999")
    # the panel's claim: the cosine depends on the gap only, so its curve serves any pair of timesteps
    for start, gap in ((37, 102), (400, 500), (1, 998)):
        pair = toy.sinusoidal_timestep_embedding([start, start + gap], 320)
        assert pair[0] @ pair[1] / np.linalg.norm(pair[0]) / np.linalg.norm(pair[1]) == pytest.approx(cosine[gap])


def test_timestep_embedding_table_holds_every_timestep_its_title_quotes(run_sdlab, tmp_path):
    assert run_sdlab("experiment=article_d2_timestep_embedding", f"hydra.run.dir={tmp_path}") == 0
    cosine = pd.read_csv(tmp_path / "timestep_embedding.csv").set_index("t")["cosine_to_t0"]
    caption = read_captions(tmp_path)["timestep_embedding.png"]
    quoted = [(float(value), int(t)) for value, t in re.findall(r"(-?[\d.]+) at t=(\d+)", caption)]
    assert [t for _, t in quoted] == [500, 999]
    assert all(f"{cosine[t]:.2f}" == f"{value:.2f}" for value, t in quoted)
    half = int(re.search(r"below 0.5 from t=(\d+) on", caption).group(1))
    assert cosine[half - 1] >= 0.5 > cosine[half:].max()


def drawn_heatmap(run_sdlab, tmp_path, monkeypatch, *overrides: str) -> tuple[np.ndarray, str, float]:
    """D2's heatmap as drawn: its values, its title and its height in pixels."""
    drawn, real = [], explainers.save_figure

    def keep(fig, target):
        heat = fig.axes[0]
        drawn.append((heat.images[0].get_array(), heat.get_title(), heat.get_window_extent().height))
        return real(fig, target)

    monkeypatch.setattr(explainers, "save_figure", keep)
    assert run_sdlab("experiment=article_d2_timestep_embedding", f"hydra.run.dir={tmp_path}", *overrides) == 0
    return drawn[0]


def test_timestep_embedding_heatmap_resolves_every_dimensions_sinusoid(run_sdlab, tmp_path, monkeypatch):
    """50 rows 20 timesteps apart drew dims 0-32 as noise: w_k = 10000^(-k/160) turns up to 1 radian per timestep."""
    values, title, height = drawn_heatmap(run_sdlab, tmp_path, monkeypatch)
    assert np.asarray(values) == pytest.approx(toy.sinusoidal_timestep_embedding(np.arange(1000), 320))
    assert height >= 1000  # a pixel row per timestep: drawn smaller, the screen would alias them again
    assert title == ("the embedding of all 1000 timesteps, one row each:\nevery sinusoid resolved, the fastest "
                     "(dims 0 and 160) turns once per 6.3 rows")


def test_timestep_embedding_heatmap_names_the_dimensions_its_rows_undersample(run_sdlab, tmp_path, monkeypatch):
    values, title, height = drawn_heatmap(run_sdlab, tmp_path, monkeypatch, "timestep_embedding.rows=50")
    gap = np.diff(np.linspace(0, 999, 50).round()).max()
    fast = np.flatnonzero(10000.0 ** -(np.arange(160) / 160) * gap >= np.pi)  # under two rows per period
    assert len(values) == 50 and gap == 21 and fast.tolist() == list(range(34))
    assert title == ("the embedding of 50 timesteps up to 21 apart, one row each:\ndims 0-33 and 160-193 turn over "
                     "half a cycle per row: aliased, not their sinusoids")


def test_stays_below_half_finds_the_last_crossing_or_none():
    assert explainers.stays_below_half(np.array([1.0, 0.4, 0.6, 0.3, 0.2])) == 3
    assert explainers.stays_below_half(np.array([1.0, 0.4, 0.6])) is None


def test_ddim_steps_figure_says_there_is_no_knee_by_the_articles_definition(run_sdlab, tmp_path):
    assert run_sdlab("experiment=article_b6_ddim_steps", f"hydra.run.dir={tmp_path}") == 0
    frame = pd.read_parquet(tmp_path / "ddim_steps.parquet")
    assert frame["knee"].isna().all() and (frame["bend"] == 20).all()
    assert frame["cut_per_doubling"].iloc[1:].between(0.6, 0.75).all()
    caption = read_captions(tmp_path)["ddim_steps.png"]
    assert caption.startswith("no knee by the article's definition") and "cuts it 63-72%" in caption
    assert "20 -> 1000 (50x the work) the last 12%" in caption


def test_ddim_steps_marks_no_knee_on_its_straight_log_log_curve(run_sdlab, tmp_path, monkeypatch):
    from sdlab.jobs import explainers

    drawn, real = [], explainers.curves
    monkeypatch.setattr(explainers, "curves", lambda panels, *a, **k: drawn.append(panels) or real(panels, *a, **k))
    assert run_sdlab("experiment=article_b6_ddim_steps", f"hydra.run.dir={tmp_path}") == 0
    [(log_log, _)] = drawn
    assert log_log["logx"] and log_log["logy"] and not log_log.get("points")


def test_ddim_steps_names_its_schedule_and_keeps_the_quote_on_one_line(run_sdlab, tmp_path, monkeypatch):
    kept = drawn_figures(monkeypatch)
    assert run_sdlab("experiment=article_b6_ddim_steps", "ddim_steps.schedule=scaled_linear",
                     f"hydra.run.dir={tmp_path}") == 0
    [(_, fig)] = kept
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["DDIM round trip, scaled_linear schedule"]
    assert any("'more steps stop paying'" in line for line in fig.get_suptitle().split("\n"))


def test_pipeline_by_hand_matches_diffusers(run_sdlab, tmp_path):
    args = ("experiment=article_c1_pipeline_by_hand", "num_inference_steps=5", f"hydra.run.dir={tmp_path}")
    assert run_sdlab(*args) == 0
    row = pd.read_parquet(tmp_path / "results.parquet").iloc[0]
    assert row["max_abs_diff_latents"] < 1e-3
    assert Image.open(tmp_path / "by_hand_vs_diffusers.png").size[0] > 300


def test_img2img_strength_sweep_rejects_bad_strength_and_runs(run_sdlab, tmp_path, capsys):
    base = ("experiment=article_c2_img2img", "num_inference_steps=4")
    assert run_sdlab(*base, "strengths=[0.5,1.5]", f"hydra.run.dir={tmp_path / 'bad'}") == 2
    assert "strength 1.5 must be in (0, 1]" in capsys.readouterr().err
    assert run_sdlab(*base, "strengths=[0.5,1.0]", "scheduler=euler", "scheduler.timestep_spacing=trailing",
                     f"hydra.run.dir={tmp_path / 'ok'}") == 0
    frame = pd.read_parquet(tmp_path / "ok" / "results.parquet")
    assert frame["strength"].tolist() == [0.5, 1.0] and frame["denoising_steps"].tolist() == [2, 4]
    # the scheduler and its options as the user set them, which the rows record (the options were once dropped)
    assert (frame["scheduler"] == "euler").all()
    assert all(json.loads(c)["timestep_spacing"] == "trailing" for c in frame["scheduler_config"])


def test_img2img_runs_at_the_width_and_height_given(run_sdlab, tmp_path, monkeypatch):
    """`width=32 height=48` warned that they differ from the model's 64 px, then ran and recorded 64 x 64."""
    from sdlab.bench import figures

    strips = []
    monkeypatch.setattr(figures, "image_strip", lambda rows, *a, **k: strips.append(rows))
    monkeypatch.setattr("sdlab.jobs.by_hand.image_strip", lambda rows, *a, **k: strips.append(rows))
    assert run_sdlab("experiment=article_c2_img2img", "model=tiny", "strengths=[1.0]", "num_inference_steps=2",
                     "width=32", "height=48", "threads=1", f"hydra.run.dir={tmp_path}") == 0
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert frame[["width", "height"]].values.tolist() == [[32, 48]]
    assert [image.shape for image in strips[0][0]] == [(48, 32, 3), (48, 32, 3)]  # the input and its output


def test_img2img_labels_say_whose_drawing_each_strength_shows_and_a_shape_neither_caption_names():
    from types import SimpleNamespace

    from sdlab.bench.worlds import world
    from sdlab.jobs.by_hand import drawn_like

    source, prompt = "a large red circle in the centre on a blue background", "a large red circle on the left on a green background"
    ctx = SimpleNamespace(recipe=SimpleNamespace(image=None, image_caption=source),
                          run=SimpleNamespace(params=SimpleNamespace(prompt=prompt), recipe={"scorers": ["shapes_adherence"]}))
    draw = world("shapes").draw
    outputs = [draw(source), draw("a large red square in the centre on a blue background"), draw(prompt)]
    reads, line = drawn_like(ctx, pd.DataFrame({"strength": [0.1, 0.5, 1.0]}), outputs)
    assert reads == ["\nthe input's", "\nwrong shape", "\nthe prompt's"]
    assert line.endswith("; a shape neither caption names at 0.5 (the model's error)")


def drawn_figures(monkeypatch) -> list:
    """Every figure sdlab.bench.figures saves, drawn, kept open for the test to measure."""
    from sdlab.bench import figures

    kept, real = [], figures.save_figure

    def keep(fig, target, *args, **kwargs):
        fig.canvas.draw()
        kept.append((target.name, fig))
        saved = real(fig, target, *args, **kwargs)
        FigureCanvasAgg(fig).draw()  # saving closes it: measure the figure as laid out, on a canvas of its own
        return saved

    monkeypatch.setattr(figures, "save_figure", keep)
    return kept


def legend_covers(ax) -> list[str]:
    """The labels of `ax`'s lines that pass under its legend (vertices or segments, in display space)."""
    box = ax.get_legend().get_window_extent()
    return [line.get_label() for line in ax.lines
            if line.get_path().transformed(line.get_transform()).intersects_bbox(box, filled=False)
            or any(box.contains(*point) for point in line.get_transform().transform(line.get_xydata()))]


def test_toy_predictor_legend_covers_none_of_its_lines(run_sdlab, tmp_path, monkeypatch):
    kept = drawn_figures(monkeypatch)
    assert run_sdlab("experiment=article_b2_toy_predictor", f"hydra.run.dir={tmp_path}") == 0
    [(name, fig)] = kept
    [ax] = fig.axes
    assert name == "toy_predictor.png"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["zero predictor", "random predictor",
                                                                    "perfect predictor"]
    assert legend_covers(ax) == []


def test_toy_predictor_question_asks_about_the_predictors_its_figure_draws():
    recipe = Path(__file__).resolve().parent.parent / "experiments" / "article_b2_toy_predictor.yaml"
    question = OmegaConf.load(recipe).article.question
    assert all(name in question for name in ("zero", "random", "perfect")) and "network" not in question


def test_toy_unet_question_asks_about_both_halves_of_its_figure():
    """B3 draws parameters and skip activations per level: its question asked of the activations alone."""
    recipe = Path(__file__).resolve().parent.parent / "experiments" / "article_b3_unet_levels.yaml"
    question = OmegaConf.load(recipe).article.question
    assert "parameters" in question and "activations" in question and "level" in question


def test_a_curve_figures_title_is_no_wider_than_its_panels(run_sdlab, tmp_path, monkeypatch):
    kept = drawn_figures(monkeypatch)
    assert run_sdlab("experiment=article_b4_vae_compression", f"hydra.run.dir={tmp_path}") == 0
    [(name, fig)] = kept
    renderer = fig.canvas.get_renderer()
    [ax] = fig.axes
    title, frame = ax.title.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert "\n" in ax.get_title() and frame.x0 - 1 <= title.x0 and title.x1 <= frame.x1 + 1
    assert not title.overlaps(frame) and not title.overlaps(ax.get_legend().get_window_extent(renderer))
    assert read_captions(tmp_path)[name] == (  # the caption, as typed, is the same text however it wraps
        "ratio 48x at every size, so the values saved grow as the side squared: 4x the side (256 -> 1024 px) saves "
        "16x as much")


def test_a_wrapped_title_line_leaves_no_orphan_word():
    from sdlab.bench.figures import balanced_lines

    claim = "CLIP score 64.2 at w=1 -> 93.5 at w=20 (best 95.8 at w=5): change +29.4 (paired 95% CI +0.5 to +58.2; lower in 1 of 6 seeds)"
    lines = balanced_lines(claim, 62).split("\n")
    assert " ".join(lines) == claim and all(len(line) <= 62 for line in lines)
    assert len(lines) == 3 and max(map(len, lines)) - min(map(len, lines)) <= 12  # not 58, 59 and 'seeds)'
    assert balanced_lines("short", 62) == "short"


def test_cfg_toy_titles_say_what_one_scale_or_a_threshold_never_reached_shows(run_sdlab, tmp_path):
    """B5 with `cfg_toy.scales=[1,3]` titled its panel 'passes 3x at w = nan'; with one scale it read 'cos 0.79 at
    w=7.5, 0.79 at w=7.5'."""
    assert run_sdlab("experiment=article_b5_cfg_toy", "cfg_toy.scales=[1,3]", f"hydra.run.dir={tmp_path / 'a'}") == 0
    caption = read_captions(tmp_path / "a")["cfg_toy.png"]
    amplified = pd.read_parquet(tmp_path / "a" / "results.parquet")["amplification"].iloc[-1]
    assert "nan" not in caption and f"{amplified:.2f}x at w=3, short of 3x at every scale tried" in caption, caption
    assert run_sdlab("experiment=article_b5_cfg_toy", "cfg_toy.scales=[7.5]", f"hydra.run.dir={tmp_path / 'b'}") == 0
    caption = read_captions(tmp_path / "b")["cfg_toy.png"]
    assert "at w=7.5 (one guidance scale: nothing to compare)" in caption and caption.count("w=7.5") == 2, caption


def test_vae_compression_of_one_size_says_it_has_no_growth_to_show(run_sdlab, tmp_path):
    """B4 with one size read 'grow as the side squared: 1x the side (512 -> 512 px) saves 1x as much'."""
    assert run_sdlab("experiment=article_b4_vae_compression", "vae_compression.sizes=[512]",
                     f"hydra.run.dir={tmp_path}") == 0
    assert read_captions(tmp_path)["vae_compression.png"] == (
        "ratio 48x at 512 px: 0.77M values saved; one size: nothing to compare (give two or more sizes to see the "
        "savings grow as the side squared)")


def test_img2img_of_one_strength_says_it_has_nothing_to_compare(run_sdlab, tmp_path):
    """C2 with one strength read 'PSNR to the input 20.6 dB at 0.5, 20.6 dB at 0.5'."""
    assert run_sdlab("experiment=article_c2_img2img", "num_inference_steps=2", "strengths=[0.5]",
                     f"hydra.run.dir={tmp_path}") == 0
    psnr = pd.read_parquet(tmp_path / "results.parquet")["psnr_to_input"].iloc[0]
    caption = read_captions(tmp_path)["img2img_strength.png"]
    assert f"PSNR to the input {psnr:.1f} dB at 0.5 (one strength: nothing to compare)" in caption, caption


def test_ddim_steps_of_two_step_counts_claims_no_knee_bend_or_power_law(run_sdlab, tmp_path):
    """B6 at 10 and 20 steps read 'each doubling from 10 to 20 steps cuts it 72-72%', '10 -> 10 steps remove 0% of
    the 10-step error' and 'close to a power law' (any two points lie on one)."""
    assert run_sdlab("experiment=article_b6_ddim_steps", "ddim_steps.steps=[10,20]", f"hydra.run.dir={tmp_path}") == 0
    caption = read_captions(tmp_path)["ddim_steps.png"]
    mse = pd.read_parquet(tmp_path / "results.parquet")["mse"]
    fall = 1 - mse.iloc[-1] / mse.iloc[0]
    assert f"from 10 to 20 steps the error falls {fall:.0%}; a knee needs three step counts or more" in caption, caption
    assert "10 -> 10" not in caption and "power law" not in caption and "-72%" not in caption, caption
