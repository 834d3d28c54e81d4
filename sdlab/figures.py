"""Figures in one house style: labelled image grids (X/Y/Z plots), curves, heatmaps, GIFs; all written atomically."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from sdlab.io import atomic_path  # noqa: E402

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
CELL_INCHES = 1.6


def save_figure(fig, target: Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return Path(target)


def parse_overrides(text: str | None) -> dict[str, str]:
    """A row's `overrides` column (JSON of the job's command-line overrides) as a dict."""
    if not isinstance(text, str) or not text:
        return {}
    return json.loads(text)


def grid_axes(frame: pd.DataFrame) -> list[str]:
    """Keys that vary across rows: swept overrides in command-line order, then `seed` if it varies."""
    parsed = [parse_overrides(o) for o in frame.get("overrides", pd.Series([None] * len(frame)))]
    order = list(dict.fromkeys(k for p in parsed for k in p))
    axes = [k for k in order if len({p.get(k) for p in parsed}) > 1]
    if "seed" not in axes and "seed" in frame and frame["seed"].nunique() > 1:
        axes.append("seed")
    return axes


def axis_values(frame: pd.DataFrame, key: str) -> list[str]:
    """Per-row label value of `key`: the override value if there is one, else the column."""
    parsed = [parse_overrides(o) for o in frame.get("overrides", pd.Series([None] * len(frame)))]
    if key in frame.columns and not any(key in p for p in parsed):
        return [str(v) for v in frame[key]]
    return [p.get(key, str(frame[key].iloc[i]) if key in frame else "") for i, p in enumerate(parsed)]


def _cell_image(path: Path | None) -> np.ndarray | None:
    if path is None or not Path(path).is_file():
        return None
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def image_grid(frame: pd.DataFrame, base: Path, target: Path, axes: Sequence[str] | None = None, title: str = "") -> Path:
    """A labelled grid of the rows' images: axes[0] across columns, axes[1] down rows, the rest as pages."""
    axes = list(grid_axes(frame) if axes is None else axes)
    labels = {k: axis_values(frame, k) for k in axes}
    uniq = {k: list(dict.fromkeys(labels[k])) for k in axes}
    x_key, y_key = (axes + [None, None])[:2]
    pages = list(itertools.product(*[uniq[k] for k in axes[2:]])) or [()]
    xs, ys = (uniq[x_key] if x_key else [""]), (uniq[y_key] if y_key else [""])
    cells: dict[tuple, Path | None] = {}
    for i in range(len(frame)):
        key = tuple(labels[k][i] for k in axes)
        path = frame["image_path"].iloc[i] if "image_path" in frame else None
        cells.setdefault(key, (base / path) if isinstance(path, str) and path else None)
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(CELL_INCHES * len(xs) + 0.8, (CELL_INCHES * len(ys) + 0.4) * len(pages) + 0.3))
        subfigs = np.atleast_1d(fig.subfigures(len(pages), 1))
        for subfig, page in zip(subfigs, pages):
            page_label = ", ".join(f"{k}={v}" for k, v in zip(axes[2:], page))
            if page_label:
                subfig.suptitle(page_label, fontsize=10, fontweight="bold")
            grid = np.atleast_2d(subfig.subplots(len(ys), len(xs), squeeze=False))
            for (r, y), (c, x) in itertools.product(enumerate(ys), enumerate(xs)):
                ax = grid[r, c]
                key = tuple(v for v in (x, y)[: len(axes[:2])]) + page
                image = _cell_image(cells.get(key))
                ax.grid(False)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.spines[:].set_visible(False)
                if image is None:
                    ax.set_facecolor("0.85")
                    ax.text(0.5, 0.5, "failed" if key in cells else "missing", ha="center", va="center")
                else:
                    ax.imshow(image, interpolation="nearest")
                if r == 0 and x_key:
                    ax.set_title(f"{x_key}={x}" if len(str(x)) < 28 else str(x), fontsize=8)
                if c == 0 and y_key:
                    ax.set_ylabel(f"{y_key}={y}" if len(str(y)) < 28 else str(y), fontsize=8)
        if title:
            fig.suptitle(title)
        return save_figure(fig, target)
