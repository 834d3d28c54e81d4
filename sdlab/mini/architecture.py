"""Component configs of sdlab-mini: the SD 1.x layout shrunk to 64 px images and an 8x8x4 latent."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sdlab.bench.report import brief
from sdlab.errors import UserError
from sdlab.lazy import torch
from sdlab.models.architectures import SD15_SCHEDULER
from sdlab.models.model_files import SAFE_LOCAL

RESOLUTION = 64
TEXT_HIDDEN = 32

VAE = dict(sample_size=RESOLUTION, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 32, 64, 64), layers_per_block=1,
           latent_channels=4, norm_num_groups=8, mid_block_add_attention=False, scaling_factor=1.0)
TEXT = dict(vocab_size=49408, hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN, projection_dim=64,
            num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)  # CLIP's start and end tokens
VISION = dict(image_size=RESOLUTION, patch_size=8, num_channels=3, hidden_size=64, intermediate_size=256,
              projection_dim=64, num_hidden_layers=3, num_attention_heads=4, hidden_act="quick_gelu")
UNET = dict(sample_size=RESOLUTION // 8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(64, 96, 96),
            layers_per_block=1, cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=16)
SCHEDULER = dict(SD15_SCHEDULER)
# mini_flow: SD3's MMDiT on the same 8x8x4 latents. Text is mini's CLIP tower twice (SD3's two CLIP encoders, their
# penultimate states side by side: 2 x 32 = joint_attention_dim; pooled 2 x 64); T5 is left out (zeros instead).
TEXT_TOKENS = 32  # CLIP is causal: the first 32 states of a 77-token pass are these, and every caption fits
TRANSFORMER = dict(sample_size=RESOLUTION // 8, patch_size=1, in_channels=4, out_channels=4, num_layers=6,
                   attention_head_dim=32, num_attention_heads=4, joint_attention_dim=2 * TEXT_HIDDEN,
                   caption_projection_dim=128, pooled_projection_dim=2 * TEXT["projection_dim"],
                   pos_embed_max_size=RESOLUTION // 8, qk_norm="rms_norm")
FLOW_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0)
T5_TOKENS = 256  # the T5 states SD3's pipeline appends (its default max_sequence_length): all zeros here
# diffusers' SD3 pipeline needs a T5 to load a folder alone; mini's is the smallest T5 encoder, its final RMS norm
# zero, so it returns exactly the zeros the pipeline uses when T5 is left out.
ZERO_T5 = dict(d_model=2 * TEXT_HIDDEN, d_kv=4, d_ff=4, num_layers=1, num_heads=1, feed_forward_proj="relu")
# CLIPImageProcessor of the mini vision tower: 64 px, pixels in [0, 1] mapped to [-1, 1].
IMAGE_PROCESSOR = dict(image_processor_type="CLIPImageProcessor", do_resize=True, size={"shortest_edge": RESOLUTION},
                       do_center_crop=True, crop_size={"height": RESOLUTION, "width": RESOLUTION}, do_rescale=True,
                       rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                       do_convert_rgb=True, resample=3)


def to_tensor(images):
    """uint8 (N, H, W, 3) images as float (N, 3, H, W) in [-1, 1], the pixels every mini component sees."""
    import numpy as np
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x):
    """Float (N, 3, H, W) images in [-1, 1] as uint8 (N, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def merged(base: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """A component config with overrides (lists become tuples, as diffusers configs expect)."""
    return {**base, **{k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items()}}


BASES = {"vae": VAE, "unet": UNET, "transformer": TRANSFORMER, "text": TEXT, "vision": VISION}


def initial(component: str, settings: dict[str, Any]):
    """The mini 'vae', 'unet' or 'transformer': random weights (settings['architecture'] overrides) or `init_from`."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel

    model_class = {"vae": AutoencoderKL, "unet": UNet2DConditionModel, "transformer": SD3Transformer2DModel}[component]
    if init_from := settings.get("init_from"):  # pre-flight checked it: a local safetensors folder
        return model_class.from_pretrained(str(Path(str(init_from)).expanduser()), **SAFE_LOCAL)
    config = merged(BASES[component], settings.get("architecture"))
    if component == "transformer":  # one position per patch of the 8x8 latent
        config["pos_embed_max_size"] = config["sample_size"] // config["patch_size"]
    return model_class(**config)


MAKES = {"vae": "AutoencoderKL", "unet": "UNet2DConditionModel", "transformer": "SD3Transformer2DModel",
         "text": "CLIPTextConfig", "vision": "CLIPVisionConfig"}
LATENT = (1, VAE["latent_channels"], RESOLUTION // 8, RESOLUTION // 8)
# what mini's other parts give a component and need from it: latents, CLIP's states, its pooled text and image features
CLIP_GIVES = ((1, 77, TEXT_HIDDEN), (1, TEXT["projection_dim"]), (1, VISION["projection_dim"]))  # either tower's
NEEDS = {"vae": (LATENT, (1, 3, RESOLUTION, RESOLUTION)), "unet": LATENT, "transformer": LATENT, "text": CLIP_GIVES,
         "vision": CLIP_GIVES}


def check_overrides(component: str, overrides: dict[str, Any] | None, key: str) -> None:
    """Refuse, in one line, overrides of a mini `component`'s config (`key` names them) that do not build its model,
    or build one that does not take and give the shapes of mini's other parts (`NEEDS`); run on the meta device."""
    if not overrides:
        return
    from transformers import CLIPTextConfig, CLIPVisionConfig

    clip_defaults = {"text": CLIPTextConfig, "vision": CLIPVisionConfig}
    for name, value in overrides.items():
        base = BASES[component].get(name)
        if component in clip_defaults and base is None and not hasattr(clip_defaults[component](), name):
            raise UserError(f"{key}.{name} is not an option of {MAKES[component]}")  # a config takes any keyword
        if type(base) is int and not (type(value) is int and value >= 1):  # bool is an int, but not a count
            raise UserError(f"{key}.{name}={value!r} must be an integer >= 1")
    with torch.device("meta"), torch.no_grad():
        try:
            model = (build_clip(**{component: overrides}) if component in clip_defaults
                     else initial(component, {"architecture": overrides}))
        except Exception as e:  # noqa: BLE001 - diffusers and transformers refuse a config in many types
            if unknown := re.search(r"unexpected keyword argument '(\w+)'", str(e)):
                raise UserError(f"{key}.{unknown[1]} is not an option of {MAKES[component]}") from None
            raise UserError(f"{key}={overrides} does not build a model ({MAKES[component]}: {brief(e)})") from None
        try:
            gives = shapes(component, model)
        except Exception as e:  # noqa: BLE001 - a shape that does not fit fails inside the model's forward
            raise UserError(f"{key}={overrides} makes a {component} model that fails on the shapes mini's other "
                            f"parts give it ({brief(e)})") from None
    if gives != NEEDS[component]:
        raise UserError(f"{key}={overrides} makes a {component} model giving shapes {gives} where mini's other parts "
                        f"need {NEEDS[component]}")


def shapes(component: str, model) -> tuple:
    """The shapes `model` (a mini `component`, on the meta device) gives from the shapes mini's other parts give it."""
    if component == "vae":
        z = model.encode(torch.zeros(1, 3, RESOLUTION, RESOLUTION)).latent_dist.mean
        return tuple(z.shape), tuple(model.decode(z).sample.shape)
    if component == "unet":
        return tuple(model(torch.zeros(LATENT), torch.zeros(1), torch.zeros(1, 77, TEXT_HIDDEN)).sample.shape)
    if component == "transformer":
        return tuple(model(torch.zeros(LATENT), torch.zeros(1, TEXT_TOKENS, 2 * TEXT_HIDDEN),
                           torch.zeros(1, 2 * TEXT["projection_dim"]), torch.zeros(1)).sample.shape)
    tokens = torch.zeros(1, 77, dtype=torch.long)
    features = (model.get_text_features(tokens), model.get_image_features(torch.zeros(1, 3, RESOLUTION, RESOLUTION)))
    return tuple(model.text_model(tokens).last_hidden_state.shape), *(
        tuple(getattr(f, "pooler_output", f).shape) for f in features)


def zero_t5(vocab_size: int):
    """The T5 encoder of mini_flow (ZERO_T5): whatever the prompt, zeros of joint_attention_dim per token."""
    from transformers import T5Config, T5EncoderModel

    encoder = T5EncoderModel(T5Config(vocab_size=vocab_size, **ZERO_T5)).eval()
    with torch.no_grad():
        encoder.encoder.final_layer_norm.weight.zero_()
    return encoder


def build_clip(text: dict[str, Any] | None = None, vision: dict[str, Any] | None = None):
    """The mini CLIPModel: text and vision towers with a shared projection size (random weights)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text_config = CLIPTextConfig(**merged(TEXT, text))
    vision_config = CLIPVisionConfig(**merged(VISION, vision))
    return CLIPModel(CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
                                projection_dim=text_config.projection_dim))
