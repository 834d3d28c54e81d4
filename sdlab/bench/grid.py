"""Labelled image grids (X/Y/Z plots) composed with PIL: images at native resolution, written atomically."""

from __future__ import annotations

import importlib.util
import math
import logging
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from sdlab.bench.captions import counted, drawable, record_caption, uncut
from sdlab.bench.resume import NOT_RUN
from sdlab.io import atomic_save
from sdlab.lazy import pandas as pd

log = logging.getLogger(__name__)

MAX_GRID_CELLS = 400
CELL_MIN, CELL_MAX = 128, 512  # small images are enlarged (nearest) to CELL_MIN, large ones reduced to CELL_MAX
MAX_GRID_PIXELS = 16_000_000  # big grids get smaller cells (down to CELL_MIN) to stay about this size
GAP, MARGIN, FONT_SIZE = 4, 8, 13
LINE_SPACING = 2  # pixels between the lines of a label, as measured and as drawn
SEED_GAP = 2  # between the seeds of one cell: narrower than between cells, so a cell reads as one
EMPTY_CELL, INK, NOTE_INK = (217, 217, 217), (20, 20, 20), (192, 32, 32)
TITLE_MIN_WIDTH = 360  # a title wider than the grid wraps to the grid's width, or to this on small grids
LABEL_WIDTH, LABEL_LINES = 240, 4  # a value's label wraps to the cell's width or this, and a long one is cut short


def axis_values(frame: pd.DataFrame, key: str) -> list[str]:
    """Per row, the label of its value of `key` (a number as written, 7.5 and 1 not 1.0; "" for none)."""
    if key not in frame:
        return [""] * len(frame)
    return ["" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else f"{v:g}"
            if isinstance(v, float) else str(v) for v in frame[key]]


@lru_cache(maxsize=4)
def font(bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (the figures' font, from matplotlib's package data, without importing it), else PIL's own."""
    spec = importlib.util.find_spec("matplotlib")
    if spec and spec.origin:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / f"DejaVuSans{'-Bold' if bold else ''}.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), FONT_SIZE)
    return ImageFont.load_default(FONT_SIZE)


def axis_labels(key: str | None, values: Sequence[str]) -> list[str]:
    """An axis's labels: `key=value`, or the value alone when one is long or a `*_label` column; "" without a key."""
    named = key and not key.endswith("_label") and max(map(len, values), default=0) < 28
    return [f"{key}={value}" if named else value if key else "" for value in values]


def cell_side(paths: Sequence[Path], cells: int) -> int:
    """The first image's longer side, enlarged by a whole factor to CELL_MIN or cut to CELL_MAX and MAX_GRID_PIXELS."""
    largest = max(CELL_MIN, min(CELL_MAX, int((MAX_GRID_PIXELS / max(cells, 1)) ** 0.5)))
    for path in paths:
        if path.is_file():
            with Image.open(path) as image:
                side = max(image.size)
            return side * -(-CELL_MIN // side) if side < CELL_MIN else min(side, largest)
    return CELL_MIN


def fitted(path: Path | None, side: int) -> Image.Image | None:
    """The image at `path` scaled to fit a `side` square (nearest when enlarging), or None if it is missing."""
    if path is None or not path.is_file():
        return None
    with Image.open(path) as image:
        image = image.convert("RGB")
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)


def text_size(draw: ImageDraw.ImageDraw, text: str, bold: bool = False) -> tuple[int, int]:
    """Width and height of (possibly multi-line) `text` in pixels."""
    if not text:
        return 0, 0
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font(bold), spacing=LINE_SPACING)
    return right - left, bottom - top


def image_grid(frame: pd.DataFrame, base: Path, target: Path, axes: Sequence[str], title: str = "",
               seeds_within: bool = False, note: str = "") -> Path | None:
    """A labelled grid: axes[0] across, axes[1] down, the rest pages; `note`: a column written under each image."""
    if "image_path" in frame:  # a row without an image is a cell only when it failed (or did not run)
        failed = frame["status"].ne("ok") if "status" in frame else False
        frame = frame[frame["image_path"].notna() | failed].reset_index(drop=True)
    within = ["seed"] if seeds_within and "seed" in axes and len(axes) > 2 else []
    axes = [k for k in axes if k not in within]
    labels = {k: axis_values(frame, k) for k in axes + within}
    uniq = {k: list(dict.fromkeys(labels[k])) for k in axes + within}
    aspect = lambda columns, rows: max(columns * len(uniq["seed"]), rows) / min(columns * len(uniq["seed"]), rows)  # noqa: E731
    if within and aspect(len(uniq[axes[1]]), len(uniq[axes[0]])) < aspect(len(uniq[axes[0]]), len(uniq[axes[1]])):
        axes[:2] = axes[1::-1]  # 17 schedulers x 6 seeds would be one row 100 images wide: the schedulers go down
    x_key, y_key = (axes + [None, None])[:2]
    pages = list(dict.fromkeys(tuple(labels[k][i] for k in axes[2:]) for i in range(len(frame)))) or [()]
    xs, ys = (uniq[x_key] if x_key else [""]), (uniq[y_key] if y_key else [""])
    seeds = uniq["seed"] if within else []
    n_cells = len(xs) * len(ys) * len(pages) * max(1, len(seeds))
    if n_cells > MAX_GRID_CELLS:
        log.warning("no %s: %d x %d x %d x %d images is past %d; sweep fewer values or pass axes", target.name,
                    len(xs), len(ys), len(pages), max(1, len(seeds)), MAX_GRID_CELLS)
        return None
    keys = [tuple(labels[k][i] for k in axes + within) for i in range(len(frame))]
    notes = dict(zip(keys, frame[note])) if note else {}
    cells: dict[tuple, Path | str] = {}  # an image's path, or what stands in an empty cell: "failed", "not run"
    for key, path, error in zip(keys, *(frame.get(c, [None] * len(frame)) for c in ("image_path", "error"))):
        empty = "not run" if error == NOT_RUN else "failed"
        cells[key] = Path(base) / path if isinstance(path, str) and path else cells.get(key, empty)
    if len(cells) < n_cells / 2:
        log.warning("no %s: %d images fill too few of %d cells to be a grid (the jobs' own grids still stand)",
                    target.name, len(cells), n_cells)
        return None
    if seeds:
        title = f"{title}\n" * bool(title) + f"each cell: seed {', '.join(seeds)}, left to right"
    atomic_save(draw_grid(cells, axes, xs, ys, pages, title, seeds, notes), target, format="PNG")
    images = sum(isinstance(found, Path) for found in cells.values())
    record_caption(target, title or f"{' x '.join(axes)} grid of {counted(images, 'image')}")
    return Path(target)


def wrapped(draw: ImageDraw.ImageDraw, text: str, width: int, bold: bool = False, most: int | None = None) -> str:
    """`text` as drawn, broken at spaces (or in a long word) to fit `width` pixels; at `most` lines, the last cut."""
    text = drawable(text, font(bold).path)
    limit = most if most is not None else len(text) + 1
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split(" "):
            if len(lines) > limit:
                break
            trial = f"{current} {word}" if current else word
            if text_size(draw, trial, bold)[0] <= width:
                current = trial
                continue
            lines += [current] if current else []
            while text_size(draw, word, bold)[0] > width and len(lines) <= limit:
                cut = fitting(draw, word, width, bold)
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        lines.append(current)
    if len(lines) > limit:
        last = lines[limit - 1]
        lines = lines[:limit - 1] + [last[:fitting(draw, last, width, bold, end="…")] + "…"]
    return "\n".join(lines)


def even_lines(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """Each line of bold `text` wrapped to `width` pixels in as few lines as it takes, of even width: no orphan."""
    lines = []
    for line in text.split("\n"):
        breaks = lambda w: wrapped(draw, line, w, bold=True).count("\n")  # noqa: E731
        count, low, high = breaks(width), 1, width
        while low < high:  # the narrowest width that takes no more lines
            middle = (low + high) // 2
            low, high = (low, middle) if breaks(middle) <= count else (middle + 1, high)
        lines.append(wrapped(draw, line, low, bold=True))
    return "\n".join(lines)


def fitting(draw: ImageDraw.ImageDraw, text: str, width: int, bold: bool = False, end: str = "") -> int:
    """How many of `text`'s first characters, followed by `end`, fit `width` pixels on one line (at least one)."""
    low, high = 1, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if text_size(draw, text[:middle] + end, bold)[0] <= width else (low, middle - 1)
    return uncut(text, low) or low  # a character's escape stays whole unless it alone is too wide


def draw_grid(cells: dict[tuple, Path | str], axes: list[str], xs: list[str], ys: list[str], pages: list[tuple],
              title: str, seeds: Sequence[str] = (), notes: dict[tuple, str] | None = None) -> Image.Image:
    """Column labels on top, row labels on the left, a bold header per page; with `seeds`, one image per seed a cell."""
    x_key, y_key = (axes + [None, None])[:2]
    strip = list(seeds) or [None]
    side = cell_side([p for p in cells.values() if isinstance(p, Path)], len(xs) * len(ys) * len(pages) * len(strip))
    cell_w = len(strip) * (side + SEED_GAP) - SEED_GAP
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    col_labels = [wrapped(measure, text, max(cell_w - 2 * GAP, LABEL_WIDTH), most=LABEL_LINES)
                  for text in axis_labels(x_key, xs)]
    row_labels = [wrapped(measure, text, LABEL_WIDTH, most=LABEL_LINES) for text in axis_labels(y_key, ys)]
    notes = {key: wrapped(measure, text, side, bold=True, most=LABEL_LINES) for key, text in (notes or {}).items()
             if text}
    # room under each row of images for its notes, nearer their own images than the next row's
    foot = max((text_size(measure, t, bold=True)[1] + GAP * 3 for t in notes.values()), default=0)
    left = max(text_size(measure, t)[0] for t in row_labels) + (GAP * 2 if y_key else 0)
    head = max(text_size(measure, t)[1] for t in col_labels) + (GAP * 2 if x_key else 0)
    col_w = max(cell_w, max(text_size(measure, t)[0] for t in col_labels) + 2 * GAP)  # labels never overlap
    col_gap = GAP * 4 if seeds else GAP  # cells of several seeds stand apart
    page_w = left + len(xs) * (col_w + col_gap) - col_gap
    page_labels = [wrapped(measure, ", ".join(f"{k}={v}" for k, v in zip(axes[2:], page)),
                           max(page_w - left, TITLE_MIN_WIDTH), bold=True, most=LABEL_LINES) for page in pages]
    page_head = max(text_size(measure, t, bold=True)[1] for t in page_labels) + (GAP * 3 if page_labels[0] else 0)
    page_h = page_head + head + len(ys) * (side + foot + GAP) - GAP
    title = even_lines(measure, title, max(page_w, TITLE_MIN_WIDTH))
    title_h = text_size(measure, title, bold=True)[1] + GAP * 3 if title else 0
    width = max(page_w, *(text_size(measure, t, bold=True)[0] for t in (title, *page_labels))) + 2 * MARGIN
    canvas = Image.new("RGB", (width, title_h + len(pages) * (page_h + MARGIN) + MARGIN), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.multiline_text((width // 2, MARGIN), title, fill=INK, font=font(True), anchor="ma", align="center",
                            spacing=LINE_SPACING)
    for p, page in enumerate(pages):
        top = MARGIN + title_h + p * (page_h + MARGIN)
        if page_labels[p]:
            half = text_size(measure, page_labels[p], bold=True)[0] // 2 + 1  # over its columns, where it fits
            centre = min(max(MARGIN + left + (page_w - left) // 2, MARGIN + half), width - MARGIN - half)
            draw.multiline_text((centre, top), page_labels[p], fill=INK, font=font(True), anchor="ma", align="center",
                                spacing=LINE_SPACING)
        grid_top = top + page_head + head
        for c, text in enumerate(col_labels):
            draw.multiline_text((MARGIN + left + c * (col_w + col_gap) + col_w // 2, grid_top - GAP), text, fill=INK,
                                font=font(), anchor="md", align="center", spacing=LINE_SPACING)
        for r, y in enumerate(ys):
            y0 = grid_top + r * (side + foot + GAP)
            draw.multiline_text((MARGIN + left - GAP * 2, y0 + side // 2), row_labels[r], fill=INK, font=font(),
                                anchor="rm", align="right", spacing=LINE_SPACING)
            for c, x in enumerate(xs):
                cell = (x, y)[:len(axes[:2])] + page
                for s, seed in enumerate(strip):
                    key = cell + ((seed,) if seeds else ())
                    x0 = MARGIN + left + c * (col_w + col_gap) + (col_w - cell_w) // 2 + s * (side + SEED_GAP)
                    found = cells.get(key, "missing")
                    image = fitted(found, side) if isinstance(found, Path) else None
                    if image is None:  # a failed cell, one that did not run, or an image gone since
                        draw.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=EMPTY_CELL)
                        draw.text((x0 + side // 2, y0 + side // 2), found if isinstance(found, str) else "missing",
                                  fill=INK, font=font(), anchor="mm")
                    else:
                        canvas.paste(image, (x0 + (side - image.width) // 2, y0 + (side - image.height) // 2))
                    if key in notes:  # framed with its note: which image it names is never in doubt
                        draw.rectangle((x0 - 2, y0 - 2, x0 + side + 1, y0 + side + 1), outline=NOTE_INK, width=2)
                        draw.multiline_text((x0 + side // 2, y0 + side + GAP // 2), notes[key], fill=NOTE_INK,
                                            font=font(True), anchor="ma", align="center", spacing=LINE_SPACING)
    return canvas
