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


# --- Tiny variants of every family: small random weights built in code by sdlab/families/<family>.py ---
# Shapes follow the get_dummy_components of diffusers' own pipeline tests, resized to 64 px images (8x8 latents).

SD_SCHEDULER_V = {**SD15_SCHEDULER, "prediction_type": "v_prediction"}
SDXL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
                      prediction_type="epsilon")
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
FLUX_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                          max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)

TINY_CLIP_WITH_PROJECTION = {**TINY_TEXT, "hidden_act": "gelu"}  # OpenCLIP-style second encoder
TINY_T5 = dict(vocab_size=160, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
TINY_FLOW_VAE = {**TINY_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False}

ARCHITECTURES["sd15_tiny"] = ARCHITECTURES["tiny"]
ARCHITECTURES["sd2_tiny"] = Architecture(
    {**TINY_UNET, "use_linear_projection": True}, TINY_VAE, {**TINY_TEXT, "hidden_act": "gelu"}, SD_SCHEDULER_V)

TINY_MODELS: dict[str, dict[str, dict[str, Any]]] = {
    "sdxl_tiny": dict(
        unet=dict(sample_size=8, in_channels=4, out_channels=4,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                  block_out_channels=(32, 64), layers_per_block=1,
                  attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                  addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                  projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=8),
        vae={**TINY_VAE, "scaling_factor": 0.13025, "force_upcast": True},
        text_encoder=TINY_TEXT,
        text_encoder_2=TINY_CLIP_WITH_PROJECTION,
        scheduler=SDXL_SCHEDULER,
    ),
    "sd3_tiny": dict(
        transformer=dict(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                         attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                         joint_attention_dim=64, pooled_projection_dim=64, pos_embed_max_size=16),
        vae={**TINY_FLOW_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609},
        text_encoder=TINY_CLIP_WITH_PROJECTION,
        text_encoder_2=TINY_CLIP_WITH_PROJECTION,
        text_encoder_3=TINY_T5,
        scheduler=SD3_SCHEDULER,
    ),
    "flux_tiny": dict(  # FLUX.1-dev-shaped: guidance-distilled (guidance_embeds), dynamic shifting
        transformer=dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                         num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
                         axes_dims_rope=(4, 4, 8), guidance_embeds=True),
        vae={**TINY_FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159},
        text_encoder=TINY_TEXT,
        text_encoder_2=TINY_T5,
        scheduler=FLUX_DEV_SCHEDULER,
    ),
}
BUILT_IN = (*ARCHITECTURES, *TINY_MODELS)  # model names built in code rather than read from a folder
