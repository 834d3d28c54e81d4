"""A run's or sweep's outputs: its table, grid, summary by swept value and `report.html` (one self-contained page:
header, grid viewer, summary plots, table of rows), with the line that says so."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from sdlab.bench.captions import forget_figure, headlines
from sdlab.bench.grid import axis_values, image_grid
from sdlab.bench.ownership import MARK, is_owned
from sdlab.bench.records import PARAM_COLUMNS, TABLE_NAME, job_dirs, local_file, write_table
from sdlab.bench.resume import (CONFIG, MARKER, NOT_RUN, NOT_RUN_WHY, SPENT, collect, mark_calls, read_manifest,
                               read_mark)
from sdlab.bench.summary import (REPLICATES, SUMMARY_NAME, main_metric, metric_columns, owns_summary, rank,
                                 ranking_lines, score_direction, sweep_axes, swept_parameters, write_summary)
from sdlab.config import LIMITS
from sdlab.errors import UserError
from sdlab.io import atomic_write_text, open_regular
from sdlab.lazy import pandas as pd
from sdlab.untrusted import read_png_text

REPORT_NAME = "report.html"
GENERATOR = '<meta name="generator" content="sdlab report">'
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "report"
FIGURE_SUFFIXES = (".png", ".gif")
SUMMARY_FILES = ("grid.png", f"{SUMMARY_NAME}.png", REPORT_NAME)  # what this module draws; a job's own figures besides
PNG_TEXT_MAX = 65536  # characters of a PNG's parameters the page shows
MAX_LISTED = 20  # failed cells a sweep's line names one by one; the table has them all
PLACEHOLDERS = re.compile(r"/\*\{\{(css|js)\}\}\*/|\{\{(title|generator|data)\}\}")
# JSON that no HTML parser can end or alter inside <script>: the JSON escapes of these characters
SCRIPT_SAFE = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def brief(error: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def check_cells(frame: pd.DataFrame, folder: Path) -> None:
    """Every `overrides` and `versions` cell is empty or a flat JSON object, else a UserError naming the table and row."""
    table = folder / f"{TABLE_NAME}.parquet" if (folder / f"{TABLE_NAME}.parquet").is_file() else folder
    for column in ("overrides", "versions"):
        for i, cell in enumerate(frame.get(column, [])):
            if not isinstance(cell, str) or not cell:
                continue
            try:
                parsed = json.loads(cell)
            except (ValueError, RecursionError) as e:
                raise UserError(f"{table}: the {column} cell of row {i} is not JSON ({brief(e)})") from None
            if not isinstance(parsed, dict) or any(isinstance(v, (dict, list)) for v in parsed.values()):
                raise UserError(f"{table}: the {column} cell of row {i} is not a JSON object of plain values")


def load_results(folder: Path) -> pd.DataFrame:
    """The run's or sweep's table: `results.parquet` at the root, else collected from its job folders; checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} {'is not a folder' if folder.exists() else 'does not exist'}; "
                        "give an sdlab run or sweep dir")
    table = local_file(folder, f"{TABLE_NAME}.parquet")
    if table is not None:
        try:
            frame = pd.read_parquet(table)
        except Exception as e:  # pyarrow raises many types for a damaged file
            raise UserError(f"{folder / table.name} cannot be read ({brief(e)}); rerun the sweep into this folder "
                            "to rebuild it, or move it away") from None
    elif any(job.name.isdigit() and (job / ".hydra").is_dir() and (job / f"{TABLE_NAME}.parquet").is_file()
             for job in job_dirs(folder)):
        frame = collect(folder)
    else:
        raise UserError(f"{folder} has no {TABLE_NAME}.parquet, nor job folders with one; give an sdlab run or sweep dir")
    check_cells(frame, folder)
    return frame


def shell_line(words: list[str]) -> str:
    """`words` as a shell command a person reads: `"prompt='a','b'"` where double quotes keep it, else shlex's."""
    return " ".join(f'"{w}"' if "'" in w and not set(w) & set('"$`\\!') else shlex.quote(w) for w in words)


def json_object(text: Any) -> dict | None:
    """`text` read as a JSON object of texts (a run's overrides), else None."""
    try:
        found = json.loads(text) if isinstance(text, str) and text else None
    except ValueError:
        return None
    return found if isinstance(found, dict) and all(isinstance(v, str) for v in found.values()) else None


def run_manifest(folder: Path, frame: pd.DataFrame) -> dict[str, Any]:
    """The sweep's manifest (damaged: UserError) with the commands reproducing it, a line each in the order they ran,
    else a run's from its overrides."""
    folder = Path(folder)
    manifest = read_manifest(folder, strict=True)
    if manifest is not None:
        commands = manifest.get("commands") or [manifest.get("command", manifest.get("overrides", []))]
        return {**manifest, "command": "\n".join(shell_line(["sdlab", "-m", *command, f"hydra.sweep.dir={folder}"])
                                                 for command in commands)}
    if any(job.name.split("_", 1)[0].isdigit() for job in job_dirs(folder)):  # a sweep from before manifests
        return {"axes": [], "values": {}, "command": ""}
    typed = [read_mark(folder).get("overrides"), *frame.get("overrides", [])]  # its mark's, else its first row's
    overrides = next((found for o in typed if isinstance(found := json_object(o), dict)), {})
    return {"axes": [], "values": {k: [str(v)] for k, v in overrides.items()},
            "command": shell_line(["sdlab", *(f"{k}={v}" for k, v in overrides.items()), f"hydra.run.dir={folder}"])}


def wall_seconds(folder: Path) -> float:
    """From the first job's config (or a shared call made before it) being recorded to the last job's table written."""
    found = lambda name: [p for p in [Path(folder) / name, *Path(folder).glob(f"*/{name}")]  # noqa: E731
                          if p.is_file()]
    starts = [p.stat().st_mtime for p in found(CONFIG)]
    ends = [p.stat().st_mtime for p in found(f"{TABLE_NAME}.parquet")]
    for mark in found(MARKER):
        starts += [mark.stat().st_mtime - seconds for _, seconds, _ in mark_calls(read_mark(mark.parent)).values()]
    return max(ends) - min(starts) if starts and ends else math.nan


def plain(value: Any) -> Any:
    """A table value as JSON: NaN and missing as null, numpy scalars as Python ones, anything else as its text."""
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "item") and getattr(value, "size", 1) == 1:
        return plain(value.item())
    return str(value)


def png_parameters(path: Path | None) -> str | None:
    """A regular PNG's `parameters` text through the bounded reader, cut to PNG_TEXT_MAX characters; else None."""
    try:
        text = read_png_text(path, str(path), LIMITS).get("parameters") if path is not None else None
    except UserError:
        return None
    return text[:PNG_TEXT_MAX] if text is not None else None


def over_recipes(frame: pd.DataFrame) -> bool:
    """Whether the rows come from several recipes: each has its own settings, so no grid or summary spans them."""
    return "experiment" in frame and frame["experiment"].nunique() > 1


def recipes_title(frame: pd.DataFrame) -> str:
    """The recipe a page's rows come from; `experiments` over several."""
    names = list(dict.fromkeys(frame["experiment"].dropna())) if "experiment" in frame else []
    return names[0] if len(names) == 1 else "experiments" if names else "sdlab"


def header(frame: pd.DataFrame, folder: Path, axes: list[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """The page's header: command, constant parameters, model, device, versions, counts, wall time, warnings."""
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    constants = {key: values[0] for key in PARAM_COLUMNS if key not in axes
                 for values in [list(dict.fromkeys(axis_values(ok, key)))] if len(values) == 1 and values[0]}
    constants |= {key: values[0] for key, values in manifest["values"].items() if len(values) == 1 and key not in axes
                  and key not in constants  # a row's value as it ran, not as Hydra quoted it ('it\'s red')
                  and not (key in REPLICATES and "seed" in axes)}  # `seeds=[1,2,3]`: one value, a seed a row
    first = lambda column: next((v for v in frame.get(column, []) if isinstance(v, str) and v), None)  # noqa: E731
    return {
        "title": f"{recipes_title(frame)}: {Path(folder).name}",
        "command": manifest["command"], "constants": constants, "model": constants.get("model"),
        "device": first("device"), "versions": json.loads(first("versions") or "{}"),
        "ok": len(ok), "failed": len(frame) - len(ok), "runs": len(manifest.get(SPENT, [])) or 1,
        "wall_s": plain(sum(manifest[SPENT]) if manifest.get(SPENT) else wall_seconds(folder)),
        "not_run": int(frame["error"].eq(NOT_RUN).sum()) if "error" in frame else 0,
        "generation_s": plain(float(ok["time_total_s"].sum())) if "time_total_s" in ok else None,
        "warnings": manifest.get("warnings", []),
    }


def figures(folder: Path) -> list[str]:
    """Figures jobs drew in the folder and its job folders, as paths relative to it."""
    places = [folder, *(d for d in job_dirs(folder) if d.name != "images")]  # a run's images are its rows', no figures
    return [figure for place in places for figure in figures_in(place, folder)]


def figures_in(place: Path, folder: Path) -> list[str]:
    """Figures a job drew in `place`, a folder in `folder`: regular files none leading out of it, relative to it."""
    relative = [p.relative_to(folder).as_posix() for p in sorted(Path(place).iterdir())
                if p.suffix in FIGURE_SUFFIXES and p.name not in SUMMARY_FILES and not p.name.startswith(".")]
    return [p for p in relative if local_file(folder, p) is not None]


def summary_rows(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The summary's rows of set scorers by swept value (with which way is better), and of each metric overall."""
    table = local_file(folder, f"{SUMMARY_NAME}.parquet")
    summary = pd.read_parquet(table) if table is not None and owns_summary(folder) else pd.DataFrame()
    if summary.empty:
        return [], []
    sets = summary["features"].notna() if "features" in summary else pd.Series(False, index=summary.index)
    records = lambda rows: [{k: plain(v) for k, v in row.items()} for row in rows.to_dict(orient="records")]  # noqa: E731
    overall = summary[~sets & (summary["parameter"] == "(all)")]
    return ([{**row, "better": "higher" if score_direction(row["metric"]) > 0 else "lower"}
             for row in records(summary[sets])], records(overall[["metric", "n", "mean", "lo", "hi"]]))


def report_data(frame: pd.DataFrame, folder: Path) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able dict (each image's stored features aside)."""
    folder = Path(folder)
    frame = frame.reset_index(drop=True).drop(columns=["image_features"], errors="ignore")
    manifest = run_manifest(folder, frame)
    recipes = over_recipes(frame)
    axes = ["experiment"] if recipes else sweep_axes(frame, manifest["axes"])
    labels = {k: axis_values(frame, k) for k in axes}
    images = [local_file(folder, p) for p in frame.get("image_path", [None] * len(frame))]  # only its own are read
    metrics = metric_columns(frame)
    scores = [m for m in metrics if score_direction(m)]
    lead = [c for c in dict.fromkeys([*axes, "seed", *scores, "status", "error", *metrics]) if c in frame]
    frame = frame[lead + [c for c in frame.columns if c not in lead]]  # the rows table: what varies, then the rest
    ranking = rank(frame.iloc[:0] if recipes else frame, manifest["axes"])  # each recipe its own settings
    lines = {} if recipes else ranking_lines(frame, ranking, manifest["axes"])
    return {
        "header": header(frame, folder, axes, manifest), "columns": list(frame.columns), "grid": not recipes,
        "rows": [[plain(v) for v in record] for record in frame.itertuples(index=False, name=None)],
        "axes": axes, "values": {k: list(dict.fromkeys(labels[k])) for k in axes},
        "labels": [[labels[k][i] for k in axes] for i in range(len(frame))],
        "images": [p.relative_to(folder.resolve()).as_posix() if p else None for p in images],
        "png": [png_parameters(p) for p in images],
        "metrics": metrics, "main_metric": main_metric(metrics),
        "summary": f"{SUMMARY_NAME}.png" if local_file(folder, f"{SUMMARY_NAME}.png") else None,
        "figures": figures(folder),
        "ranking": [{k: plain(v) for k, v in row.items()} for row in ranking.to_dict(orient="records")],
        "ranking_lines": lines,
    } | dict(zip(("sets", "overall"), summary_rows(folder)))


def render(data: dict[str, Any]) -> str:
    """The template with its CSS, script and data inlined in one pass (no inlined text is read for placeholders)."""
    values = {"title": html.escape(str(data["header"]["title"])), "generator": GENERATOR,
              "css": (ASSETS / "report.css").read_text(), "js": (ASSETS / "report.js").read_text(),
              "data": json.dumps(data, separators=(",", ":"), allow_nan=False).translate(SCRIPT_SAFE)}
    return PLACEHOLDERS.sub(lambda m: values[m.group(1) or m.group(2)], (ASSETS / "report.html").read_text())


def check_ours(target: Path) -> None:
    """Refuse a `target` that is not absent or a page this module wrote (nor read through a symlink or a pipe)."""
    if not target.exists() and not target.is_symlink():
        return
    try:
        with open_regular(target) as f:
            if GENERATOR.encode() in f.read(4096):
                return
    except OSError:
        pass
    raise UserError(f"{target} exists and was not written by sdlab; move it away first")


def build_report(folder: Path, frame: pd.DataFrame | None = None) -> Path:
    """Write `report.html` into a run or sweep dir (atomically); `frame` defaults to the folder's table."""
    target = Path(folder) / REPORT_NAME
    check_ours(target)
    frame = load_results(folder) if frame is None else frame
    check_cells(frame, Path(folder))
    atomic_write_text(target, render(report_data(frame, folder)))
    return target


def rebuild(folder: Path) -> Path:
    """`sdlab report DIR`: the summary by swept value, summary.png and report.html of a run or sweep dir sdlab made."""
    folder = Path(folder)
    frame = load_results(folder)
    if not is_owned(folder):  # its summary.csv, ranking.csv or summary.png would be someone else's
        raise UserError(f"{folder} is not sdlab's (no {MARK} mark): sdlab report writes only into folders sdlab made; "
                        f"if it made this one, mark it with `touch {folder / MARK}`")
    check_ours(folder / REPORT_NAME)
    axes = run_manifest(folder, frame)["axes"]  # a damaged manifest stops it here, before anything is written
    if not any(os.path.lexists(folder / f"{TABLE_NAME}.{kind}") for kind in ("parquet", "csv")):  # collected
        write_table(frame, folder)  # from its jobs: the sweep's table went, and nothing stands in its place
    try:
        owned = owns_summary(folder)
    except Exception as e:  # pyarrow raises many types for a damaged file
        raise UserError(f"{folder / SUMMARY_NAME}.parquet cannot be read ({brief(e)}); move it away") from None
    if owned and not over_recipes(frame):  # as the sweep: a summary across recipes means nothing
        write_summary(frame, folder, axes, figure=True)
    return build_report(folder, frame)


def grid_axes(frame: pd.DataFrame, axes: list[str]) -> list[str]:
    """The grid's axes: the swept parameters and replicates, in sweep order (not what follows a swept one)."""
    swept = swept_parameters(frame, axes)
    return [a for a in sweep_axes(frame, axes) if a in swept or a in REPLICATES]


def failed_lines(failed: list[dict], folder: Path) -> str:
    """The failed cells, a line each up to MAX_LISTED, and those that did not run counted in one line."""
    errors = [row for row in failed if row.get("error") != NOT_RUN]
    lines = [f"failed: {row.get('overrides') or '-'} seed={row.get('seed')}: {row.get('error')}"
             for row in errors[:MAX_LISTED]]
    if len(errors) > MAX_LISTED:
        lines.append(f"and {len(errors) - MAX_LISTED} more failed: their errors are in {folder / 'results.csv'}")
    if len(errors) < len(failed):
        lines.append(f"{len(failed) - len(errors)} did not run: their jobs {NOT_RUN_WHY}; rerun the same command to "
                     "run them")
    return "".join(f"\n  {line}" for line in lines)


def summarize(frame: pd.DataFrame, folder: Path, grid: bool = True, sweep: bool = False, since: float = 0.0) -> str:
    """Write the table, grid, summary (a sweep's: summary.png, report.html) into `folder`; the "N ok, M failed" line."""
    try:
        write_table(frame, folder)
    except OSError as e:  # e.g. disk full: the table last written stays, so do the images it lists
        print(f"sdlab: error: cannot write the table in {folder} ({type(e).__name__}: {e}); the one there keeps "
              f"the images finished before", file=sys.stderr)
        raise SystemExit(1) from None
    axes = (read_manifest(folder) or {}).get("axes", []) if sweep else []
    ok = frame["status"].eq("ok").tolist() if "status" in frame else [True] * len(frame)  # a job's one row: no masks
    paths = frame["image_path"].notna().tolist() if "image_path" in frame else [False] * len(frame)
    several = sum(good and path for good, path in zip(ok, paths)) > 1
    figures = headlines(folder, since, besides=SUMMARY_FILES)
    gridded = several and not (figures and not sweep)  # a job's own figures are its designed view of its images
    if grid and not (gridded and image_grid(frame, folder, folder / "grid.png", grid_axes(frame, axes),
                                            seeds_within=True)):
        forget_figure(folder / "grid.png")  # an earlier run's grid would show images this table no longer lists
    failed = frame[[not good for good in ok]].to_dict("records")
    line = f"{len(frame) - len(failed)} ok, {len(failed)} failed" + failed_lines(failed, Path(folder))
    if grid and (several or sweep) and owns_summary(folder):  # a study's own summary table stays
        ranking = rank(frame, axes)
        write_summary(frame, folder, axes, figure=sweep, ranking=ranking)
        line += "".join(f"\n  {text}" for text in ranking_lines(frame, ranking, axes).values()) if sweep else ""
    if sweep:
        build_report(folder, frame)
    line += "".join(f"\n  {name}: {text}" for name, text in figures.items() if text)
    drawn = {"grid.png": grid and gridded, "summary.png": sweep, "report.html": sweep, **dict.fromkeys(figures, True)}
    made = [str(Path(folder) / name) for name, wrote in drawn.items() if wrote and (Path(folder) / name).is_file()]
    return line + (f"\n  open: {', '.join(made)}" if made else "")
