"""Measure sdlab against a hand-written loop, a naive Hydra app and the model itself.

    python benchmarks/run.py            # writes BENCHMARKS.md and benchmarks/results.csv

Every number is a ratio or a median of several repetitions measured in this one run, so a noisy,
shared machine shifts all sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sdlab.io import atomic_path, atomic_write_text  # noqa: E402
SWEEP = {"seeds": "1,2,3,4", "guidance": "1,7.5", "schedulers": "ddim,dpmpp_2m"}


@dataclass
class Report:
    """Rows for results.csv and markdown sections for BENCHMARKS.md."""

    rows: list[dict] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)

    def add(self, section: str, metric: str, value: float, unit: str = "", note: str = "") -> None:
        """Record one measured value."""
        self.rows.append({"section": section, "metric": metric, "value": value, "unit": unit, "note": note})


def run_measured(cmd: list[str], cwd: Path, check: bool = True) -> tuple[float, float]:
    """(wall, CPU) seconds of a subprocess, CPU being user + system of all its threads and children; with `check`, one
    that must succeed (without, a refused value exits 2 on purpose)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}"}
    before, start = os.times(), time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, os.times()
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def run_timed(cmd: list[str], cwd: Path) -> float:
    """Wall seconds of a subprocess that must succeed."""
    return run_measured(cmd, cwd)[0]


def medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """The median wall and the median CPU seconds of (wall, CPU) runs."""
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


# 1-2. sweep overhead against a hand-written loop and a naive Hydra app
def bench_overhead(report: Report, model: str, steps: int, repeats: int, work: Path, size: int | None = None,
                   naive: bool = True) -> None:
    """16 images (4 seeds x 2 guidance scales x 2 schedulers) three ways, interleaved, medians; with `naive`, also
    the naive Hydra app and Hydra's own floor (the same sweep with a task that does nothing)."""
    grid = [f"guidance_scale={SWEEP['guidance']}", f"scheduler={SWEEP['schedulers']}"]
    threads = torch.get_num_threads()  # every way runs with the benchmark's own thread count
    common = [f"model={model}", f"num_inference_steps={steps}", f"threads={threads}"]
    common += [f"width={size}", f"height={size}"] if size else []
    work = work / f"overhead_{model}"
    commands = {
        "hand": [sys.executable, str(ROOT / "benchmarks" / "hand_loop.py"), "--model", model, "--steps", str(steps),
                 "--threads", str(threads), *(["--size", str(size)] if size else []), "--out"],
        "sdlab": [sys.executable, "-m", "sdlab.app.cli", "-m", f"seed={SWEEP['seeds']}", *grid, *common],
        "sdlab_seeds": [sys.executable, "-m", "sdlab.app.cli", "-m", f"seeds=[{SWEEP['seeds']}]", "batch_size=1", *grid,
                        *common],
        "naive": [sys.executable, str(ROOT / "benchmarks" / "naive_app.py"), "-m", f"+seed={SWEEP['seeds']}",
                  f"+guidance_scale={SWEEP['guidance']}", f"+scheduler={SWEEP['schedulers']}", f"+model={model}",
                  f"+steps={steps}", f"+threads={threads}",
                  "+prompt='a small red circle in the centre on a blue background'"],
        "floor": [sys.executable, str(ROOT / "benchmarks" / "hydra_floor.py"), "-m", f"seed={SWEEP['seeds']}", *grid,
                  *common, "~hydra.callbacks.collect"],
        "bare": [sys.executable, "-c", "pass"],
    }
    if not naive:
        for name in ("naive", "floor", "bare"):
            del commands[name]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for r in range(repeats):
        for name, cmd in commands.items():
            out = work / f"{name}_{r}"
            target = {"hand": [str(out)], "bare": []}.get(name, [f"hydra.sweep.dir={out}"])
            times[name].append(run_timed(cmd + target, ROOT))
    med = {k: statistics.median(v) for k, v in times.items()}
    loads = {name: sum(p.read_text().count("loaded model") for p in (work / f"{name}_0").rglob("*.log"))
             for name in ("sdlab", "sdlab_seeds")}
    loads["naive"] = len(list((work / "naive_0").rglob("image.png"))) if naive else 0
    identical = {name: compare_images(work / f"{name}_0", work / "hand_0") for name in ("sdlab", "sdlab_seeds")}
    for name, value in med.items():
        report.add("overhead", f"{model}_{name}_wall_s", value, "s",
                   f"median of {repeats}, 16 images, {model}, {steps} steps")
    for name in ("sdlab", "sdlab_seeds"):
        report.add("overhead", f"{model}_{name}_over_hand", med[name] / med["hand"], "ratio", "target <= 1.05")
        report.add("overhead", f"{model}_{name}_images_identical", float(identical[name][0]), "bool",
                   f"max pixel difference {identical[name][1]}")
    derived = "One run is too few to split the difference into per-job and per-sweep costs."
    if repeats >= 3:
        per_job = (med["sdlab"] - med["sdlab_seeds"]) / 12  # 16 jobs against 4 jobs of the same 16 images
        fixed = med["sdlab_seeds"] - med["hand"] - 4 * per_job
        report.add("overhead", f"{model}_per_job_overhead_s", per_job, "s", "(16-job wall - 4-job wall) / 12")
        report.add("overhead", f"{model}_fixed_overhead_s", fixed, "s", "start-up and sweep collection, once per sweep")
        derived = (f"Derived: each Hydra job costs about **{per_job * 1000:.0f} ms** on top of its images (its "
                   f"config, run dir, Hydra's per-job files and logging, its table and PNGs), and a sweep pays about **{fixed:.1f} s** once "
                   "(Hydra start-up, the sweep table and grid).")
    naive_line = naive_note = ""
    if naive:
        hydra_s = med["floor"] - med["bare"]
        own_s = med["sdlab"] - med["hand"] - hydra_s
        floor = (med["hand"] + hydra_s) / med["hand"]
        report.add("overhead", f"{model}_naive_over_sdlab", med["naive"] / med["sdlab"], "ratio", "speed-up of sdlab")
        report.add("overhead", f"{model}_hydra_floor_s", hydra_s, "s", "the 16-job sweep with a no-op task, less python start")
        report.add("overhead", f"{model}_hydra_floor_over_hand", floor, "ratio",
                   "lowest sdlab / hand-written any task run by Hydra -m can reach")
        report.add("overhead", f"{model}_sdlab_own_s", own_s, "s", "sdlab - hand-written - Hydra's floor")
        naive_line = (f"| naive Hydra app (loads per job) | {med['naive']:.2f} | {med['naive'] / med['hand']:.3f} | "
                      f"{loads['naive']} | - |\n"
                      f"| Hydra alone: the same `-m` sweep of sdlab's config, a task that does nothing | "
                      f"{med['floor']:.2f} | - | 0 | - |\n")
        naive_note = (f"The naive app takes **{med['naive'] / med['sdlab']:.2f}x** sdlab's time. Hydra's own work for this "
                      f"sweep (start-up, composing 16 configs, 16 job dirs with their `.hydra/` files and logging) is "
                      f"**{hydra_s:.2f} s**, so no task run through `-m` can go below **{floor:.3f}x** the hand-written "
                      f"loop here; sdlab's own work on top (tables, PNG metadata, CLIP and adherence scores, the "
                      f"sweep table and grid) is **{own_s:.2f} s** ({own_s / med['hand']:.1%} of the loop). ")
    where = f"{model}{f', {size}x{size}' if size else ''}"
    report.sections.append(
        f"### 1-2. Sweep overhead ({where}, 16 images, {steps} steps, median of {repeats})\n\n"
        "| way | wall s | vs hand-written | model loads | images identical (max diff) |\n|---|---|---|---|---|\n"
        f"| hand-written diffusers loop | {med['hand']:.2f} | 1.000 | 1 | - |\n"
        f"| `sdlab -m seed=1,2,3,4 guidance_scale=1,7.5 scheduler=ddim,dpmpp_2m` (16 jobs) | {med['sdlab']:.2f} | "
        f"**{med['sdlab'] / med['hand']:.3f}** | {loads['sdlab']} | {identical['sdlab'][0]} ({identical['sdlab'][1]}) |\n"
        f"| `sdlab -m seeds=[1,2,3,4] batch_size=1 guidance_scale=1,7.5 scheduler=ddim,dpmpp_2m` (4 jobs) | "
        f"{med['sdlab_seeds']:.2f} | **{med['sdlab_seeds'] / med['hand']:.3f}** | {loads['sdlab_seeds']} | "
        f"{identical['sdlab_seeds'][0]} ({identical['sdlab_seeds'][1]}) |\n"
        f"{naive_line}\n"
        f"Target: sdlab / hand-written <= 1.05. {naive_note}"
        f"Every wall includes interpreter start and imports. {derived}\n"
    )


# 10. cells of a sweep sharing pipeline calls, against one image at a time and an expert's batched loop
SHARED_PROMPTS = ["a small red circle in the centre on a blue background",
                  "a large green square on the left on a black background",
                  "a small yellow triangle on the right on a white background",
                  "a large blue circle at the top on a red background"]


def bench_shared(report: Report, model: str, steps: int, repeats: int, work: Path, seeds: int = 8,
                 size: int | None = None) -> None:
    """A 4 prompts x `seeds` seeds x 2 guidance scales sweep through `sdlab -m` (its cells sharing calls) against a
    hand-written loop of one image at a time and one batched by 8, interleaved, medians; images compared to the
    one-at-a-time loop."""
    threads = torch.get_num_threads()
    seed_list = ",".join(str(s) for s in range(1, seeds + 1))
    cells = len(SHARED_PROMPTS) * seeds * 2
    hand = [sys.executable, str(ROOT / "benchmarks" / "hand_loop.py"), "--model", model, "--steps", str(steps),
            "--threads", str(threads), "--prompt", "|".join(SHARED_PROMPTS), "--seeds", seed_list, "--guidance", "1,7.5",
            "--schedulers", "dpmpp_2m", *(["--size", str(size)] if size else [])]
    prompts = ",".join(f"'{p}'" for p in SHARED_PROMPTS)
    commands = {
        "one": [*hand, "--batch", "1", "--out"],
        "expert": [*hand, "--batch", "8", "--out"],
        "sdlab": [sys.executable, "-m", "sdlab.app.cli", "-m", f"prompt={prompts}", f"seed={seed_list}",
                  "guidance_scale=1,7.5", "scheduler=dpmpp_2m", f"model={model}", f"num_inference_steps={steps}",
                  f"threads={threads}", *([f"width={size}", f"height={size}"] if size else [])],
    }
    work = work / f"shared_{model}"
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for r in range(repeats):
        for name, cmd in commands.items():
            out = work / f"{name}_{r}"
            wall, seconds = run_measured(cmd + ([str(out)] if name != "sdlab" else [f"hydra.sweep.dir={out}"]), ROOT)
            times[name].append(wall)
            cpu[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    # each ratio within one repetition (the three ways ran in turn), then their median: a machine whose speed moves
    # between repetitions moves both sides of each ratio
    pairs = {(a, b): [x / y for x, y in zip(times[a], times[b])] for a, b in
             (("sdlab", "one"), ("sdlab", "expert"), ("expert", "one"), ("one", "expert"))}
    ratio = {key: statistics.median(values) for key, values in pairs.items()}
    frame = pd.read_csv(work / "sdlab_0" / "results.csv")
    worst = max(int(np.abs(np.asarray(Image.open(work / "sdlab_0" / row.image_path), dtype=int) - np.asarray(
        Image.open(work / "one_0" / f"p{SHARED_PROMPTS.index(row.prompt)}_dpmpp_2m_{float(row.guidance_scale)}_"
                   f"{row.seed}.png"), dtype=int)).max()) for row in frame.itertuples())
    expert = max(int(np.abs(np.asarray(Image.open(path), dtype=int) - np.asarray(
        Image.open(work / "one_0" / path.name), dtype=int)).max()) for path in (work / "expert_0").glob("*.png"))
    calls = frame["batch_size"].value_counts().to_dict()
    for name, value in med.items():
        report.add("shared", f"{model}_shared_{name}_wall_s", value, "s", f"median of {repeats}, {cells} cells")
    report.add("shared", f"{model}_shared_over_one", ratio["sdlab", "one"], "ratio",
               f"target <= 0.5; median of {repeats} ratios within a repetition")
    report.add("shared", f"{model}_shared_over_expert", ratio["sdlab", "expert"], "ratio",
               f"target <= 1.1; median of {repeats} ratios within a repetition")
    report.add("shared", f"{model}_shared_max_pixel_diff", worst, "levels", "sdlab against one image at a time")
    cpu_ratio = statistics.median(a / b for a, b in zip(cpu["sdlab"], cpu["expert"]))
    report.add("shared", f"{model}_shared_cpu_over_expert", cpu_ratio, "ratio",
               f"CPU seconds (user + system) against the batched loop's; median of {repeats} ratios")
    sized = f" width={size} height={size}" if size else ""
    sweep = (f"sdlab -m \"prompt={prompts}\" seed={seed_list} guidance_scale=1,7.5 model={model} "
             f"num_inference_steps={steps}{sized}")
    report.sections.append(
        f"### {11 if model != 'sd15_arch' else 12}. Cells sharing calls ({model}{f' at {size} px' if size else ''}, {cells} cells: 4 prompts x {seeds} "
        f"seeds x 2 guidance scales, {steps} steps, median of {repeats})\n\n"
        "| way | wall s | CPU s | vs one at a time | vs batched by 8 | max pixel diff to one at a time |\n"
        "|---|---|---|---|---|---|\n"
        f"| hand-written loop, one image at a time | {med['one']:.2f} | {med_cpu['one']:.2f} | 1.000 | "
        f"{ratio['one', 'expert']:.3f} | 0 |\n"
        f"| hand-written loop, {min(8, seeds)} seeds of a prompt per call | {med['expert']:.2f} | "
        f"{med_cpu['expert']:.2f} | {ratio['expert', 'one']:.3f} | 1.000 | {expert} |\n"
        f"| `{sweep}` ({cells} jobs) | {med['sdlab']:.2f} | {med_cpu['sdlab']:.2f} | **{ratio['sdlab', 'one']:.3f}** | "
        f"**{ratio['sdlab', 'expert']:.3f}** | {worst} |\n\n"
        f"Walls are medians of the repetitions; each ratio is the median over them of the ratio within one "
        f"repetition, in which the three ways ran in turn (sdlab against one at a time: "
        f"{', '.join(f'{x:.3f}' for x in pairs['sdlab', 'one'])}; "
        f"against the batched loop: {', '.join(f'{x:.3f}' for x in pairs['sdlab', 'expert'])}; the median walls' "
        f"ratios: {med['sdlab'] / med['one']:.3f} and {med['sdlab'] / med['expert']:.3f}). CPU s is user + system "
        f"seconds of all threads; sdlab's are **{cpu_ratio:.3f}x** the batched loop's (median of the ratios within a "
        "repetition), so a wall ratio above that is work done on one core while the other waits. "
        f"Targets: at most 0.5x one image at a time and 1.1x the batched loop. sdlab's cells shared calls of "
        f"{', '.join(f'{n} images ({count // n} calls)' for n, count in sorted(calls.items()))}: cells that "
        "share model, scheduler, steps, size and guidance group make their images together (`batch_size=auto`), "
        "each keeping its own job dir, row, PNG and time share. Every wall includes interpreter start and imports. "
        f"Reproduce: `python benchmarks/run.py --only {'shared' if model != 'sd15_arch' else 'sd15_shared'} "
        f"--threads {threads}{f' --repeats {repeats}' if repeats != 3 and model != 'sd15_arch' else ''}`.\n\n" + (
        "More than one level of difference comes from oneDNN, not from sharing: this model's `mkldnn` setting runs "
        "oneDNN convolutions in the denoiser, which round a batch differently from a lone image (`mkldnn=auto` "
        "keeps them out of it).\n" if worst > 1 else ""))


def compare_images(sweep: Path, hand: Path) -> tuple[bool, int]:
    """Whether every sdlab image equals the hand-written loop's, and the max pixel difference."""
    frame = pd.read_csv(sweep / "results.csv")
    worst = 0
    for row in frame.itertuples():
        ours = np.asarray(Image.open(sweep / row.image_path), dtype=int)
        theirs = np.asarray(Image.open(hand / f"{row.scheduler}_{float(row.guidance_scale)}_{row.seed}.png"), dtype=int)
        worst = max(worst, int(np.abs(ours - theirs).max()))
    return worst == 0, worst


@contextmanager
def phase_timer(module: torch.nn.Module, totals: dict, key: str):
    """Accumulate wall time spent inside `module`'s forward calls."""
    state = {}

    def pre(*_):
        state["t"] = time.perf_counter()

    def post(*_):
        totals[key] = totals.get(key, 0.0) + time.perf_counter() - state["t"]

    handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def timed_vae_decode(pipe, totals: dict):
    """Wrap vae.decode so its wall time accumulates into totals['vae']."""
    original = pipe.vae.decode

    def decode(*a, **k):
        start = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            totals["vae"] = totals.get("vae", 0.0) + time.perf_counter() - start

    pipe.vae.decode = decode
    return original


# 3. where the time goes
def bench_phases(report: Report, size: int, steps: int, repeats: int) -> None:
    """Fractions of one SD 1.5-architecture generation spent in UNet, text encoder, VAE and everything else."""
    from sdlab.models import generate
    from sdlab.config import GenerationParams, ModelSpec
    from sdlab.models.loading import load_model

    spec = ModelSpec("sd15_arch", resolution=512)
    model = load_model(spec)
    pipe = model.pipe
    pipe.set_progress_bar_config(disable=True)
    params = GenerationParams(prompt="a lighthouse at dusk", width=size, height=size, num_inference_steps=steps)
    runs = []
    for r in range(repeats + 1):
        model.embeddings.clear()
        totals: dict[str, float] = {}
        original = timed_vae_decode(pipe, totals)
        with phase_timer(model.denoiser, totals, "unet"), phase_timer(pipe.text_encoder, totals, "text"):
            start = time.perf_counter()
            generate.generate_batch(model, params, [0])
            totals["total"] = time.perf_counter() - start
        pipe.vae.decode = original
        if r:  # the first run warms up
            runs.append(totals)
    for t in runs:  # per run: medians of separate phases need not add up
        t["other"] = t["total"] - t["unet"] - t["text"] - t["vae"]
    med = {k: statistics.median(t[k] for t in runs) for k in ("unet", "text", "vae", "other", "total")}
    for k in ("unet", "text", "vae", "other"):
        report.add("phases", f"{k}_fraction", med[k] / med["total"], "fraction", f"sd15_arch {size}px {steps} steps")
    report.add("phases", "total_s", med["total"], "s")
    report.sections.append(
        f"### 3. Where the time goes (SD 1.5 architecture, {size}x{size}, {steps} steps, CFG 7.5, median of {repeats})\n\n"
        "| phase | seconds | fraction |\n|---|---|---|\n"
        + "".join(f"| {k} | {med[k]:.3f} | {med[k] / med['total']:.2%} |\n" for k in ("unet", "text", "vae", "other"))
        + f"| total | {med['total']:.3f} | 100% |\n\n"
        "`other` is everything outside the three networks: scheduler updates, diffusers' pipeline and "
        f"sdlab's own work. Target: under 2% (measured **{med['other'] / med['total']:.2%}**).\n"
    )
    return model, spec


def dpmpp_model(name: str, size: int, steps: int, **options):
    """(model adapter with dpmpp_2m, its spec, generation params at `size` px and `steps` steps)."""
    from sdlab.config import GenerationParams
    from sdlab.models.loading import configured_spec, load_model

    spec = configured_spec(name, resolution=size, **options)
    model = load_model(spec)
    model.pipe.set_progress_bar_config(disable=True)
    model.use_scheduler("dpmpp_2m")
    params = GenerationParams(prompt="a small red circle", width=size, height=size, num_inference_steps=steps)
    return model, spec, params


# 4. batched seeds
def bench_batches(report: Report, model: str, size: int, steps: int, images: int, batches=(1, 2, 4, 8),
                  guidance: float = 7.5, against: dict | None = None) -> None:
    """Images per second at several batch sizes and the max pixel difference to batch 1; with `against`, the same for
    the model loaded with those options."""
    from sdlab.models import generate
    from sdlab.models.loading import load_model

    ways = {"default": {}, **({"against": against} if against else {})}
    loaded = {way: dpmpp_model(model, size, steps, **options) for way, options in ways.items()}
    seeds, cells = list(range(images)), {}
    for way, (adapter, spec, params) in loaded.items():
        params = replace(params, guidance_scale=guidance)
        load_model(spec)  # cached: sets the process-wide options it asks for
        generate.generate_batch(adapter, params, seeds[:1])  # warm-up
        reference = None
        for b in batches:
            start = time.perf_counter()
            out = [im for chunk in generate.chunks(tuple(seeds), b)
                   for im in generate.generate_batch(adapter, params, chunk).images]
            rate = images / (time.perf_counter() - start)
            arrays = [np.asarray(im, dtype=int) for im in out]
            reference = reference or arrays
            diff = max(int(np.abs(a - r).max()) for a, r in zip(arrays, reference))
            name = f"{model}_batch{b}_images_per_s" + ("" if way == "default" else "_" + "_".join(
                f"{k}_{v}" for k, v in against.items()))
            report.add("batch", name, rate, "img/s", f"{size}px {steps} steps guidance {guidance:g}; max diff {diff}")
            cells.setdefault(b, []).append(f"{rate:.3f} | {diff}")
    options = ", ".join(f"`{k}={v}`" for k, v in (against or {}).items())
    titles = ["batch", "images/s", "max pixel diff to batch 1"] + (
        [f"images/s with {options}", "max pixel diff to its batch 1"] if against else [])
    report.sections.append(
        f"### 4. Batched seeds ({model}, {size}x{size}, {steps} steps, guidance {guidance:g}, {images} images)\n\n"
        + "| " + " | ".join(titles) + " |\n" + "|---" * len(titles) + "|\n"
        + "\n".join(f"| {b} | " + " | ".join(cells[b]) + " |" for b in batches) + "\n"
    )


# 5. trajectory capture
def bench_trajectory(report: Report, model: str, size: int, steps: int, repeats: int) -> None:
    """A plain generation against one capturing every step, then every step's x0_pred decoded by the VAE or previewed."""
    from sdlab.models import generate
    from sdlab.jobs.trajectory import TrajectoryRecorder, frame_renderer
    from sdlab.metrics.image import psnr

    adapter, spec, params = dpmpp_model(model, size, steps)
    generate.generate_batch(adapter, params, [0])  # warm-up
    times: dict[str, list[float]] = {"plain": [], "capture": [], "vae": [], "linear": []}
    for _ in range(repeats):
        start = time.perf_counter()
        generate.generate_batch(adapter, params, [0])
        times["plain"].append(time.perf_counter() - start)
        with TrajectoryRecorder(adapter) as recorder:
            start = time.perf_counter()
            result = generate.generate_batch(adapter, params, [0], on_step=recorder.on_step)
            times["capture"].append(time.perf_counter() - start)
        latents = [s["denoised"] for s in recorder.steps]
        frames = {}
        for preview in ("vae", "linear"):
            start = time.perf_counter()
            frames[preview] = frame_renderer(adapter, result, preview)(latents)
            times[preview].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    agreement = [psnr(v, l) for v, l in zip(frames["vae"], frames["linear"])]
    tag = f"{model} {size}px {steps} steps"
    report.add("trajectory", f"{model}_capture_over_plain", med["capture"] / med["plain"], "ratio", tag)
    report.add("trajectory", f"{model}_vae_decode_every_step_over_plain", med["vae"] / med["plain"], "ratio", tag)
    report.add("trajectory", f"{model}_linear_preview_over_plain", med["linear"] / med["plain"], "ratio", tag)
    report.add("trajectory", f"{model}_linear_vs_vae_psnr_final_db", agreement[-1], "dB", "last step's x0_pred")
    report.sections.append(
        f"### 5. Trajectory capture ({model}, {size}x{size}, {steps} steps, CFG 7.5, median of {repeats})\n\n"
        "| what | seconds | vs plain generation |\n|---|---|---|\n"
        f"| plain generation | {med['plain']:.3f} | 1.00 |\n"
        f"| generation capturing x_t and x0_pred at every step | {med['capture']:.3f} | "
        f"{med['capture'] / med['plain']:.2f} |\n"
        f"| decode every step's x0_pred with the VAE (`preview=vae`) | {med['vae']:.3f} | {med['vae'] / med['plain']:.2f} |\n"
        f"| linear latent-to-RGB preview of every step (`preview=linear`) | {med['linear']:.4f} | "
        f"{med['linear'] / med['plain']:.3f} |\n\n"
        f"The linear preview (a least-squares map from the 4 latent channels to RGB, fitted to the final image) agrees "
        f"with the VAE decode to {agreement[-1]:.1f} dB PSNR at the last step and {statistics.median(agreement):.1f} dB "
        "over all steps (a blurred frame: the map sees each 8x8 patch as one colour), for GIFs of long trajectories "
        "where decoding dominates.\n"
    )


# 6. memory across a long sweep
def bench_memory(report: Report, model: str, jobs: int, steps: int) -> None:
    """RSS after each of `jobs` generate jobs run as a sweep does (one process, cached model)."""
    from hydra import compose, initialize_config_dir

    from sdlab.app.compose import parse_job
    from sdlab.conf_files import CONF_DIR
    from sdlab.jobs import JobContext, get_job
    from sdlab.models.memory import resident_bytes

    run_generate = get_job("generate")
    rss = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        for i in range(jobs):
            overrides = {"model": model, "model.resolution": "64", "scheduler": "dpmpp_2m",
                         "prompt": "'a small red circle'", "seed": str(i), "num_inference_steps": str(steps),
                         "guidance_scale": "7.5", "resume": "false"}
            run = parse_job(compose("config", overrides=[f"{k}={v}" for k, v in overrides.items()]), set(overrides))
            run_generate(JobContext(run=run, out_dir=Path(tmp) / str(i), overrides=json.dumps({"seed": i})))
            rss.append(resident_bytes())
    tenth, hundredth, last = rss[min(9, jobs - 1)], rss[min(99, jobs - 1)], rss[-1]
    early = np.polyfit(np.arange(10, 100), rss[10:100], 1)[0] if jobs > 100 else float("nan")
    late = np.polyfit(np.arange(100, jobs), rss[100:], 1)[0] if jobs > 120 else float("nan")
    report.add("memory", "rss_after_job10_mb", tenth / 2**20, "MiB")
    report.add("memory", "rss_after_job100_mb", hundredth / 2**20, "MiB")
    report.add("memory", f"rss_after_job{jobs}_mb", last / 2**20, "MiB")
    report.add("memory", "rss_growth_per_job_kb", late / 1024, "KiB/job", f"least squares over jobs 100..{jobs}")
    report.add("memory", "rss_growth_first_100_per_job_kb", early / 1024, "KiB/job", "least squares over jobs 10..100")
    report.sections.append(
        f"### 6. Memory across a {jobs}-image sweep ({model}, one process)\n\n"
        f"RSS after job 10: {tenth / 2**20:.1f} MiB; after job 100: {hundredth / 2**20:.1f} MiB; after job {jobs}: "
        f"{last / 2**20:.1f} MiB. Fitted growth {early / 1024:.1f} KiB per job over jobs 10 to 100, while the "
        f"allocators fill up, and {late / 1024:.1f} KiB per job over jobs 100 to {jobs} (flat there means no per-job "
        f"leak).\n"
    )


# 7. speed options
def bench_options(report: Report, model: str, size: int, steps: int, repeats: int, variants: dict) -> None:
    """Seconds per image for each speed option against the default: all loaded and warmed up, then timed in turns."""
    from sdlab.models import generate
    from sdlab.models.device import use_process_options
    from sdlab.models.loading import clear_cache

    loaded, notes, times = {}, {}, {name: [] for name in variants}
    for name, options in variants.items():
        clear_cache()  # each variant is its own pipeline, kept below
        try:
            adapter, spec, params = dpmpp_model(model, size, steps, **options)
            start = time.perf_counter()
            generate.generate_batch(adapter, params, [0])  # warm-up (and compile)
            loaded[name], notes[name] = (adapter, spec, params), f"first call {time.perf_counter() - start:.2f} s"
        except Exception as e:  # an option a build does not support is a finding, not a crash
            notes[name] = f"{type(e).__name__}: {str(e)[:80]}"
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits every variant alike
        for name, (adapter, spec, params) in loaded.items():
            use_process_options(spec)  # the variants share the process-wide settings: each turn sets its own
            start = time.perf_counter()
            generate.generate_batch(adapter, params, [0])
            times[name].append(time.perf_counter() - start)
    results = {name: statistics.median(t) if t else float("nan") for name, t in times.items()}
    lines = []
    for name in variants:
        report.add("options", f"{model}_{name}_s_per_image", results[name], "s", notes[name])
        lines.append(f"| {name} | {results[name]:.3f} | {results[name] / results['default']:.2f} | {notes[name]} |")
    loaded.clear()
    clear_cache()
    report.sections.append(
        f"### 7. Speed options ({model}, {size}x{size}, {steps} steps, median of {repeats}, timed in turns)\n\n"
        "| option | s/image | vs default | note |\n|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )


# 8. start-up: what a process pays before its first line
def bench_startup(report: Report, repeats: int, work: Path) -> None:
    """CPU and wall seconds of `sdlab --help`, a refused value, a missing model and one default image, against importing
    diffusers and a hand-written one-image script; commands run in turns, so each ratio is taken round by round."""
    sdlab = str(Path(sys.executable).with_name("sdlab"))
    hand = [sys.executable, str(ROOT / "benchmarks" / "hand_loop.py"), "--model", "mini", "--out", str(work / "hand"),
            "--seeds", "0", "--guidance", "7.5", "--schedulers", "dpmpp_2m"]
    ways = {
        "python -c 'import torch'": ([sys.executable, "-c", "import torch"], work),
        "python -c 'import diffusers'": ([sys.executable, "-c", "import diffusers"], work),
        "sdlab --help": ([sdlab, "--help"], work),
        "sdlab guidance_scale=abc": ([sdlab, "guidance_scale=abc"], work),
        "sdlab experiment=forward_process timesteps=[5000] (the job's own check)":
            ([sdlab, "experiment=forward_process", "timesteps=[5000]"], work),
        "sdlab model=sd15 (not in the cache)": ([sdlab, "model=sd15", f"hydra.run.dir={work / 'missing'}"], work),
        # a new run dir each time (a rerun into the same one would find its image done)
        "sdlab (one default image)": ([sdlab, f"hydra.run.dir={work / 'first'}/" + "${now:%H-%M-%S-%f}"], ROOT),
        "benchmarks/hand_loop.py (one image)": (hand, ROOT),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, (cmd, cwd) in ways.items():
            times[name].append(run_measured(cmd, cwd, check=False))
    lines = ["| command | wall s | CPU s |", "|---|---|---|"]
    for name, runs in times.items():
        wall, cpu = medians(runs)
        report.add("startup", f"{name} wall", float(wall), "s")
        report.add("startup", f"{name} cpu", float(cpu), "s")
        lines.append(f"| `{name}` | {wall:.2f} | {cpu:.2f} |")
    image = [w for w, _ in times["sdlab (one default image)"]]
    for name in ("python -c 'import diffusers'", "benchmarks/hand_loop.py (one image)"):
        ratio = statistics.median(a / b for a, (b, _) in zip(image, times[name]))
        report.add("startup", f"one default image / {name} wall", float(ratio), "x")
        lines.append(f"| one default image / `{name}` (median of ratios per round) | {ratio:.2f}x | |")
    report.sections.append(f"### 8. Start-up (median of {repeats}, one process each, in turns)\n\n"
                           "Reading the command line imports no torch, diffusers, matplotlib or pandas (a job's own "
                           "check included): a refused value costs a fraction of importing diffusers, and a model "
                           "missing from the cache is refused before "
                           "huggingface_hub is imported. One default image pays what any diffusers script pays: "
                           "`python -X importtime` and cProfile put most of it in imports (torch; diffusers, which "
                           "brings torch._dynamo; scipy.stats, which the DPM-Solver scheduler module imports; "
                           "transformers for the text encoder and CLIP), made during pre-flight (the scheduler check "
                           "and the meta-device shape check of every component), then the weights, CLIP for "
                           "`clip_score`, 25 steps and the PNG. The ratio to the hand-written script is sdlab's own "
                           "cost. At exit the command freezes its objects (`gc.freeze`), so the last line is not "
                           "followed by seconds of collection.\n\n" + "\n".join(lines) + "\n")


def bench_plan(report: Report, repeats: int, work: Path, model: str) -> None:
    """Wall and CPU seconds of `plan=true` over 10,000 cells, and a plan's estimate against the measured wall time of
    the sweep it planned: 64 cells (4 prompts x 8 seeds x 2 guidance scales, 25 steps), planned from the cost record
    an 8-cell sweep of the same model left in a sibling folder."""
    sdlab = str(Path(sys.executable).with_name("sdlab"))
    letters = ",".join(f"'{c}'" for c in "abcdefghij")
    big = [sdlab, "-m", "seed=range(0,100)", "guidance_scale=range(1,11)", f"prompt={letters}", "plan=true"]
    seeds = [sdlab, "-m", "seed=range(0,10000)", "plan=true"]  # one axis: 10,000 distinct values to type
    plan_wall, plan_cpu = medians([run_measured(big, work, check=False) for _ in range(repeats)])
    seeds_wall, seeds_cpu = medians([run_measured(seeds, work, check=False) for _ in range(repeats)])
    common = [sdlab, "-m", f"model={model}", "threads=1", "guidance_scale=1,7.5"]
    shapes = "'a red circle','a blue square'"
    run_timed([*common, f"prompt={shapes}", "seed=100,101", f"hydra.sweep.dir={work / 'plan' / 'first'}"], work)
    sweep = [*common, f"prompt={shapes},'a green triangle','a yellow star'", "seed=range(0,8)",
             f"hydra.sweep.dir={work / 'plan' / 'second'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    planned = subprocess.run([*sweep, "plan=true"], cwd=work, env=env, capture_output=True, text=True, check=True)
    value, unit = planned.stdout.split("estimate: ")[1].split(",")[0].split()[:2]
    estimate = float(value) * {"s": 1, "min": 60, "h": 3600}[unit]
    wall = run_timed(sweep, work)
    report.add("plan", "plan=true 10000 cells wall", float(plan_wall), "s")
    report.add("plan", "plan=true 10000 cells cpu", float(plan_cpu), "s")
    report.add("plan", "plan=true 10000 seeds wall", float(seeds_wall), "s")
    report.add("plan", "plan=true 10000 seeds cpu", float(seeds_cpu), "s")
    report.add("plan", "64-cell sweep estimate / wall", estimate / wall, "x")
    report.sections.append(
        f"### 10. Plan and estimate ({model}, median of {repeats} plans)\n\n"
        "`plan=true` imports no diffusers and types each cell from the recipe of an earlier cell of the same config "
        "groups, so its time is Python start-up, one Hydra composition and about 0.1 ms a cell. Each cell's values come "
        "from the command line as Hydra parsed it once, not from parsing every cell's `seed=N` again (0.25 ms each). "
        "The estimate comes "
        "from the cost record an 8-cell sweep of the same model wrote in a sibling folder: it made calls of 4 images, "
        "and the fixed and per-sample parts of a step, fitted to its calls with guidance (8 samples a step) and without "
        "(4), price the sweep's calls of 32. Its per-cell overhead is each job's time beyond its images.\n\n"
        "| what | value |\n|---|---|\n"
        f"| `sdlab -m seed=range(0,100) guidance_scale=range(1,11) prompt='a',...,'j' plan=true` (10,000 cells) | "
        f"{plan_wall:.2f} s wall, {plan_cpu:.2f} s CPU |\n"
        f"| `sdlab -m seed=range(0,10000) plan=true` (10,000 cells, one axis) | {seeds_wall:.2f} s wall, "
        f"{seeds_cpu:.2f} s CPU |\n"
        f"| planned estimate of the 64-cell sweep (4 prompts x 8 seeds x 2 guidance scales, 25 steps, threads=1) | "
        f"{estimate:.0f} s |\n| its measured wall time | {wall:.0f} s |\n"
        f"| estimate / wall | **{estimate / wall:.2f}** |\n")


def bench_rerun(report: Report, repeats: int, work: Path, cells: int = 500) -> None:
    """Wall seconds of a `cells`-cell sweep on tiny (1 step, 1 thread), then of rerunning it once it is finished: the
    rerun takes over every cell by its hash and runs none."""
    sweep = [str(Path(sys.executable).with_name("sdlab")), "-m", f"seed=range(0,{cells})", "model=tiny",
             "num_inference_steps=1", "threads=1", f"hydra.sweep.dir={work / 'rerun'}"]
    fresh = run_timed(sweep, work)
    rerun = statistics.median(run_timed(sweep, work) for _ in range(repeats))
    report.add("rerun", f"{cells}-cell sweep wall", fresh, "s")
    report.add("rerun", f"{cells}-cell rerun wall", rerun, "s")
    report.sections.append(
        f"### 13. Rerunning a finished sweep (tiny, {cells} cells, 1 step, 1 thread, median of {repeats} reruns)\n\n"
        "A rerun of the same command into the same folder looks at each job's finished mark and table, and runs no "
        "job whose cells are all there with the same hash: their folders are left as they are. With every cell "
        "finished as its manifest records, no cell is pre-flighted (torch and diffusers are not imported). What it "
        "still pays: start-up, composing and parsing every cell, and the sweep's end (its table, summary and report, "
        "from every job's table).\n\n"
        "| what | wall s | ms a cell |\n|---|---|---|\n"
        f"| `sdlab -m seed=range(0,{cells}) model=tiny num_inference_steps=1 threads=1` into a new folder | "
        f"{fresh:.1f} | {1000 * fresh / cells:.0f} |\n"
        f"| the same command again, every cell finished | **{rerun:.1f}** | {1000 * rerun / cells:.0f} |\n\n"
        f"Reproduce: `python benchmarks/run.py --only rerun`.\n")


def machine() -> dict:
    """What the numbers were measured on."""
    from importlib.metadata import version

    return {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        **{p: version(p) for p in ("torch", "diffusers", "transformers", "hydra-core")},
    }


def main() -> None:
    """Run the benchmarks and write BENCHMARKS.md and benchmarks/results.csv."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", default="mini" if (ROOT / "models/mini/model_index.json").is_file() else "tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for every way measured")
    parser.add_argument("--skip-sd15", action="store_true", help="skip the SD 1.5-architecture measurements")
    parser.add_argument("--only", nargs="+", metavar="SECTION",
                        help="measure only these sections; the others keep their numbers from the last run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = Report()
    work = Path(tempfile.mkdtemp(prefix="sdlab_bench_"))
    sections = [
        ("startup", lambda: bench_startup(report, 5, work)),
        ("plan", lambda: bench_plan(report, args.repeats, work, args.model)),
        ("overhead", lambda: bench_overhead(report, args.model, 25, args.repeats, work)),
        ("batches", lambda: bench_batches(report, args.model, 64, 25, 32, batches=(1, 2, 4, 8, 16, 32), guidance=1,
                                          against={"mkldnn": True})),
        ("trajectory", lambda: bench_trajectory(report, args.model, 64, 25, args.repeats)),
        ("memory", lambda: bench_memory(report, args.model, 300, 5)),
        ("shared", lambda: bench_shared(report, args.model, 25, args.repeats, work)),
        ("rerun", lambda: bench_rerun(report, args.repeats, work)),
        ("options", lambda: bench_options(report, args.model, 64, 25, args.repeats, {
            "default": {}, "eager_attention": {"attention": "eager"}, "channels_last": {"channels_last": True},
            "compile": {"compile": True}, "bfloat16": {"dtype": "bfloat16"},
            "mkldnn_on": {"mkldnn": True}, "mkldnn_off": {"mkldnn": False},
            "channels_last_off": {"channels_last": False}})),
    ]
    if not args.skip_sd15:
        sections += [
            ("sd15_phases", lambda: bench_phases(report, 256, 10, args.repeats)),
            ("sd15_overhead", lambda: bench_overhead(report, "sd15_arch", 2, 1, work, size=256, naive=False)),
            ("sd15_batches", lambda: bench_batches(report, "sd15_arch", 256, 2, 8, batches=(1, 2, 4, 8))),
            ("sd15_shared", lambda: bench_shared(report, "sd15_arch", 2, 1, work, seeds=4, size=256)),
            ("sd15_trajectory", lambda: bench_trajectory(report, "sd15_arch", 256, 10, 1)),
            ("sd15_options", lambda: bench_options(report, "sd15_arch", 256, 4, 2, {
                "default": {}, "eager_attention": {"attention": "eager"}, "channels_last": {"channels_last": True},
                "mkldnn_off": {"mkldnn": False}})),
        ]
    if args.only:
        unknown = sorted(set(args.only) - {name for name, _ in sections})
        if unknown:
            parser.error(f"unknown section(s) {', '.join(unknown)}; choose from: {', '.join(n for n, _ in sections)}")
        sections = [(name, measure) for name, measure in sections if name in args.only]
    try:
        for name, measure in sections:
            print(f"benchmark: {name}", flush=True)
            before = len(report.sections)
            try:
                measure()
                report.sections[before:] = [with_threads(md, args.threads) for md in report.sections[before:]]
            except Exception as e:  # one broken section must not discard the others' numbers
                report.add(name, "error", float("nan"), "", f"{type(e).__name__}: {e}")
                report.sections.append(f"### {name}\n\nFailed: `{type(e).__name__}: {e}`\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = machine()
    frame = pd.DataFrame(report.rows).assign(**{k: str(v) for k, v in info.items()},
                                             command="python benchmarks/run.py " + " ".join(sys.argv[1:]))
    table, markdown = ROOT / "benchmarks" / "results.csv", ROOT / "BENCHMARKS.md"
    if args.only and table.is_file():
        previous = pd.read_csv(table)
        frame = pd.concat([previous[~previous["metric"].isin(frame["metric"])], frame], ignore_index=True)
    with atomic_path(table) as tmp:
        frame.to_csv(tmp, index=False)
    header = (
        "# Benchmarks\n\nReproduce: `python benchmarks/run.py` (about 30 minutes on 2 CPU cores; "
        "`--skip-sd15` for the miniature model only, `--only SECTION ...` to remeasure some sections). "
        "Raw numbers, each row with the command that measured it: `benchmarks/results.csv`.\n\n"
        + "".join(f"- {k}: {v}\n" for k, v in info.items() if k != "torch_threads")
        + "- torch threads: named in each section's title\n\n"
    )
    sections_md = report.sections
    if args.only and markdown.is_file():
        sections_md = kept_sections(markdown.read_text(), report.sections) + report.sections
    ordered = sorted(sections_md, key=section_number)  # by the issue's numbering, whatever ran first
    atomic_write_text(markdown, header + "\n".join(ordered) + "\n" + NOTES)


def with_threads(markdown: str, threads: int) -> str:
    """A section with its thread count added to its title, so kept and remeasured sections stay comparable (one whose
    title names its own, as its subprocesses pin it, is left as it is)."""
    title, _, rest = markdown.partition("\n")
    label = f"{threads} thread{'s' if threads != 1 else ''}"
    return f"{title.removesuffix(')')}, {label})\n{rest}" if title.endswith(")") and "thread" not in title else markdown


def section_key(markdown: str) -> str:
    """What a section measures: its title up to the first comma or parenthesis close, e.g. `### 4. ... (tiny`."""
    title = markdown.splitlines()[0]
    return title.split(",")[0].split(")")[0]


def kept_sections(previous: str, fresh: list[str]) -> list[str]:
    """The sections of a previous BENCHMARKS.md that this run did not measure again."""
    blocks = ["### " + block.rstrip("\n") + "\n" for block in previous.split("\n### ")[1:]]
    remeasured = {section_key(block) for block in fresh}
    return [b for b in blocks if section_key(b) not in remeasured and not b.startswith(NOTES.strip().splitlines()[0])]


def section_number(markdown: str) -> int:
    """The N of a section starting `### N.` (or `### 1-2.`); failed sections go last."""
    head = markdown.removeprefix("### ").split(".", 1)[0].split("-")[0]
    return int(head) if head.isdigit() else 99


NOTES = """
### On a GPU
Expect the opposite of some CPU findings: fp16 roughly halves UNet time and memory on CUDA
(`model.dtype=auto` already picks it), channels_last helps convolutions with tensor cores, and
`torch.compile` pays off after its one-time compile on long sweeps. SDPA attention is the default
and on GPUs dispatches to flash/memory-efficient kernels.
"""

if __name__ == "__main__":
    main()
