"""Result rows: the column schema, atomic table and image writes, and collecting a sweep into one table."""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdlab.bench.run import format_infotext
from sdlab.config import IMAGE_PARAMS, LIMITS, TEXT_PARAMS, image_params
from sdlab.errors import UserError
from sdlab.io import atomic_path, atomic_save
from sdlab.lazy import pandas as pd, parquet as pq, pyarrow as pa
from sdlab.untrusted import parse_json, read_png_text

log = logging.getLogger(__name__)

TABLE_NAME = "results"
TEXT_COLUMNS = ["run_id", "experiment", "job", "model", "scheduler", "scheduler_config", *TEXT_PARAMS, "call_id",
                "image_path", "config_hash", "overrides", "status", "error", "weights", "device", "versions"]
READ_FROM = "read_from"  # the `attrs` key of a table read back: the file it came from, or "images" when rebuilt
PARAM_COLUMNS = ["model", "scheduler", *IMAGE_PARAMS, "seed"]
ROW_COLUMNS = ["run_id", "experiment", "job", "model", "scheduler", "scheduler_config", *IMAGE_PARAMS, "seed",
               "batch_size", "call_id", "nfe", "prompt_truncated_tokens", "time_text_s", "time_unet_s", "time_vae_s",
               "time_total_s", "peak_mem_bytes", "clip_score", "image_path", "config_hash", "overrides", "status",
               "error", "weights", "device", "versions"]


def package_version(name: str) -> str | None:
    """An installed package's version, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def versions() -> str:
    """Versions of sdlab and the libraries that decide the numbers, as JSON."""
    return json.dumps({name: package_version(name) for name in ("sdlab", "torch", "diffusers", "transformers")},
                      sort_keys=True)


def identity(ctx, job: str | None, model: str | None = None) -> dict[str, Any]:
    """The columns every row starts with (`ctx` a JobContext): run, experiment, job, model, overrides, status ok."""
    return {"run_id": ctx.run_id, "experiment": ctx.experiment, "job": job, "model": model,
            "overrides": ctx.overrides, "status": "ok", "error": None}


def failed_count(frame) -> int:
    """How many rows of a table are not ok (a table with no status column has none)."""
    return int((frame["status"] != "ok").sum()) if "status" in frame else 0


def failed_rows(ctx, error: str, request: bool) -> list[dict[str, Any]]:
    """A job's rows when it made none, naming the error: with `request`, one a seed with what it asked for."""
    run = ctx.run
    if run is None or not request:
        return [{**identity(ctx, run and run.job), "status": "error", "error": error}]
    asked = {**identity(ctx, run.job, run.model.name), "scheduler": run.scheduler.name, **image_params(run.params)}
    return [{**asked, "seed": seed, "status": "error", "error": error} for seed in run.params.seeds]


def ordered(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame, the schema's columns first, then others in order of appearance; no rows: the schema's."""
    rows = list(rows)
    present = dict.fromkeys(column for row in rows for column in row)
    if not present:
        return pd.DataFrame(columns=ROW_COLUMNS)
    known = [c for c in ROW_COLUMNS if c in present]
    return pd.DataFrame(rows, columns=known + [c for c in present if c not in known])  # built in order, not reordered


def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """`frame.to_dict("records")` in a fifth of its time on a job's one-row table (pandas boxes each column apart)."""
    return [dict(zip(frame.columns, values)) for values in frame.to_numpy(dtype=object)]


def parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns that mix value types (e.g. rows of different jobs) as strings; None stays null."""
    fixed = {}
    for column in frame.columns[frame.dtypes == object]:
        kinds = {type(v) for v in frame[column] if v is not None and not (isinstance(v, float) and v != v)}
        if len(kinds) > 1:
            fixed[column] = [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in frame[column]]
    return frame.assign(**fixed) if fixed else frame


def write_table(frame: pd.DataFrame, folder: Path, name: str = TABLE_NAME) -> Path:
    """Write `<name>.parquet` and `<name>.csv` atomically: both or neither (the CSV, for people, not forced to disk)."""
    folder = Path(folder)
    with (atomic_path(folder / f"{name}.csv", sync=False) as csv_tmp,
          atomic_path(folder / f"{name}.parquet") as parquet_tmp):
        pq.write_table(pa.Table.from_pandas(parquet_safe(frame), preserve_index=False), parquet_tmp)
        frame.to_csv(csv_tmp, index=False)
    return folder / f"{name}.parquet"


def save_png(image: Image.Image, target: Path, metadata: dict[str, Any], row: dict | None = None) -> None:
    """Save a PNG atomically with its parameters (and its row, to rebuild a lost table) in its text chunks."""
    info = PngInfo()
    info.add_text("parameters", format_infotext({**metadata, "version": f"sdlab {json.loads(versions())['sdlab']}"}))
    info.add_text("sdlab", json.dumps({**metadata, **({"row": row} if row else {})}, sort_keys=True, default=str))
    atomic_save(image, target, format="PNG", pnginfo=info)


def read_png_metadata(path: Path) -> dict[str, Any]:
    """The sdlab record of a PNG `save_png` wrote, through the bounded reader (UserError if there is none)."""
    record = parse_json(read_png_text(path, str(path), LIMITS).get("sdlab", ""), f"{path}'s sdlab text chunk")
    if not isinstance(record, dict):
        raise UserError(f"{path}'s sdlab text chunk must hold a JSON object, not {type(record).__name__}")
    return record


_ROWLESS: set[tuple] = set()  # the images a warning named already, as they were then: a rerun reads a folder twice


def rows_from_images(folder: Path) -> pd.DataFrame | None:
    """The rows the PNGs under `folder/images` carry, or None; those without one are named in one warning."""
    rows, rowless = [], []
    for png in sorted(Path(folder, "images").glob("*.png")):
        try:
            row = read_png_metadata(png).get("row")
        except UserError:
            row = None
        if isinstance(row, dict):
            rows.append({**row, "image_path": str(png.relative_to(folder))})
        else:
            rowless.append(png)
    stamps = {(str(png), png.stat().st_mtime_ns, png.stat().st_size) for png in rowless if png.is_file()}
    if stamps - _ROWLESS:
        _ROWLESS.update(stamps)
        names = ", ".join(png.name for png in rowless[:3]) + (", ..." if len(rowless) > 3 else "")
        log.warning("%d image(s) in %s carry no sdlab row to rebuild the table from (%s): their cells are made again",
                    len(rowless), Path(folder, "images"), names)
    return ordered(rows) if rows else None


def read_parquet(path: Path) -> pd.DataFrame:
    """`pd.read_parquet(path)` through pyarrow directly (1 ms less a table: a sweep's end reads one a cell)."""
    with pq.ParquetFile(path) as table:
        return table.read().to_pandas()


def read_csv(path: Path) -> pd.DataFrame:
    """A table's CSV twin, its text columns as text (a hex id or prompt `062414779754`, `12e4` is no number)."""
    return pd.read_csv(path, dtype=dict.fromkeys(TEXT_COLUMNS, str))


def read_table(folder: Path) -> pd.DataFrame | None:
    """`results.parquet`, else its CSV twin, else its images' rows, else None (damaged tables kept as `*.damaged`)."""
    folder = Path(folder)
    files = [folder / f"{TABLE_NAME}.parquet", folder / f"{TABLE_NAME}.csv"]
    if not any(f.is_file() for f in files) and not Path(folder, "images").is_dir():  # a job dir not yet run
        return None
    for path, read in zip(files, (read_parquet, read_csv)):
        if local_file(folder, path.name) is None:  # absent, a pipe or device that would block, or a link out
            continue
        try:
            frame = read(path)
        except FileNotFoundError:
            continue
        except Exception as e:  # pyarrow and pandas raise many types for a damaged file
            log.warning("%s is damaged (%s: %s)", path, type(e).__name__, e)
            continue
        if {"run_id", "status"} <= set(frame.columns):  # every sdlab table has both; garbage parses as a header
            frame.attrs[READ_FROM] = path.name  # and so does a CSV cut short in its own
            return frame
        log.warning("%s is damaged (no run_id or status column)", path)
    rebuilt = rows_from_images(folder)
    if rebuilt is not None:
        log.warning("%s has no table: its rows read from its %d images", folder, len(rebuilt))
        rebuilt.attrs[READ_FROM] = "images"
        return rebuilt
    if damaged := [path for path in files if path.is_file()]:
        for path in damaged:
            set_aside(path)
        log.warning("no table in %s could be read or rebuilt: kept as %s.*.damaged", folder, TABLE_NAME)
    return None


def set_aside(path: Path) -> None:
    """Keep a damaged file as `<name>.damaged` beside it, where nothing sdlab reads will take it for a good one."""
    path.replace(path.with_name(path.name + ".damaged"))


def image_relative(seed: int, cell: str, prefix: str = "") -> str:
    """Where a job keeps a cell's image: by seed and cell hash, so no two cells share a file."""
    return f"images/{prefix}seed{seed}-{cell[:8]}.png"


def own_image(row: dict[str, Any]) -> bool:
    """Whether a row's `image_path` is a name `image_relative` gives its seed and hash (a forged row names any file)."""
    path, seed, cell = row.get("image_path"), row.get("seed"), row.get("config_hash")
    return (isinstance(path, str) and isinstance(cell, str) and path.startswith("images/") and "/" not in path[7:]
            and path.endswith(image_relative(seed, cell)[7:]))


def local_file(folder: Path, relative: Any) -> Path | None:
    """The regular file `relative` names in `folder`, resolved (not absolute, no `..` or symlink leading out); else None."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        return None
    root = Path(folder).resolve()
    try:
        path = (root / relative).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None
    except (OSError, ValueError, RuntimeError):  # a null byte, a symlink loop
        return None


PNG_START = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"  # a PNG's signature and the head of its first chunk


def whole_image(path: Path | None) -> bool:
    """True for an image file that is all there: a PNG from its signature and IHDR to an IEND ending the file, each
    chunk's CRC matching its type and data (PNG spec 5.3)."""
    if path is None or path.suffix.lower() != ".png":
        return path is not None
    try:
        png = memoryview(path.read_bytes())  # chunks are read as views into it, never copied
    except OSError:
        return False
    if png[:len(PNG_START)] != PNG_START:
        return False
    at, end = 8, len(png)  # the first chunk starts after the 8-byte signature
    while at + 12 <= end:
        stop = at + 8 + int.from_bytes(png[at:at + 4], "big")  # the end of the chunk's data, its CRC after
        if stop + 4 > end or zlib.crc32(png[at + 4:stop]) != int.from_bytes(png[stop:stop + 4], "big"):
            return False
        if png[at + 4:at + 8] == b"IEND":
            return stop + 4 == end
        at = stop + 4
    return False


def finished(row: dict[str, Any], folder: Path) -> bool:
    """Whether a row is a finished cell: status ok, and its image (if any) a whole file inside `folder`."""
    path = row.get("image_path")
    return row.get("status") == "ok" and (not isinstance(path, str) or whole_image(local_file(folder, path)))


def job_number_width(sweep_dir: Path, cells: int) -> int:
    """The digits a sweep's job folders are zero-padded to: as its folder already numbers them (its job 0's name: `0`,
    `00`, `00_<recipe>`), so an extended sweep finds its jobs; else as `cells` need, so they sort (07 of 26)."""
    try:
        with os.scandir(sweep_dir) as entries:
            zeros = [len(found.group(1)) for entry in entries
                     if (found := re.fullmatch(r"(0+)(_.*)?", entry.name)) and entry.is_dir()]
    except OSError:
        zeros = []
    return min(zeros) if zeros else len(str(max(cells - 1, 0)))


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Job folders of a sweep (`N`, `N_<recipe>` or any `hydra.sweep.subdir`), numbers in them read as numbers (seed=2
    before seed=10); never a symlink leading out of it; none while it is not there."""
    if not Path(sweep_dir).is_dir():
        return []
    root = Path(sweep_dir).resolve()
    dirs = [p for p in Path(sweep_dir).iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.resolve().is_relative_to(root)]
    return sorted(dirs, key=lambda p: ([int(part) if part.isdigit() else part for part in re.split(r"(\d+)", p.name)],
                                       p.name))
