"""The schedule_snr job: per-timestep noise schedule tables, SNR crossings, and the timesteps samplers visit."""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
import pandas as pd

from sdlab.config import model_spec, scheduler_choice
from sdlab.errors import UserError
from sdlab.figures import curves
from sdlab.jobs import JobContext, job
from sdlab.jobs.analysis import base_row, model_scheduler_config
from sdlab.metrics.schedule import SCHEDULES, betas, schedule_table, scheduler_visits, zero_crossing
from sdlab.records import ordered, write_table
from sdlab.schedulers import make_scheduler

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "T": 1000}


def schedule_spec(item: Any, model_config: dict) -> dict[str, Any]:
    """A schedules entry as {label, beta_schedule, beta_start, beta_end, T}: a named schedule with SD's betas, `model`, or a dict."""
    if item == "model":
        item = {"name": "model", "beta_schedule": model_config.get("beta_schedule", "linear"),
                "beta_start": model_config.get("beta_start"), "beta_end": model_config.get("beta_end"),
                "T": model_config.get("num_train_timesteps")}
    if isinstance(item, str):
        item = {"beta_schedule": item}
    if not isinstance(item, dict):
        raise UserError(f"schedules entry {item!r} must be a schedule name, 'model', 'scheduler' "
                        "or a dict with beta_schedule")
    spec = {"beta_schedule": item.get("beta_schedule", "linear"),
            **{k: item.get(k) if item.get(k) is not None else v for k, v in SD_BETAS.items()}}
    if spec["beta_schedule"] not in SCHEDULES:
        raise UserError(f"unknown beta_schedule {spec['beta_schedule']!r}; choose one of: {', '.join(SCHEDULES)}")
    if not (isinstance(spec["T"], int) and spec["T"] >= 2):
        raise UserError(f"schedule T={spec['T']!r} must be an integer >= 2")
    if not 0 < spec["beta_start"] <= spec["beta_end"] < 1:
        raise UserError(f"need 0 < beta_start <= beta_end < 1, got {spec['beta_start']} and {spec['beta_end']}")
    default = f"{spec['beta_schedule']} {spec['beta_start']:g}->{spec['beta_end']:g} T={spec['T']}"
    if spec["beta_schedule"] == "squaredcos_cap_v2":
        default = f"squaredcos_cap_v2 T={spec['T']}"
    return {"label": item.get("name") or default, **spec}


def schedule_betas(item: Any, model_config: dict, cfg: dict) -> tuple[dict[str, Any], np.ndarray]:
    """(spec, beta_t) of a schedules entry; `scheduler` takes the configured scheduler's own betas (so options such as rescale_betas_zero_snr count)."""
    if item == "scheduler":
        label, name, options = visit_specs({"scheduler": cfg["scheduler"]})[0]
        c = make_scheduler(name, model_config, options)
        spec = {"label": f"scheduler={label}", "beta_schedule": c.config.beta_schedule,
                "beta_start": c.config.beta_start, "beta_end": c.config.beta_end, "T": c.config.num_train_timesteps}
        return spec, c.betas.double().cpu().numpy()
    spec = schedule_spec(item, model_config)
    return spec, betas(spec["beta_schedule"], spec["T"], spec["beta_start"], spec["beta_end"])


def visit_specs(cfg: dict) -> list[tuple[str, str, dict]]:
    """(label, scheduler name, options) of each scheduler whose visits are shown; the configured one by default."""
    items = cfg.get("visit_schedulers")
    if not items:
        choice = scheduler_choice(cfg["scheduler"])
        items = [{"name": choice.name, **choice.options}]
    out = []
    for item in items:
        item = {"name": item} if isinstance(item, str) else dict(item)
        name = item.pop("name", None)
        options = {k: v for k, v in item.items() if v is not None}
        label = " ".join([name, *(f"{k}={v}" for k, v in options.items())])
        out.append((label, name, options))
    return out


@job("schedule_snr")
def run_schedule(ctx: JobContext) -> pd.DataFrame:
    """Tables `schedule` (per t) and `visits` (per sampler step), figures snr.png and visits.png; one row per schedule."""
    cfg = ctx.config
    spec = model_spec(cfg["model"])
    model_config = model_scheduler_config(spec)
    steps = int(cfg.get("num_inference_steps") or 25)

    # 1. Per-timestep tables of every schedule.
    tables, rows = [], []
    for item in cfg.get("schedules") or ["model"]:
        s, beta = schedule_betas(item, model_config, cfg)
        with np.errstate(divide="ignore"):
            table = schedule_table(beta)
        tables.append(table.assign(schedule=s["label"]))
        crossing = zero_crossing(table["alpha_bar"])
        rows.append({**base_row(ctx, "schedule_snr", spec), "schedule": s["label"], "beta_schedule": s["beta_schedule"],
                     "beta_start": s["beta_start"], "beta_end": s["beta_end"], "T": s["T"], "crossing_t": crossing,
                     "snr_db_first": float(table["snr_db"].iloc[0]), "snr_db_last": float(table["snr_db"].iloc[-1]),
                     "alpha_bar_mid": float(table["alpha_bar"].iloc[s["T"] // 2])})
    schedule = pd.concat(tables, ignore_index=True)
    write_table(schedule[["schedule", *tables[0].columns.drop("schedule")]], ctx.out_dir, "schedule")
    if cfg.get("report_timesteps"):
        at = [int(t) for t in cfg["report_timesteps"]]
        write_table(schedule[schedule["t"].isin(at)].reset_index(drop=True), ctx.out_dir, "schedule_at")

    # 2. Timesteps and sigmas each sampler visits for N steps on the model's schedule.
    visits = []
    for label, name, options in visit_specs(cfg):
        scheduler = make_scheduler(name, model_config, options)
        with np.errstate(divide="ignore"):
            visit = scheduler_visits(scheduler, steps)
        visits.append(visit.assign(scheduler=label, num_inference_steps=steps))
    visits = pd.concat(visits, ignore_index=True)
    write_table(visits[["scheduler", "num_inference_steps", "step", "timestep", "sigma", "snr_db"]], ctx.out_dir, "visits")

    # 3. Figures.
    snr_figure(schedule, rows, ctx.out_dir / "snr.png")
    own = schedule_spec("model", model_config)
    model_table = schedule_table(betas(own["beta_schedule"], own["T"], own["beta_start"], own["beta_end"]))
    visits_figure(model_table, visits, steps, spec.name, ctx.out_dir / "visits.png")
    return ordered(rows)


def snr_figure(schedule: pd.DataFrame, rows: list[dict], target) -> None:
    """alpha_bar and SNR dB against t for every schedule, each one's 0 dB crossing (alpha_bar = 0.5) marked and named."""
    crossing = {r["schedule"]: r["crossing_t"] for r in rows}
    named = {label: f"{label} (0 dB at t={crossing[label]})" if crossing[label] >= 0 else label
             for label in crossing}
    groups = list(schedule.groupby("schedule", sort=False))
    marks = [(i, label) for i, (label, _) in enumerate(groups) if crossing[label] >= 0]
    below = [{"x": [crossing[label]], "y": [value], "notes": [f"t={crossing[label]}"], "color": f"C{i}",
              "offset": (6, -12 if i % 2 == 0 else 6)} for value in (0.5,) for i, label in marks]
    at_zero = [{**point, "y": [0.0]} for point in below]
    claim = ", ".join(f"t={crossing[label]}" for _, label in marks)
    curves([
        {"lines": [{"x": g["t"], "y": g["alpha_bar"], "label": named[label]} for label, g in groups],
         "points": below, "hline": 0.5, "xlabel": "timestep t", "ylabel": "alpha_bar_t (signal kept)",
         "title": "alpha_bar_t = prod(1 - beta_s); dots: alpha_bar = 0.5"},
        {"lines": [{"x": g["t"], "y": g["snr_db"], "label": named[label]} for label, g in groups],
         "points": at_zero, "hline": 0.0, "xlabel": "timestep t", "ylabel": "SNR (dB)",
         "title": "SNR_dB = 10 log10(alpha_bar / (1 - alpha_bar)); dots: 0 dB"},
    ], target, title=f"signal and noise are equal (0 dB) at {claim}" if marks else "")


def visits_figure(model_table: pd.DataFrame, visits: pd.DataFrame, steps: int, model: str, target) -> None:
    """The model's SNR curve with each sampler's visited timesteps, a rug of them (several samplers), and sigma per step."""
    markers = "osD^vP*X"
    groups = list(visits.groupby("scheduler", sort=False))
    on_curve = [{"x": g["timestep"], "y": g["snr_db"], "label": label, "marker": markers[i % len(markers)],
                 "size": 30 - 4 * (i % 5)} for i, (label, g) in enumerate(groups)]
    rug = [{"x": g["timestep"], "y": np.full(len(g), i), "marker": "|", "size": 160, "color": f"C{i}"}
           for i, (label, g) in enumerate(groups)]
    sigma = [{"x": g["step"], "y": g["sigma"], "label": label, "style": "o-"} for label, g in groups]
    lowest = {label: float(g["timestep"].min()) for label, g in groups}
    panels = [
        {"lines": [{"x": model_table["t"], "y": model_table["snr_db"], "label": f"model={model} schedule", "color": "0.5"}],
         "points": on_curve, "hline": 0.0, "xlabel": "timestep t", "ylabel": "SNR (dB)",
         "title": f"timesteps visited in {steps} steps; last at t=" + ", ".join(f"{v:g}" for v in lowest.values())},
        {"points": rug, "xlabel": "timestep t", "ylim": (-0.6, len(groups) - 0.4),
         "yticks": (list(range(len(groups))), [textwrap.fill(g[0], 22, break_long_words=False) for g in groups]),
         "title": "visited timesteps per sampler"},
        {"lines": sigma, "logy": True, "xlabel": "step", "ylabel": "sigma = sqrt((1 - alpha_bar)/alpha_bar)",
         "title": "sigma at each step", "integer_x": True},
    ]
    curves(panels if len(groups) > 1 else [panels[0], panels[2]], target)
