"""Resuming into an existing run dir: find what is complete, clear what a killed process left behind."""

from __future__ import annotations

import json
import logging
import math
import numbers
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sdlab.bench.records import (READ_FROM, TABLE_NAME, finished, job_dirs, local_file, ordered, own_image, read_table,
                                 rows, set_aside, whole_image, write_table)
from sdlab.config import Run, config_hash
from sdlab.errors import UserError
from sdlab.io import atomic_write_text, is_temp_file, read_json_object
from sdlab.lazy import pandas as pd

log = logging.getLogger(__name__)

MARKER = "job.json"
CONFIG = "run_config.json"  # what the job ran with: Hydra's composition with the model's world and params=FILE merged in
WRITTEN_FOLDERS = (".", "images", ".hydra")  # where sdlab's own writes land inside a run dir
MANIFEST = "sweep.json"  # a sweep's command and whether it finished: how a rerun of the same command finds its folder
FOLDERS = "folders"  # in the manifest: the jobs of an extended sweep that keep the job dir of another number
MANIFEST_MAX_BYTES = 64 << 20  # it keeps each prompt of the sweep up to 4 times, JSON-escaped: a prompt file at its limit
COST = "cost"  # the manifest entry of what a sweep measured on its host (sdlab.bench.plan), kept by its reruns
SPENT = "spent"  # the manifest entry of the seconds of each command that made cells of the sweep, start-up included


def clean_temp_files(folder: Path) -> int:
    """Delete sdlab's temp files left by a kill mid-write, in the folders sdlab writes; returns how many."""
    found = [tmp for sub in WRITTEN_FOLDERS if Path(folder, sub).is_dir() for tmp in Path(folder, sub).iterdir()
             if is_temp_file(tmp) and tmp.is_file() and not tmp.is_symlink()]
    for tmp in found:
        tmp.unlink(missing_ok=True)
    return len(found)


def complete_rows(folder: Path, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """Previous rows (read from `folder` unless given) whose status is ok and whose image (if any) is in `folder`."""
    frame = read_table(folder) if frame is None else frame
    if frame is None or "status" not in frame:
        return pd.DataFrame()
    return frame.loc[[finished(row, folder) for row in rows(frame)]]


def set_aside_damaged(folder: Path, unfinished: list[dict[str, Any]]) -> None:
    """Keep as `<name>.damaged` each cut-short image an `unfinished` row names as sdlab names them (its cell is made
    again)."""
    for row in (row for row in unfinished if own_image(row)):
        path = local_file(folder, row.get("image_path"))
        if path is not None and not whole_image(path):
            set_aside(path)
            log.warning("%s is not a whole image (cut short or damaged): kept as %s.damaged, its row dropped", path,
                        path.name)


def sweep_cells(sweep_dir: Path, besides: Path, weights: str | None) -> dict[str, Path]:
    """Config hash -> the job dir of the sweep (but `besides`) holding it finished from these `weights`."""
    cells: dict[str, Path] = {}
    besides = Path(besides).resolve()
    for job in job_dirs(sweep_dir):
        if job.resolve() != besides:
            cells.update({h: job for h, w in _finished_hashes(job).items() if w == weights and h not in cells})
    return cells


def weights_of(row: dict[str, Any]) -> str | None:
    """The weights fingerprint a row's image was made from (None for a model built in code, or a row without it)."""
    weights = row.get("weights")
    return weights if isinstance(weights, str) else None


_FINISHED: dict[Path, tuple[tuple, dict[str, str | None]]] = {}


def _finished_hashes(job: Path) -> dict[str, str | None]:
    """A job dir's finished cells and their weights, read again only when its table or images changed (every job of a
    sweep asks for every other's: reading them each time made a sweep quadratic)."""
    key = tuple(_stamp(job / name) for name in (TABLE_NAME + ".parquet", "images"))
    if key[0] is None or _FINISHED.get(job, (None,))[0] != key:
        found = rows(complete_rows(job))
        _FINISHED[job] = (key, {row["config_hash"]: weights_of(row) for row in found
                                if isinstance(row.get("config_hash"), str)})
    return _FINISHED[job][1]


def _stamp(path: Path) -> tuple | None:
    """What changes when a file or folder is rewritten, or a file in it added or removed (None when absent)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def read_mark(folder: Path) -> dict[str, Any]:
    """A job dir's finished mark (`job_hash`, rows, weights, `gen_s`), or {} for none, or one that is no JSON object."""
    return read_json_object(Path(folder) / MARKER)


def calls_made(frame: pd.DataFrame) -> dict[str, list]:
    """The pipeline calls a job's rows came from: each call's images, its seconds and how many of them are rows here."""
    calls: dict[str, list] = {}
    for row in rows(frame) if {"call_id", "batch_size", "time_total_s"} <= set(frame.columns) else []:
        size, share = row["batch_size"], row["time_total_s"]
        if isinstance(row["call_id"], str) and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                   for v in (size, share)):
            calls.setdefault(row["call_id"], [int(size), float(share) * size, 0])[2] += 1
    return calls


def mark_calls(mark: dict) -> dict[str, tuple[int, float, int]]:
    """The pipeline calls a finished job's mark names: each call's images, its seconds, and the images that are the
    job's own; what is not so is left out."""
    given = mark.get("calls")
    return {call: (int(made[0]), float(made[1]), int(made[2])) for call, made in
            (given.items() if isinstance(given, dict) else ())
            if isinstance(made, list) and len(made) == 3 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                                    for v in made)}


def finished_job(folder: Path, job_hash: str) -> pd.DataFrame | None:
    """The complete rows of the job `job_hash` finished in `folder` (and its cells elsewhere in the sweep), or None."""
    mark = read_mark(folder)
    if mark.get("job_hash") != job_hash or not finished_beside(Path(folder), mark.get("elsewhere", {}),
                                                               mark.get("weights")):
        return None
    frame = read_table(folder)
    if (frame is None or len(frame) != mark.get("rows", len(frame))
            or len(complete_rows(folder, frame)) != len(frame)):
        return None
    if frame.attrs.get(READ_FROM) != f"{TABLE_NAME}.parquet":
        write_table(frame, folder)
    return frame


def finished_beside(folder: Path, cells: Any, weights: str | None) -> bool:
    """Whether each of `cells` ({config hash: a job dir's name beside `folder`}) is finished there from `weights`."""
    if not isinstance(cells, dict):
        return False
    root = folder.parent.resolve()
    for cell, name in cells.items():
        job = folder.parent / str(name)
        if not (isinstance(name, str) and name == job.name and job.resolve().parent == root
                and (cell, weights) in _finished_hashes(job).items()):
            return False
    return True


def marked_jobs(sweep_dir: Path) -> dict[Path, str]:
    """Each job dir of the sweep whose mark names a job hash, in job dir order, with that hash."""
    marks = {job: read_mark(job).get("job_hash") for job in (job_dirs(sweep_dir) if Path(sweep_dir).is_dir() else [])}
    return {job: job_hash for job, job_hash in marks.items() if isinstance(job_hash, str)}


def check_cell_of_its_sweep(folder: Path, run: Run, shown: str) -> None:
    """Refuse a single run into a sweep's job dir whose finished job is another: its rows would join the sweep's table,
    and the sweep's rerun would make its cell again elsewhere."""
    held = read_mark(folder).get("job_hash")
    if isinstance(held, str) and held != run.job_hash and (Path(folder).parent / MANIFEST).is_file():
        raise UserError(f"hydra.run.dir={shown} is the job dir of a cell of the sweep in {Path(shown).parent}; a run "
                        "of other settings there would join the sweep's table: give the run a folder of its own")


def made_from_other_weights(folder: Path, run: Run) -> bool:
    """Whether `folder`'s job finished this same recipe from weights other than `run`'s (retrained in place since)."""
    done = read_mark(folder)
    weights = done.get("weights")  # none in a mark of an older sdlab: its weights are unknown
    return ("weights" in done and weights != run.weights and (weights is None or isinstance(weights, str))
            and done.get("job_hash") == replace(run, weights=weights).job_hash)


def mark_finished(folder: Path, job_hash: str | None, summary: dict[str, Any]) -> None:
    """Record that the job `job_hash` finished in `folder` (last, atomically; a failed job has none)."""
    atomic_write_text(Path(folder) / MARKER, json.dumps({"job_hash": job_hash, **summary}, sort_keys=True))


def sweep_key(task_overrides: list[str]) -> str:
    """The identity of a sweep: its command-line overrides as typed, in order (Hydra's own keys and `plan=` aside)."""
    return config_hash({"overrides": [o for o in task_overrides if not o.lstrip("+~").startswith(("hydra.", "plan="))]})


def varying_keys(jobs: list[list[str]]) -> list[str]:
    """The keys whose value differs between the sweep's jobs, in command-line order."""
    return [key for key, values in key_values(jobs).items() if len(values) > 1]


def key_values(jobs: list[list[str]]) -> dict[str, list[str]]:
    """Each overridden key's values across the sweep's jobs, as typed, in command-line order."""
    values: dict[str, dict[str, None]] = {}
    for key, _, value in (item.partition("=") for job in jobs for item in job):
        values.setdefault(key.lstrip("+~"), {})[value] = None
    return {key: list(seen) for key, seen in values.items()}


def write_manifest(sweep_dir: Path, task_overrides: list[str], jobs: list[list[str]], hydra: list[str] = (),
                   hashes: list[str] = (), finished: int = 0, warnings: list[str] | None = None,
                   shown: list[dict[str, str]] | None = None, folders: dict[int, int] | None = None,
                   work: list[float | None] = ()) -> None:
    """Record a sweep's command (`hydra`: its Hydra flags) after the others that ran in its folder, axes, values, cell
    hashes, state and pre-flight warnings
    (None: the earlier ones); each cell's swept values as `shown` (the text a job gets), else as typed; `folders`:
    {job number: the number of the job dir it takes}, for jobs not in their own (None: the earlier ones); each cell's
    `work` for this command (the progress line's); its `COST` and `SPENT` stay."""
    earlier = read_manifest(sweep_dir) or {}
    warnings = earlier.get("warnings", []) if warnings is None else list(warnings)
    values, axes = key_values(jobs), varying_keys(jobs)
    typed = [dict(item.lstrip("+~").partition("=")[::2] for item in job) for job in jobs] if shown is None else shown
    jobs_axes = [{k: v for k, v in cell.items() if k in axes} for cell in typed]
    command = [*task_overrides, *(h for h in hydra if not h.startswith(("hydra.mode=", "hydra.sweep.dir=")))]
    ran = earlier.get("commands", [earlier["command"]] if "command" in earlier else [])
    commands = [c for c in ran if c != command]  # the others that ran here, in the order they last ran
    manifest = {"key": sweep_key(task_overrides), "overrides": list(task_overrides), "command": command,
                "commands": [*commands, command],
                "cells": len(jobs), "finished": finished, "axes": axes, "values": values, "jobs": jobs_axes,
                "hashes": list(hashes), "work": list(work), "complete": False, "warnings": warnings,
                FOLDERS: earlier.get(FOLDERS, {}) if folders is None else {str(k): v for k, v in folders.items()},
                **{key: earlier[key] for key in (COST, SPENT) if key in earlier}}
    atomic_write_text(Path(sweep_dir) / MANIFEST, json.dumps(manifest, indent=1))


def read_manifest(sweep_dir: Path, strict: bool = False) -> dict[str, Any] | None:
    """A sweep folder's manifest, else None (one that cannot be read too, or with `strict` a UserError naming it)."""
    path = Path(sweep_dir) / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MANIFEST_MAX_BYTES:
            raise ValueError(f"not a regular file of at most {MANIFEST_MAX_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
        texts = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa: E731
        if not (isinstance(data, dict) and isinstance(data.get("key"), str) and type(data.get("finished", 0)) is int
                and all(texts(data.get(key, [])) for key in ("axes", "command", "hashes", "warnings"))
                and isinstance(data.get(SPENT, []), list) and all(type(s) in (int, float) for s in data.get(SPENT, []))
                and isinstance(data.get("values", {}), dict) and all(texts(v) for v in data.get("values", {}).values())
                and isinstance(data.get("jobs", []), list) and all(isinstance(j, dict) for j in data.get("jobs", []))
                and isinstance(data.get("commands", []), list) and all(texts(c) for c in data.get("commands", []))):
            raise ValueError("not an sdlab sweep manifest")
    except (OSError, ValueError, RecursionError) as e:
        if strict:
            raise UserError(f"{path} cannot be read ({type(e).__name__}: {e})") from None
        return None
    return data


def sweep_position(sweep_dir: Path, job_num: int) -> dict[str, Any]:
    """{"progress": "job 3 of 6" (or "recipe 3 of 26"), "axes": the keys that vary} from the manifest, else {}."""
    manifest = read_manifest(sweep_dir)
    if manifest is None or not isinstance(manifest.get("cells"), int):
        return {}
    axes = [str(a) for a in manifest.get("axes", [])]
    unit = "recipe" if "experiment" in axes else "job"
    return {"progress": f"{unit} {job_num + 1} of {manifest['cells']}", "axes": axes}


def update_manifest(sweep_dir: Path, **entries: Any) -> None:
    """Set entries of a sweep's manifest (`complete=True` once every cell finished ok)."""
    manifest = read_manifest(sweep_dir)
    if manifest is not None:
        atomic_write_text(Path(sweep_dir) / MANIFEST, json.dumps({**manifest, **entries}, indent=1))


_SPENT_RECORDED: set[tuple[Path, float]] = set()  # (sweep dir, command start) whose seconds this process recorded


def record_spent(sweep_dir: Path, began: float, started: float) -> None:
    """Add the seconds since `began` (the command's start) to the sweep's `SPENT` if it wrote a job's table since
    `started`, once a command (its end and an interrupt at it both record): a rerun that made nothing adds none."""
    manifest, command = read_manifest(sweep_dir), (Path(sweep_dir).resolve(), began)
    tables = (job / "results.parquet" for job in job_dirs(sweep_dir))
    if (manifest is not None and command not in _SPENT_RECORDED
            and any(table.is_file() and table.stat().st_mtime >= started for table in tables)):
        update_manifest(sweep_dir, **{SPENT: [*manifest.get(SPENT, []), round(time.time() - began, 3)]})
        _SPENT_RECORDED.add(command)


def earlier_sweep(root: Path, task_overrides: list[str]) -> tuple[Path, bool] | None:
    """The newest folder under `root` that ran this same sweep, and whether it finished; None when there is none."""
    key = sweep_key(task_overrides)
    found = [(folder, manifest) for folder in sorted(Path(root).glob("multirun_*"))
             if folder.is_dir() and not folder.is_symlink()
             for manifest in [read_manifest(folder)] if manifest and manifest["key"] == key]
    if not found:
        return None
    folder, manifest = max(found, key=lambda item: (item[0] / MANIFEST).stat().st_mtime)
    return folder, bool(manifest.get("complete"))


def record_config(folder: Path, config: dict[str, Any]) -> None:
    """Write the effective config a job runs with into its folder (Hydra's .hydra/config.yaml is before the merges)."""
    atomic_write_text(Path(folder) / CONFIG, json.dumps(config, indent=1, sort_keys=True, default=str), sync=False)


def unmark(folder: Path) -> None:
    """Forget a finished marker before recomputing."""
    (Path(folder) / MARKER).unlink(missing_ok=True)


NOT_RUN_WHY = "ended before writing a row (killed, cancelled, preempted, out of time or memory?)"
NOT_RUN = f"did not run: its job {NOT_RUN_WHY}; rerun the same command to run it"  # a cell's error


def collect(sweep_dir: Path, since: float = 0.0) -> pd.DataFrame:
    """Every job dir's finished cells and failed rows written since `since`, with its value of axes its rows lack."""
    manifest = read_manifest(sweep_dir) or {}
    cells = manifest.get("jobs") or []
    numbers = {job_hash: n for n, job_hash in enumerate(manifest.get("hashes") or [])}  # a folder named otherwise
    found, unfinished, tabled = [], [], set()
    for job in job_dirs(sweep_dir):  # row by row: filtering each job's frame with pandas cost 3 ms a job
        frame = read_table(job)
        if frame is None:
            unfinished.append(job.name)
            continue
        head = job.name.split("_", 1)[0]
        number = int(head) if head.isdigit() else numbers.get(read_mark(job).get("job_hash"), job.name)
        tabled.add(number)
        current = (job / "results.parquet").is_file() and (job / "results.parquet").stat().st_mtime >= since
        cell = cells[number] if isinstance(number, int) and number < len(cells) else {}
        for row in rows(frame):
            if "status" in row and not (finished(row, job) or (row["status"] != "ok" and current)):
                continue
            if isinstance(row.get("image_path"), str) and row["image_path"]:
                row["image_path"] = f"{job.name}/{row['image_path']}"
            found.append({**row, **{k: v for k, v in cell.items() if k not in row}})
    if unfinished:
        log.warning("skipped %d unfinished job dir(s) without results.parquet: %s", len(unfinished), unfinished)
    # a cell whose process ended before its job wrote a table: a failed row each at its values, so the sweep is not
    # complete and the grid shows where
    missing = [cell for number, cell in enumerate(cells) if number not in tabled]
    held = {"seed": 0}  # a value of each swept column, whose type a missing cell's value as typed takes
    axes = {k for cell in missing for k in cell}
    for row in found if missing else ():
        held.update({k: row[k] for k in axes & row.keys() if k not in held and row[k] is not None})
    found += [{"overrides": json.dumps(cell), "status": "error", "error": NOT_RUN,
               **{k: as_held(v, held.get(k)) for k, v in cell.items()}} for cell in missing]
    return ordered(in_command_order(found, cells))


def in_command_order(found: list[dict[str, Any]], cells: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Rows in the order of the sweep's `cells` (its command's: an extended sweep's cells sit in job dirs numbered for
    the command before), rows at values no cell has after them; otherwise as found."""
    place: dict[str, dict[Any, int]] = {}
    for cell in cells:
        for key, value in cell.items():
            place.setdefault(key, {}).setdefault(comparable(value), len(place[key]))
    return sorted(found, key=lambda row: tuple(seen.get(comparable(row.get(key)), len(seen))
                                               for key, seen in place.items()))


def comparable(value: Any) -> Any:
    """A value as typed ("7.5", "1", "true") and as a row holds it (7.5, 1.0, True) made equal; NaN matches nothing."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def as_held(value: str, held: Any) -> Any:
    """A value as typed on the command line, as a number where its column holds numbers (`held`: one of them)."""
    if not isinstance(held, numbers.Real) or isinstance(held, bool):
        return value
    try:
        number = float(value)
    except ValueError:
        return None  # no number: missing in a column of numbers (the row's overrides keep it as typed)
    return int(number) if isinstance(held, numbers.Integral) and number.is_integer() else number
