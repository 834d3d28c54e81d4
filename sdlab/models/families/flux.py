"""FLUX.1: a CLIP encoder (pooled) and T5 (hidden states), a transformer on 2x2-packed latents and flow matching.
dev is guidance-distilled (the guidance scale is an input, one call per step); schnell ignores it."""

from __future__ import annotations

from sdlab.models.families.base import ModelAdapter


class Flux(ModelAdapter):
    family = "flux"
    pipeline_class = "FluxPipeline"
    tokenizers = {"tokenizer": "clip", "tokenizer_2": "t5"}
    denoiser_name = "transformer"
    # T5's width (CLIP's config has no d_model); the pooled prompt is CLIP's last hidden state
    text_widths = (("joint_attention_dim", "d_model"), ("pooled_projection_dim", "hidden_size"))
    guidance = "distilled"  # no unconditional branch: the negative prompt is not used
    default_sequence_length = 512
    linear_sigmas = True
    latent_packing = 4  # 2x2 patches of latent channels to one token

    def _encode(self, text: str):
        embeds, pooled, _ = self.pipe.encode_prompt(text, None, device=self.device, num_images_per_prompt=1,
                                                    max_sequence_length=self.sequence_length)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def unpack(self, latents, width: int, height: int):
        """Packed (batch, tokens, 4 x channels) latents, 2x2 patches per token, as NCHW (FluxPipeline's packing)."""
        batch, _, packed = latents.shape
        h, w = 2 * (height // (self.vae_scale_factor * 2)), 2 * (width // (self.vae_scale_factor * 2))
        patches = latents.view(batch, h // 2, w // 2, packed // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return patches.reshape(batch, packed // 4, h, w)


ADAPTER = Flux
