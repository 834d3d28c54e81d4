"""A sweep's plan before any work: its cells, which are done, how they batch, their NFE, and the wall time and peak
memory that this machine measured for such cells in earlier sweeps ("unknown" when it has measured none)."""

from __future__ import annotations

import dataclasses
import json
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from sdlab.bench.captions import counted
from sdlab.bench.resume import COST, MARKER, complete_rows, read_manifest, read_mark, update_manifest
from sdlab.bench.records import job_dirs, local_file, whole_image
from sdlab.bench.scorers import scorer_identities
from sdlab.conf_files import CONF_DIR, conf_values
from sdlab.config import IMAGE_PARAMS, Run, config_hash, image_params
from sdlab.lazy import pandas as pd
from sdlab.models.families import family
from sdlab.models.loading import published_scheduler_config
from sdlab.models.schedulers import denoiser_calls, make_scheduler, resolved_config

COST_KEYS = ("step_s", "sample_step_s", "overhead_s", "fixed_s")  # and MEMORY_KEYS, None where not measured
# the largest peak measured, the samples of the largest call measured, and a peak's fixed and per sample parts
MEMORY_KEYS = ("peak_mem_bytes", "peak_samples", "peak_fixed_bytes", "peak_sample_bytes")
COST_RECORDS = 5  # the newest records of a size a plan takes the median of


@dataclass(frozen=True)
class Cell:
    """What the plan needs of one cell: its hash, what it shares with the cells it can batch with, and its work."""

    job_hash: str
    batch: tuple | None  # `shared_call`: cells equal in it share a pipeline call; None: an analysis, its own work
    size: str  # `model@WxH`, what its cost is measured by
    images: int | None  # None: its job cannot say
    batch_size: int
    nfe: int | None  # denoiser calls of its images, summed; None: its job cannot say
    guided: bool = False  # whether each denoiser call runs the unconditional branch too (a batch twice the images)
    resume: bool = True  # False: its job makes everything again (resume=false), whatever is found done
    seeds: tuple = ()  # of its images
    image_base: dict | None = None  # what decides its images' cell hashes but its seed and its scheduler's config
    scheduler: tuple = ()  # (model spec, scheduler name, options as JSON): what builds that config (`built_config`)


def cell_work(cell: Cell) -> int | None:
    """A cell's denoiser latents (its NFE, twice under classifier-free guidance), what its time goes by; None: unsaid."""
    return None if cell.nfe is None else cell.nfe * (2 if cell.guided else 1)


def shared_call(run: Run) -> tuple | None:
    """What cells must have in common to share a pipeline call (None: no images); seeds, prompts, negative prompts
    and, where the model runs classifier-free guidance, guidance scales above 1 may differ."""
    if run.job != "generate":
        return None
    p = run.params
    same = (run.scheduler.options, *(run.recipe.get(k) for k in ("scorers", "clip", "sample_world")))
    return (run.model.key, run.scheduler.name, json.dumps(same, sort_keys=True, default=str), p.num_inference_steps,
            p.width, p.height, family(run.model.family).guidance_group(p.guidance_scale), p.eta, p.batch_size,
            run.threads, run.resume)


def call_cells(batch_size: int, todos: Iterable[tuple[int, Sequence]]) -> tuple[list[int], list]:
    """What one shared call of up to `batch_size` images takes of the cells that can share it, given in turn as (index,
    images it has to make): whole cells, until one does not fit; their indices, and their images in turn."""
    covered, images = [], []
    for i, todo in todos:
        if len(images) + len(todo) > batch_size:
            break
        covered, images = covered + [i], images + list(todo)
    return covered, images


def call_groups(count: int, ahead: Callable[[int], set[int]] | None) -> Iterator[list[int]]:
    """Jobs 0..count-1 in groups to run in turn: a job and those its work `ahead` (job -> jobs covered) made too, so
    a call's cells are written before the next call begins and a kill loses at most the call under way."""
    done: set[int] = set()
    for i in range(count):
        if i not in done:
            group = sorted(({i} | ahead(i)) - done) if ahead else [i]
            done.update(group)
            yield group


def planned_calls(cells: list[Cell], window: int | None, task_size: int | None = None) -> list[tuple[Cell, int]]:
    """The pipeline calls the cells' jobs make, each as (a cell of it, its images), grouped as a launcher groups them:
    in tasks of `task_size` cells (None: one), each as `task_calls` groups them."""
    size = task_size or max(len(cells), 1)
    return [call for start in range(0, len(cells), size) for call in task_calls(cells[start:start + size], window)]


def task_calls(cells: list[Cell], window: int | None) -> list[tuple[Cell, int]]:
    """The calls of cells run in turn (`call_groups`): a job and those of the next `window` jobs (None: each job alone)
    whose images its shared call makes (`call_cells`, as generate's `make_ahead` packs them); a group's images are
    made `batch_size` at a time."""
    calls, made = [], set()

    def ahead(n: int) -> set[int]:
        first = cells[n]
        if first.batch is None:
            return set()
        todos = ((n + k, () if n + k in made else range(c.images)) for k, c in enumerate(cells[n:n + window])
                 if c.batch == first.batch)
        return set(call_cells(first.batch_size, todos)[0])

    for group in call_groups(len(cells), ahead if window else None):
        made.update(group)
        first = next((cells[i] for i in group if cells[i].images), cells[group[0]])
        if first.batch is not None:
            images = sum(cells[i].images for i in group)
            calls += [(first, min(first.batch_size, images - done)) for done in range(0, images, first.batch_size)]
    return calls


def cell_of(run: Run, work_of: Callable[[Run], list | None]) -> Cell:
    """The plan's view of a parsed cell; an analysis's images are those `work_of` says a run of its job denoises."""
    batch, p = shared_call(run), run.params
    if batch is None:
        made = work_of(run)
        images, nfe = (None, None) if made is None else (
            sum(n for *_, n in made), sum(n * denoiser_calls(name, steps) for name, steps, n in made))
        return Cell(run.job_hash, None, f"job {run.job}", images, 1, nfe, resume=run.resume)
    base = {"model": run.model.name, "model_options": run.model.image_options, "scheduler": run.scheduler.name,
            **image_params(p), "scorers": scorer_identities(run.recipe)}
    options = json.dumps(run.scheduler.options, sort_keys=True, default=str)
    return Cell(run.job_hash, batch, f"{run.model.name}@{p.width}x{p.height}", len(p.seeds),
                p.batch_size, len(p.seeds) * denoiser_calls(run.scheduler.name, p.num_inference_steps),
                family(run.model.family).uses_cfg(p.guidance_scale), run.resume, p.seeds, base,
                (run.model, run.scheduler.name, options))


def built_config(scheduler: tuple) -> str:
    """The `scheduler_config` a job records for a cell's (model spec, scheduler name, options as JSON)."""
    model, name, options = scheduler
    return resolved_config(make_scheduler(name, published_scheduler_config(model)[0], json.loads(options)))


def hash_fields(fields: dict, scorers: dict) -> dict:
    """What decides an image and its scores besides its seed (its `cell_hash` base), taken from `fields`, with the
    scorers' identities; the scheduler's name too: on a flow model ddim and euler are one solver, yet each is its own
    cell of a sweep. The model's `image_options` count where set (a default run keeps the hash it had)."""
    options = {"model_options": fields["model_options"]} if fields.get("model_options") else {}
    return {**{k: fields[k] for k in ("model", "scheduler", "scheduler_config", *IMAGE_PARAMS)}, **options,
            "scorers": scorers}


def cell_hash(base: dict, seed: int) -> str:
    """Hash of everything that decides one image: model, scheduler, parameters and its seed."""
    return config_hash({**base, "seed": seed})


def made_images(sweep_dir: Path, skip: set[str]) -> tuple[dict[tuple, set[str]], set[str]]:
    """The images finished in a run dir or the job dirs of a sweep but those of the jobs `skip` names: the scheduler
    configs they were made with by (model, scheduler), and their cell hashes."""
    configs, hashes = {}, set()
    for folder in [Path(sweep_dir), *job_dirs(sweep_dir)]:
        if read_mark(folder).get("job_hash") in skip:
            continue
        found = complete_rows(folder)
        if {"config_hash", "model", "scheduler", "scheduler_config"} <= set(found.columns):
            hashes.update(found["config_hash"])
            for (model, scheduler), config in found.groupby(["model", "scheduler"])["scheduler_config"]:
                configs.setdefault((model, scheduler), set()).update(config)
    return configs, hashes


def left_to_make(cell: Cell, configs: dict[tuple, set[str]], hashes: set[str], built: dict[tuple, str]) -> Cell:
    """The cell with only the images its job does not find made (by cell hash, as generate's resume does, with its
    scheduler's config, built once into `built` and only when images of its model and scheduler were found)."""
    if not cell.resume or cell.image_base is None:
        return cell
    base = cell.image_base
    found = configs.get((base["model"], base["scheduler"]), set())
    if found and cell.scheduler not in built:
        built[cell.scheduler] = built_config(cell.scheduler)
    own = built.get(cell.scheduler)
    left = [s for s in cell.seeds if own not in found
            or cell_hash(hash_fields({**base, "scheduler_config": own}, base["scorers"]), s) not in hashes]
    return dataclasses.replace(cell, images=len(left), nfe=cell.nfe // cell.images * len(left)) if cell.images else cell


def finished_hashes(sweep_dir: Path) -> set[str]:
    """The cell hashes a run dir, or the job dirs of a sweep, mark finished (by content, whatever their job number),
    each image the mark lists still whole, as the sweep's resume will find them."""
    marks = {job: read_mark(job) for job in [Path(sweep_dir), *job_dirs(sweep_dir)]}
    images = lambda mark: mark["images"] if isinstance(mark.get("images"), list) else []  # noqa: E731 - a file's data
    return {mark["job_hash"] for job, mark in marks.items() if isinstance(mark.get("job_hash"), str)
            and all(isinstance(path, str) and whole_image(local_file(job, path)) for path in images(mark))}


def measured_costs(sweep_dir: Path) -> dict[str, dict]:
    """`model@WxH` -> what this host measured for it, in this sweep dir or a sibling one: each number the median of
    its newest `COST_RECORDS` records (a sweep run on a busy machine moves it no further than the others allow)."""
    folders = [Path(sweep_dir), *Path(sweep_dir).parent.glob("*/")]
    manifests = [(path.stat().st_mtime, path.parent) for folder in dict.fromkeys(folders)
                 for path in [folder / "sweep.json"] if path.is_file()]
    records: dict[str, list[dict]] = {}
    for _, folder in sorted(manifests, reverse=True):
        cost = (read_manifest(folder) or {}).get(COST) or {}
        if cost.get("host") == socket.gethostname() and isinstance(cost.get("sizes"), dict):
            for size, entry in cost["sizes"].items():
                records.setdefault(size, []).extend([entry] if usable(entry) else [])
    median = lambda values: statistics.median(values) if values else None  # noqa: E731
    return {size: {key: median([e[key] for e in entries[:COST_RECORDS] if e.get(key) is not None])
                   for key in (*COST_KEYS, *MEMORY_KEYS)} for size, entries in records.items() if entries}


def usable(entry) -> bool:
    """Whether a cost record (a folder's data, perhaps from another version of sdlab) has every number a plan needs."""
    number = lambda value: isinstance(value, (int, float)) and 0 <= value < float("inf")  # noqa: E731
    return isinstance(entry, dict) and all(number(entry.get(key)) for key in COST_KEYS) and all(
        entry.get(key) is None or number(entry[key]) for key in MEMORY_KEYS)


def estimate(todo: list[Cell], costs: dict[str, dict], calls: list[tuple[Cell, int]] | None = None) -> tuple[str, str]:
    """(wall time, peak memory) of the cells to run in these `calls` (`planned_calls`; by default each call taking
    whole cells from all that share it), from measured costs; 'unknown (...)' naming what is missing."""
    if not todo:
        return "0 s", "-"
    if missing := sorted({c.size for c in todo if c.size not in costs}):
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        return f"unknown (no sweep in or beside this folder measured {shown} on this machine)", "unknown"
    sizes = {c.size for c in todo}
    seconds = max(costs[s]["fixed_s"] for s in sizes) + sum(costs[c.size]["overhead_s"] for c in todo)
    largest = {}
    for cell, images in planned_calls(todo, len(todo)) if calls is None else calls:
        cost, samples = costs[cell.size], images * (2 if cell.guided else 1)
        seconds += cell.nfe // cell.images * (cost["step_s"] + cost["sample_step_s"] * samples)
        largest[cell.size] = max(largest.get(cell.size, 0), samples)
    peaks = [peak_memory(costs[s], largest.get(s, 0)) for s in sizes]
    return duration(seconds), "unknown" if None in peaks else max(peaks)[1]


def peak_memory(cost: dict, samples: int) -> tuple[float, str] | None:
    """(bytes, as the plan says them) of the peak memory of calls of up to `samples` samples (images, twice with
    guidance) of a size: its fixed part and part per sample where the record has them, else the largest peak measured,
    at least, when its calls were smaller; None when unmeasured."""
    peak, measured = cost.get("peak_mem_bytes"), cost.get("peak_samples")
    if peak is None:
        return None
    if cost.get("peak_sample_bytes") is not None and cost.get("peak_fixed_bytes") is not None:
        scaled = cost["peak_fixed_bytes"] + cost["peak_sample_bytes"] * samples
        return scaled, (f"{scaled / 2**30:.2f} GiB (calls of up to {samples} samples: a fixed part and a part per "
                        "sample fitted to the calls measured)")
    if measured is not None and samples <= measured:
        return peak, f"{peak / 2**30:.2f} GiB (as measured in calls of up to {measured:g} samples)"
    measured_in = "calls of unknown size" if measured is None else f"calls of up to {measured:g} samples"
    return peak, f"at least {peak / 2**30:.2f} GiB (measured in {measured_in}; these make up to {samples})"


def linear_cost(pairs) -> tuple[float, float] | None:
    """(fixed part, part per sample) of the least-squares line through (samples, cost) pairs, if they hold two sizes
    and the line is physical (a fixed part >= 0, a part per sample > 0); else None."""
    samples, costs = zip(*pairs)
    if len(set(samples)) > 1:
        slope, intercept = statistics.linear_regression(samples, costs)
        if slope > 0 and intercept >= 0:
            return intercept, slope
    return None


def step_costs(calls: list[tuple[int, float]]) -> tuple[float, float]:
    """(seconds per step, per sample in a step) fitted to (samples in the call, seconds per step) pairs; with one call
    size, or a fit that is not physical, all of it per sample."""
    return linear_cost(calls) or (0.0, statistics.fmean(t / m for m, t in calls))


def memory_costs(calls: list[tuple[int, float]]) -> dict:
    """`MEMORY_KEYS` of (samples in the call, its peak bytes) pairs: the largest peak, the largest call, and a fixed
    part and a part per sample fitted to each call size's largest peak, where there are two sizes and the fit is
    physical (else None)."""
    if not calls:
        return dict.fromkeys(MEMORY_KEYS)
    largest = {}
    for samples, peak in calls:
        largest[samples] = max(largest.get(samples, 0), peak)
    fixed, per_sample = linear_cost(largest.items()) or (None, None)
    return {"peak_mem_bytes": int(max(largest.values())), "peak_samples": max(largest), "peak_fixed_bytes": fixed,
            "peak_sample_bytes": per_sample}


def duration(seconds: float) -> str:
    """Seconds as `42 s`, `3.5 min` or `2.1 h`."""
    return (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200
            else f"{seconds / 3600:.1f} h")


def plan_text(cells: list[Cell], sweep_dir: Path, skipped: list[str] = (), window: int | None = None,
              task_size: Callable[[int], int] | None = None) -> str:
    """The plan a user reads before a sweep: cells, done, batches, NFE, estimated time and memory, and the output;
    after the `skipped` lines (the cells the sweep leaves out, as it says so). Its calls are grouped as the launcher
    will (`planned_calls`: its `window` of jobs working ahead, its `task_size` of N cells to run)."""
    done = finished_hashes(sweep_dir)
    todo = [c for c in cells if not (c.resume and c.job_hash in done)]
    if todo and Path(sweep_dir).is_dir():
        found = made_images(sweep_dir, {c.job_hash for c in cells if c.resume and c.job_hash in done})
        built: dict[tuple, str] = {}
        todo = [left_to_make(c, *found, built) for c in todo]
    calls = planned_calls(todo, window, task_size(len(todo)) if task_size and todo else None)
    batched = [c for c in todo if c.batch is not None]  # in groups that can share a call
    groups, sizes = {c.batch for c in batched}, sorted({c.batch_size for c in batched})
    analyses = sum(c.batch is None for c in todo)
    unsaid = ", ".join(sorted({c.size for c in todo if c.images is None}))  # jobs that cannot say what they make
    nfe = sum(c.nfe or 0 for c in todo)
    wall, memory = estimate(todo, measured_costs(sweep_dir), calls)
    state = "exists" if Path(sweep_dir).is_dir() else "new"
    return "\n".join([
        *skipped,
        f"sdlab plan: {counted(len(cells), 'cell')}, {len(cells) - len(todo)} already done, {len(todo)} to run "
        f"({counted(sum(c.images or 0 for c in todo), 'image')}"
        f"{', ' + counted(analyses, 'analysis', 'analyses') if analyses else ''}"
        f"{f'; not counted: the images of {unsaid}' if unsaid else ''})",
        f"  batches: {len(calls)} (cells sharing model, scheduler, steps, size and guidance group: "
        f"{counted(len(groups), 'group')}; batch_size={'/'.join(map(str, sizes)) or '-'})",
        f"  total NFE: {nfe}{f' + unknown for {unsaid}' if unsaid else ''} (denoiser calls per image, summed)",
        f"  estimate: {wall}, peak memory {memory}",
        f"  output: {sweep_dir} ({state})",
        "  nothing was written; drop plan=true to run it",
    ])


def guided(model: str, guidance_scale: float) -> bool:
    """Whether a row of config model `model` ran classifier-free guidance (no config file: taken to above 1)."""
    path = CONF_DIR / "model" / f"{model}.yaml"
    name = conf_values(f"model/{model}.yaml").get("family") if path.is_file() else None
    return family(name).uses_cfg(guidance_scale) if name else guidance_scale > 1


def record_cost(sweep_dir: Path, frame: pd.DataFrame, began: float, started: float) -> None:
    """Put what this sweep measured into its manifest for later plans, per `model@WxH`: a denoiser step's seconds
    (`step_costs`), the peak memory, a cell's time beyond its images, and the time paid once (start-up, model load)."""
    manifest = read_manifest(sweep_dir) or {}
    if isinstance(manifest.get("cells"), int) and manifest.get("finished") == manifest["cells"]:
        return
    jobs = []
    for job in job_dirs(sweep_dir):
        try:
            end = (job / MARKER).stat().st_mtime
        except OSError:
            continue
        made = read_mark(job) if end >= started - 1 else {}
        jobs += [(end, made["gen_s"])] if "gen_s" in made else []
    # rows of timed calls: a trajectory's step rows count denoiser steps but time no call of their own
    timed = ["nfe", "batch_size", "time_total_s", "guidance_scale", "width", "height"]
    ok = (frame[(frame["status"] == "ok") & frame[timed].notna().all(axis=1) & (frame["nfe"] > 0)]
          if {"status", *timed} <= set(frame) else frame[:0])
    if len(jobs) < 2 or ok.empty:
        return
    jobs.sort()
    # a job's time since the previous one ended beyond its images (all of it if they were made ahead, in a shared call)
    overhead = statistics.median(b - a - gen if b - a >= gen else b - a for (a, _), (b, gen) in zip(jobs, jobs[1:]))
    fixed = max(time.time() - began - sum(overhead + gen for _, gen in jobs), 0.0)
    ok = ok.assign(size=ok["model"].astype(str) + "@" + ok["width"].astype(int).astype(str) + "x"
                   + ok["height"].astype(int).astype(str))
    sizes = {}
    for size, rows in ok.groupby("size"):
        # a row's time is its share of its call: the call took batch_size times that, over nfe denoiser steps
        calls = [(int(r.batch_size) * (2 if guided(str(r.model), float(r.guidance_scale)) else 1),
                  float(r.time_total_s) * int(r.batch_size) / int(r.nfe)) for r in rows.itertuples()]
        step_s, sample_step_s = step_costs(calls)
        peaks = rows["peak_mem_bytes"].tolist() if "peak_mem_bytes" in rows else []  # none: this device tells none
        sizes[size] = {"step_s": step_s, "sample_step_s": sample_step_s, "overhead_s": overhead, "fixed_s": fixed,
                       **memory_costs([(m, p) for (m, _), p in zip(calls, peaks) if pd.notna(p)])}
    update_manifest(sweep_dir, **{COST: {"host": socket.gethostname(), "sizes": sizes}})
