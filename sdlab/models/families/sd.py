"""SD 1.x and 2.x: one CLIP text encoder, a UNet predicting epsilon (1.x, 2.x base) or v (2.x at 768 px)."""

from __future__ import annotations

from sdlab.models.families.base import ModelAdapter


class StableDiffusion(ModelAdapter):
    family = "sd"
    pipeline_class = "StableDiffusionPipeline"
    call_options = ("eta",)
    plain_unet_call = True
    loaded_with = {"safety_checker": None, "requires_safety_checker": False}

    def _encode(self, text: str):
        embeds, _ = self.pipe.encode_prompt(text, self.device, 1, False)
        return {"prompt_embeds": embeds}


ADAPTER = StableDiffusion
