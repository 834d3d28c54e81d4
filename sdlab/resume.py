"""Resuming into an existing run dir: find what is complete, clear what a killed process left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from sdlab.io import atomic_write_text, is_temp_file
from sdlab.records import TABLE_NAME

MARKER = "job.json"
WRITTEN_FOLDERS = (".", "images", ".hydra")  # where sdlab's own writes land inside a run dir


def clean_temp_files(folder: Path) -> int:
    """Delete sdlab's temp files left by a kill mid-write, in the folders sdlab writes; returns how many."""
    removed = 0
    for sub in WRITTEN_FOLDERS:
        found = Path(folder, sub)
        for tmp in found.iterdir() if found.is_dir() else ():
            if is_temp_file(tmp) and tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def previous_rows(folder: Path) -> pd.DataFrame | None:
    """The rows a previous run left in `folder`, or None."""
    table = Path(folder) / f"{TABLE_NAME}.parquet"
    return pd.read_parquet(table) if table.is_file() else None


def complete_rows(folder: Path, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """Previous rows (read from `folder` unless given) whose status is ok and whose image (if any) is on disk."""
    frame = previous_rows(folder) if frame is None else frame
    if frame is None or "status" not in frame:
        return pd.DataFrame()
    ok = frame["status"] == "ok"
    if "image_path" in frame:
        has_image = [not isinstance(p, str) or (Path(folder) / p).is_file() for p in frame["image_path"]]
        ok &= pd.Series(has_image, index=frame.index)
    return frame[ok]


def finished_job(folder: Path, job_hash: str) -> pd.DataFrame | None:
    """The complete rows of a job already finished in `folder` with the same config hash, else None."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    try:
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    frame = previous_rows(folder)
    if done.get("job_hash") != job_hash or frame is None or len(complete_rows(folder, frame)) != len(frame):
        return None
    return frame


def mark_finished(folder: Path, job_hash: str, summary: dict[str, Any]) -> None:
    """Record that the job with `job_hash` finished in `folder` (written last, atomically)."""
    atomic_write_text(Path(folder) / MARKER, json.dumps({"job_hash": job_hash, **summary}, sort_keys=True))


def unmark(folder: Path) -> None:
    """Forget a finished marker before recomputing."""
    (Path(folder) / MARKER).unlink(missing_ok=True)
