"""Each text encoder's tokenizer and how many tokens of a prompt it keeps, read without loading any weights: CLIP 77
(with its start and end tokens), T5 the pipeline's `max_sequence_length` (SD3 256, Flux 512, with its closing </s>)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdlab.config import ModelSpec
from sdlab.errors import UserError
from sdlab.metrics.clip import MAX_TOKENS
from sdlab.models.loading import adapter_class, built_in, model_folder
from sdlab.models.tokenizer import BUILT_IN_TOKENIZERS

KIND_NAMES = {"clip": "CLIP", "t5": "T5"}


@dataclass(frozen=True)
class EncoderTokenizer:
    """One text encoder's tokenizer and the number of tokens of a prompt the encoder sees."""

    encoder: str  # the pipeline attribute: text_encoder, text_encoder_2, text_encoder_3
    kind: str     # clip | t5
    tokenizer: Any
    limit: int

    @property
    def label(self) -> str:
        return f"{self.encoder} ({KIND_NAMES[self.kind]})"


def encoder_tokenizers(spec: ModelSpec) -> tuple[list[EncoderTokenizer], list[str]]:
    """Every text encoder's tokenizer with its limit, in pipeline order, and a note per encoder left out or stood in."""
    cls, arch = adapter_class(spec), built_in(spec)
    folder = None if arch else model_folder(spec)
    left_out = cls.load_options(spec)
    encoders, notes = [], []
    for attribute, kind in cls.tokenizers.items():
        name = f"{attribute.replace('tokenizer', 'text_encoder')} ({KIND_NAMES[kind]})"
        if attribute in left_out:
            notes.append(f"{name} is left out (model.t5=false): the transformer gets zeros in its place")
            continue
        if arch and kind == "t5" and arch.published:
            notes.append(f"{name} is not counted: T5's vocabulary is not packaged with model={spec.name}; "
                         f"a real {cls.family} model counts it (model.path=DIR)")
            continue
        if arch and kind == "t5":
            notes.append(f"{name} uses the tiny models' T5 vocabulary: the shapes grammar's words, others letter by "
                         "letter")
        tokenizer = BUILT_IN_TOKENIZERS[kind]() if arch else folder_tokenizer(folder / attribute, kind)
        encoders.append(encoder_tokenizer(cls, spec, attribute, kind, tokenizer))
    return encoders, notes


def encoder_tokenizer(cls, spec: ModelSpec, attribute: str, kind: str, tokenizer) -> EncoderTokenizer:
    """The tokenizer at `attribute` with its encoder's limit: its own for CLIP (77), `ModelAdapter.t5_limit` for T5."""
    own = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None  # HF's "no limit" sentinel
    limit = (own or MAX_TOKENS) if kind == "clip" else cls.t5_limit(spec, own)
    return EncoderTokenizer(attribute.replace("tokenizer", "text_encoder"), kind, tokenizer, int(limit))


def folder_tokenizer(folder, kind: str):
    """A diffusers folder's tokenizer (CLIPTokenizer or T5TokenizerFast), local files only; a bad folder is one line."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    cls = CLIPTokenizer if kind == "clip" else T5TokenizerFast
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{folder} holds no readable {KIND_NAMES[kind]} tokenizer: "
                        f"{str(e).strip().splitlines()[0]}") from None


def truncation_warnings(model, text: str) -> list[str]:
    """One line per loaded text encoder that cuts `text`: the tokens it drops and which encoders read it whole."""
    loaded = [encoder_tokenizer(type(model), model.spec, attribute, kind, model.component(attribute))
              for attribute, kind in model.tokenizers.items() if model.component(attribute) is not None]
    counts = [(e, len(e.tokenizer(text, truncation=False, add_special_tokens=True)["input_ids"])) for e in loaded]
    whole = [e.label for e, n in counts if n <= e.limit]
    return [f"the prompt is {n} tokens for {e.label}, past its {e.limit}: the last {n - e.limit} are dropped"
            + (f" ({', '.join(whole)} read{'s' * (len(whole) == 1)} all of it)" if whole else "")
            for e, n in counts if n > e.limit]
