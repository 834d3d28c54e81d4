"""Figure captions kept beside the figures (captions.json: file name -> title), for indexes and reports."""

from __future__ import annotations

import json
from pathlib import Path

from sdlab.io import atomic_write_text

CAPTIONS = "captions.json"


def counted(n: int, noun: str, plural: str = "") -> str:
    """`n` and its noun, singular for exactly one: "1 seed", "3 seeds", "0 seeds"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def printable(value) -> str:
    """`value` as text on one line: line breaks, tabs and other unprintable characters escaped as Python writes them,
    so a prompt in a log line never starts a line of its own."""
    text = str(value)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def settings_text(values: dict) -> str:
    """`k=v k=v` of a cell's settings for a log line, each value `printable`."""
    return " ".join(f"{key}={printable(value)}" for key, value in values.items())


def read_captions(folder: Path) -> dict[str, str]:
    """The captions recorded in `folder` (empty when none or unreadable)."""
    path = Path(folder) / CAPTIONS
    try:
        captions = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return captions if isinstance(captions, dict) else {}


def record_caption(target: Path, caption: str) -> None:
    """Keep a figure's title (its claim and number) in captions.json beside it."""
    captions = read_captions(Path(target).parent)
    captions[Path(target).name] = " ".join(caption.split())
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
    """The figures drawn in `folder` since `since` (a time stamp), other than `besides`, each with its headline (the
    caption's first part); a headline another holds in full is given once, by the figure with the shorter one."""
    drawn = {name: caption.split(" | ")[0] for name, caption in read_captions(folder).items()
             if name not in besides and (Path(folder) / name).is_file()
             and (Path(folder) / name).stat().st_mtime >= since}
    texts = set(drawn.values())
    shown: set[str] = set()
    out = {}
    for name, text in drawn.items():
        repeated = text in shown or any(other != text and other in text for other in texts)
        out[name] = "" if repeated else text
        shown.add(text)
    return out
