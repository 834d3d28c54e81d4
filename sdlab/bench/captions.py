"""Figure captions kept beside the figures (captions.json: file name -> title), for indexes and reports."""

from __future__ import annotations

import json
import os
import re
import textwrap
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from sdlab.io import atomic_write_text, read_json_object

CAPTIONS = "captions.json"
ESCAPE = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")  # how `drawable` writes a character
CLAUSE_BREAK = re.compile(r"(?<![,;:\s])\s*\n")  # a title's line not ending in , ; or : ends a clause


def short_prompt(prompt: str, width: int = 80) -> str:
    """A prompt for a title: whole up to `width` characters, else cut after a word with an ellipsis."""
    return textwrap.shorten(prompt, width, placeholder="…")


def counted(n: int, noun: str, plural: str = "") -> str:
    """`n` and its noun, singular for exactly one: "1 seed", "3 seeds", "0 seeds"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def at_ends(values: Sequence[str], places: Sequence[str], axis: str) -> str:
    """A sweep's first and last value where each was taken ("0.25 at w=1, 0.56 at w=3"); of one place, that a single
    `axis` compares nothing."""
    if len(places) == 1:
        return f"{values[0]} at {places[0]} (one {axis}: nothing to compare)"
    return f"{values[0]} at {places[0]}, {values[-1]} at {places[-1]}"


def span(values: Sequence[float], digits: int = 1) -> str:
    """The least and greatest of `values` as "lo-hi", or one number where they round alike."""
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return low if low == high else f"{low}-{high}"


def printable(value) -> str:
    """`value` on one line, unprintable characters (line breaks, tabs) escaped as Python writes them, for log lines."""
    text = str(value)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@lru_cache(maxsize=8)
def glyphs(font_path: str) -> frozenset[int]:
    """The code points the font file at `font_path` has a glyph for (its character map, read once per file)."""
    from fontTools.ttLib import TTFont  # matplotlib's own dependency, without matplotlib: a grid alone draws no figure

    with TTFont(font_path, lazy=True, fontNumber=0) as font:  # the first face of a collection, as matplotlib draws
        return frozenset(font.getBestCmap() or ())


def drawable(value, font_path) -> str:
    """`value` with each character the font at `font_path` has no glyph for escaped (`\\u4e00`): no empty boxes."""
    text = str(value)
    if not isinstance(font_path, (str, os.PathLike)):  # a font from memory (PIL's own): drawn as it is
        return text
    have = glyphs(os.fspath(font_path))
    return "".join(c if c == "\n" or ord(c) in have else c.encode("unicode_escape").decode("ascii") for c in text)


def uncut(text: str, i: int) -> int:
    """`i`, or the start of the escape `drawable` wrote (`\\u4e00`) that cutting `text` at `i` would split."""
    inside = [m.start() for m in ESCAPE.finditer(text, max(0, i - 9), i + 9) if m.start() < i < m.end()]
    return inside[0] if inside else i


def settings_text(values: dict) -> str:
    """`k=v k=v` of a cell's settings for a log line, each value `printable`."""
    return " ".join(f"{key}={printable(value)}" for key, value in values.items())


def read_captions(folder: Path) -> dict[str, str]:
    """The captions recorded in `folder` (empty when none or unreadable)."""
    return read_json_object(Path(folder) / CAPTIONS)


def record_caption(target: Path, caption: str) -> None:
    """Keep a figure's title (its claim and number) in captions.json beside it, on one line: its lines '; ' apart."""
    captions = read_captions(Path(target).parent)
    captions[Path(target).name] = " ".join(CLAUSE_BREAK.sub("; ", caption.strip()).split())
    atomic_write_text(Path(target).parent / CAPTIONS, json.dumps(captions, indent=1, sort_keys=True))


def forget_figure(target: Path) -> None:
    """Remove a figure sdlab drew (one with a caption) and its caption; anyone else's file of that name stays."""
    captions = read_captions(Path(target).parent)
    if Path(target).name not in captions:
        return
    Path(target).unlink(missing_ok=True)
    del captions[Path(target).name]
    atomic_write_text(Path(target).parent / CAPTIONS, json.dumps(captions, indent=1, sort_keys=True))


def headlines(folder: Path, since: float, besides: tuple[str, ...] = ()) -> dict[str, str]:
    """Figures drawn in `folder` since `since` but `besides`, with its headline; "" if an earlier or shorter has it."""
    drawn = {name: caption.split(" | ")[0] for name, caption in read_captions(folder).items()
             if name not in besides and (Path(folder) / name).is_file()
             and (Path(folder) / name).stat().st_mtime >= since}
    texts = list(drawn.values())
    return {name: "" if text in texts[:i] or any(other != text and other in text for other in texts) else text
            for i, (name, text) in enumerate(drawn.items())}
