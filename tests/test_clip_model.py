"""The CLIP loader of the `clip` config group and the CLIP score, on a tiny random CLIPModel built in code."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis_helpers import tiny_clip

from sdlab.errors import UserError
from sdlab.models.clip import load_clip


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny CLIPModel saved as safetensors with its tokenizer and a [-1, 1] preprocessor config."""
    folder = tmp_path_factory.mktemp("clip")
    clip = tiny_clip()
    clip.model.save_pretrained(str(folder), safe_serialization=True)
    clip.tokenizer.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return folder


def images(n: int, size: int = 48):
    rng = np.random.default_rng(0)
    return [(rng.random((size, size + 8, 3)) * 255).astype(np.uint8) for _ in range(n)]


def test_clip_none_is_no_model():
    assert load_clip(None) is None
    assert load_clip({"name": "none", "path": None, "repo_id": None}) is None


def test_load_clip_from_folder_and_score(clip_folder):
    clip = load_clip({"name": "mini", "path": str(clip_folder)})
    assert clip.image_mean == (0.5, 0.5, 0.5)
    assert load_clip({"name": "mini", "path": str(clip_folder)}) is clip  # cached per process
    scores = clip.clip_score(images(3), ["a red circle", "a blue square", "a green cross"])
    assert len(scores) == 3 and all(0.0 <= s <= 100.0 for s in scores)
    assert scores == clip.clip_score(images(3), ["a red circle", "a blue square", "a green cross"])
    assert clip.pixel_values(images(2)).shape == (2, 3, 32, 32)
    assert clip.text_embeddings(["a", "b"]).shape == (2, 16)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        clip.clip_score(images(2), ["a"])


def test_each_call_encodes_its_own_distinct_prompts_once():
    clip = tiny_clip()
    fresh = tiny_clip()
    prompts = ["a red circle", "a blue square", "a red circle"]
    expected = fresh.text_embeddings(prompts)
    encoded = []
    features = clip.model.get_text_features
    clip.model.get_text_features = lambda input_ids, **kw: encoded.append(len(input_ids)) or features(input_ids, **kw)
    assert np.allclose(clip.text_embeddings(prompts), expected, atol=1e-6)
    assert np.allclose(clip.text_embeddings(["a blue square", "a green cross"])[0], expected[1], atol=1e-6)
    clip.clip_score(images(2), ["a red circle", "a green cross"])
    assert encoded == [2, 2, 2]  # each call its distinct prompts, whatever an earlier call encoded


def test_each_scoring_call_encodes_its_own_prompts_so_no_cell_rides_on_an_earlier_calls_encoding(clip_folder):
    from sdlab.bench.scorers import clip_score

    cfg = {"name": "mini", "path": str(clip_folder)}
    score, clip = clip_score({"clip": cfg}, "cpu"), load_clip(cfg)
    encoded, features = [], clip.model.get_text_features
    clip.model.get_text_features = lambda input_ids, **kw: encoded.append(len(input_ids)) or features(input_ids, **kw)
    try:
        prompts = ["a red circle", "a blue square", "a red circle"]
        first, second = score(images(3), prompts), score(images(3), prompts)
        assert encoded == [2, 2]  # the second cell pays for its two prompts inside its time_clip_s, as the first did
        assert [r["clip_score"] for r in first] == [r["clip_score"] for r in second]
    finally:
        del clip.model.get_text_features


def test_missing_mini_clip_is_one_user_error_line(tmp_path):
    with pytest.raises(UserError) as e:
        load_clip({"name": "mini", "path": str(tmp_path / "models" / "mini" / "clip")})
    assert "clip=mini" in str(e.value) and "\n" not in str(e.value)


def test_pickle_only_clip_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(UserError, match="refusing pickle weights .*pytorch_model.bin"):
        load_clip({"name": "mini", "path": str(tmp_path)})


def test_openai_l14_missing_from_cache_is_a_user_error():
    from sdlab.models.loading import cached_snapshot

    try:
        cached_snapshot("openai/clip-vit-large-patch14")
        pytest.skip("openai/clip-vit-large-patch14 is in the local cache")
    except UserError:
        pass
    with pytest.raises(UserError, match="openai/clip-vit-large-patch14"):
        load_clip({"name": "openai_l14", "path": None, "repo_id": "openai/clip-vit-large-patch14"})
