"""Published architectures built on the meta device: parameter counts, how the components fit, shipped schedulers."""

from __future__ import annotations

from functools import cache

import pytest

from sdlab.models.architectures import ARCHITECTURES, build_on_meta, build_scheduler

PUBLISHED = [(name, part) for name, arch in ARCHITECTURES.items() for part in arch.param_counts]


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@cache
def built(name: str) -> dict:
    return build_on_meta(ARCHITECTURES[name])


@pytest.mark.parametrize(("name", "part"), PUBLISHED, ids=[f"{n}-{p}" for n, p in PUBLISHED])
def test_parameter_count_equals_published(name, part):
    assert count(built(name)[part]) == ARCHITECTURES[name].param_counts[part]


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_component_builds_on_meta(name):
    parts = built(name)
    assert list(parts) == list(ARCHITECTURES[name].components)
    assert {p.device.type for module in parts.values() for p in module.parameters()} == {"meta"}
    if ARCHITECTURES[name].param_counts:  # published architectures; the tiny ones publish nothing
        assert set(ARCHITECTURES[name].param_counts) == set(parts)


@pytest.mark.parametrize(("name", "billions", "digits"), [("sd3_medium_arch", 2, 0), ("sd35_medium_arch", 2.5, 1),
                                                          ("sd35_large_arch", 8.1, 1)])
def test_sd3_announced_sizes_count_the_position_table(name, billions, digits):
    """Stability's round figures (2 B, 2.5 B, 8.1 B) include the persistent sin-cos position table, a buffer."""
    transformer = built(name)["transformer"]
    assert round((count(transformer) + transformer.pos_embed.pos_embed.numel()) / 1e9, digits) == billions


def test_conditioning_widths_fit_together():
    """Each denoiser's context and pooled widths are the widths its text encoders emit; latents match the VAE."""
    xl = ARCHITECTURES["sdxl_arch"]
    clip_l, big_g = xl.config("text_encoder"), xl.config("text_encoder_2")
    unet = xl.config("unet")
    assert unet["cross_attention_dim"] == clip_l["hidden_size"] + big_g["hidden_size"]
    assert unet["projection_class_embeddings_input_dim"] == big_g["projection_dim"] + 6 * unet["addition_time_embed_dim"]

    for name in ("sd3_medium_arch", "sd35_medium_arch", "sd35_large_arch"):
        sd3 = ARCHITECTURES[name]
        transformer = sd3.config("transformer")
        assert transformer["joint_attention_dim"] == sd3.config("text_encoder_3")["d_model"]
        assert transformer["pooled_projection_dim"] == (sd3.config("text_encoder")["projection_dim"]
                                                        + sd3.config("text_encoder_2")["projection_dim"])
        assert transformer["in_channels"] == sd3.config("vae")["latent_channels"] == 16

    for name in ("flux_dev_arch", "flux_schnell_arch"):
        flux = ARCHITECTURES[name]
        transformer = flux.config("transformer")
        assert transformer["joint_attention_dim"] == flux.config("text_encoder_2")["d_model"]
        assert transformer["pooled_projection_dim"] == flux.config("text_encoder")["hidden_size"]
        assert transformer["in_channels"] == 4 * flux.config("vae")["latent_channels"]  # 2x2 latent patches packed
    assert ARCHITECTURES["flux_dev_arch"].config("transformer")["guidance_embeds"]
    assert not ARCHITECTURES["flux_schnell_arch"].config("transformer")["guidance_embeds"]


def test_decoding_factors():
    """z = scaling_factor * (E(x) - shift_factor) per family."""
    vae = {name: built(name)["vae"].config for name in ("sd21_arch", "sdxl_arch", "sd3_medium_arch", "flux_dev_arch")}
    assert vae["sd21_arch"].scaling_factor == 0.18215 and vae["sd21_arch"].latent_channels == 4
    assert vae["sdxl_arch"].scaling_factor == 0.13025 and vae["sdxl_arch"].force_upcast
    assert (vae["sd3_medium_arch"].scaling_factor, vae["sd3_medium_arch"].shift_factor) == (1.5305, 0.0609)
    assert (vae["flux_dev_arch"].scaling_factor, vae["flux_dev_arch"].shift_factor) == (0.3611, 0.1159)


def test_shipped_schedulers():
    """SD 2.1 predicts v; SDXL predicts eps with leading spacing; SD3 shifts flow time by 3; Flux dev shifts by image size."""
    sd21, xl = build_scheduler(ARCHITECTURES["sd21_arch"]), build_scheduler(ARCHITECTURES["sdxl_arch"])
    assert type(sd21).__name__ == "DDIMScheduler" and sd21.config.prediction_type == "v_prediction"
    assert type(xl).__name__ == "EulerDiscreteScheduler" and xl.config.timestep_spacing == "leading"
    sd3, dev, schnell = (build_scheduler(ARCHITECTURES[n]) for n in ("sd3_medium_arch", "flux_dev_arch", "flux_schnell_arch"))
    assert type(sd3).__name__ == "FlowMatchEulerDiscreteScheduler" and sd3.config.shift == 3.0
    assert dev.config.use_dynamic_shifting and not schnell.config.use_dynamic_shifting and schnell.config.shift == 1.0
