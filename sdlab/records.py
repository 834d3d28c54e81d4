"""Result rows: the column schema, atomic table and image writes, and collecting a sweep into one table."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdlab.io import atomic_path

log = logging.getLogger(__name__)

TABLE_NAME = "results"
PARAM_COLUMNS = [
    "model", "scheduler", "num_inference_steps", "guidance_scale", "seed",
    "prompt", "negative_prompt", "width", "height", "eta",
]
ROW_COLUMNS = [
    "run_id", "experiment", "job", "model", "scheduler", "scheduler_config",
    "num_inference_steps", "nfe", "guidance_scale", "seed", "prompt", "prompt_truncated_tokens", "negative_prompt",
    "width", "height", "eta", "batch_size",
    "time_text_s", "time_unet_s", "time_vae_s", "time_total_s", "peak_mem_bytes", "clip_score",
    "image_path", "config_hash", "overrides", "status", "error", "device", "versions",
]


@lru_cache(maxsize=1)
def versions() -> str:
    """Versions of sdlab and the libraries that decide the numbers, as JSON."""
    found = {}
    for package in ("sdlab", "torch", "diffusers", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return json.dumps(found, sort_keys=True)


def ordered(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame, the schema's columns first, then any extra columns in order of appearance."""
    frame = pd.DataFrame(list(rows))
    known = [c for c in ROW_COLUMNS if c in frame.columns]
    return frame[known + [c for c in frame.columns if c not in known]]


def parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns that mix value types (e.g. rows of different jobs) as strings; None stays null."""
    fixed = {}
    for column in frame.columns[frame.dtypes == object]:
        kinds = {type(v) for v in frame[column] if v is not None and not (isinstance(v, float) and v != v)}
        if len(kinds) > 1:
            fixed[column] = [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in frame[column]]
    return frame.assign(**fixed) if fixed else frame


def write_table(frame: pd.DataFrame, folder: Path, name: str = TABLE_NAME) -> Path:
    """Write `<name>.parquet` and `<name>.csv` atomically: if either cannot be written, neither appears."""
    folder = Path(folder)
    with atomic_path(folder / f"{name}.csv") as csv_tmp, atomic_path(folder / f"{name}.parquet") as parquet_tmp:
        parquet_safe(frame).to_parquet(parquet_tmp, index=False)
        frame.to_csv(csv_tmp, index=False)
    return folder / f"{name}.parquet"


def save_png(image: Image.Image, target: Path, metadata: dict[str, Any]) -> None:
    """Save a PNG atomically with the generation parameters in its text chunks."""
    from sdlab.infotext import format_infotext

    info = PngInfo()
    info.add_text("parameters", format_infotext({**metadata, "version": f"sdlab {json.loads(versions())['sdlab']}"}))
    info.add_text("sdlab", json.dumps(metadata, sort_keys=True, default=str))
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def read_png_metadata(path: Path) -> dict[str, Any]:
    """The sdlab parameters stored in a PNG written by `save_png`."""
    with Image.open(path) as image:
        return json.loads(image.text["sdlab"])


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Job folders of a sweep, in job-number order."""
    dirs = [p for p in Path(sweep_dir).iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def collect(sweep_dir: Path, name: str = TABLE_NAME) -> pd.DataFrame:
    """Concatenate every finished job's table under `sweep_dir`, with paths made relative to the sweep."""
    frames, unfinished = [], []
    for job in job_dirs(sweep_dir):
        table = job / f"{name}.parquet"
        if not table.is_file():
            unfinished.append(job.name)
            continue
        frame = pd.read_parquet(table)
        if "image_path" in frame:
            frame["image_path"] = [f"{job.name}/{p}" if isinstance(p, str) and p else p for p in frame["image_path"]]
        frames.append(frame)
    if unfinished:
        log.warning("skipped %d unfinished job dir(s) without %s.parquet: %s", len(unfinished), name, unfinished)
    if not frames:
        return pd.DataFrame(columns=ROW_COLUMNS)
    return ordered(pd.concat(frames, ignore_index=True).to_dict("records"))
