"""SDXL: two CLIP text encoders (hidden states concatenated, the second's pooled projection), size conditioning,
and a VAE that overflows in float16 (`force_upcast`)."""

from __future__ import annotations

from sdlab.lazy import torch
from sdlab.models.families.base import ModelAdapter


class StableDiffusionXL(ModelAdapter):
    family = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    tokenizers = {"tokenizer": "clip", "tokenizer_2": "clip"}
    call_options = ("eta",)
    upcasts_vae = True

    def _encode(self, text: str):
        embeds, _, pooled, _ = self.pipe.encode_prompt(text, device=self.device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def negative_kwargs(self, text: str):
        """An empty negative prompt is zeros if the model says `force_zeros_for_empty_prompt`, as in diffusers."""
        if not text and self.pipe.config.get("force_zeros_for_empty_prompt", False):
            return {f"negative_{k}": torch.zeros_like(v) for k, v in self.encode("").items()}
        return super().negative_kwargs(text)


ADAPTER = StableDiffusionXL
