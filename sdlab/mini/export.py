"""Write trained components into the diffusers folder layout of models/mini, each folder swapped in whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sdlab.io import atomic_write_text
from sdlab.mini.architecture import IMAGE_MEAN, IMAGE_STD, RESOLUTION, SCHEDULER
from sdlab.models.schedulers import make_scheduler
from sdlab.models.tokenizer import ASSET_DIR


def swap_in(staging: Path, target: Path) -> None:
    """Replace folder `target` by `staging` (old copy removed only after the rename)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def save_component(module, target: Path) -> Path:
    """`save_pretrained` (safetensors) into a staging folder, then swap it in as `target`."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    module.save_pretrained(str(staging), safe_serialization=True)
    without_local_path(staging / getattr(module, "config_name", "config.json"))  # schedulers: scheduler_config.json
    swap_in(staging, target)
    return target


def without_local_path(config: Path) -> None:
    """Drop `_name_or_path` (the folder a fine-tuned part was loaded from) from a saved config: this machine's
    paths do not belong in a shipped model."""
    values = json.loads(config.read_text())
    if values.pop("_name_or_path", None) is not None:
        config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def copy_tokenizer_files(folder: Path) -> None:
    """Copy sdlab's CLIP BPE tokenizer files (vocab.json, merges.txt, tokenizer_config.json) into `folder`."""

    Path(folder).mkdir(parents=True, exist_ok=True)
    for source in sorted(ASSET_DIR.glob("*")):
        shutil.copyfile(source, Path(folder) / source.name)


def save_tokenizer(target: Path) -> Path:
    """The CLIP tokenizer files as folder `target`."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    copy_tokenizer_files(staging)
    swap_in(staging, target)
    return target


def image_processor_config() -> dict:
    """CLIPImageProcessor settings matching the mini vision tower (64 px, [-1, 1] pixels)."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": RESOLUTION},
        "do_center_crop": True,
        "crop_size": {"height": RESOLUTION, "width": RESOLUTION},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGE_MEAN),
        "image_std": list(IMAGE_STD),
        "do_convert_rgb": True,
        "resample": 3,
    }


def save_clip(model, root: Path) -> None:
    """The full CLIPModel (+ tokenizer and image processor) as clip/, its text tower as text_encoder/."""
    from transformers import CLIPTextModel

    root = Path(root)
    staging = root / ".clip.staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging), safe_serialization=True)
    copy_tokenizer_files(staging)
    atomic_write_text(staging / "preprocessor_config.json", json.dumps(image_processor_config(), indent=2))
    swap_in(staging, root / "clip")
    text = CLIPTextModel(model.config.text_config)
    text.load_state_dict(model.text_model.state_dict())
    save_component(text, root / "text_encoder")
    save_tokenizer(root / "tokenizer")


# SD 1.x ships PNDM, a 4th-order multistep solver; at guidance 7.5 and 25 steps it (like LMS) is unstable on
# this model and gets most colours wrong, while second-order DPM-Solver++ stays exact (models/mini/README.md).
SHIPPED_SCHEDULER = "dpmpp_2m"


def save_pipeline_files(root: Path) -> None:
    """scheduler/ (DPM-Solver++ 2M on SD's noise schedule) and model_index.json, once the other parts exist."""

    root = Path(root)
    scheduler = make_scheduler(SHIPPED_SCHEDULER, SCHEDULER)
    save_component(scheduler, root / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": __import__("diffusers").__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", type(scheduler).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    atomic_write_text(root / "model_index.json", json.dumps(index, indent=2))
