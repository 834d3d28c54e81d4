"""The labelled X/Y/Z grid: axes from the swept overrides, pages only for combinations that exist."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from PIL import Image

from sdlab.figures import grid_axes, image_grid


def frame_of(tmp_path, cells: list[dict]) -> pd.DataFrame:
    rows = []
    for i, overrides in enumerate(cells):
        path = f"img{i}.png"
        Image.fromarray(np.full((16, 16, 3), 40 * i % 255, np.uint8)).save(tmp_path / path)
        rows.append({"overrides": json.dumps(overrides), "seed": int(overrides.get("seed", 0)), "image_path": path})
    return pd.DataFrame(rows)


def test_axes_follow_command_line_order_and_grid_is_drawn(tmp_path):
    cells = [{"seed": str(s), "guidance_scale": str(g)} for s in (1, 2) for g in (1, 7.5)]
    frame = frame_of(tmp_path, cells)
    assert grid_axes(frame) == ["seed", "guidance_scale"]
    out = image_grid(frame, tmp_path, tmp_path / "grid.png")
    assert out is not None and Image.open(out).size[0] > 200


def test_sparse_mixture_of_jobs_draws_no_grid(tmp_path, caplog):
    cells = [{"experiment": f"e{i}", "prompt": f"p{i}", "scheduler": f"s{i}"} for i in range(6)]
    assert image_grid(frame_of(tmp_path, cells), tmp_path, tmp_path / "grid.png") is None
    assert not (tmp_path / "grid.png").exists() and "too few" in caplog.text
