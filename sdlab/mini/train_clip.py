"""Stage 2: the CLIP text and vision towers, trained contrastively on image/caption pairs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from sdlab.lazy import no_grad, torch
from sdlab.mini import data
from sdlab.mini.architecture import build_clip, to_tensor
from sdlab.mini.export import save_clip
from sdlab.mini.loop import Stage, run_stage, summary
from sdlab.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def token_ids(tokenizer, captions: list[str], padding: str = "longest") -> torch.Tensor:
    """Token ids (N, L) of captions, padded with the end token (to the longest, or to 77 with 'max_length')."""
    return tokenizer(captions, padding=padding, max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def combination_index(attributes: list[data.Attributes]) -> np.ndarray:
    """Index of each item's attribute combination among the training combinations."""
    lookup = {attrs: i for i, attrs in enumerate(data.combinations("train"))}
    return np.asarray([lookup[a] for a in attributes])


def clip_stage(settings: dict[str, Any], images: np.ndarray, attributes: list[data.Attributes], seed: int) -> Stage:
    """The CLIP stage: each step draws images and one random caption template per image."""
    torch.manual_seed(seed)
    model = build_clip(settings.get("text"), settings.get("vision"))
    ids = token_ids(load_tokenizer(), data.all_captions("train"))
    combos = combination_index(attributes)
    templates = len(data.CAPTION_TEMPLATES)
    batch_size = int(settings["batch_size"])

    def loss(step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([seed, step])
        pick = rng.integers(len(images), size=batch_size)
        rows = combos[pick] * templates + rng.integers(templates, size=batch_size)
        out = model(input_ids=ids[rows], pixel_values=to_tensor(images[pick]))
        same = torch.from_numpy(combos[pick][:, None] == combos[pick][None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)  # uniform over the items sharing the row's combination
        text_loss = torch.nn.functional.cross_entropy(out.logits_per_text, targets)
        image_loss = torch.nn.functional.cross_entropy(out.logits_per_image, targets)
        with torch.no_grad():
            hits = targets.gather(1, out.logits_per_text.argmax(dim=1, keepdim=True)) > 0
        return {"loss": (text_loss + image_loss) / 2, "accuracy": hits.float().mean(),
                "logit_scale": model.logit_scale.detach().exp()}

    return Stage("clip", model, loss)


@no_grad
def retrieval_top1(model, images: np.ndarray, captions: list[str], attributes: list[data.Attributes]) -> float:
    """Text->image top-1: the best image of each caption shows the caption's attributes."""
    model.eval()
    text = model.get_text_features(input_ids=token_ids(load_tokenizer(), captions))
    vision = model.get_image_features(pixel_values=to_tensor(images))
    text, vision = (getattr(features, "pooler_output", features) for features in (text, vision))
    similarity = torch.nn.functional.normalize(text, dim=-1) @ torch.nn.functional.normalize(vision, dim=-1).T
    return float(np.mean([attributes[j] == attributes[i] for i, j in enumerate(similarity.argmax(dim=1).tolist())]))


def held_out_retrieval(model, count: int = 100) -> dict[str, float]:
    """Retrieval top-1 among `count` evaluation pairs: any combination, and held-out combinations only."""
    return {f"retrieval_top1_{split}": retrieval_top1(model, *data.eval_batch(0, count, split=split))
            for split in ("any", "held_out")}


def train_clip(settings: dict[str, Any], images: np.ndarray, attributes: list[data.Attributes], folder: Path,
               export: Path | None, seed: int) -> dict:
    """Train (or resume) CLIP, measure retrieval, export clip/, text_encoder/ and tokenizer/."""
    stage = clip_stage(settings, images, attributes, seed)
    frame = run_stage(stage, settings, folder)
    scores = held_out_retrieval(stage.model)
    log.info("clip: %s", scores)
    if export is not None:
        save_clip(stage.model, export)
    return {**summary(stage, frame), **scores}
