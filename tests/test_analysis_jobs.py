"""The analysis jobs called directly on model=tiny: their numbers, tables and figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from analysis_helpers import check_image, context, figure_size
from sdlab.bench.captions import read_captions
from sdlab.bench.records import read_png_metadata
from sdlab.errors import UserError
from sdlab.jobs import forward, get_job
from sdlab.models import loading


pytestmark = pytest.mark.usefixtures("one_thread")


def run(recipe: str, tmp_path, **overrides) -> pd.DataFrame:
    ctx = context(recipe, tmp_path, **overrides)
    return get_job(ctx.run.job)(ctx)


def test_schedule_snr_landmarks_tables_and_figures(tmp_path):
    rows = run("schedule_snr", tmp_path, num_inference_steps=4).set_index("beta_schedule", drop=False)
    linear = rows[rows["schedule"].str.startswith("linear 0.00085")].iloc[0]
    assert round(linear["snr_db_first"], 2) == 30.70 and round(linear["snr_db_last"], 2) == -28.01
    assert linear["crossing_t"] == 284 and round(linear["alpha_bar_mid"], 3) == 0.161
    sd = rows[rows["schedule"].str.contains("(SD)", regex=False)].iloc[0]
    assert sd["crossing_t"] == 354 and round(sd["snr_db_last"], 2) == -23.30
    cosine = rows.loc["squaredcos_cap_v2"]  # no beta ends: the table names none rather than SD's unused ones
    assert pd.isna(cosine["beta_start"]) and pd.isna(cosine["beta_end"]) and linear["beta_end"] == pytest.approx(0.012)
    schedule = pd.read_parquet(tmp_path / "schedule.parquet")
    assert list(schedule.columns) == ["schedule", "t", "beta", "alpha", "alpha_bar", "signal_frac", "noise_frac",
                                      "snr", "snr_db", "sigma"]
    assert len(schedule) == 4 * 1000
    visits = pd.read_parquet(tmp_path / "visits.parquet")
    per = visits.groupby("scheduler", sort=False)["timestep"].apply(list)
    assert per["ddim"] == [751.0, 501.0, 251.0, 1.0]
    assert per["ddim timestep_spacing=trailing"] == [999.0, 749.0, 499.0, 249.0]
    assert len(per["heun"]) == 2 * 4 - 1
    check_image(tmp_path / "snr.png", **figure_size(6.4, 2 * 3.6))  # alpha_bar and SNR panels
    check_image(tmp_path / "visits.png", **figure_size(6.4, 3 * 3.6))


def test_schedule_from_the_model_and_bad_schedule(tmp_path):
    rows = run("schedule_snr", tmp_path, schedules=["model"], visit_schedulers=None, num_inference_steps=3)
    assert rows["schedule"].tolist() == ["model"] and rows["crossing_t"].tolist() == [354]
    assert pd.read_parquet(tmp_path / "visits.parquet")["scheduler"].unique().tolist() == ["dpmpp_2m"]
    with pytest.raises(UserError, match="unknown beta_schedule 'sigmoid'"):
        run("schedule_snr", tmp_path, schedules=["sigmoid"])


def test_forward_process_pixel_and_latent(tmp_path):
    rows = run("forward_process", tmp_path, timesteps=[0, 500, 999])
    assert len(rows) == 6 and set(rows["space"]) == {"pixel", "latent"}
    pixel = rows[rows["space"] == "pixel"]
    assert pixel["psnr_db"].iloc[0] > 30 and pixel["psnr_db"].is_monotonic_decreasing
    assert pixel["alpha_bar"].iloc[0] == pytest.approx(0.99915)
    # the samplers' sigma of the same level, as every table names it: sqrt((1 - alpha_bar) / alpha_bar)
    assert rows["sigma"].to_numpy() == pytest.approx(np.sqrt((1 - rows["alpha_bar"]) / rows["alpha_bar"]))
    latent = rows[rows["space"] == "latent"]
    # horizontal row labels ("latent z_t, decoded": 18 characters at 9 pt) widen the strip by their margin
    check_image(tmp_path / "forward_strip.png", **figure_size(1.6 * 4 + 0.6 + 0.6 * 9 / 72 * 18 + 0.15, 1.9 * 2 + 0.6))
    headline = read_captions(tmp_path)["forward_strip.png"].split(" | ")[0]
    assert headline.startswith(
        f"PSNR vs x_0 from t=0 to t=999: {pixel['psnr_db'].iloc[0]:.1f} -> {pixel['psnr_db'].iloc[-1]:.1f} dB in "
        f"pixels, {latent['psnr_db'].iloc[0]:.1f} -> {latent['psnr_db'].iloc[-1]:.1f} dB in decoded latents; "
        f"q(x_t|x_0) = N(")
    with pytest.raises(UserError, match=r"timesteps \[1000\] out of range"):
        run("forward_process", tmp_path, timesteps=[0, 1000])


def test_forward_process_headline_compares_schedules_with_the_panels_numbers(tmp_path, monkeypatch):
    drawn, real = [], forward.image_strip
    monkeypatch.setattr(forward, "image_strip", lambda *a, **k: drawn.append(k) or real(*a, **k))
    schedules = [{"name": "linear", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "T": 1000},
                 {"name": "cosine", "beta_schedule": "squaredcos_cap_v2", "T": 1000}]
    rows = run("forward_process", tmp_path, timesteps=[0, 200, 500, 999], schedules=schedules, spaces=["pixel"])
    psnr = rows.pivot(index="t", columns="schedule", values="psnr_db")
    widest = int((psnr["cosine"] - psnr["linear"]).abs().idxmax())
    assert widest == 200 and psnr.loc[widest, "cosine"] > psnr.loc[widest, "linear"]
    caption = read_captions(tmp_path)["forward_strip.png"]
    assert caption.split("; q(x_t|x_0)")[0] == (
        f"cosine keeps more signal than linear: {psnr.loc[widest, 'cosine']:.1f} vs {psnr.loc[widest, 'linear']:.1f} "
        f"dB PSNR at t={widest}")
    [strip] = drawn  # the same numbers label the panels, under rows named across, not up the side
    assert strip["horizontal_row_labels"] and strip["row_labels"] == ["linear\npixel x_t", "cosine\npixel x_t"]
    assert f"t={widest}\n{psnr.loc[widest, 'cosine']:.1f} dB" in strip["col_labels"][1]


def test_psnr_headline_handles_three_schedules_ties_and_exact_copies():
    def rows(values: dict[str, list[float]], timesteps=(0, 500, 999)) -> list[dict]:
        return [{"schedule": name, "space": "pixel", "t": t, "psnr_db": v}
                for name, psnrs in values.items() for t, v in zip(timesteps, psnrs)]

    three = rows({"a": [40.0, 9.0, 5.0], "b": [41.0, 14.0, 5.0], "c": [39.0, 11.0, 5.0]})
    assert forward.psnr_headline(three) == "b keeps the most signal, a the least: 14.0 vs 9.0 dB PSNR at t=500"
    # an exact copy (inf dB) at t=0 in one schedule: the gap is read where both are finite
    exact = rows({"flow": [float("inf"), 8.0, 4.0], "ddpm": [45.0, 6.0, 4.5]})
    assert forward.psnr_headline(exact) == "flow keeps more signal than ddpm: 8.0 vs 6.0 dB PSNR at t=500"
    same = rows({"a": [40.0, 9.0, 5.0], "b": [40.01, 9.02, 5.0]})
    assert forward.psnr_headline(same) == "the schedules keep the same signal: PSNRs within 0.1 dB of each other at every t"
    assert forward.psnr_headline(rows({"model": [30.0]}, timesteps=(7,))) == "PSNR vs x_0 at t=7: 30.0 dB"


def test_vae_roundtrip_builtin_images(tmp_path):
    rows = run("vae_roundtrip", tmp_path, num_images=2, width=96, height=64)
    assert rows["compression_ratio"].tolist() == [48.0, 48.0]
    assert rows["latent_shape"].tolist() == ["4x8x12"] * 2
    assert ((rows["ssim"] > -1) & (rows["ssim"] <= 1)).all() and rows["psnr_db"].notna().all()
    channels = pd.read_parquet(tmp_path / "latent_channels.parquet")
    assert len(channels) == 2 * 4 and list(channels.columns) == ["image", "channel", "mean", "std", "min", "max"]
    check_image(tmp_path / "vae_roundtrip.png", **figure_size(1.6 * 6 + 0.6, 1.9 * 2 + 0.3))


def test_vae_roundtrip_folder_and_its_errors(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    (folder / "notes.txt").write_text("ignored")
    rows = run("vae_roundtrip", tmp_path / "out", images=str(folder))
    assert rows["image"].tolist() == ["a.png"] and rows["width"].tolist() == [64]

    (folder / "broken.png").write_text("not a png")
    with pytest.raises(UserError) as e:
        run("vae_roundtrip", tmp_path / "out", images=str(folder))
    assert "broken.png" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="missing.png does not exist"):
        run("vae_roundtrip", tmp_path / "out", images=str(tmp_path / "missing.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        run("vae_roundtrip", tmp_path / "out", images=str(tmp_path / "empty"))


def test_clip_tokens_job(tmp_path):
    rows = run("clip_tokens", tmp_path)
    pirate = rows[rows["prompt"].str.startswith("a pirate ship")].iloc[0]
    assert pirate["n_tokens"] == 15 and not pirate["truncated"]
    assert rows["truncated"].any() and rows.loc[rows["truncated"], "warning"].str.contains("> 77").all()
    tokens = pd.read_parquet(tmp_path / "tokens.parquet")
    assert tokens.groupby("prompt_index").size().tolist() == rows["n_tokens"].tolist()
    check_image(tmp_path / "token_counts.png", min_size=(300, 80))
    assert rows.loc[rows["truncated"], "dropped"].tolist() == ["…station, by a famous landscape painter"]
    assert read_captions(tmp_path)["token_counts.png"] == (  # where the cut falls: inside 'artstation'
        "the longest prompt is 84 tokens; 1 of 4 prompts cut at 77 tokens; the 84-token one loses "
        "'…station, by a famous landscape painter' | tokens per prompt; text_encoder (CLIP) sees at most 77 (dashed)")


def test_clip_similarity_text_only_then_with_clip(tmp_path, monkeypatch):
    from analysis_helpers import tiny_clip
    from sdlab.bench import figures

    drawn, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k))
    rows = run("clip_similarity", tmp_path / "text", prompts=["a red circle", "a blue square", "a red circle"])
    assert len(rows) == 9 and rows["embedding"].iloc[0].startswith("model=tiny text_encoder pooled output")
    matrix = rows.pivot(index="prompt_a_index", columns="prompt_b_index", values="cosine").to_numpy()
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-6)
    assert matrix[0, 2] == pytest.approx(1.0, abs=1e-6)
    check_image(tmp_path / "text" / "text_similarity.png", min_size=(250, 150))
    assert not (tmp_path / "text" / "image_text_similarity.png").exists()

    folder = tmp_path / "clip"
    model = tiny_clip()
    model.model.save_pretrained(str(folder), safe_serialization=True)
    rows = run("clip_similarity", tmp_path / "both", prompts=["a red circle", "a blue square"], num_images=3,
               clip={"name": "mini", "path": str(folder), "repo_id": None})
    assert rows["embedding"].iloc[0] == "clip=mini projected text embedding (get_text_features)"
    pairs = pd.read_parquet(tmp_path / "both" / "image_text_similarity.parquet")
    assert len(pairs) == 9 and pairs["clip_score"].between(0, 100).all()
    check_image(tmp_path / "both" / "image_text_similarity.png", min_size=(250, 150))
    assert [fig.axes[0].images[0].get_clim() for fig in drawn] == [(-1, 1)] * 3  # one colour, one cosine


def test_anatomy_job_on_tiny(tmp_path):
    rows = run("anatomy", tmp_path).set_index("component")
    assert rows.loc["total", "params"] == rows.loc[["unet", "vae", "text_encoder"], "params"].sum()
    assert rows.loc["total", "latent_shape"] == "4x8x8" and rows.loc["total", "compression_ratio"] == 48.0
    blocks = pd.read_parquet(tmp_path / "unet_blocks.parquet")
    assert blocks["params"].sum() == rows.loc["unet", "params"]
    check_image(tmp_path / "anatomy.png", min_size=(400, 300))


def test_binary_size_picks_the_unit_that_fits_with_three_significant_digits():
    from sdlab.jobs.anatomy import binary_size

    assert [binary_size(6_237_755 * n) for n in (4, 2)] == ["23.8 MiB", "11.9 MiB"]  # mini, not 0.02 and 0.01 GiB
    assert [binary_size(1_066_235_307 * n) for n in (4, 2)] == ["3.97 GiB", "1.99 GiB"]  # SD 1.5
    assert binary_size(11_901_408_320 * 4) == "44.3 GiB" and binary_size(2**30 - 1) == "1,024 MiB"
    assert binary_size(3 * 2**20 + 2**19) == "3.50 MiB" and binary_size(500_000) == "0.477 MiB"


def test_anatomy_title_gives_a_small_models_bytes_in_mib(tmp_path):
    rows = run("anatomy", tmp_path).set_index("component")
    total = rows.loc["total", "params"]
    caption = read_captions(tmp_path)["anatomy.png"]
    fp32, fp16 = (f"{total * n / 2**20:.{2 if total * n < 10 * 2**20 else 1}f} MiB" for n in (4, 2))
    assert f"{total:,} parameters, {fp32} fp32, {fp16} fp16;" in caption and "GiB" not in caption


def test_trajectory_x0_pred_matches_ddim_update_and_gif(tmp_path):
    scheduler = {"name": "ddim", "timestep_spacing": None, "use_karras_sigmas": None, "rescale_betas_zero_snr": None,
                 "final_sigmas_type": None, "steps_offset": None}
    from sdlab.jobs import trajectory

    recorded = {}
    original = trajectory.TrajectoryRecorder.__exit__

    def keep(self, *exc):
        recorded["steps"] = self.steps
        return original(self, *exc)

    trajectory.TrajectoryRecorder.__exit__ = keep
    try:
        rows = run("trajectory", tmp_path, num_inference_steps=4, frames=3, scheduler=scheduler, guidance_scale=3.0)
    finally:
        trajectory.TrajectoryRecorder.__exit__ = original
    assert rows["step"].tolist() == [0, 1, 2, 3] and rows["timestep"].tolist() == [751.0, 501.0, 251.0, 1.0]
    assert (rows["nfe"] == 4).all() and (rows["time_capture_s"] >= 0).all() and (rows["time_decode_trajectory_s"] > 0).all()
    assert rows["sigma"].to_numpy() == pytest.approx(np.sqrt((1 - rows["alpha_bar"]) / rows["alpha_bar"]))

    # DDIM (eta = 0): x_prev = sqrt(ab_prev) x0_pred + sqrt(1 - ab_prev) eps, with eps recovered from x_t and x0_pred.
    steps = recorded["steps"]
    for s, nxt in zip(steps[:-1], steps[1:]):
        ab, ab_prev = s["alpha_bar"], nxt["alpha_bar"]
        eps = (s["x_t"] - math.sqrt(ab) * s["denoised"]) / math.sqrt(1 - ab)
        expected = math.sqrt(ab_prev) * s["denoised"] + math.sqrt(1 - ab_prev) * eps
        torch.testing.assert_close(s["x"], expected, rtol=1e-4, atol=1e-4)

    captions = json.loads((tmp_path / "captions.json").read_text())
    assert all(captions.get(png.name) for png in tmp_path.glob("*.png"))  # every figure has its title; the bare
    assert settled_claim(rows, 4) + " (dB: x0_pred against the final image)" in captions["trajectory_strip.png"]
    # the final image sits with the images, not the figures, and carries the whole request: `params=` regenerates it
    final = read_png_metadata(tmp_path / "images" / "trajectory_final.png")
    assert {k: final[k] for k in ("negative_prompt", "width", "height", "eta", "seed", "scheduler")} == {
        "negative_prompt": rows["negative_prompt"].iloc[0], "width": 64, "height": 64, "eta": 0.0,
        "seed": int(rows["seed"].iloc[0]), "scheduler": rows["scheduler"].iloc[0]}
    gif = Image.open(tmp_path / "trajectory.gif")
    assert gif.n_frames == 4 + 1 and gif.size == (2 * 64 * 4, 64 * 4 + 22)
    check_image(tmp_path / "trajectory.gif", size=(512, 278))
    check_image(tmp_path / "trajectory_strip.png", **figure_size(1.6 * 4 + 0.6, (1.6 + 0.15 + 0.15 * 3) * 2 + 0.6))


def test_trajectory_title_keeps_a_negation_and_cuts_a_long_prompt_at_a_word(tmp_path):
    negation = "a large yellow triangle at the top on a black background, no red"
    run("trajectory", tmp_path / "a", num_inference_steps=2, frames=2, prompt=negation)
    assert f"seed 0: {negation}; x0_pred" in read_captions(tmp_path / "a")["trajectory_strip.png"]
    run("trajectory", tmp_path / "b", num_inference_steps=2, frames=2, prompt=negation + ", and no blue square or green circle")
    assert f"seed 0: {negation}, and no blue…; x0_pred" in read_captions(tmp_path / "b")["trajectory_strip.png"]


def test_trajectory_gif_frames_carry_each_x0_pred_psnr_in_a_legible_band(tmp_path, monkeypatch):
    from sdlab.jobs import trajectory

    texts, real = [], trajectory.labelled
    monkeypatch.setattr(trajectory, "labelled", lambda image, text, scale: texts.append(text) or real(image, text, scale))
    rows = run("trajectory", tmp_path, num_inference_steps=2, frames=2)
    assert texts[1::2] == [f"x0_pred {db:.1f} dB to final" if np.isfinite(db) else "x0_pred = final"
                           for db in rows["x0_pred_psnr_vs_final_db"]] + ["final"]
    assert Image.open(tmp_path / "trajectory.gif").size == (2 * 64 * 4, 64 * 4 + 22)  # 16 px letters, not 11


def test_a_sampler_that_calls_the_model_more_often_than_it_steps_counts_its_calls():
    """Heun at 10 steps read 'heun, 10 steps ... at step 16 of 19': its 19 frames are model calls, not steps."""
    from sdlab.jobs.trajectory import step_name

    assert step_name(0, 20, 20) == "step 1 of 20"
    assert step_name(15, 19, 10) == "model call 16 of 19"


def test_strip_steps_show_the_step_the_title_names_in_place_of_the_nearest_inner_one():
    from sdlab.jobs.trajectory import strip_steps

    assert strip_steps(50, 9) == [0, 6, 12, 18, 24, 31, 37, 43, 49]
    assert strip_steps(50, 9, keep=28) == [0, 6, 12, 18, 24, 28, 37, 43, 49]  # 31 is nearer 28 than 24 is
    assert strip_steps(50, 9, keep=1) == [0, 1, 12, 18, 24, 31, 37, 43, 49]  # the first and last steps stay
    assert strip_steps(50, 9, keep=31) == strip_steps(50, 9) and strip_steps(4, 8, keep=2) == [0, 1, 2, 3]
    assert strip_steps(20, 1, keep=7) == [7]


def settled_claim(rows: pd.DataFrame, steps: int) -> str:
    """The trajectory title's claim as its rows say it: the first step at 30 dB, and the one from which all are."""
    close = (rows["x0_pred_psnr_vs_final_db"] >= 30).tolist()
    if not any(close):
        return "x0_pred never reaches 30 dB PSNR"
    first, stays = close.index(True), next(i for i in range(len(close)) if all(close[i:]))
    return (f"x0_pred first reaches 30 dB PSNR at step {first + 1} of {steps}"
            + (f", stays above it from step {stays + 1} of {steps}" if stays != first else ""))


def test_trajectory_title_says_when_x0_pred_stays_close_after_falling_back(tmp_path, monkeypatch):
    """x0_pred may reach 30 dB, fall back and reach it again (DDPM's fresh noise): the title says both steps."""
    from sdlab.jobs import trajectory

    drawn, real = {}, trajectory.image_strip
    monkeypatch.setattr(trajectory, "image_strip",
                        lambda rows, target, **kw: drawn.update(kw) or real(rows, target, **kw))
    psnrs = iter([12.0, 31.0, 28.0, 35.0, float("inf")])
    monkeypatch.setattr(trajectory, "psnr", lambda final, x0: next(psnrs))
    run("trajectory", tmp_path, num_inference_steps=5, frames=3)
    assert "x0_pred first reaches 30 dB PSNR at step 2 of 5, stays above it from step 4 of 5 (dB:" in drawn["title"]


def test_trajectory_title_names_a_step_its_strip_shows_counted_as_its_panels_count(tmp_path, monkeypatch):
    from sdlab.jobs import trajectory

    drawn, real = {}, trajectory.image_strip
    monkeypatch.setattr(trajectory, "image_strip",
                        lambda rows, target, **kw: drawn.update(kw) or real(rows, target, **kw))
    psnrs = iter([12.0, 31.0, 33.0, 35.0, float("inf")])  # step 2 of 5 first reaches 30 dB
    monkeypatch.setattr(trajectory, "psnr", lambda final, x0: next(psnrs))
    run("trajectory", tmp_path, num_inference_steps=5, frames=3)  # evenly spaced: steps 0, 2, 4 (1-based 1, 3, 5)
    assert "x0_pred first reaches 30 dB PSNR at step 2 of 5 (dB:" in drawn["title"]
    x_t, x0 = drawn["col_labels"]
    assert [label.split("\n")[0] for label in x0] == ["step 1 of 5", "step 2 of 5", "step 5 of 5"]
    assert x_t[:3] == [label.rsplit("\n", 1)[0] for label in x0] and x0[1].endswith("31.0 dB")


def test_trajectory_x0_pred_matches_euler_update(tmp_path):
    from sdlab.jobs import trajectory

    recorded = {}
    original = trajectory.TrajectoryRecorder.__exit__

    def keep(self, *exc):
        recorded["steps"], recorded["sigmas"] = self.steps, self.model.scheduler.sigmas.clone()
        return original(self, *exc)

    trajectory.TrajectoryRecorder.__exit__ = keep
    scheduler = {"name": "euler", "use_karras_sigmas": True}
    try:
        run("trajectory", tmp_path, num_inference_steps=4, frames=2, scheduler=scheduler, guidance_scale=1.0)
    finally:
        trajectory.TrajectoryRecorder.__exit__ = original
    # Euler in sigma space: x = x_t sqrt(1 + sigma²), x_next = x + (x - x0_pred)/sigma (sigma_next - sigma).
    for i, s in enumerate(recorded["steps"]):
        sigma, sigma_next = float(recorded["sigmas"][i]), float(recorded["sigmas"][i + 1])
        x = s["x_t"] * math.sqrt(1 + sigma**2)
        expected = x + (x - s["denoised"]) / sigma * (sigma_next - sigma)
        torch.testing.assert_close(s["x"], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family,guidance_scale", [("sd3", 3.0), ("flux", 3.5)])
def test_trajectory_on_flow_models_x0_pred_is_x_t_minus_sigma_v(family, guidance_scale, tmp_path):
    from sdlab.jobs import trajectory

    recorded = {}
    original = trajectory.TrajectoryRecorder.__exit__

    def keep(self, *exc):
        recorded["steps"], recorded["sigmas"] = self.steps, self.model.scheduler.sigmas.clone()
        return original(self, *exc)

    model = {**context("trajectory", tmp_path).run.recipe["model"], "name": f"{family}_tiny", "family": family}
    scheduler = {**context("trajectory", tmp_path).run.recipe["scheduler"], "name": "euler"}
    trajectory.TrajectoryRecorder.__exit__ = keep
    try:
        rows = run("trajectory", tmp_path, model=model, scheduler=scheduler, num_inference_steps=3, frames=3,
                   guidance_scale=guidance_scale)
    finally:
        trajectory.TrajectoryRecorder.__exit__ = original
    assert (rows["status"] == "ok").all() and rows["alpha_bar"].isna().all()
    assert rows["sigma"].is_monotonic_decreasing and rows["log_snr"].is_monotonic_increasing
    steps, sigmas = recorded["steps"], recorded["sigmas"]
    assert steps[0]["x_t"].shape[-2:] == (8, 8) == steps[0]["denoised"].shape[-2:]  # NCHW, Flux's latents unpacked
    # Flow Euler: x_next = x_t + (sigma_next - sigma) v with v = (x_t - x0_pred)/sigma; the last step lands on x0_pred.
    for i, s in enumerate(steps):
        assert s["sigma"] == pytest.approx(float(sigmas[i]))
        v = (s["x_t"] - s["denoised"]) / s["sigma"]
        torch.testing.assert_close(s["x"], s["x_t"] + (float(sigmas[i + 1]) - s["sigma"]) * v,
                                   rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(steps[-1]["denoised"], steps[-1]["x"], rtol=1e-5, atol=1e-5)
    check_image(tmp_path / "trajectory.gif", min_size=(256, 256))
    check_image(tmp_path / "trajectory_strip.png", min_size=(300, 200))
    # Flux takes its scale as an input of one call a step; SD3 runs classifier-free guidance
    said = "distilled guidance 3.5" if family == "flux" else "cfg 3"
    assert f"3 steps, {said}, seed " in read_captions(tmp_path)["trajectory_strip.png"]


def test_guidance_grid_with_clip_scores(tmp_path):
    from analysis_helpers import tiny_clip

    folder = tmp_path / "clip"
    tiny_clip().model.save_pretrained(str(folder), safe_serialization=True)
    rows = run("guidance_grid", tmp_path / "out", num_inference_steps=2, guidance_scales=[1, 7.5], seeds=[1, 2],
               clip={"name": "mini", "path": str(folder), "repo_id": None})
    assert sorted(zip(rows["guidance_scale"], rows["seed"])) == [(1.0, 1), (1.0, 2), (7.5, 1), (7.5, 2)]
    assert (rows["status"] == "ok").all() and rows["clip_score"].between(0, 100).all()
    assert [json.loads(o)["guidance_scale"] for o in rows["overrides"]] == ["1.0", "1.0", "7.5", "7.5"]
    assert all((tmp_path / "out" / p).is_file() for p in rows["image_path"])
    check_image(tmp_path / "out" / "guidance_grid.png", **figure_size(1.6 * 2 + 0.8, 2.0 * 2 + 0.3, slack=0.5, grow=1.6))
    panels = 2 if rows["adherence_all"].nunique() > 1 else 1  # adherence the same for every image is a sentence
    check_image(tmp_path / "out" / "clip_vs_guidance.png", **figure_size(6.4, 3.6 * panels, grow=1.6))  # grown by its title
    claim = json.loads((tmp_path / "out" / "captions.json").read_text())["clip_vs_guidance.png"]
    assert "CLIP score" in claim and "at w=1 -> " in claim and "at w=7.5" in claim
    assert "prompt followed" in claim or "prompt missed by all 4 images" in claim
    assert "(n=2 seeds)" in claim


def grid_drawn(monkeypatch) -> dict:
    """What the grid jobs hand image_grid (its frame and keywords), filled in as they draw."""
    from sdlab.jobs import grids

    drawn, draw = {}, grids.image_grid
    monkeypatch.setattr(grids, "image_grid", lambda frame, *args, **kwargs: drawn.update(frame=frame, **kwargs)
                        or draw(frame, *args, **kwargs))
    return drawn


def notes_of(drawn: dict) -> list[str]:
    """The note under each image of the drawn grid ("" for none)."""
    return drawn["frame"][drawn["note"]].tolist() if drawn.get("note") else [""] * len(drawn["frame"])


def test_guidance_grid_marks_each_image_off_its_prompt_and_says_the_prompt_and_each_rows_seed(tmp_path, monkeypatch):
    """Its title counted the images that follow the prompt, but marked none of them, named no prompt, and a lone
    seed's row had no label."""
    drawn = grid_drawn(monkeypatch)
    prompt = "a small red circle in the centre on a blue background"
    rows = run("guidance_grid", tmp_path, num_inference_steps=2, guidance_scales=[1, 7.5], seeds=[3], prompt=prompt)
    assert notes_of(drawn) == ["" if followed else "NOT the prompt" for followed in rows["adherence_all"]]
    assert drawn["axes"] == ["guidance_scale", "seed"]  # the row says seed=3
    assert read_captions(tmp_path)["guidance_grid.png"].startswith(f"{prompt} (")


def test_a_scheduler_grid_without_a_reference_marks_each_image_off_its_prompt(tmp_path, monkeypatch):
    """With a reference solve each sampler's label says 'NOT the prompt'; without one the grid marked nothing."""
    drawn = grid_drawn(monkeypatch)
    rows = run("article_b8_schedulers", tmp_path, num_inference_steps=2, schedulers=["ddim", "euler"], seeds=[1],
               reference_steps=0)
    assert notes_of(drawn) == ["" if followed else "NOT the prompt" for followed in rows["adherence_all"]]


def test_prompt_grid(tmp_path):
    rows = run("prompt_grid", tmp_path, num_inference_steps=2, prompts=["a red circle", "a blue square", "a cross"])
    assert rows["prompt"].tolist() == ["a red circle", "a blue square", "a cross"]
    assert rows["clip_score"].isna().all() and len(set(rows["config_hash"])) == 3
    check_image(tmp_path / "prompt_grid.png", **figure_size(1.6 * 3 + 0.8, 2.0 + 0.3, slack=0.5, grow=1.6))
    seed, w = rows["seed"].iloc[0], rows["guidance_scale"].iloc[0]
    drawn = int(rows["adherence_all"].sum())
    assert read_captions(tmp_path)["prompt_grid.png"] == (  # the seed is the point, said in words
        f"3 prompts from the same seed {seed}, w={w:g}: {drawn}/3 images draw their prompt (shapes checker)")


def test_anatomy_of_a_diffusers_folder_matches_its_architecture(tiny, tmp_path):
    model, _ = tiny
    model.pipe.save_pretrained(str(tmp_path / "folder"), safe_serialization=True)
    model = {"name": "sd15", "path": str(tmp_path / "folder"), "repo_id": None, "resolution": 64, "device": "auto",
             "dtype": "auto"}
    from_folder = run("anatomy", tmp_path / "a", model=model).set_index("component")["params"]
    from_code = run("anatomy", tmp_path / "b").set_index("component")["params"]
    assert from_folder.to_dict() == from_code.to_dict()


@pytest.mark.slow
def test_real_sd15_from_the_cache_has_the_sd15_anatomy(tmp_path):
    from sdlab.models.loading import cached_snapshot

    try:
        cached_snapshot("stable-diffusion-v1-5/stable-diffusion-v1-5")
    except UserError:
        pytest.skip("SD 1.5 is not in the local Hugging Face cache")
    model = {"name": "sd15", "path": None, "repo_id": "stable-diffusion-v1-5/stable-diffusion-v1-5", "resolution": 512,
             "device": "auto", "dtype": "auto"}
    params = run("anatomy", tmp_path, model=model).set_index("component")["params"]
    assert params.to_dict() == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480,
                                "total": 1_066_235_307}


def test_job_modules_map_every_registered_job_to_its_module():
    import importlib
    import pkgutil

    import sdlab.jobs as jobs

    for info in pkgutil.iter_modules(jobs.__path__):
        importlib.import_module(f"sdlab.jobs.{info.name}")
    owners = {name: fn.__module__.removeprefix("sdlab.jobs.") for name, fn in jobs.JOBS.items()}
    assert owners == jobs.JOB_MODULES


def test_linear_preview_recovers_a_linear_latent_to_rgb_map():
    from sdlab.models.preview import fit_linear_preview, linear_preview

    torch.manual_seed(0)
    latents = torch.randn(1, 4, 8, 8)
    true = torch.randn(5, 3) * 0.2
    rgb = torch.einsum("nchw,cd->ndhw", torch.cat([latents, torch.ones(1, 1, 8, 8)], 1), true)
    image = torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest")  # each latent pixel's 8x8 patch
    weights = fit_linear_preview(latents, image)
    torch.testing.assert_close(weights, true, rtol=1e-4, atol=1e-4)
    preview = linear_preview(latents, weights, scale=8)
    assert preview.shape == (1, 3, 64, 64) and preview.abs().max() <= 1
    pooled = torch.nn.functional.avg_pool2d(preview, 8)
    assert torch.corrcoef(torch.stack([pooled.flatten(), rgb.clamp(-1, 1).flatten()]))[0, 1] > 0.9


def test_trajectory_linear_preview_and_bad_preview(tmp_path):
    rows = run("trajectory", tmp_path / "linear", num_inference_steps=3, frames=2, preview="linear")
    assert (rows["preview"] == "linear").all() and len(rows) == 3
    assert Image.open(tmp_path / "linear" / "trajectory.gif").n_frames == 3 + 1
    with pytest.raises(UserError, match="unknown preview 'jpeg'; choose one of: vae, linear"):
        run("trajectory", tmp_path / "bad", preview="jpeg")
    assert not (tmp_path / "bad" / "trajectory.gif").exists()


def test_trajectory_linear_preview_measures_x0_pred_against_the_final_latents_preview(tmp_path):
    # both sides through the same linear map: the last step's x0_pred is the final latents (dpmpp_2m ends at
    # sigma 0), so it matches exactly, as under the VAE; against the VAE's image it could never pass ~25 dB
    rows = run("trajectory", tmp_path, num_inference_steps=4, frames=2, preview="linear")
    assert rows["x0_pred_psnr_vs_final_db"].iloc[-1] == math.inf
    caption = read_captions(tmp_path)["trajectory_strip.png"]
    assert (settled_claim(rows, 4) + " (dB: x0_pred against the final latents, both through the linear preview)"
            in caption)


def test_a_generate_run_with_its_table_and_grid_does_not_import_matplotlib(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; import pandas as pd; from PIL import Image; "
            "import sdlab.app.cli, sdlab.jobs.generate; from sdlab.bench.report import summarize; d = Path(sys.argv[1]); "
            "[Image.new('RGB', (8, 8), (40 * i, 0, 0)).save(d / f'{i}.png') for i in range(2)]; "
            "summarize(pd.DataFrame({'seed': [1, 2], 'image_path': ['0.png', '1.png'], 'status': ['ok', 'ok']}), d); "
            "sys.exit(10 * ('matplotlib' in sys.modules) + (not (d / 'grid.png').is_file()))")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=120).returncode == 0


def test_same_seed_layout_says_whether_the_background_follows_the_seed_or_the_subject(tmp_path):
    from types import SimpleNamespace

    from sdlab.jobs.grids import with_seed_layout

    backgrounds = {"a red circle": (40, 170, 50), "a red square": (20, 20, 20)}  # by subject, whatever the seed
    rows = []
    for prompt, colour in backgrounds.items():
        for seed, left in ((1, 8), (2, 36)):
            image = np.full((64, 64, 3), colour, np.uint8)
            image[20:40, left:left + 20] = (220, 30, 30)  # the seed decides where the shape sits
            Image.fromarray(image).save(tmp_path / f"{prompt[6:]}_{seed}.png")
            rows.append({"prompt": prompt, "seed": seed, "status": "ok", "image_path": f"{prompt[6:]}_{seed}.png"})
    frame, title = with_seed_layout(SimpleNamespace(out_dir=tmp_path), pd.DataFrame(rows))
    assert frame["background_alike_same_seed"].iloc[0] == 0 and frame["background_alike_same_subject"].iloc[0] == 1
    assert "background alike in 0/2 same-seed, 2/2 same-subject pairs: it follows the subject word, not the seed" in title
    # the claim in words first, then the number behind it: the brightness correlation of two images on an 8x8 grid
    same, other = frame["layout_r_same_seed"].iloc[0], frame["layout_r_other_seed"].iloc[0]
    assert same > other
    # both numbers compare two subjects: from one seed, or from two seeds ("between seeds" hid the subjects' part)
    assert title.startswith(f"the seed keeps the layout: layout correlation {same:.2f} between two subjects from one "
                            f"seed (n=2 pairs), {other:.2f} between two subjects from two seeds (n=2 pairs) "
                            "(brightness, the mean of R, G and B, on an 8x8 grid)\n")
    assert "layout r:" not in title

    swapped = pd.DataFrame(rows).assign(seed=lambda f: f["seed"].where(f["prompt"] == "a red circle", 3 - f["seed"]))
    frame, title = with_seed_layout(SimpleNamespace(out_dir=tmp_path), swapped)  # the shape's place follows no seed
    assert frame["layout_r_same_seed"].iloc[0] < frame["layout_r_other_seed"].iloc[0]
    assert title.startswith("the seed does not keep the layout: layout correlation -0.14 between two subjects from one")


def test_guidance_claim_gives_the_paired_change_and_says_when_guidance_raises_nothing():
    from sdlab.jobs.grids import guidance_panels

    clip = {7.0: [95.5, 95.4, 95.9, 95.7, 96.1, 93.3], 12.5: [96.1, 92.5, 94.2, 95.6, 96.0, 92.3]}
    ok = pd.DataFrame([{"seed": seed, "guidance_scale": w, "clip_score": score, "adherence_all": True}
                       for w, scores in clip.items() for seed, score in enumerate(scores)])
    panels, claim = guidance_panels(ok)
    assert "CLIP score 95.3 at w=7 -> 94.4 at w=12.5: change -0.9 (paired 95% CI -2.2 to +0.5; lower in 5 of 6 seeds)" in claim
    assert "prompt followed by all 12 images (n=6 seeds)" in claim  # a flat 100% is said, not drawn
    assert [p["ylabel"] for p in panels] == ["CLIP score = 100 max(cos, 0)"]
    assert claim.endswith("w=7 -> 12.5 does not raise CLIP score or prompt following here (no paired 95% CI above 0)")
    low, high = panels[0]["ylim"]
    assert high - low >= 10  # a one-point change is not drawn across the whole axis

    ok["clip_score"] += np.where(ok["guidance_scale"] > 7, 3.0, 0.0)
    assert guidance_panels(ok)[1].endswith("w=7 -> 12.5 raises CLIP score here")


def test_a_guidance_claim_says_where_a_score_peaks_before_the_last_scale():
    """B7: CLIP score rises from w=1 to 20 but peaks at w=5; the verdict said only "raises", from the two ends."""
    from sdlab.jobs.grids import guidance_panels

    clip = {1.0: [64.0, 60.0, 70.0], 5.0: [96.0, 95.5, 96.0], 20.0: [94.0, 93.0, 93.5]}
    ok = pd.DataFrame([{"seed": seed, "guidance_scale": w, "clip_score": score, "adherence_all": w > 1}
                       for w, scores in clip.items() for seed, score in enumerate(scores)])
    claim = guidance_panels(ok)[1]
    assert claim.endswith("w=1 -> 20 raises CLIP score and prompt following here, but CLIP score peaks at w=5 (95.8) "
                          "and falls to 93.5 at w=20"), claim
    assert "best" not in claim and "prompt following peaks" not in claim  # 100% at w=5 and w=20 is no fall


def test_the_guidance_panels_axis_leaves_room_around_every_point_it_draws():
    """A point at the end of the range sits inside the axis, not half cut on its edge (w=15 at the lowest score)."""
    from sdlab.jobs.grids import guidance_panels

    ok = pd.DataFrame([{"seed": 7, "guidance_scale": w, "clip_score": s}
                       for w, s in ((1.0, 94.6), (5.0, 96.2), (10.0, 91.9), (15.0, 84.5))])
    [panel], _ = guidance_panels(ok)
    low, high = panel["ylim"]
    drawn = np.concatenate([np.asarray(line["y"], dtype=float) for line in panel["lines"]])
    room = 0.02 * (high - low)
    assert low + room <= drawn.min() and drawn.max() <= high - room, (low, high, drawn.min(), drawn.max())


def test_guidance_claim_with_too_few_seeds_for_an_interval_says_it_was_not_tested():
    from sdlab.jobs.grids import guidance_panels
    from sdlab.metrics.stats import MIN_N

    for seeds in range(1, MIN_N):
        ok = pd.DataFrame([{"seed": seed, "guidance_scale": w, "clip_score": 80.0 + w + seed, "adherence_all": w > 1}
                           for w in (1.0, 15.0) for seed in range(seeds)])
        claim = guidance_panels(ok)[1]
        plural = "s" if seeds > 1 else ""
        assert claim.endswith("not tested whether w=1 -> 15 raises CLIP score or prompt following\n"
                              f"({seeds} seed{plural}; a paired 95% interval needs {MIN_N})"), claim
        assert "does not raise" not in claim and "here" not in claim
        assert f"(n={seeds} seed{plural})" in claim, claim  # the count agrees with its noun
        assert {p["lines"][-1]["label"] for p in guidance_panels(ok)[0]} == {f"mean of {seeds} seed{plural}"}
        flat = guidance_panels(ok.assign(adherence_all=True))[1]  # followed by every image: still too few seeds to say
        assert flat.endswith("\n".join(claim.split("\n")[-2:])), flat


def test_clip_similarity_with_num_images_0_draws_no_image_caption_figure(tmp_path):
    from analysis_helpers import tiny_clip

    folder = tmp_path / "clip"
    tiny_clip().model.save_pretrained(str(folder), safe_serialization=True)
    run("clip_similarity", tmp_path / "out", prompts=["a red circle", "a blue square"], num_images=0,
        clip={"name": "mini", "path": str(folder), "repo_id": None})
    assert (tmp_path / "out" / "text_similarity.png").is_file()
    assert not list((tmp_path / "out").glob("image_text_similarity*"))


def test_heatmap_row_thumbnails_keep_their_aspect_ratio(tmp_path):
    from sdlab.bench.figures import heatmap

    wide = np.zeros((32, 64, 3), np.uint8)
    wide[..., 0] = 255  # pure red: no viridis colour comes near it
    heatmap(np.eye(3), ["a", "b", "c"], ["x", "y", "z"], tmp_path / "h.png", row_images=[wide] * 3)
    red = np.all(np.asarray(Image.open(tmp_path / "h.png").convert("RGB")) == (255, 0, 0), axis=-1)
    rows, columns = np.flatnonzero(red.any(axis=1)), np.flatnonzero(red.any(axis=0))
    height = int(np.argmax(np.diff(rows) > 1)) + 1  # the first thumbnail's rows, before the gap to the next
    assert height > 20 and (columns[-1] - columns[0] + 1) / height == pytest.approx(2.0, rel=0.1)


def test_b1_draws_no_copy_of_a3s_visits(run_sdlab, tmp_path):
    for recipe in ("article_a3_schedule", "article_b1_schedules"):
        assert run_sdlab(f"experiment={recipe}", "model=tiny", f"hydra.run.dir={tmp_path / recipe}") == 0
    assert (tmp_path / "article_a3_schedule" / "visits.png").is_file()
    b1 = tmp_path / "article_b1_schedules"
    assert (b1 / "snr.png").is_file() and not list(b1.glob("visits*"))


def test_snr_figure_names_the_schedule_behind_each_crossing_and_its_snr_range(run_sdlab, tmp_path, monkeypatch):
    from sdlab.jobs import schedule as schedule_job

    drawn, legends, real = [], [], schedule_job.curves
    monkeypatch.setattr(schedule_job, "curves", lambda panels, target, title="", **k: drawn.append(title)
                        or legends.append([line["label"] for line in panels[-1]["lines"]])
                        or real(panels, target, title, **k))
    from sdlab.bench import figures

    laid_out, save = [], figures.save_figure

    def measured(fig, target, *args, **kwargs):
        if target.name == "snr.png":
            renderer = fig.canvas.get_renderer()
            laid_out.append([t.get_window_extent(renderer) for t in (fig._suptitle, *(ax.title for ax in fig.axes))])
        return save(fig, target, *args, **kwargs)

    monkeypatch.setattr(figures, "save_figure", measured)
    assert run_sdlab("experiment=article_a3_schedule", f"hydra.run.dir={tmp_path}") == 0
    suptitle, *panel_titles = laid_out[0]  # snr.png: its title clears both panels' titles
    assert not any(suptitle.overlaps(box) for box in panel_titles)
    rows = pd.read_parquet(tmp_path / "results.parquet").set_index("schedule")
    linear, sd = rows.loc["linear 0.00085->0.012"], rows.loc["scaled_linear 0.00085->0.012 (SD)"]
    assert (linear["crossing_t"], round(linear["snr_db_first"], 1), round(linear["snr_db_last"], 1)) == (284, 30.7, -28.0)
    assert drawn[0] == ("signal and noise are equal (0 dB) at t=284 under linear 0.00085->0.012; "
                        f"t={sd['crossing_t']} under scaled_linear 0.00085->0.012 (SD)")
    assert legends[0] == ["linear 0.00085->0.012 (+30.7 -> -28.0 dB from t=0 to 999)",
                          f"scaled_linear 0.00085->0.012 (SD) ({sd['snr_db_first']:+.1f} -> "
                          f"{sd['snr_db_last']:+.1f} dB from t=0 to 999)"]  # the SNR panel's: each one's range


def test_schedule_snr_figures_keep_their_titles_short_and_every_label_and_line_in_sight(tmp_path, monkeypatch):
    """schedule_snr's title ran to 8 lines, its crossing notes t=259 and t=284 printed over each other, ddim's sigmas
    hid under euler's and the headline listed last timesteps without their samplers."""
    from sdlab.bench import figures
    from sdlab.jobs import schedule as schedule_job
    from sdlab.metrics.schedule import betas, schedule_table

    drawn, save = {}, figures.save_figure

    def measured(fig, target, *args, **kwargs):
        renderer = fig.canvas.get_renderer()
        drawn[target.name] = fig, [[t.get_window_extent(renderer) for t in ax.texts] for ax in fig.axes]
        return save(fig, target, *args, **kwargs)

    monkeypatch.setattr(figures, "save_figure", measured)
    run("schedule_snr", tmp_path, num_inference_steps=25)
    fig, notes = drawn["snr.png"]
    assert fig.get_suptitle().count("\n") <= 2 and " ".join(fig.get_suptitle().split()).count("; ") == 3
    for boxes in notes:
        assert len(boxes) == 4 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    fig, _ = drawn["visits.png"]
    last = pd.read_parquet(tmp_path / "visits.parquet").groupby("scheduler")["timestep"].min()
    clauses = [c.split(" for ") for c in " ".join(fig.axes[0].get_title().split()).split("last at ")[1].split("; ")]
    named = {name: float(t.removeprefix("t=")) for t, names in clauses for name in names.split(", ")}
    assert named == last.to_dict() and len(last) == 5  # e.g. "t=1 for ddim, euler, heun; t=0 for ..."
    sigma = fig.axes[2].lines
    assert len({(line.get_marker(), line.get_linestyle()) for line in sigma}) == len(sigma) == 5
    # Heun calls the model twice a step: its line runs over 49 evaluations, so the axis counts evaluations and the
    # title says why its line is longer than the 25 steps
    calls = pd.read_parquet(tmp_path / "visits.parquet").groupby("scheduler").size()
    assert calls["heun"] == 49 and (calls.drop("heun") == 25).all()
    assert fig.axes[2].get_xlabel() == "model evaluation (0 = the first)"
    assert " ".join(fig.axes[2].get_title().split()) == (
        "sigma at each model evaluation (heun evaluates the model 49 times in 25 steps)")
    euler = pd.read_parquet(tmp_path / "visits.parquet").query("scheduler == 'euler'")
    twins = pd.concat([euler, euler.assign(scheduler="ddim")])  # on mini, ddim's sigmas are euler's within 0.5%
    schedule_job.visits_figure(schedule_table(betas("scaled_linear")), twins, 25, "tiny", tmp_path / "twins.png")
    assert [line.get_label() for line in drawn["twins.png"][0].axes[-1].lines] == ["euler", "ddim (on euler's line)"]


def test_a_job_that_draws_its_own_grid_gets_no_second_untitled_one(run_sdlab, tmp_path):
    """guidance_grid.png came with a grid.png of the same images, untitled and unmarked; a generate run, which draws
    no figure of its own, keeps its grid."""
    fast = ("model=tiny", "num_inference_steps=1", "threads=1")
    assert run_sdlab("experiment=guidance_grid", "guidance_scales=[1,3]", *fast, f"hydra.run.dir={tmp_path / 'g'}") == 0
    assert (tmp_path / "g" / "guidance_grid.png").is_file() and not (tmp_path / "g" / "grid.png").exists()
    assert "grid.png" not in read_captions(tmp_path / "g")
    assert run_sdlab("seeds=[1,2]", *fast, f"hydra.run.dir={tmp_path / 'run'}") == 0
    assert read_captions(tmp_path / "run")["grid.png"] == "seed grid of 2 images"


def test_schedule_snr_takes_its_report_timesteps_as_typed(run_sdlab, tmp_path, capsys):
    """`report_timesteps=[0,500]` was an unknown key that wanted a `+`, and the line listing the recipe's keys left it
    out."""
    assert run_sdlab("experiment=schedule_snr", "report_timesteps=[0,500]", "threads=1",
                     f"hydra.run.dir={tmp_path}") == 0
    assert pd.read_csv(tmp_path / "schedule_at.csv")["t"].unique().tolist() == [0, 500]


def test_token_counts_title_states_the_longest_prompts_count(run_sdlab, tmp_path):
    assert run_sdlab("experiment=article_a6_clip_tokens", f"hydra.run.dir={tmp_path}") == 0
    rows = pd.read_parquet(tmp_path / "results.parquet")
    assert rows["n_tokens"].max() == rows.loc[rows["prompt"].str.startswith("a pirate ship"), "n_tokens"].item() == 15
    assert read_captions(tmp_path)["token_counts.png"].split(" | ")[0] == (
        "the longest prompt is 15 tokens; none cut at 77 tokens")


def test_the_clip_panels_legend_names_the_grey_line_of_each_seed(tmp_path, monkeypatch):
    from sdlab.bench import figures
    from sdlab.jobs.grids import guidance_panels

    ok = pd.DataFrame([{"seed": seed, "guidance_scale": w, "clip_score": 60.0 + 3 * w + seed}
                       for w in (1.0, 3.0, 7.5) for seed in range(6)])
    [panel], _ = guidance_panels(ok)
    legends, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, target, *a, **k: legends.append(
        [(h.get_color() if hasattr(h, "get_color") else None, t.get_text())
         for h, t in zip(fig.axes[0].get_legend().legend_handles, fig.axes[0].get_legend().get_texts())])
        or save(fig, target, *a, **k))
    figures.curves([panel], tmp_path / "clip_vs_guidance.png")
    [entries] = legends
    assert [name for _, name in entries] == ["95% interval", "one line per seed (6)", "mean of 6 seeds"]
    assert entries[1][0] == "0.75"  # the grey of the per-seed lines


def test_guidance_grid_titles_cut_a_long_prompt_at_a_word_not_inside_it(tmp_path):
    """The grid figures cut the prompt at 60 and 70 characters: '... on a black background, no' lost its object."""
    from analysis_helpers import tiny_clip

    tiny_clip().model.save_pretrained(str(tmp_path / "clip"), safe_serialization=True)
    prompt = "a large yellow triangle at the top on a black background, no red"
    run("guidance_grid", tmp_path, num_inference_steps=2, guidance_scales=[1, 7.5], seeds=[1], prompt=prompt,
        clip={"name": "mini", "path": str(tmp_path / "clip"), "repo_id": None})
    title = json.loads((tmp_path / "captions.json").read_text())["clip_vs_guidance.png"]
    assert prompt in " ".join(title.split())
    long = prompt + ", seen from far away in the late evening light"
    run("article_b8_schedulers", tmp_path / "long", num_inference_steps=2, schedulers=["ddim"], seeds=[1], prompt=long,
        reference_steps=0)
    title = json.loads((tmp_path / "long" / "captions.json").read_text())["scheduler_grid.png"]
    shown = title[title.index(long[:20]):title.index("…")]
    assert long.startswith(shown) and long[len(shown)] == " "  # cut after a whole word, and says so


def test_trajectory_final_column_says_when_it_is_the_linear_preview(tmp_path, monkeypatch):
    """Under preview=linear the strip's 'final' panel is the pale linear preview of the final latents, not the image."""
    from sdlab.jobs import trajectory

    drawn, strip = {}, trajectory.image_strip
    monkeypatch.setattr(trajectory, "image_strip",
                        lambda rows, target, **kw: drawn.update(kw) or strip(rows, target, **kw))
    run("trajectory", tmp_path / "linear", num_inference_steps=2, frames=2, preview="linear")
    assert drawn["col_labels"][0][-1] == "final latents\n(linear preview)"
    run("trajectory", tmp_path / "vae", num_inference_steps=2, frames=2)
    assert drawn["col_labels"][0][-1] == "final"


def test_schedule_snr_visits_the_same_timesteps_before_and_after_the_model_loads(tmp_path):
    """Once euler and heun on tiny ended at t=0 alone but at t=1 after a job that loaded tiny (a sweep's earlier cell)."""
    loading.clear_cache()
    alone = run("schedule_snr", tmp_path / "alone", num_inference_steps=4)
    loading.load_model(context("schedule_snr", tmp_path).run.model)
    after = run("schedule_snr", tmp_path / "after", num_inference_steps=4)
    visits = [pd.read_parquet(tmp_path / d / "visits.parquet") for d in ("alone", "after")]
    pd.testing.assert_frame_equal(*visits)
    assert alone.equals(after) and visits[0].query("scheduler == 'euler'")["timestep"].min() == 0  # linspace


def test_an_x0_pred_equal_to_the_final_image_is_labelled_so_not_inf_db(tmp_path, monkeypatch):
    """The last step's x0_pred is the final image: its PSNR is infinite, which the strip and GIF once printed as 'inf dB'."""
    from sdlab.jobs import trajectory

    drawn, strip = {}, trajectory.image_strip
    monkeypatch.setattr(trajectory, "image_strip",
                        lambda rows, target, **kw: drawn.update(kw) or strip(rows, target, **kw))
    texts, real = [], trajectory.labelled
    monkeypatch.setattr(trajectory, "labelled", lambda image, text, scale: texts.append(text) or real(image, text, scale))
    rows = run("trajectory", tmp_path, num_inference_steps=3, frames=3)
    assert np.isinf(rows["x0_pred_psnr_vs_final_db"].iloc[-1])
    assert drawn["col_labels"][1][-1].endswith("\n= final") and "inf" not in " ".join(drawn["col_labels"][1])
    assert texts[-3] == "x0_pred = final" and not any("inf" in text for text in texts)


def test_a_guidance_grid_of_one_scale_says_there_is_nothing_to_compare_and_draws_no_curve():
    """`guidance_scales=[1]` is a grid of one column (a list of one by design); its caption read "CLIP score 94.3 at
    w=1 -> 94.3 at w=1" and clip_vs_guidance.png drew a curve of one point."""
    from sdlab.jobs.grids import guidance_panels

    ok = pd.DataFrame([{"seed": seed, "guidance_scale": 7.5, "clip_score": 90.0 + seed, "adherence_all": seed > 0}
                       for seed in range(6)])
    panels, claim = guidance_panels(ok)
    assert panels == []
    assert claim == ("at w=7.5: CLIP score 92.5, prompt followed by 83% of images (n=6 seeds)\n"
                     "one guidance scale: nothing to compare; give two or more guidance_scales"), claim
    assert "->" not in claim


def test_a_guidance_grid_of_one_scale_says_the_scores_it_has():
    """Without a CLIP model there is no clip_score column (and off mini's world no adherence): the one-scale claim read
    both columns and raised a KeyError."""
    from sdlab.jobs.grids import guidance_panels

    ok = pd.DataFrame([{"seed": seed, "guidance_scale": 3.0, "clip_score": 80.0 + seed} for seed in range(2)])
    assert guidance_panels(ok)[1].startswith("at w=3: CLIP score 80.5 (n=2 seeds)\n")
    ok = pd.DataFrame([{"seed": seed, "guidance_scale": 3.0, "adherence_all": True} for seed in range(2)])
    assert guidance_panels(ok)[1].startswith("at w=3: prompt followed by 100% of images (n=2 seeds)\n")


def test_same_seed_layout_claims_a_hold_only_beyond_its_noise():
    """A8 said 'the seed keeps the layout' of 0.44 against 0.29 over 6 pairs each, whatever their spread."""
    from sdlab.jobs.grids import layout_claim

    assert layout_claim([0.9, 0.1, 0.8, 0.0, 0.7, 0.1], [0.5, 0.2, 0.0, 0.4, 0.6, 0.1]) == (
        "whether the seed keeps the layout is within the noise at this n (+0.13 +- 0.39, 2 standard errors)")
    assert layout_claim([0.8, 0.82, 0.79], [0.1, 0.12, 0.09]) == "the seed keeps the layout"
    assert layout_claim([0.1, 0.12, 0.09], [0.8, 0.82, 0.79]) == "the seed does not keep the layout"
    assert layout_claim([0.5], [0.1, 0.2]) == "too few pairs to tell whether the seed keeps the layout"
