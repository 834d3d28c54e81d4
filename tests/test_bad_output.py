"""NaN, inf and all-black images are never `ok`, and each image of a batch is judged on its own."""

from __future__ import annotations

import pandas as pd
import torch

from sdlab.models import generate


def test_nan_pixels_from_finite_latents_are_caught():
    latents = torch.zeros(2, 4, 8, 8)
    pixels = torch.rand(2, 3, 64, 64)
    pixels[1, 0, 3, 3] = float("nan")
    assert generate.check_output(latents, pixels, [7, 8]) == {1: "NaN/inf in the decoded pixels of seed 8"}
    pixels[1] = float("nan")  # an all-NaN image has a NaN maximum, which no `<=` test catches
    assert 1 in generate.check_output(latents, pixels, [7, 8])


def test_float16_overflow_gives_failed_rows_not_black_pngs(run_sdlab, tmp_path, monkeypatch):
    """A UNet whose half-precision output overflows (past float16's 65504: inf), as a model run in float16 can."""
    from diffusers import UNet2DConditionModel

    forward = UNet2DConditionModel.forward

    def overflowing(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        (out[0] if isinstance(out, tuple) else out.sample).mul_(1e5)
        return out

    monkeypatch.setattr(UNet2DConditionModel, "forward", overflowing)
    args = ("model=tiny", "model.dtype=float16", "seeds=[1,2]", "num_inference_steps=2", "threads=1",
            f"hydra.run.dir={tmp_path}")
    assert run_sdlab(*args) == 1
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert frame["status"].tolist() == ["error", "error"]
    assert frame["error"].str.contains("NaN/inf").all()
    assert not list(tmp_path.rglob("*.png"))


def test_one_black_image_does_not_fail_its_siblings(run_sdlab, tmp_path, monkeypatch):
    decode = generate.decode_latents

    def second_black(model, latents):
        images = decode(model, latents)
        images[1] = 0
        return images

    monkeypatch.setattr(generate, "decode_latents", second_black)
    assert run_sdlab("model=tiny", "seeds=[1,2,3]", "num_inference_steps=2", "threads=1",
                     f"hydra.run.dir={tmp_path}") == 1
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert frame["status"].tolist() == ["ok", "error", "ok"]
    assert "all-black image for seed 2" in frame["error"][1]
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "images").iterdir()) == ["seed1", "seed3"]
