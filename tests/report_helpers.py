"""A sweep dir as sdlab writes it (job folders, PNGs with parameters, tables, its manifest), without generating."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

from PIL import Image

from sdlab.bench.ownership import adopt
from sdlab.bench.records import ordered, save_png, write_table
from sdlab.bench.resume import write_manifest


def fake_sweep(root: Path, seeds=(1, 2, 3), guidance=(1.0, 3.0, 7.5), schedulers=("ddim", "euler"),
               failed: tuple | None = (2, 3.0, "euler"), side: int = 16, job_tables: bool = True) -> Path:
    """Write a sweep of seeds x guidance x schedulers into `root`; the `failed` cell is an error row without image;
    `job_tables=False` skips the jobs' own tables (the sweep table alone is enough for a report)."""
    root.mkdir(parents=True, exist_ok=True)
    adopt(root)
    rows, jobs = [], []
    for job, (seed, g, scheduler) in enumerate(product(seeds, guidance, schedulers)):
        overrides = {"seed": str(seed), "guidance_scale": f"{g:g}", "scheduler": scheduler, "threads": "1"}
        folder = root / str(job)
        (folder / ".hydra").mkdir(parents=True, exist_ok=True)
        adopt(folder)
        jobs.append([f"{k}={v}" for k, v in overrides.items()])
        (folder / ".hydra" / "config.yaml").write_text("job: generate\n")
        (folder / "run_config.json").write_text('{"job": "generate"}')
        row = {"run_id": f"r{job}", "experiment": "generate", "job": "generate", "model": "mini", "scheduler": scheduler,
               "num_inference_steps": 8, "nfe": 8, "guidance_scale": g, "seed": seed, "prompt": "a red circle",
               "width": side, "height": side, "time_total_s": 0.1 + 0.01 * job,
               "clip_score": min(100.0, 20.0 * g + seed + (5 if scheduler == "ddim" else 0)),
               "adherence_all": g > 1, "overrides": json.dumps(overrides), "status": "ok", "error": None,
               "device": "cpu", "versions": json.dumps({"sdlab": "0.1.0"})}
        if failed == (seed, g, scheduler):
            row.update(status="error", error="ValueError: boom in this cell", clip_score=None, adherence_all=None)
        else:
            image = Image.new("RGB", (side, side), (int(25 * g) % 256, 40 * seed % 256, 200 if scheduler == "ddim" else 60))
            save_png(image, folder / "images" / f"seed{seed}.png", {
                "prompt": "a red circle", "negative_prompt": "", "seed": seed, "num_inference_steps": 8,
                "guidance_scale": g, "scheduler": scheduler, "width": side, "height": side, "model": "mini"})
            row["image_path"] = f"images/seed{seed}.png"
        if job_tables:
            write_table(ordered([row]), folder)
        rows.append({**row, "image_path": f"{job}/{row['image_path']}" if row.get("image_path") else None})
    write_table(ordered(rows), root)
    task = [f"seed={','.join(map(str, seeds))}", f"guidance_scale={','.join(f'{g:g}' for g in guidance)}",
            f"scheduler={','.join(schedulers)}", "threads=1"]
    write_manifest(root, task, jobs, hydra=[f"hydra.sweep.dir={root}", "hydra.mode=MULTIRUN"])
    return root
