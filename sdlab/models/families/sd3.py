"""SD3 / SD3.5: two CLIP encoders plus an optional T5 (`model.t5=false` leaves it out: zeros in its place), an MMDiT
transformer and flow matching; latents carry a shift factor."""

from __future__ import annotations

from sdlab.config import ModelSpec
from sdlab.models.families.base import ModelAdapter


class StableDiffusion3(ModelAdapter):
    family = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    tokenizers = {"tokenizer": "clip", "tokenizer_2": "clip", "tokenizer_3": "t5"}
    denoiser_name = "transformer"
    # T5's width (the CLIP configs have no d_model); the pooled prompt is both CLIPs' projections side by side
    text_widths = (("joint_attention_dim", "d_model"), ("pooled_projection_dim", "projection_dim"))
    default_sequence_length = 256

    @classmethod
    def load_options(cls, spec: ModelSpec) -> dict:
        return {**super().load_options(spec), **({} if spec.t5 else {"text_encoder_3": None, "tokenizer_3": None})}

    def _encode(self, text: str):
        embeds, _, pooled, _ = self.pipe.encode_prompt(text, None, None, device=self.device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False,
                                                       max_sequence_length=self.sequence_length)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


ADAPTER = StableDiffusion3
