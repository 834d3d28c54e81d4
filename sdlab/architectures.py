"""Component configs of the SD-shaped architectures sdlab builds in code: SD 1.5 and the tiny test model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD15_VAE = dict(
    sample_size=512,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    scaling_factor=0.18215,
)
SD15_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    skip_prk_steps=True,
    set_alpha_to_one=False,
    steps_offset=1,
    clip_sample=False,
)

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)
TINY_VAE = dict(
    sample_size=64,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    scaling_factor=0.18215,
)
TINY_TEXT = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    projection_dim=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)


@dataclass(frozen=True)
class Architecture:
    """The configs of one SD-shaped pipeline's components."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD15_SCHEDULER))


ARCHITECTURES = {
    "sd15_arch": Architecture(SD15_UNET, SD15_VAE, SD15_TEXT),
    "tiny": Architecture(TINY_UNET, TINY_VAE, TINY_TEXT),
}


def build_components(arch: Architecture, seed: int = 0) -> dict[str, Any]:
    """UNet, VAE and CLIP text encoder with random weights drawn from a fixed init seed."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return {
        "unet": UNet2DConditionModel(**arch.unet),
        "vae": AutoencoderKL(**arch.vae),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**arch.text_encoder)),
    }


def build_on_meta(arch: Architecture) -> dict[str, Any]:
    """The same components on the meta device: shapes and parameter counts, no memory."""
    import torch

    with torch.device("meta"):
        return build_components(arch)
