"""Pure functions behind the analysis jobs: forward process, x0 prediction, VAE bookkeeping, anatomy, CLIP tokens and scores."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sdlab.metrics.clip import clip_score_from_cosine, cosine_matrix, long_matrix, token_rows, token_table
from sdlab.metrics.schedule import (alpha_bar_at, guided, log_snr, log_snr_db, snr_db_from_alpha_bar,
                                   x0_from_velocity, x0_pred)
from sdlab.models.noise import PROCESSES
from sdlab.metrics.image import psnr, ssim
from sdlab.metrics.vae import channel_image, compression_ratio, downsampling_factor, latent_channel_stats, latent_shape
from sdlab.models.tokenizer import load_tokenizer

PIRATE = "a pirate ship sailing through a storm, dramatic lighting, oil painting"


def test_vp_noising_and_x0_pred_invert_each_other():
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((4, 8, 8)), rng.standard_normal((4, 8, 8))
    for alpha_bar in (0.999, 0.5, 0.01):
        x_t = PROCESSES["epsilon"].noised(x0, eps, {"alpha_bar": alpha_bar})
        np.testing.assert_allclose(x_t, math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps)
        np.testing.assert_allclose(x0_pred(x_t, eps, alpha_bar, "epsilon"), x0, atol=1e-9)
        v = math.sqrt(alpha_bar) * eps - math.sqrt(1 - alpha_bar) * x0
        np.testing.assert_allclose(x0_pred(x_t, v, alpha_bar, "v_prediction"), x0, atol=1e-9)
        assert x0_pred(x_t, x0, alpha_bar, "sample") is x0
    with pytest.raises(ValueError, match="prediction_type"):
        x0_pred(x0, eps, 0.5, "flow")


def test_x0_from_velocity_inverts_rectified_flow():
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((4, 8, 8)), rng.standard_normal((4, 8, 8))
    for sigma in (1.0, 0.7, 0.05, 0.0):
        x_t = (1 - sigma) * x0 + sigma * eps
        np.testing.assert_allclose(x0_from_velocity(x_t, eps - x0, sigma), x0, atol=1e-12)
    # the DDPM epsilon formula at the same noise level (alpha_bar = 1/(1 + sigma²)) is not it
    x_t = 0.3 * x0 + 0.7 * eps
    assert not np.allclose(x0_pred(x_t, eps - x0, 1 / (1 + 0.7**2), "epsilon"), x0, atol=1e-3)


def test_log_snr_of_both_schedules():
    vp, flow = PROCESSES["epsilon"], PROCESSES["flow"]
    assert vp.log_snr({"alpha_bar": 0.5}) == 0.0 and flow.log_snr({"sigma": 0.5}) == 0.0
    assert vp.log_snr({"alpha_bar": 1.0}) == math.inf and log_snr(1.0, 0.0) == math.inf
    assert flow.log_snr({"sigma": 0.0}) == math.inf and flow.log_snr({"sigma": 1.0}) == -math.inf
    assert flow.log_snr({"sigma": 0.2}) == pytest.approx(2 * math.log(4))
    assert log_snr_db(vp.log_snr({"alpha_bar": 0.9})) == pytest.approx(snr_db_from_alpha_bar(0.9))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "flow"])
def test_each_noise_process_recovers_x0_from_what_its_model_predicts(kind):
    rng = np.random.default_rng(2)
    x0, eps = rng.standard_normal((4, 8, 8)), rng.standard_normal((4, 8, 8))
    process = PROCESSES[kind]
    for level in ({"alpha_bar": 0.7, "sigma": None}, {"alpha_bar": 0.05, "sigma": None}) if kind != "flow" else (
            {"alpha_bar": None, "sigma": 0.3}, {"alpha_bar": None, "sigma": 0.95}):
        signal, noise = process.coefficients(level)
        x_t = process.noised(x0, eps, level)
        np.testing.assert_allclose(x_t, signal * x0 + noise * eps)
        output = {"epsilon": eps, "v_prediction": signal * eps - noise * x0, "flow": eps - x0}[kind]
        np.testing.assert_allclose(process.x0(x_t, output, level), x0, atol=1e-9)
        assert process.log_snr(level) == pytest.approx(2 * math.log(signal / noise))


def test_guidance_alpha_bar_interpolation_and_snr():
    assert guided(1.0, 3.0, 7.5) == 1.0 + 7.5 * 2.0
    assert alpha_bar_at([1.0, 0.5, 0.25], 1.5) == pytest.approx(0.375)
    assert snr_db_from_alpha_bar(0.5) == 0.0 and snr_db_from_alpha_bar(1.0) == math.inf


@pytest.mark.parametrize("height,width", [(512, 512), (768, 512), (64, 64), (1024, 1536)])
def test_sd_compression_ratio_is_48_at_any_resolution(height, width):
    z = latent_shape(height, width, 4, downsampling_factor((128, 256, 512, 512)))
    assert z == (4, height // 8, width // 8)
    assert compression_ratio((3, height, width), z) == 48.0


def test_latent_channel_stats_and_channel_image():
    z = np.stack([np.full((4, 4), 2.0), np.arange(16.0).reshape(4, 4)])
    stats = latent_channel_stats(z)
    assert list(stats.columns) == ["channel", "mean", "std", "min", "max"]
    assert stats["mean"].tolist() == [2.0, 7.5] and stats["std"][0] == 0.0
    assert (channel_image(z[0]) == 128).all()
    grey = channel_image(z[1])
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255


def test_psnr_of_identical_images_is_inf_and_ssim_is_one():
    image = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    assert psnr(image, image) == math.inf
    assert ssim(image, image) == pytest.approx(1.0)


def test_token_counts_include_bos_and_eos():
    table = token_table(load_tokenizer(), [PIRATE, "a red circle", "", "cat " * 100])
    assert table["n_tokens"].tolist() == [15, 5, 2, 102]
    tokens = json.loads(table["tokens"][0])
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>" and tokens[2] == "pirate</w>"
    assert table["truncated"].tolist() == [False, False, False, True]
    assert table["n_kept"][3] == 77
    assert table["warning"][3].startswith("102 tokens > 77: truncated") and table["warning"][0] == ""
    long = token_rows(table)
    kept = long[long["prompt_index"] == 3]
    assert kept["kept"].sum() == 77 and kept["kept"].iloc[-1]


def test_cosine_matrix_and_clip_score():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    m = cosine_matrix(a)
    np.testing.assert_allclose(np.diag(m), 1.0)
    assert m[0, 1] == pytest.approx(0.0) and m[0, 2] == pytest.approx(-1.0)
    np.testing.assert_allclose(clip_score_from_cosine([0.3, -0.2]), [30.0, 0.0])
    frame = long_matrix(m, ["x", "y", "z"], ["x", "y", "z"], "a", "b")
    assert len(frame) == 9 and list(frame.columns) == ["a_index", "a", "b_index", "b", "cosine"]


def test_sd15_anatomy_numbers():
    from sdlab.models.architectures import ARCHITECTURES, build_on_meta
    from sdlab.metrics.anatomy import component_table, denoiser_block_table

    components = build_on_meta(ARCHITECTURES["sd15_arch"])
    table = component_table(components).set_index("component")
    assert table.loc["unet", "params"] == 859_520_964
    assert table.loc["vae", "params"] == 83_653_863
    assert table.loc["text_encoder", "params"] == 123_060_480
    assert table.loc["total", "params"] == 1_066_235_307
    assert table.loc["total", "bytes_fp32"] == 4 * 1_066_235_307 and table.loc["total", "bytes_fp16"] == 2 * 1_066_235_307
    blocks = denoiser_block_table(components["unet"])
    assert blocks["params"].sum() == 859_520_964
    assert blocks["block"].tolist()[:3] == ["conv_in", "time_embedding", "down_blocks.0 CrossAttnDownBlock2D"]
