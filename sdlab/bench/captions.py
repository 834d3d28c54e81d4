"""Figure captions kept beside the figures (captions.json: file name -> title), for indexes and reports."""

from __future__ import annotations

import json
from pathlib import Path

from sdlab.io import atomic_write_text

CAPTIONS = "captions.json"


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
