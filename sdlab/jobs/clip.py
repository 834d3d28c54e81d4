"""The clip_tokens and clip_similarity jobs: CLIP tokenization, text-text and image-caption similarity."""

from __future__ import annotations

import logging
import textwrap

import numpy as np

from sdlab.bench.captions import counted
from sdlab.bench.figures import bar_chart, heatmap
from sdlab.bench.records import identity, ordered, write_table
from sdlab.jobs import JobContext, job
from sdlab.jobs.analysis import article_reports, input_images
from sdlab.lazy import pandas as pd
from sdlab.metrics.clip import (clip_score_from_cosine, cosine_matrix, long_matrix, pooled_text_embeddings, token_rows,
                                token_table)
from sdlab.models.clip import load_clip
from sdlab.models.loading import load_model
from sdlab.models.text_tokenizers import encoder_tokenizers

log = logging.getLogger(__name__)
XLABELS = {"clip": "CLIP tokens incl. <|startoftext|> and <|endoftext|>", "t5": "T5 tokens incl. the closing </s>"}
COSINE = {"vmin": -1, "vmax": 1, "value_label": "cosine"}  # one colour means one cosine in every matrix


def truncation_claim(tables: list[pd.DataFrame], encoders, labelled: bool) -> str:
    """A line per text encoder (named when `labelled`): its longest prompt, how many it cuts and what one loses."""
    parts = []
    for table, e in zip(tables, encoders):
        cut = table[table["truncated"]]
        where = (f"{len(cut)} of {counted(len(table), 'prompt')} cut at {e.limit} tokens\nthe {cut['n_tokens'].iloc[0]}"
                 f"-token one loses {textwrap.shorten(cut['dropped'].iloc[0], 60, placeholder='…')!r}"
                 if len(cut) else f"none cut at {e.limit} tokens")
        where = f"the longest prompt is {counted(int(table['n_tokens'].max()), 'token')}; {where}"
        parts.append(f"{e.label}: {where}" if labelled else where)
    return "\n".join(parts)


@job("clip_tokens")
def run_tokens(ctx: JobContext) -> pd.DataFrame:
    """A row per prompt and text encoder, table `tokens` per token, token_counts.png with a panel per encoder."""
    spec, prompts = ctx.run.model, ctx.recipe.prompts
    encoders, notes = encoder_tokenizers(spec)
    for note in notes:
        log.warning("%s", note)
    tables = []
    for e in encoders:
        table = token_table(e.tokenizer, prompts, e.limit)
        table["warning"] = [f"{e.label}: {w}" if w else "" for w in table["warning"]]
        for warning in table["warning"][table["truncated"]]:
            log.warning("%s", warning)
        tables.append(table.assign(encoder=e.encoder, tokenizer=e.kind, max_tokens=e.limit))
    write_table(pd.concat([token_rows(t, e.limit).assign(encoder=e.encoder) for t, e in zip(tables, encoders)],
                          ignore_index=True), ctx.out_dir, "tokens")
    panels = [{"labels": prompts, "values": list(t["n_tokens"]), "limit": e.limit, "xlabel": XLABELS[e.kind],
               "notes": [f"{n}" + (" truncated" if cut else "") for n, cut in zip(t["n_tokens"], t["truncated"])],
               "title": f"tokens per prompt; {e.label} sees at most {e.limit} (dashed)"}
              for t, e in zip(tables, encoders)]
    bar_chart(panels, ctx.out_dir / "token_counts.png",
              title="\n".join([truncation_claim(tables, encoders, len(encoders) + len(notes) > 1),
                               *(textwrap.fill(note, 90) for note in notes)]))
    rows = pd.concat(tables, ignore_index=True).to_dict("records")
    return ordered([{**identity(ctx, "clip_tokens", spec.name), **row} for row in rows])


def text_embeddings(ctx: JobContext, prompts: list[str], clip) -> tuple[np.ndarray, str]:
    """The clip model's projected text embeddings, else the model text encoder's pooled output; with its name."""
    if clip is not None:
        return clip.text_embeddings(prompts), f"clip={clip.name} projected text embedding (get_text_features)"
    model = load_model(ctx.run.model)
    name = f"model={ctx.run.model.name} text_encoder pooled output (EOS token after final layer norm, unprojected)"
    return pooled_text_embeddings(model.text_encoder, model.tokenizer, prompts), name


def nearest_claim(matrix: np.ndarray) -> str:
    """What the first prompt's row says: which prompt is closest to it and which farthest, with the cosines."""
    if len(matrix) < 3:
        return f"cos(P1, P2) = {matrix[0, 1]:.2f}" if len(matrix) == 2 else ""
    others = matrix[0, 1:]
    near, far = int(np.argmax(others)) + 2, int(np.argmin(others)) + 2
    return f"P1 is closest to P{near} ({others.max():.2f}) and farthest from P{far} ({others.min():.2f})"


def diagonal_claim(cos: np.ndarray) -> str:
    """Images against their own captions (row i, column i): how many pick their own; matched vs unmatched mean cos."""
    n = min(cos.shape)
    if n < 2:
        return ""
    hits = int((cos[:n].argmax(axis=1) == np.arange(n)).sum())
    matched = np.diag(cos[:n, :n]).mean()
    unmatched = cos[:n, :n][~np.eye(n, dtype=bool)].mean()
    return f"{hits} of {n} images closest to their own caption; matched cos {matched:.2f} vs unmatched {unmatched:.2f}"


@job("clip_similarity")
def run_similarity(ctx: JobContext) -> pd.DataFrame:
    """The prompts' text-text cosine matrix; with a clip model, the image-caption one of `images` or drawn ones."""
    spec, recipe = ctx.run.model, ctx.recipe
    prompts = list(recipe.prompts)
    clip = load_clip(ctx.run.recipe.get("clip"))
    embeddings, embedding = text_embeddings(ctx, prompts, clip)
    matrix = cosine_matrix(embeddings)
    text = long_matrix(matrix, prompts, prompts, "prompt_a", "prompt_b").assign(embedding=embedding)
    keys = [f"P{i + 1}" for i in range(len(prompts))]
    heatmap(matrix, [f"{k}: {p}" for k, p in zip(keys, prompts)], keys, ctx.out_dir / "text_similarity.png",
            **COSINE, title=f"{nearest_claim(matrix)}\ncos(E_T(a), E_T(b)), {embedding}{article_reports(ctx.run)}")
    rows = [{**identity(ctx, "clip_similarity", spec.name), **r} for r in text.to_dict("records")]
    if clip is None or not (recipe.images or recipe.num_images):
        log.info("image-caption similarity skipped: %s", "num_images=0 and no images" if clip else
                 "clip=none (choose clip=mini or clip=openai_l14)")
        return ordered(rows)
    width, height = ctx.run.params.width, ctx.run.params.height
    images = input_images(recipe, width, height, recipe.num_images, ctx.run.limits["max_input_pixels"])
    names = [name for name, _, _ in images]
    captions = prompts if recipe.images else [caption for _, _, caption in images]
    cos = cosine_matrix(clip.image_embeddings([image for _, image, _ in images]), clip.text_embeddings(captions))
    pairs = long_matrix(cos, names, captions, "image", "caption").assign(
        clip_score=lambda f: clip_score_from_cosine(f["cosine"]), clip=clip.name)
    write_table(pairs, ctx.out_dir, "image_text_similarity")
    heatmap(cos, names, captions, ctx.out_dir / "image_text_similarity.png", **COSINE,
            row_images=[image for _, image, _ in images],
            title=f"{diagonal_claim(cos)}\ncos(E_I(image), E_T(caption)), clip={clip.name}; CLIP score = 100 max(cos, 0)")
    return ordered(rows)
