"""`report.html`: one self-contained page per run or sweep (header, grid viewer, summary plots, table of rows)."""

from __future__ import annotations

import html
import json
import logging
import math
import shlex
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from PIL import Image

from sdlab.errors import UserError
from sdlab.grid import axis_values
from sdlab.io import atomic_write_text
from sdlab.ranking import rank, ranking_lines
from sdlab.records import PARAM_COLUMNS, TABLE_NAME, collect, job_dirs
from sdlab.summary import SUMMARY_NAME, main_metric, metric_columns, owns_summary, sweep_axes, write_summary

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
GENERATOR = '<meta name="generator" content="sdlab report">'
ASSETS = Path(__file__).resolve().parent / "assets" / "report"
FIGURE_SUFFIXES = (".png", ".gif")
NOT_FIGURES = {"grid.png", f"{SUMMARY_NAME}.png"}


def load_results(folder: Path) -> pd.DataFrame:
    """The run's or sweep's table: `results.parquet` at the root, else collected from its job folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give an sdlab run or sweep dir")
    if (folder / f"{TABLE_NAME}.parquet").is_file():
        return pd.read_parquet(folder / f"{TABLE_NAME}.parquet")
    jobs = [job for job in job_dirs(folder) if job.name.isdigit() and (job / ".hydra").is_dir()]
    if any((job / f"{TABLE_NAME}.parquet").is_file() for job in jobs):
        return collect(folder)
    raise UserError(f"{folder} has no {TABLE_NAME}.parquet, nor job folders with one; give an sdlab run or sweep dir")


def reproduce_command(folder: Path) -> str:
    """The command that reproduces the run or sweep, from Hydra's saved overrides."""
    folder = Path(folder)
    multirun = folder / "multirun.yaml"
    if multirun.is_file():
        overrides = (yaml.safe_load(multirun.read_text()) or {}).get("hydra", {}).get("overrides", {})
        hydra = [o for o in overrides.get("hydra") or [] if not o.startswith("hydra.mode=")]
        return shlex.join(["sdlab", "-m", *(overrides.get("task") or []), *hydra])
    saved = folder / ".hydra" / "overrides.yaml"
    if saved.is_file():
        return shlex.join(["sdlab", *(yaml.safe_load(saved.read_text()) or []), f"hydra.run.dir={folder}"])
    jobs = [yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or [] for job in job_dirs(folder)
            if (job / ".hydra" / "overrides.yaml").is_file()]
    swept: dict[str, list[str]] = {}
    for overrides in jobs:
        for item in overrides:
            key, _, value = item.partition("=")
            swept.setdefault(key, [])
            if value not in swept[key]:
                swept[key].append(value)
    parts = [f"{k}={','.join(v)}" for k, v in swept.items()]
    return shlex.join(["sdlab", "-m", *parts, f"hydra.sweep.dir={folder}"]) if parts else ""


def wall_seconds(folder: Path) -> float:
    """From the first job's config being written to the last job's table (Hydra's files' times)."""
    folder = Path(folder)
    starts = [p.stat().st_mtime for p in [folder / ".hydra" / "config.yaml", *folder.glob("*/.hydra/config.yaml")] if p.is_file()]
    ends = [p.stat().st_mtime for p in [folder / f"{TABLE_NAME}.parquet", *folder.glob(f"*/{TABLE_NAME}.parquet")]
            if p.is_file()]
    return max(ends) - min(starts) if starts and ends else math.nan


def plain(value: Any) -> Any:
    """A table value as JSON: NaN and missing as null, numpy scalars as Python ones."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if hasattr(value, "item"):
        return plain(value.item())
    return value


def png_parameters(path: Path) -> str | None:
    """The `parameters` text chunk of a PNG, or None when the file is missing or has none."""
    try:
        with Image.open(path) as image:
            return image.text.get("parameters")
    except (OSError, ValueError):
        return None


def header(frame: pd.DataFrame, folder: Path, axes: list[str]) -> dict[str, Any]:
    """What the page's header says: command, constant parameters, model, device, versions, counts, wall time."""
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    overrides = list(dict.fromkeys(k for o in frame.get("overrides", []) if isinstance(o, str) and o
                                   for k in json.loads(o)))
    constants = {}
    for key in dict.fromkeys([*PARAM_COLUMNS, *overrides]):
        if key in axes:
            continue
        values = list(dict.fromkeys(axis_values(ok, key))) if len(ok) else []
        if len(values) == 1 and values[0] not in ("", "nan", "None"):
            constants[key] = values[0]
    first = lambda column: next((v for v in frame.get(column, []) if isinstance(v, str) and v), None)  # noqa: E731
    return {
        "title": f"{frame['experiment'].iloc[0] if 'experiment' in frame and len(frame) else 'sdlab'}: {Path(folder).name}",
        "command": reproduce_command(folder), "constants": constants, "model": constants.get("model"),
        "device": first("device"), "versions": json.loads(first("versions") or "{}"),
        "ok": len(ok), "failed": len(frame) - len(ok), "wall_s": plain(wall_seconds(folder)),
        "generation_s": plain(float(ok["time_total_s"].sum())) if "time_total_s" in ok else None,
    }


def figures(folder: Path) -> list[str]:
    """Figures a job drew (scheduler studies, curves): in the folder and its job folders, as relative paths."""
    folder = Path(folder)
    found = [p for p in sorted(folder.iterdir()) if p.suffix in FIGURE_SUFFIXES and p.name not in NOT_FIGURES]
    for job in job_dirs(folder):
        found += [p for p in sorted(job.iterdir()) if p.suffix in FIGURE_SUFFIXES and p.name not in NOT_FIGURES]
    return [p.relative_to(folder).as_posix() for p in found if not p.name.startswith(".")]


def report_data(frame: pd.DataFrame, folder: Path) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able dict."""
    folder = Path(folder)
    frame = frame.reset_index(drop=True)
    axes = sweep_axes(frame)
    labels = {k: axis_values(frame, k) for k in axes}
    columns = list(frame.columns)
    rows = [[plain(v) for v in record] for record in frame.itertuples(index=False, name=None)]
    paths = frame["image_path"] if "image_path" in frame else [None] * len(frame)
    metrics = metric_columns(frame)
    ranking = rank(frame)
    return {
        "header": header(frame, folder, axes), "columns": columns, "rows": rows,
        "axes": axes, "values": {k: list(dict.fromkeys(labels[k])) for k in axes},
        "labels": [[labels[k][i] for k in axes] for i in range(len(frame))],
        "png": [png_parameters(folder / p) if isinstance(p, str) and p else None for p in paths],
        "metrics": metrics, "main_metric": main_metric(metrics),
        "summary": f"{SUMMARY_NAME}.png" if (folder / f"{SUMMARY_NAME}.png").is_file() else None,
        "figures": figures(folder),
        "ranking": [{k: plain(v) for k, v in row.items()} for row in ranking.to_dict(orient="records")],
        "ranking_lines": ranking_lines(frame, ranking),
    }


def render(data: dict[str, Any]) -> str:
    """The page: the template with its CSS, script and data inlined (no network, opens from file://)."""
    page = (ASSETS / "report.html").read_text()
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return (page.replace("{{title}}", html.escape(data["header"]["title"]))
            .replace("{{generator}}", GENERATOR)
            .replace("/*{{css}}*/", (ASSETS / "report.css").read_text())
            .replace("{{data}}", payload)
            .replace("/*{{js}}*/", (ASSETS / "report.js").read_text()))


def ours(target: Path) -> bool:
    """True when `target` is absent or a page this module wrote (never overwrite someone else's file)."""
    if not target.exists():
        return True
    with open(target, encoding="utf-8", errors="replace") as f:
        return GENERATOR in f.read(4096)


def build_report(folder: Path, frame: pd.DataFrame | None = None) -> Path:
    """Write `report.html` into a run or sweep dir (atomically); `frame` defaults to the folder's table."""
    folder = Path(folder)
    target = folder / REPORT_NAME
    if not ours(target):
        raise UserError(f"{target} exists and was not written by sdlab; move it away first")
    frame = load_results(folder) if frame is None else frame
    atomic_write_text(target, render(report_data(frame, folder)))
    return target


def rebuild(folder: Path) -> Path:
    """`sdlab report DIR`: the summary by swept value, summary.png and report.html of any run or sweep dir."""
    folder = Path(folder)
    frame = load_results(folder)
    if not ours(folder / REPORT_NAME):
        raise UserError(f"{folder / REPORT_NAME} exists and was not written by sdlab; move it away first")
    if owns_summary(folder):
        write_summary(frame, folder, figure=True)
    return build_report(folder, frame)
