"""The CLIP model that scores images: found in its folder or the local Hugging Face cache, loaded once per process."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sdlab.errors import UserError
from sdlab.metrics.clip import CLIP_MEAN, CLIP_STD, ClipModel
from sdlab.models.loading import PROJECT_ROOT, cached_snapshot
from sdlab.models.model_files import SAFE_LOCAL, check_component_files, read_object, weights_fingerprint
from sdlab.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

_LOADED: dict[tuple, ClipModel] = {}


def clip_folder(cfg: dict) -> Path:
    """The configured CLIP model's folder: `path` (relative to the working dir, then the project) or `repo_id`'s."""
    if cfg.get("path"):
        path = Path(os.path.expanduser(str(cfg["path"])))
        if not path.is_absolute():
            path = path if (Path.cwd() / path).exists() else PROJECT_ROOT / path
        return path
    if cfg.get("repo_id"):
        return cached_snapshot(cfg["repo_id"], "clip.path=DIR with a CLIP model folder")
    raise UserError(f"clip={cfg.get('name')!r} has neither clip.path nor clip.repo_id")


def clip_weights(cfg: dict | None) -> str | None:
    """The configured CLIP model's weights fingerprint (`weights_fingerprint`); None for clip=none or no folder."""
    if not cfg or cfg.get("name") in (None, "none"):
        return None
    try:
        return weights_fingerprint(clip_folder(cfg))
    except UserError:
        return None


def check_clip_folder(folder: Path, name: str) -> None:
    """Raise a UserError unless `folder` holds a CLIPModel config and safetensors weights."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"clip={name}: {folder} is not a folder; give a CLIP model folder (config.json, safetensors)")
    if not (folder / "config.json").is_file():
        hint = " (train the miniature model first, or pick clip=none)" if name == "mini" else ""
        raise UserError(f"clip={name}: no CLIP model at {folder} (config.json missing){hint}")
    check_component_files(folder)


def load_clip(cfg: dict | None, device: str = "cpu") -> ClipModel | None:
    """The `clip` group's model (None for clip=none), once per process, normalising as preprocessor_config.json says."""
    if not cfg or cfg.get("name") in (None, "none"):
        return None
    name = cfg["name"]
    folder = clip_folder(cfg)
    key = (name, str(folder), device, weights_fingerprint(folder))  # retrained in its folder: loaded again
    if key in _LOADED:
        return _LOADED[key]
    check_clip_folder(folder, name)
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(folder), **SAFE_LOCAL).to(device).eval()
    has_tokenizer = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True) if has_tokenizer else load_tokenizer()
    processor = folder / "preprocessor_config.json"
    stats = read_object(processor) if processor.is_file() else {}
    log.info("loaded CLIP %s from %s", name, folder)
    _LOADED[key] = ClipModel(model=model, tokenizer=tokenizer, name=name,
                             image_mean=tuple(stats.get("image_mean", CLIP_MEAN)),
                             image_std=tuple(stats.get("image_std", CLIP_STD)))
    return _LOADED[key]

