"""Shared test helpers for the analysis jobs: recipe configs without Hydra, figure checks, one torch thread."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def config_for(recipe: str, **overrides) -> dict:
    """The composed config of experiments/<recipe>.yaml on model=tiny, as the cli would hand it to the job."""
    base = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
    config = {k: v for k, v in base.items() if k not in ("defaults", "hydra")}
    recipe_data = yaml.safe_load((ROOT / "experiments" / f"{recipe}.yaml").read_text()) or {}
    config.update({k: v for k, v in recipe_data.items() if k != "defaults"})
    model = {}
    for path in (ROOT / "conf" / "common" / "model.yaml", ROOT / "conf" / "model" / "tiny.yaml"):
        model.update({k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "defaults"})
    config["model"] = model
    options = yaml.safe_load((ROOT / "conf" / "common" / "scheduler.yaml").read_text())
    config["scheduler"] = {**options, "name": "dpmpp_2m"}
    config["clip"] = {"name": "none", "path": None, "repo_id": None}
    config.update(overrides)
    return config


def context(recipe: str, out_dir: Path, **overrides):
    """A JobContext for `recipe` writing into out_dir."""
    from sdlab.bench.run import parse
    from sdlab.jobs import JobContext

    return JobContext(run=parse(config_for(recipe, **overrides)), out_dir=Path(out_dir), experiment=recipe,
                      overrides=json.dumps({}), run_id="test")


def check_image(path: Path, min_size: tuple[int, int] = (64, 64), max_size: tuple[int, int] = (4000, 4000),
                size: tuple[int, int] | None = None) -> Image.Image:
    """A real, non-blank image file within the expected size range (or exactly `size`)."""
    path = Path(path)
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as image:
        image.load()
        if size is not None:
            assert image.size == size, (path, image.size)
        assert min_size[0] <= image.width <= max_size[0] and min_size[1] <= image.height <= max_size[1], (path, image.size)
        grey = np.asarray(image.convert("L"), dtype=float)
        assert grey.std() > 2, f"{path} looks blank"
        return image.copy()


def figure_size(width_in: float, height_in: float, dpi: int = 100, slack: float = 0.35, grow: float = 1.15) -> dict:
    """Size bounds of a matplotlib figure of width_in x height_in inches saved with a tight bounding box (titles may widen it by `grow`)."""
    w, h = width_in * dpi, height_in * dpi
    return {"min_size": (int(w * (1 - slack)), int(h * (1 - slack))), "max_size": (int(w * grow), int(h * grow))}


def tiny_clip():
    """A small random-weight CLIPModel with the packaged tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from sdlab.metrics.clip import ClipModel
    from sdlab.models.tokenizer import load_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    return ClipModel(model=CLIPModel(config).eval(), tokenizer=load_tokenizer(), name="tiny")
