"""Write trained components into the diffusers folder layout of models/mini, each folder swapped in whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from sdlab.io import atomic_write_text
from sdlab.mini.architecture import FLOW_SCHEDULER, IMAGE_PROCESSOR, SCHEDULER, T5_TOKENS, TEXT_TOKENS, zero_t5
from sdlab.models.model_files import SAFE_LOCAL
from sdlab.models.schedulers import make_scheduler
from sdlab.models.tokenizer import ASSET_DIR, tiny_t5_tokenizer

# SD 1.x ships PNDM, a 4th-order multistep solver; at guidance 7.5 and 25 steps it (like LMS) is unstable on
# this model and gets most colours wrong, while second-order DPM-Solver++ stays exact (models/mini/README.md).
SHIPPED_SCHEDULER = "dpmpp_2m"


def replace_folder(target: Path, fill: Callable[[Path], object], staging: Path | None = None,
                   old: Path | None = None) -> None:
    """`fill` a staging folder, then swap it in as `target` (the old copy removed only after the rename)."""
    staging = staging or target.with_name(f".{target.name}.staging")
    old = old or target.with_name(f".{target.name}.old")
    shutil.rmtree(staging, ignore_errors=True)
    fill(staging)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def save_pretrained(module, folder: Path) -> None:
    """`save_pretrained` as safetensors, without `_name_or_path` (this machine's paths stay out of a shipped model)."""
    module.save_pretrained(str(folder), safe_serialization=True)
    config = folder / getattr(module, "config_name", "config.json")  # schedulers: scheduler_config.json
    values = json.loads(config.read_text())
    if values.pop("_name_or_path", None) is not None:
        config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def save_component(module, target: Path) -> None:
    """A diffusers/transformers component as folder `target`."""
    replace_folder(target, lambda staging: save_pretrained(module, staging))


def copy_tokenizer_files(folder: Path) -> None:
    """Copy sdlab's CLIP BPE tokenizer files (vocab.json, merges.txt, tokenizer_config.json) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in sorted(ASSET_DIR.glob("*")):
        shutil.copyfile(source, folder / source.name)


def save_clip(model, root: Path) -> None:
    """The full CLIPModel (+ tokenizer and image processor) as clip/, its text tower as text_encoder/."""
    from transformers import CLIPTextModel

    def fill(staging: Path) -> None:
        model.save_pretrained(str(staging), safe_serialization=True)
        copy_tokenizer_files(staging)
        atomic_write_text(staging / "preprocessor_config.json", json.dumps(IMAGE_PROCESSOR, indent=2))

    replace_folder(root / "clip", fill)
    text = CLIPTextModel(model.config.text_config)
    text.load_state_dict(model.text_model.state_dict())
    save_component(text, root / "text_encoder")
    replace_folder(root / "tokenizer", copy_tokenizer_files)


def save_index(root: Path, pipeline: str, scheduler, parts: dict[str, Any]) -> None:
    """scheduler/ and model_index.json (keys sorted) of a `pipeline` folder with mini's VAE, CLIP tokenizer, `parts`."""
    save_component(scheduler, root / "scheduler")
    index = {"_class_name": pipeline, "_diffusers_version": __import__("diffusers").__version__,
             "feature_extractor": [None, None], "image_encoder": [None, None], "vae": ["diffusers", "AutoencoderKL"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", type(scheduler).__name__],
             **parts}
    atomic_write_text(root / "model_index.json", json.dumps(index, indent=2, sort_keys=True))


def save_pipeline_files(root: Path) -> None:
    """scheduler/ (DPM-Solver++ 2M on SD's noise schedule) and model_index.json, once the other parts exist."""
    save_index(root, "StableDiffusionPipeline", make_scheduler(SHIPPED_SCHEDULER, SCHEDULER), {
        "requires_safety_checker": False, "safety_checker": [None, None], "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"]})


def save_sd3_pipeline_files(root: Path, vae_folder: Path, text_encoder, normalisation: tuple[float, float],
                            shift: float) -> None:
    """An SD3 folder but its transformer: VAE with SD3's normalisation, text encoder as both CLIPs, zero T5, Euler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    vae = AutoencoderKL.from_pretrained(str(vae_folder), **SAFE_LOCAL)
    vae.register_to_config(shift_factor=normalisation[0], scaling_factor=normalisation[1])
    save_component(vae, root / "vae")
    for name in ("text_encoder", "text_encoder_2"):
        save_component(text_encoder, root / name)
    for name in ("tokenizer", "tokenizer_2"):
        replace_folder(root / name, copy_tokenizer_files)
        config = root / name / "tokenizer_config.json"
        atomic_write_text(config, json.dumps({**json.loads(config.read_text()), "model_max_length": TEXT_TOKENS},
                                             indent=2))
    t5_tokenizer = tiny_t5_tokenizer(T5_TOKENS)
    replace_folder(root / "tokenizer_3", lambda staging: t5_tokenizer.save_pretrained(str(staging)))
    save_component(zero_t5(len(t5_tokenizer)), root / "text_encoder_3")
    clip, scheduler = ["transformers", "CLIPTextModelWithProjection"], {**FLOW_SCHEDULER, "shift": shift}
    save_index(root, "StableDiffusion3Pipeline", FlowMatchEulerDiscreteScheduler(**scheduler), {
        "text_encoder": clip, "text_encoder_2": clip, "text_encoder_3": ["transformers", "T5EncoderModel"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"], "tokenizer_3": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "SD3Transformer2DModel"]})
