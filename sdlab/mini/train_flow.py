"""mini_flow's SD3 transformer by rectified flow on mini's frozen latents and text (Esser et al. 2024, section 3.1)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from sdlab.lazy import no_grad, torch
from sdlab.mini import data
from sdlab.mini.architecture import FLOW_SCHEDULER, T5_TOKENS, TEXT_TOKENS, initial
from sdlab.mini.export import save_component, save_sd3_pipeline_files
from sdlab.mini.loop import Stage, run_stage, summary
from sdlab.mini.train_unet import cached, fingerprint, gather_text, partial_table, text_draws, training_latents
from sdlab.models.model_files import SAFE_LOCAL
from sdlab.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


class RepeatedTokenAttention:
    """SD3's JointAttnProcessor2_0 with the last text token standing for `count` copies (logits + log count, the exact
    softmax): T5's zero states stay identical in every block, so one copy trains what the pipeline runs with all."""

    def __init__(self, count: int):
        self.log_count = math.log(count)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        batch, image_tokens = hidden_states.shape[:2]

        def heads(x, norm=None):
            x = x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)
            return norm(x) if norm is not None else x

        query = torch.cat([heads(attn.to_q(hidden_states), attn.norm_q),
                           heads(attn.add_q_proj(encoder_hidden_states), attn.norm_added_q)], dim=2)
        key = torch.cat([heads(attn.to_k(hidden_states), attn.norm_k),
                         heads(attn.add_k_proj(encoder_hidden_states), attn.norm_added_k)], dim=2)
        value = torch.cat([heads(attn.to_v(hidden_states)), heads(attn.add_v_proj(encoder_hidden_states))], dim=2)
        bias = torch.zeros(1, key.shape[2], dtype=query.dtype)
        bias[0, -1] = self.log_count
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, query.shape[1] * query.shape[3])
        image, text = out[:, :image_tokens], out[:, image_tokens:]
        return attn.to_out[1](attn.to_out[0](image)), (None if attn.context_pre_only else attn.to_add_out(text))


def sd3_text_encoder(clip_folder: Path):
    """mini's CLIP text tower with its projection as a CLIPTextModelWithProjection (SD3's text encoder class)."""
    from transformers import CLIPModel, CLIPTextModelWithProjection

    clip = CLIPModel.from_pretrained(str(clip_folder), **SAFE_LOCAL)
    config = clip.config.text_config
    config.projection_dim = clip.config.projection_dim
    encoder = CLIPTextModelWithProjection(config)
    encoder.text_model.load_state_dict(clip.text_model.state_dict())
    encoder.text_projection.load_state_dict(clip.text_projection.state_dict())
    return encoder.eval()


@no_grad
def encode_sd3_text(text_encoder, captions: list[str], batch_size: int = 256) -> dict[str, torch.Tensor]:
    """What SD3's pipeline takes from a CLIP encoder: penultimate states (N, TEXT_TOKENS, d), pooled projection."""
    ids = load_tokenizer()(captions, padding="max_length", max_length=TEXT_TOKENS, truncation=True,
                           return_tensors="pt").input_ids
    outs = [text_encoder(ids[i : i + batch_size], output_hidden_states=True) for i in range(0, len(ids), batch_size)]
    return {"states": torch.cat([out.hidden_states[-2] for out in outs]),
            "pooled": torch.cat([out.text_embeds for out in outs])}


def conditioning(frozen: Path, images: np.ndarray, folder: Path, partial: bool):
    """SD3-normalised training latents, the SD3 text encoder, its outputs for the train, empty and partial captions."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(frozen / "vae"), **SAFE_LOCAL).eval()
    z = training_latents(vae, images, folder) / vae.config.scaling_factor
    shift = float(z.mean())  # SD3's VAE shift_factor and scaling_factor: the mean, and 1 / std once centred
    scale = float(1.0 / (z - shift).std())
    text_encoder = sd3_text_encoder(frozen / "clip")
    key = f"{fingerprint(text_encoder)}:{TEXT_TOKENS}"
    texts = {name: cached(folder / f"sd3_{name}.safetensors", lambda c=captions: encode_sd3_text(text_encoder, c),
                          f"{key}:{len(captions)}")
             for name, captions in (("train", data.all_captions("train")), ("empty", [""]),
                                    *((("partial", partial_table("train")[0]),) if partial else ()))}
    return (z - shift) * scale, (shift, scale), text_encoder, texts


def flow_stage(settings: dict[str, Any], latents: torch.Tensor, texts: dict[str, dict[str, torch.Tensor]],
               attributes: list[data.Attributes], seed: int, table: np.ndarray | None = None) -> Stage:
    """Flow stage: x_t = (1 - t) x0 + t eps, t logit-normal, MSE to v = eps - x0; `table`: the partial texts' rows."""
    draw = text_draws(settings, attributes, len(latents), len(texts["train"]["states"]),
                      table if "partial" in texts else None)
    torch.manual_seed(seed)
    transformer = initial("transformer", settings)
    transformer.set_attn_processor(RepeatedTokenAttention(T5_TOKENS))
    mean, std = float(settings.get("logit_mean", 0.0)), float(settings.get("logit_std", 1.0))
    steps = FLOW_SCHEDULER["num_train_timesteps"]  # the transformer sees t * 1000, as the pipeline passes it

    def both(choice, name: str) -> torch.Tensor:  # SD3's two CLIP encoders are the same tower: its output twice
        one = gather_text(choice, texts["train"][name], texts.get("partial", {}).get(name), texts["empty"][name])
        return torch.cat([one, one], dim=-1)

    def loss(step: int) -> dict[str, torch.Tensor]:
        pick, choice = draw(np.random.default_rng([seed, step]))
        states = both(choice, "states")
        context = torch.cat([states, states.new_zeros(len(pick), 1, states.shape[-1])], dim=1)  # + T5's zeros
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        x0 = latents[pick]
        t = torch.sigmoid(mean + std * torch.randn(len(pick), generator=generator))
        eps = torch.randn(x0.shape, generator=generator)
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
        v = transformer(x_t, encoder_hidden_states=context, pooled_projections=both(choice, "pooled"),
                        timestep=t * steps).sample
        return {"loss": (v - (eps - x0)).pow(2).mean()}

    return Stage("flow", transformer, loss, ema_decay=float(settings.get("ema_decay", 0.0)))


def train_flow(settings: dict[str, Any], images: np.ndarray, attributes: list[data.Attributes], folder: Path,
               export: Path, seed: int) -> dict:
    """Train (or resume) the transformer on mini's frozen parts (settings['frozen_from']), then write the SD3 folder."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    frozen = Path(settings["frozen_from"])
    partial = bool(settings.get("partial_captions"))
    latents, normalisation, text_encoder, texts = conditioning(frozen, images, folder, partial)
    log.info("flow: latents %s (VAE shift %.4f, scale %.4f), text states %s", tuple(latents.shape), *normalisation,
             tuple(texts["train"]["states"].shape))
    stage = flow_stage(settings, latents, texts, attributes, seed, partial_table("train")[1] if partial else None)
    frame = run_stage(stage, settings, folder)
    # Export the EMA weights when kept, with the diffusers attention.
    transformer = (stage.ema or stage.model).eval()
    transformer.set_attn_processor(JointAttnProcessor2_0())
    save_component(transformer, export / "transformer")
    save_sd3_pipeline_files(export, frozen / "vae", text_encoder, normalisation, float(settings["shift"]))
    return summary(stage, frame)
