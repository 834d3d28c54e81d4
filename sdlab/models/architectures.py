"""Published component configs of the families sdlab builds in code (SD 1.5, 2.1, XL, 3, 3.5, Flux.1) and the tiny model.

Each config holds the keys of the repository's published `<component>/config.json` that set the model's shape;
the keys left out equal the class defaults or do not change the weights (token ids, dropout). `param_counts`
holds each component's published parameter count; tests/test_architectures.py builds every component on the
meta device and checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

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

# SD 2.1 (stabilityai/stable-diffusion-2-1): the SD 1.5 UNet with OpenCLIP-H context (1024), linear
# projections and per-level head counts; the SD 1.5 VAE; v-prediction.
SD21_UNET = dict(SD15_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                 use_linear_projection=True)
SD21_VAE = dict(SD15_VAE, sample_size=768)
SD21_TEXT = dict(  # OpenCLIP ViT-H/14 text tower, last layer dropped (24 -> 23)
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    projection_dim=512,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
)
SD21_SCHEDULER = dict(SD15_SCHEDULER, prediction_type="v_prediction", trained_betas=None)  # DDIMScheduler

# CLIP ViT-L/14 text tower (openai/clip-vit-large-patch14): SD 1.x's text encoder, and the first one of
# SDXL, SD3 (with its projection) and Flux.
CLIP_L_TEXT = SD15_TEXT

# SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0).
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,  # CLIP-L hidden 768 + bigG hidden 1280, concatenated per token
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # pooled bigG 1280 + 6 size/crop ids x 256
    norm_num_groups=32,
)
SDXL_VAE = dict(SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
OPENCLIP_BIGG_TEXT = dict(  # OpenCLIP ViT-bigG/14 text tower with its projection: SDXL's and SD3's text_encoder_2
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    projection_dim=1280,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
)
SDXL_SCHEDULER = dict(  # EulerDiscreteScheduler
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    interpolation_type="linear",
    prediction_type="epsilon",
    sample_max_value=1.0,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    timestep_spacing="leading",
    trained_betas=None,
    use_karras_sigmas=False,
)

# SD3 medium (stabilityai/stable-diffusion-3-medium-diffusers) and SD3.5 medium/large: MMDiT on 2x2
# patches of 16-channel latents; text from CLIP-L + bigG (pooled 768 + 1280 = 2048) and T5-XXL (4096).
SD3_TRANSFORMER = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=192,
)
# SD3.5 medium (MMDiT-X): self-attention added to blocks 0-12, QK RMSNorm, a 384 x 384 position table.
SD35_MEDIUM_TRANSFORMER = dict(SD3_TRANSFORMER, pos_embed_max_size=384, dual_attention_layers=tuple(range(13)),
                               qk_norm="rms_norm")
SD35_LARGE_TRANSFORMER = dict(SD3_TRANSFORMER, num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                              qk_norm="rms_norm")
SD3_VAE = dict(SDXL_VAE, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
               use_post_quant_conv=False)
T5_XXL_ENCODER = dict(  # google/t5-v1_1-xxl, encoder only: SD3's text_encoder_3 and Flux's text_encoder_2
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    tie_word_embeddings=False,
)
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)  # FlowMatchEulerDiscreteScheduler
SD35_SCHEDULER = dict(SD3_SCHEDULER, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096)

# Flux.1 dev / schnell (black-forest-labs/FLUX.1-dev, FLUX.1-schnell): 19 double-stream + 38 single-stream
# blocks, 24 heads x 128; 16-channel latents packed 2x2 into 64 channels; pooled CLIP-L 768, T5-XXL 4096.
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,  # dev is guidance-distilled: the guidance scale is an input
    axes_dims_rope=(16, 56, 56),
)
FLUX_SCHNELL_TRANSFORMER = dict(FLUX_DEV_TRANSFORMER, guidance_embeds=False)  # timestep-distilled
FLUX_VAE = dict(SD3_VAE, scaling_factor=0.3611, shift_factor=0.1159)
FLUX_DEV_SCHEDULER = dict(  # FlowMatchEulerDiscreteScheduler, shift mu set per image size
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
FLUX_SCHNELL_SCHEDULER = dict(FLUX_DEV_SCHEDULER, shift=1.0, use_dynamic_shifting=False)

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


class Part(NamedTuple):
    """One component as model_index.json lists it: its diffusers or transformers class name and its config."""

    cls: str
    config: dict[str, Any]


@dataclass(frozen=True)
class Architecture:
    """One published pipeline: its components (name -> class and config), the scheduler it ships with, its native size."""

    components: dict[str, Part]
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD15_SCHEDULER))
    scheduler_class: str = "PNDMScheduler"
    family: str = "sd"  # the adapter that runs it: sd (1.x, 2.x), sdxl, sd3 or flux (sdlab/families)
    resolution: int = 512
    param_counts: dict[str, int] = field(default_factory=dict)  # published parameters per component

    @property
    def published(self) -> bool:
        """A published architecture (its parameter counts are known), built on the meta device for anatomy."""
        return bool(self.param_counts)

    def config(self, name: str) -> dict[str, Any]:
        """The config of component `name` (unet, transformer, vae, text_encoder, text_encoder_2, ...)."""
        return self.components[name].config


def sd_parts(unet: dict, vae: dict, text_encoder: dict) -> dict[str, Part]:
    """The three components of an SD 1.x/2.x pipeline (UNet, VAE, CLIP text encoder), in build order."""
    return {"unet": Part("UNet2DConditionModel", unet), "vae": Part("AutoencoderKL", vae),
            "text_encoder": Part("CLIPTextModel", text_encoder)}


def sd3_parts(transformer: dict) -> dict[str, Part]:
    """An SD3/SD3.5 pipeline's components: MMDiT, 16-channel VAE, CLIP-L and bigG with projections, T5-XXL."""
    return {"transformer": Part("SD3Transformer2DModel", transformer), "vae": Part("AutoencoderKL", SD3_VAE),
            "text_encoder": Part("CLIPTextModelWithProjection", CLIP_L_TEXT),
            "text_encoder_2": Part("CLIPTextModelWithProjection", OPENCLIP_BIGG_TEXT),
            "text_encoder_3": Part("T5EncoderModel", T5_XXL_ENCODER)}


def flux_parts(transformer: dict) -> dict[str, Part]:
    """A Flux.1 pipeline's components: the transformer, 16-channel VAE, CLIP-L (pooled) and T5-XXL."""
    return {"transformer": Part("FluxTransformer2DModel", transformer), "vae": Part("AutoencoderKL", FLUX_VAE),
            "text_encoder": Part("CLIPTextModel", CLIP_L_TEXT), "text_encoder_2": Part("T5EncoderModel", T5_XXL_ENCODER)}


# Published parameter counts: torch parameters, so SD3's persistent sin-cos position table (a buffer) is left out.
# Where they come from: counts taken on the released weights and quoted in public code and notes: SD 1.5 UNet
# 859,520,964, VAE 83,653,863, CLIP-L 123,060,480; SD 2.1 UNet 865,910,724 and text encoder 340,387,840 (weight
# buffers sized for them); SDXL base UNet 2,567,463,684 (the Hub count for the repository); SD3 medium counted per
# component on stable-diffusion-3-medium-diffusers (transformer 2,028,328,000, text_encoder 123,650,304,
# text_encoder_2 694,659,840, text_encoder_3 4,762,310,656); the FLUX.1-dev VAE's 83,819,683 values; the Hub
# counts of FLUX.1-dev 11,901,408,320 and FLUX.1-schnell 11,891,178,560 (no guidance embedder).
CLIP_L_PARAMS = 123_060_480
CLIP_L_PROJ_PARAMS = 123_650_304  # + the 768 x 768 text projection
BIGG_PROJ_PARAMS = 694_659_840
T5_XXL_ENCODER_PARAMS = 4_762_310_656
SD_VAE_PARAMS = 83_653_863  # SD 1.x, 2.x, SDXL
VAE16_PARAMS = 83_819_683  # SD3, SD3.5, Flux.1: 16 latent channels, no quant convs
SD3_TEXT_PARAMS = {"text_encoder": CLIP_L_PROJ_PARAMS, "text_encoder_2": BIGG_PROJ_PARAMS,
                   "text_encoder_3": T5_XXL_ENCODER_PARAMS, "vae": VAE16_PARAMS}
FLUX_TEXT_PARAMS = {"text_encoder": CLIP_L_PARAMS, "text_encoder_2": T5_XXL_ENCODER_PARAMS, "vae": VAE16_PARAMS}

ARCHITECTURES = {
    "sd15_arch": Architecture(
        sd_parts(SD15_UNET, SD15_VAE, SD15_TEXT),
        param_counts={"unet": 859_520_964, "vae": SD_VAE_PARAMS, "text_encoder": CLIP_L_PARAMS},
    ),
    "sd21_arch": Architecture(
        sd_parts(SD21_UNET, SD21_VAE, SD21_TEXT), SD21_SCHEDULER, "DDIMScheduler", family="sd", resolution=768,
        param_counts={"unet": 865_910_724, "vae": SD_VAE_PARAMS, "text_encoder": 340_387_840},
    ),
    "sdxl_arch": Architecture(
        {"unet": Part("UNet2DConditionModel", SDXL_UNET), "vae": Part("AutoencoderKL", SDXL_VAE),
         "text_encoder": Part("CLIPTextModel", CLIP_L_TEXT),
         "text_encoder_2": Part("CLIPTextModelWithProjection", OPENCLIP_BIGG_TEXT)},
        SDXL_SCHEDULER, "EulerDiscreteScheduler", "sdxl", 1024,
        param_counts={"unet": 2_567_463_684, "vae": SD_VAE_PARAMS, "text_encoder": CLIP_L_PARAMS,
                      "text_encoder_2": BIGG_PROJ_PARAMS},
    ),
    "sd3_medium_arch": Architecture(
        sd3_parts(SD3_TRANSFORMER), SD3_SCHEDULER, "FlowMatchEulerDiscreteScheduler", "sd3", 1024,
        param_counts={"transformer": 2_028_328_000, **SD3_TEXT_PARAMS},
    ),
    # SD3.5: no exact public count found; these pin the build from the published configs. With the
    # persistent position-table buffer (384^2 x 1536, 192^2 x 2432) they give Stability's 2.5 B and 8.1 B.
    "sd35_medium_arch": Architecture(
        sd3_parts(SD35_MEDIUM_TRANSFORMER), SD35_SCHEDULER, "FlowMatchEulerDiscreteScheduler", "sd3", 1024,
        param_counts={"transformer": 2_243_171_520, **SD3_TEXT_PARAMS},
    ),
    "sd35_large_arch": Architecture(
        sd3_parts(SD35_LARGE_TRANSFORMER), SD35_SCHEDULER, "FlowMatchEulerDiscreteScheduler", "sd3", 1024,
        param_counts={"transformer": 8_056_627_520, **SD3_TEXT_PARAMS},
    ),
    "flux_dev_arch": Architecture(
        flux_parts(FLUX_DEV_TRANSFORMER), FLUX_DEV_SCHEDULER, "FlowMatchEulerDiscreteScheduler", "flux", 1024,
        param_counts={"transformer": 11_901_408_320, **FLUX_TEXT_PARAMS},
    ),
    "flux_schnell_arch": Architecture(
        flux_parts(FLUX_SCHNELL_TRANSFORMER), FLUX_SCHNELL_SCHEDULER, "FlowMatchEulerDiscreteScheduler", "flux", 1024,
        param_counts={"transformer": 11_891_178_560, **FLUX_TEXT_PARAMS},
    ),
    "tiny": Architecture(sd_parts(TINY_UNET, TINY_VAE, TINY_TEXT)),
}


def component_class(name: str) -> type:
    """The diffusers or transformers class called `name` (UNet2DConditionModel, T5EncoderModel, ...)."""
    import diffusers
    import transformers

    return getattr(diffusers, name, None) or getattr(transformers, name)


def build_part(part: Part):
    """One component with freshly initialised weights, from a config as written here or as a saved config.json
    (diffusers' `from_config`; a transformers model from its config class)."""
    from transformers import PreTrainedModel

    cls = component_class(part.cls)
    if issubclass(cls, PreTrainedModel):
        return cls(cls.config_class.from_dict(part.config))
    return cls.from_config(part.config)


def build_components(arch: Architecture, seed: int = 0) -> dict[str, Any]:
    """Every component of `arch`, in its listed order, with random weights drawn from a fixed init seed."""
    import torch

    torch.manual_seed(seed)
    return {name: build_part(part) for name, part in arch.components.items()}


def build_scheduler(arch: Architecture):
    """The scheduler `arch` ships with, built from its published config."""
    return component_class(arch.scheduler_class).from_config(arch.scheduler)


def build_on_meta(arch: Architecture) -> dict[str, Any]:
    """The same components on the meta device: shapes and parameter counts, no memory."""
    import torch

    with torch.device("meta"):
        return build_components(arch)


# --- Tiny variants of every family: small random weights built in code by sdlab/families/<family>.py ---
# Shapes follow the get_dummy_components of diffusers' own pipeline tests, resized to 64 px images (8x8 latents).

SD_SCHEDULER_V = {**SD15_SCHEDULER, "prediction_type": "v_prediction"}  # the published schedulers above otherwise

TINY_CLIP_WITH_PROJECTION = {**TINY_TEXT, "hidden_act": "gelu"}  # OpenCLIP-style second encoder
TINY_T5 = dict(vocab_size=160, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
TINY_FLOW_VAE = {**TINY_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False}

ARCHITECTURES["sd15_tiny"] = ARCHITECTURES["tiny"]
ARCHITECTURES["sd2_tiny"] = Architecture(
    sd_parts({**TINY_UNET, "use_linear_projection": True}, TINY_VAE, {**TINY_TEXT, "hidden_act": "gelu"}),
    SD_SCHEDULER_V, resolution=64)

ARCHITECTURES["sdxl_tiny"] = Architecture(
    {"unet": Part("UNet2DConditionModel", dict(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=8)),
     "vae": Part("AutoencoderKL", {**TINY_VAE, "scaling_factor": 0.13025, "force_upcast": True}),
     "text_encoder": Part("CLIPTextModel", TINY_TEXT),
     "text_encoder_2": Part("CLIPTextModelWithProjection", TINY_CLIP_WITH_PROJECTION)},
    SDXL_SCHEDULER, "EulerDiscreteScheduler", "sdxl", 64,
)
ARCHITECTURES["sd3_tiny"] = Architecture(
    {"transformer": Part("SD3Transformer2DModel", dict(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64,
        pos_embed_max_size=16)),
     "vae": Part("AutoencoderKL", {**TINY_FLOW_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}),
     "text_encoder": Part("CLIPTextModelWithProjection", TINY_CLIP_WITH_PROJECTION),
     "text_encoder_2": Part("CLIPTextModelWithProjection", TINY_CLIP_WITH_PROJECTION),
     "text_encoder_3": Part("T5EncoderModel", TINY_T5)},
    SD3_SCHEDULER, "FlowMatchEulerDiscreteScheduler", "sd3", 64,
)
ARCHITECTURES["flux_tiny"] = Architecture(  # FLUX.1-dev-shaped: guidance-distilled (guidance_embeds), dynamic shifting
    {"transformer": Part("FluxTransformer2DModel", dict(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8), guidance_embeds=True)),
     "vae": Part("AutoencoderKL", {**TINY_FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}),
     "text_encoder": Part("CLIPTextModel", TINY_TEXT),
     "text_encoder_2": Part("T5EncoderModel", TINY_T5)},
    FLUX_DEV_SCHEDULER, "FlowMatchEulerDiscreteScheduler", "flux", 64,
)
BUILT_IN = tuple(ARCHITECTURES)  # model names built in code rather than read from a folder
