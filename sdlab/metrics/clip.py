"""CLIP: token tables, cosine similarity matrices, and the CLIP score (Hessel et al. 2021) of images and captions."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sdlab.lazy import pandas as pd, torch
from sdlab.metrics.image import cover

MAX_TOKENS = 77
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def token_table(tokenizer, prompts: Sequence[str], max_length: int = MAX_TOKENS) -> pd.DataFrame:
    """A row per prompt: CLIP tokens and ids with BOS/EOS, their count, the text cut past `max_length`, a warning."""
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, truncation=False, add_special_tokens=True)["input_ids"]
        n = len(ids)
        truncated = n > max_length
        dropped = dropped_text(tokenizer, ids, max_length) if truncated else ""
        rows.append({"prompt": prompt, "n_tokens": n, "n_kept": min(n, max_length), "truncated": truncated,
                     "dropped": dropped,
                     "warning": f"{n} tokens > {max_length}: truncated, dropped: {dropped!r}" if truncated else "",
                     "tokens": json.dumps(tokenizer.convert_ids_to_tokens(ids), ensure_ascii=False),
                     "ids": json.dumps(ids)})
    return pd.DataFrame(rows)


def dropped_text(tokenizer, ids: list[int], max_length: int) -> str:
    """The text of the tokens past `max_length` (ids with BOS and EOS), led by '…' when the cut falls inside a word."""
    cut = max_length - 1
    text = re.sub(r"\s+([,.;:!?])", r"\1", tokenizer.decode(ids[cut:-1]).strip())
    last, first = (tokenizer.decode(ids[i : i + 1]) for i in (cut - 1, cut))
    return f"…{text}" if tokenizer.decode(ids[cut - 1 : cut + 1]) == last + first else text  # "art"+"station"


def token_rows(table: pd.DataFrame, max_length: int = MAX_TOKENS) -> pd.DataFrame:
    """The token table as a row per (prompt, position): token, id, whether the encoder sees it (BOS + 75 + EOS)."""
    rows = []
    for i, row in enumerate(table.itertuples()):
        ids = json.loads(row.ids)
        for position, (token, token_id) in enumerate(zip(json.loads(row.tokens), ids)):
            rows.append({"prompt_index": i, "prompt": row.prompt, "position": position, "token": token,
                         "id": token_id, "kept": position < max_length - 1 or position == len(ids) - 1})
    return pd.DataFrame(rows)


def cosine_matrix(a, b=None) -> np.ndarray:
    """cos(a_i, b_j) = a_i · b_j / (|a_i| |b_j|) for all row pairs; b defaults to a."""
    a = _unit(np.asarray(a, dtype=np.float64))
    return a @ (a if b is None else _unit(np.asarray(b, dtype=np.float64))).T


def long_matrix(matrix, row_labels: Sequence[str], col_labels: Sequence[str], row_key: str,
                col_key: str) -> pd.DataFrame:
    """A cosine matrix as one row per cell: row index and label, column index and label, cosine."""
    matrix = np.asarray(matrix)
    return pd.DataFrame([{f"{row_key}_index": r, row_key: row_labels[r], f"{col_key}_index": c, col_key: col_labels[c],
                          "cosine": float(matrix[r, c])} for r, c in np.ndindex(matrix.shape)])


def clip_score_from_cosine(cosine) -> np.ndarray:
    """CLIP score = 100 · max(cos, 0)."""
    return 100.0 * np.maximum(np.asarray(cosine, dtype=np.float64), 0.0)


def pooled_text_embeddings(text_encoder, tokenizer, prompts: Sequence[str]) -> np.ndarray:
    """The text encoder's pooled output (final-layer-norm state at EOS) below any projection, one row per prompt."""
    ids = _tokenize(tokenizer, prompts, text_encoder.config.max_position_embeddings).to(text_encoder.device)
    with torch.inference_mode():
        out = text_encoder(input_ids=ids)
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:  # with projection: the final-layer-norm hidden state at the first EOS, as pooler_output is
        pooled = out.last_hidden_state[torch.arange(len(ids)), (ids == tokenizer.eos_token_id).int().argmax(-1)]
    return pooled.float().cpu().numpy()


def _tokenize(tokenizer, prompts: Sequence[str], max_positions: int):
    return tokenizer(list(prompts), padding="max_length", truncation=True, max_length=min(MAX_TOKENS, max_positions),
                     return_tensors="pt")["input_ids"]


@dataclass
class ClipModel:
    """A CLIPModel, its tokenizer and its name: projected text/image embeddings and CLIP scores."""

    model: Any
    tokenizer: Any
    name: str
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def pixel_values(self, images):
        """CLIP preprocessing: short side resized (bicubic), centre crop to the model's size, (x - mean)/std."""
        from PIL import Image

        size = int(self.model.config.vision_config.image_size)
        pictures = [image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)) for image in images]
        batch = np.stack([cover(image, size, size) for image in pictures]).astype(np.float32) / 255.0
        batch = (batch - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.model.device, self.model.dtype)

    def text_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
        """Projected text embeddings E_T per prompt, each distinct one encoded once per call (timing stays per call)."""
        if not len(prompts):
            return np.zeros((0, self.model.config.projection_dim), np.float32)
        distinct = list(dict.fromkeys(prompts))
        ids = _tokenize(self.tokenizer, distinct, self.model.config.text_config.max_position_embeddings)
        with torch.inference_mode():
            encoded = dict(zip(distinct, _features(self.model.get_text_features(input_ids=ids.to(self.model.device)))))
        return np.stack([encoded[p] for p in prompts])

    def image_embeddings(self, images) -> np.ndarray:
        """Projected CLIP image embeddings E_I, one row per image."""
        with torch.inference_mode():
            return _features(self.model.get_image_features(pixel_values=self.pixel_values(images)))

    def clip_score(self, images, prompts: Sequence[str]) -> list[float]:
        """CLIP score of each image against its own prompt: 100 · max(cos(E_I, E_T), 0)."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not len(images):
            return []
        cos = np.sum(_unit(self.image_embeddings(images)) * _unit(self.text_embeddings(prompts)), axis=1)
        return [float(s) for s in clip_score_from_cosine(cos)]


def _features(out) -> np.ndarray:
    return (out if hasattr(out, "float") else out.pooler_output).float().cpu().numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
