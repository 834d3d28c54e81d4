"""A sweep's plan before any work: its cells, which are done, how they batch, their NFE, and the wall time and peak
memory that this machine measured for such cells in earlier sweeps ("unknown" when it has measured none)."""

from __future__ import annotations

import json
import math
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sdlab.bench.resume import MARKER, read_manifest, update_manifest
from sdlab.bench.records import job_dirs
from sdlab.config import Run
from sdlab.models.families import family
from sdlab.models.schedulers import denoiser_calls

COST = "cost"  # the manifest entry of what a finished sweep measured on its host


@dataclass(frozen=True)
class Cell:
    """What the plan needs of one cell: its hash, what it shares with the cells it can batch with, and its work."""

    job_hash: str
    batch: tuple  # `shared_call`: cells equal in it share a pipeline call
    size: str  # `model@WxH`, what its cost is measured by
    images: int
    batch_size: int
    nfe: int | None  # denoiser calls per image; None for a job that makes no images


def shared_call(run: Run) -> tuple | None:
    """What cells must have in common to share one pipeline call (None: a job that makes no images); seeds, prompts,
    negative prompts and, where the model runs classifier-free guidance, guidance scales above 1 may differ."""
    if run.job != "generate":
        return None
    p = run.params
    same = (run.scheduler.options, *(run.recipe.get(k) for k in ("scorers", "clip", "sample_world")))
    return (run.model.key, run.scheduler.name, json.dumps(same, sort_keys=True, default=str), p.num_inference_steps,
            p.width, p.height, family(run.model.family).guidance_group(p.guidance_scale), p.eta, p.batch_size,
            run.threads, run.resume)


def cell_of(run: Run, job_hash: str | None = None) -> Cell:
    """The plan's view of a parsed cell."""
    batch, p = shared_call(run), run.params
    if batch is None:  # an analysis: its own work, no images to batch
        return Cell(job_hash or run.job_hash, (run.job,), f"job {run.job}", 0, 1, None)
    return Cell(job_hash or run.job_hash, batch, f"{run.model.name}@{p.width}x{p.height}", len(p.seeds),
                p.batch_size, denoiser_calls(run.scheduler.name, p.num_inference_steps))


def finished_hashes(sweep_dir: Path) -> set[str]:
    """The cell hashes a run dir, or the job dirs of a sweep, mark finished (by content, whatever their job number)."""
    found = set()
    for job in [Path(sweep_dir), *job_dirs(sweep_dir)] if Path(sweep_dir).is_dir() else []:
        try:
            found.add(json.loads((job / MARKER).read_text())["job_hash"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def measured_costs(sweep_dir: Path) -> dict[str, dict]:
    """`model@WxH` -> what this host measured for it: in this sweep dir or a sibling sweep dir, the newest first."""
    folders = [Path(sweep_dir), *Path(sweep_dir).parent.glob("*/")]
    manifests = [(path.stat().st_mtime, path.parent) for folder in dict.fromkeys(folders)
                 for path in [folder / "sweep.json"] if path.is_file()]
    costs: dict[str, dict] = {}
    for _, folder in sorted(manifests, reverse=True):
        cost = (read_manifest(folder) or {}).get(COST) or {}
        if cost.get("host") == socket.gethostname() and isinstance(cost.get("sizes"), dict):
            costs = {**cost["sizes"], **costs}
    return costs


def estimate(todo: list[Cell], costs: dict[str, dict]) -> tuple[str, str]:
    """(wall time, peak memory) of the cells to run, from measured costs; 'unknown (...)' naming what is missing."""
    if not todo:
        return "0 s", "-"
    missing = sorted({c.size for c in todo if c.size not in costs})
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        return f"unknown (nothing measured on this machine for {shown})", "unknown"
    sizes = {c.size for c in todo}
    seconds = max(costs[s]["fixed_s"] for s in sizes) + sum(
        costs[c.size]["overhead_s"] + costs[c.size]["s_per_nfe"] * c.nfe * c.images for c in todo)
    return duration(seconds), f"{max(costs[s]['peak_mem_bytes'] for s in sizes) / 2**30:.2f} GiB"


def duration(seconds: float) -> str:
    """Seconds as `42 s`, `3.5 min` or `2.1 h`."""
    return (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200
            else f"{seconds / 3600:.1f} h")


def plan_text(cells: list[Cell], sweep_dir: Path) -> str:
    """The plan a user reads before a sweep: cells, done, batches, NFE, estimated time and memory, and the output."""
    done = finished_hashes(sweep_dir)
    todo = [c for c in cells if c.job_hash not in done]
    groups: dict[tuple, list[Cell]] = {}
    for c in todo:
        if c.nfe is not None:
            groups.setdefault(c.batch, []).append(c)
    batches = sum(math.ceil(sum(c.images for c in g) / g[0].batch_size) for g in groups.values())
    sizes = sorted({c.batch_size for g in groups.values() for c in g})
    analyses = sum(c.nfe is None for c in todo)
    nfe = sum(c.nfe * c.images for c in todo if c.nfe is not None)
    wall, memory = estimate(todo, measured_costs(sweep_dir))
    state = "exists" if Path(sweep_dir).is_dir() else "new"
    return "\n".join([
        f"sdlab plan: {len(cells)} cell{'s' * (len(cells) != 1)}, {len(cells) - len(todo)} already done, "
        f"{len(todo)} to run ({sum(c.images for c in todo)} images{f', {analyses} analyses' if analyses else ''})",
        f"  batches: {batches} (cells sharing model, scheduler, steps, size and guidance group: {len(groups)} groups; "
        f"batch_size={'/'.join(map(str, sizes)) or '-'})",
        f"  total NFE: {nfe} (denoiser calls per image, summed)",
        f"  estimate: {wall}, peak memory {memory}",
        f"  output: {sweep_dir} ({state})",
        "  nothing was written; drop plan=true to run it",
    ])


def record_cost(sweep_dir: Path, frame: pd.DataFrame, began: float, started: float) -> None:
    """Put what this sweep measured into its manifest for later plans, per `model@WxH`: seconds per image-NFE and peak
    memory from its rows; a cell's wall time beyond its images (the median over the jobs made since `started` of the
    time from one job's end to the next's, less its images'); and the rest of the command's time, paid once
    (start-up, pre-flight, model load, collection). Nothing when it made no image."""
    jobs = []
    for job in job_dirs(sweep_dir):
        try:
            end = (job / MARKER).stat().st_mtime
            made = json.loads((job / MARKER).read_text()) if end >= started - 1 else {}
        except (OSError, ValueError):
            continue
        jobs += [(end, made["gen_s"])] if isinstance(made, dict) and "gen_s" in made else []
    ok = frame[(frame["status"] == "ok") & frame["nfe"].notna()] if {"status", "nfe"} <= set(frame) else frame[:0]
    if len(jobs) < 2 or ok.empty:
        return
    jobs.sort()
    overhead = max(statistics.median(b - a - gen for (a, _), (b, gen) in zip(jobs, jobs[1:])), 0.0)
    fixed = max(time.time() - began - sum(overhead + gen for _, gen in jobs), 0.0)
    ok = ok.assign(size=ok["model"].astype(str) + "@" + ok["width"].astype(str) + "x" + ok["height"].astype(str))
    sizes = {size: {"s_per_nfe": float(rows["time_total_s"].sum() / rows["nfe"].sum()), "overhead_s": overhead,
                    "fixed_s": fixed, "peak_mem_bytes": int(rows["peak_mem_bytes"].max())}
             for size, rows in ok.groupby("size")}
    update_manifest(sweep_dir, **{COST: {"host": socket.gethostname(), "sizes": sizes}})
