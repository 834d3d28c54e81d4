"""Model architectures and the shipped tokenizer."""

from __future__ import annotations

from sdlab.models.architectures import ARCHITECTURES, build_on_meta
from sdlab.models.tokenizer import load_tokenizer


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sd15_architecture_parameter_counts_on_meta():
    parts = build_on_meta(ARCHITECTURES["sd15_arch"])
    assert count(parts["unet"]) == 859_520_964
    assert count(parts["vae"]) == 83_653_863
    assert count(parts["text_encoder"]) == 123_060_480
    assert next(parts["unet"].parameters()).device.type == "meta"


def test_clip_tokenizer_matches_sd():
    tokenizer = load_tokenizer()
    assert len(tokenizer) == 49408
    ids = tokenizer("a pirate ship sailing through a storm, dramatic lighting, oil painting").input_ids
    assert len(ids) == 15
    assert ids[0] == 49406 and ids[-1] == 49407
    assert tokenizer.convert_ids_to_tokens(ids[1:4]) == ["a</w>", "pirate</w>", "ship</w>"]


def test_tiny_pipeline_is_deterministic(tiny):
    from sdlab.models.architectures import build_components

    again = build_components(ARCHITECTURES["tiny"], seed=0)["unet"]
    model, _ = tiny
    first = next(model.denoiser.parameters())
    assert (first == next(again.parameters())).all()
