"""The schedule_snr job: noise schedule tables, SNR crossings, visited timesteps; `families`: log-SNR of each family."""

from __future__ import annotations

import logging
import math
import textwrap
from typing import Any

import numpy as np

from sdlab.bench.captions import counted
from sdlab.bench.figures import PALETTE, curves, last_visits, save_figure, styled
from sdlab.bench.records import identity, ordered, write_table
from sdlab.config import Run, SchedulerChoice
from sdlab.errors import UserError
from sdlab.jobs import JobContext, job, read_recipe
from sdlab.jobs.analysis import model_scheduler_config
from sdlab.jobs.recipes import ScheduleSnr
from sdlab.lazy import pandas as pd
from sdlab.metrics.schedule import beta_schedule_spec, betas, log_snr_crossing, schedule_table, zero_crossing
from sdlab.models.loading import adapter_class
from sdlab.models.noise import process_of
from sdlab.models.schedulers import FAMILY_CONFIGS, check_options, make_scheduler, resolved_config, timestep_kwargs

log = logging.getLogger(__name__)
LOG_SNR_LIMITS = (-15.0, 15.0)


def schedule_spec(item: Any, model_config: dict) -> dict[str, Any]:
    """A schedules entry (name with SD's betas, `model`, a dict) as {label, beta_schedule, beta_start, beta_end, T}."""
    return beta_schedule_spec(process_of(model_config).model_schedule(model_config) if item == "model" else item)


def schedule_betas(item: Any, model_config: dict, choice: SchedulerChoice) -> tuple[dict[str, Any], np.ndarray]:
    """(spec, beta_t) of a schedules entry; `scheduler`: the configured scheduler's own betas (its options count)."""
    if item == "scheduler":
        label, name, options = visit_specs(None, choice)[0]
        c = make_scheduler(name, model_config, options)
        spec = {"label": f"scheduler={label}", "beta_schedule": c.config.beta_schedule,
                "beta_start": c.config.beta_start, "beta_end": c.config.beta_end, "T": c.config.num_train_timesteps}
        return spec, c.betas.double().cpu().numpy()
    spec = schedule_spec(item, model_config)
    return spec, betas(spec["beta_schedule"], spec["T"], spec["beta_start"], spec["beta_end"])


def visit_specs(items: list | None, choice: SchedulerChoice) -> list[tuple[str, str, dict]]:
    """(label, name, options) of each of `visit_schedulers`; the configured scheduler for None, none for []."""
    items = [{"name": choice.name, **choice.options}] if items is None else items
    items = [{"name": item} if isinstance(item, str) else item for item in items]
    specs = [(item.get("name"), {k: v for k, v in item.items() if k != "name" and v is not None}) for item in items]
    return [(" ".join([name, *(f"{k}={v}" for k, v in options.items())]), name, options) for name, options in specs]


def check_schedules(run: Run) -> None:
    """Every `families`, `schedules` and visiting sampler can be built and `report_timesteps` lie in every schedule."""
    recipe, spec = read_recipe(run, ScheduleSnr), run.model
    family_specs(run, recipe)
    if recipe.families and not recipe.schedules:
        if recipe.visit_schedulers:  # they mark steps on the beta schedules only ([] asks for none: nothing lost)
            sampler = visit_specs(recipe.visit_schedulers, run.scheduler)[0][1]
            raise UserError(f"visit_schedulers={list(recipe.visit_schedulers)!r} mark steps on `schedules`, which this "
                            "run does not draw (it draws families): name a family's sampler instead, e.g. "
                            f"'+families=[{{config: model, sampler: {sampler}}}]'")
        return
    model_config = model_scheduler_config(run)
    if not process_of(model_config).has_betas:
        raise UserError(f"`schedules` are DDPM beta schedules (alpha_bar), and their samplers do not fit "
                        f"model={spec.name}, a flow-matching model: compare its schedule with "
                        "'+families=[{config: model}]' in place of schedules= (without either, the recipe draws it "
                        "beside SD 1.5's)")
    last = min(schedule_betas(item, model_config, run.scheduler)[0]["T"] for item in recipe.schedules or ["model"]) - 1
    if bad := [t for t in recipe.report_timesteps or () if not 0 <= t <= last]:
        raise UserError(f"report_timesteps {bad} out of range; the schedules have t = 0 .. {last}")
    for _, name, options in visit_specs(recipe.visit_schedulers, run.scheduler):
        make_scheduler(name, model_config, options)


@job("schedule_snr", check=check_schedules)
def run_schedule(ctx: JobContext) -> pd.DataFrame:
    """Tables `schedule` (per t) and `visits` (per step), snr.png and visits.png, a row per schedule; and `families`."""
    recipe, spec = ctx.recipe, ctx.run.model
    check_schedules(ctx.run)  # before any file is written
    family = family_rows(ctx, recipe) if recipe.families else []
    if family and not recipe.schedules:
        return ordered(family)
    model_config = model_scheduler_config(ctx.run)
    steps = ctx.run.params.num_inference_steps
    tables, rows = [], []
    for item in recipe.schedules or ["model"]:
        s, beta = schedule_betas(item, model_config, ctx.run.scheduler)
        with np.errstate(divide="ignore"):
            table = schedule_table(beta)
        tables.append(table.assign(schedule=s["label"]))
        crossing = zero_crossing(table["alpha_bar"])
        ends = s["beta_schedule"] != "squaredcos_cap_v2"  # the cosine schedule reads no beta_start or beta_end
        rows.append({**identity(ctx, "schedule_snr", spec.name), "schedule": s["label"], "beta_schedule": s["beta_schedule"],
                     "beta_start": s["beta_start"] if ends else None, "beta_end": s["beta_end"] if ends else None,
                     "T": s["T"], "crossing_t": crossing,
                     "snr_db_first": float(table["snr_db"].iloc[0]), "snr_db_last": float(table["snr_db"].iloc[-1]),
                     "alpha_bar_mid": float(table["alpha_bar"].iloc[s["T"] // 2])})
    schedule = pd.concat(tables, ignore_index=True)
    write_table(schedule[["schedule", *tables[0].columns.drop("schedule")]], ctx.out_dir, "schedule")
    if recipe.report_timesteps:
        write_table(schedule[schedule["t"].isin(recipe.report_timesteps)].reset_index(drop=True), ctx.out_dir, "schedule_at")
    visits = []  # the timesteps and sigmas each sampler visits on the model's schedule
    for label, name, options in visit_specs(recipe.visit_schedulers, ctx.run.scheduler):
        scheduler = make_scheduler(name, model_config, options)
        with np.errstate(divide="ignore"):
            visit = process_of(model_config).visits(scheduler, steps)
        visits.append(visit.assign(scheduler=label, num_inference_steps=steps))
    snr_figure(schedule, rows, ctx.out_dir / "snr.png")
    if visits:
        visits = pd.concat(visits, ignore_index=True)
        write_table(visits[["scheduler", "num_inference_steps", "step", "timestep", "sigma", "snr_db"]], ctx.out_dir,
                    "visits")
        model_table = schedule_table(schedule_betas("model", model_config, ctx.run.scheduler)[1])
        visits_figure(model_table, visits, steps, spec.name, ctx.out_dir / "visits.png")
    return ordered([*family, *rows])


def snr_figure(schedule: pd.DataFrame, rows: list[dict], target) -> None:
    """alpha_bar and SNR dB against t for every schedule, each one's 0 dB crossing (alpha_bar = 0.5) marked and named."""
    crossing = {r["schedule"]: r["crossing_t"] for r in rows}
    named = {label: f"{label} (0 dB at t={crossing[label]})" if crossing[label] >= 0 else label
             for label in crossing}
    groups = list(schedule.groupby("schedule", sort=False))
    marks = [(i, label) for i, (label, _) in enumerate(groups) if crossing[label] >= 0]
    below = [{"x": [crossing[label]], "y": [0.5], "notes": [f"t={crossing[label]}"], "color": f"C{i}",
              "offset": (6, -12 if i % 2 == 0 else 6)} for i, label in marks]
    at_zero = [{**point, "y": [0.0]} for point in below]
    span = {r["schedule"]: f"{r['schedule']} ({r['snr_db_first']:+.1f} -> {r['snr_db_last']:+.1f} dB from t=0 to "
            f"{r['T'] - 1})" for r in rows}
    claim = "; ".join(f"t={crossing[label]} under {label}" for _, label in marks)
    curves([
        {"lines": [{"x": g["t"], "y": g["alpha_bar"], "label": named[label]} for label, g in groups],
         "points": below, "hline": 0.5, "xlabel": "timestep t", "ylabel": "alpha_bar_t (signal kept)",
         "title": "alpha_bar_t = prod(1 - beta_s); dots: alpha_bar = 0.5"},
        {"lines": [{"x": g["t"], "y": g["snr_db"], "label": span[label]} for label, g in groups],
         "points": at_zero, "hline": 0.0, "xlabel": "timestep t", "ylabel": "SNR (dB)",
         "title": "SNR_dB = 10 log10(alpha_bar / (1 - alpha_bar)); dots: 0 dB"},
    ], target, title=f"signal and noise are equal (0 dB) at {claim}" if marks else "")


def visits_figure(model_table: pd.DataFrame, visits: pd.DataFrame, steps: int, model: str, target) -> None:
    """The model's SNR curve with each sampler's visited timesteps, a rug of them (several samplers), and sigma per step."""
    markers, dashes = "osD^vP*X", ("-", "--", ":", "-.")
    groups = list(visits.groupby("scheduler", sort=False))
    on_curve = [{"x": g["timestep"], "y": g["snr_db"], "label": label, "marker": markers[i % len(markers)],
                 "size": 30 - 4 * (i % 5)} for i, (label, g) in enumerate(groups)]
    rug = [{"x": g["timestep"], "y": np.full(len(g), i), "marker": "|", "size": 160, "color": f"C{i}"}
           for i, (label, g) in enumerate(groups)]
    under = [next((f" (on {other}'s line)" for other, h in groups[:i] if len(h) == len(g)
                   and np.allclose(h["sigma"], g["sigma"], rtol=0.01)), "") for i, (_, g) in enumerate(groups)]
    sigma = [{"x": g["step"], "y": g["sigma"], "label": label + under[i], "style": markers[i % len(markers)]
              + dashes[i % 4]} for i, (label, g) in enumerate(groups)]  # its own marker and dashes: one under shows
    more = [f"{label} evaluates the model {len(g)} times" for label, g in groups if len(g) != steps]  # Heun: twice a step
    more_calls = f" ({'; '.join(more)} in {counted(steps, 'step')})" if more else ""
    panels = [
        {"lines": [{"x": model_table["t"], "y": model_table["snr_db"], "label": f"model={model} schedule", "color": "0.5"}],
         "points": on_curve, "hline": 0.0, "xlabel": "timestep t", "ylabel": "SNR (dB)",
         "title": f"timesteps visited in {counted(steps, 'step')}; last at {last_visits(visits, 'scheduler')}"},
        {"points": rug, "xlabel": "timestep t", "ylim": (-0.6, len(groups) - 0.4),
         "yticks": (list(range(len(groups))), [textwrap.fill(g[0], 22, break_long_words=False) for g in groups]),
         "title": "visited timesteps per sampler"},
        {"lines": sigma, "logy": True, "xlabel": "model evaluation (0 = the first)",
         "ylabel": "sigma = sqrt((1 - alpha_bar)/alpha_bar)", "title": "sigma at each model evaluation" + more_calls,
         "integer_x": True},
    ]
    curves(panels if len(groups) > 1 else [panels[0], panels[2]], target)


def family_spec(item: dict[str, Any], model: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `families` entry (its recipe checked it) with its defaults; `config: model` takes unset keys from `model`."""
    config = config_name = item["config"]
    if config == "model":
        item = {**model, **{k: v for k, v in item.items() if v is not None and k != "config"}}
        config = model["config"]
    elif isinstance(config, str):
        config = FAMILY_CONFIGS[config]
    steps, width, height = item.get("steps", 28), item.get("width") or 1024, item.get("height") or 1024
    sampler = item.get("sampler") or "ddim"  # on a flow model, Euler (see sdlab.models.schedulers)
    options = check_options(sampler, dict(item.get("options") or {}), process_of(config).kind)
    if item.get("name"):
        name = item["name"]
    elif item.get("model"):  # named by what it is drawn with, once the entry's own keys are in
        shift = f", shift {options['shift']:g}" if "shift" in options else ""
        size = f"{width}" if width == height else f"{width}x{height}"
        name = f"model={item['model']} ({sampler}{shift}, {size} px)"
    else:
        name = f"{item.get('config')} {sampler} {steps} steps"
    return {"name": name, "config": dict(config), "config_name": config_name if isinstance(config_name, str)
            else "custom", "sampler": sampler, "options": options, "steps": steps, "width": width,
            "height": height, "flux_sigmas": bool(item.get("flux_sigmas")), "model": item.get("model")}


def model_family(run: Run) -> dict[str, Any]:
    """The configured model as a `families` entry, at the size asked for (Flux's shift depends on it)."""
    spec, choice, params = run.model, run.scheduler, run.params
    return {"model": spec.name, "config": model_scheduler_config(run), "sampler": choice.name,
            "options": choice.options, "steps": params.num_inference_steps, "width": params.width, "height": params.height,
            "flux_sigmas": adapter_class(spec).linear_sigmas}


def family_specs(run: Run, recipe: ScheduleSnr) -> list[dict[str, Any]]:
    """Every `families` entry checked by `family_spec`, `config: model` ones filled from the configured model; each
    drawn under its own name."""
    specs = [family_spec(item, model_family(run) if isinstance(item, dict) and item.get("config") == "model"
                         else None) for item in recipe.families or []]
    names = [f["name"] for f in specs]
    for second, name in enumerate(names):
        if (first := names.index(name)) != second:
            raise UserError(f"families entries {first + 1} and {second + 1} are both drawn as {name!r}; give each its "
                            "own name:")
    return specs


def family_rows(ctx: JobContext, recipe: ScheduleSnr) -> list[dict[str, Any]]:
    """Tables `log_snr` and `family_visits`, figure log_snr.png; a row per family."""
    curves_, visits_, rows = [], [], []
    for f in family_specs(ctx.run, recipe):
        scheduler, process = make_scheduler(f["sampler"], f["config"], f["options"]), process_of(f["config"])
        kwargs = timestep_kwargs(scheduler, f["width"], f["height"], f["steps"], f["flux_sigmas"])
        mu = kwargs.get("mu")
        curve, visits, shift, closed = process.log_snr_steps(scheduler, f["steps"], **kwargs)
        curves_.append(curve.assign(family=f["name"]))
        visits_.append(visits.assign(family=f["name"], sampler=f["sampler"], num_inference_steps=f["steps"]))
        crossing = log_snr_crossing(curve["t"], curve["log_snr"])
        sized = f["model"] is not None or mu is not None  # a config's schedule owes nothing to a size but Flux's shift
        rows.append({**identity(ctx, "schedule_snr", ctx.run.model.name), "family": f["name"],
                     "family_config": f["config_name"], "sampler": f["sampler"], "num_inference_steps": f["steps"],
                     "width": f["width"] if sized else None, "height": f["height"] if sized else None,
                     "kind": process.kind, "shift": shift,
                     "mu": float("nan") if mu is None else float(mu), "crossing_t": crossing,
                     "crossing_t_closed_form": closed, "log_snr_t0": float(curve["log_snr"].iloc[0]),
                     "log_snr_t1": float(curve["log_snr"].iloc[-1]),
                     "visited_t": " ".join(f"{t:.3f}" for t in visits["t"]),
                     "visited_log_snr": " ".join(f"{v:.2f}" for v in visits["log_snr"]),
                     "scheduler_config": resolved_config(scheduler)})
        log.info("%s: log-SNR = 0 at t = %.4f%s", f["name"], crossing,
                 "" if math.isnan(closed) else f" (closed form 1/(1 + shift) = {closed:.4f})")
    curves = pd.concat(curves_, ignore_index=True)
    write_table(curves[["family", "t", "signal_frac", "noise_frac", "log_snr"]], ctx.out_dir, "log_snr")
    visits = pd.concat(visits_, ignore_index=True)
    write_table(visits[["family", "sampler", "num_inference_steps", "step", "timestep", "t", "noise_frac", "log_snr"]],
                ctx.out_dir, "family_visits")
    families_figure(curves, visits, rows, ctx.out_dir / "log_snr.png")
    return rows


def families_figure(curves: pd.DataFrame, visits: pd.DataFrame, rows: list[dict], target) -> None:
    """log-SNR against normalised time t per family, its sampler's steps marked, each log-SNR = 0 crossing ringed."""
    from matplotlib.lines import Line2D

    markers = "osD^PX*v"
    low, high = LOG_SNR_LIMITS
    with styled() as plt:
        fig, ax = plt.subplots(figsize=(10, 6))
        handles = []
        # 1. One curve per family, its visited steps on it (-inf clipped to the bottom edge as open triangles).
        for i, (row, (name, curve)) in enumerate(zip(rows, curves.groupby("family", sort=False))):
            color = PALETTE[i % len(PALETTE)]
            ax.plot(curve["t"], curve["log_snr"], color=color, lw=1.6)
            handles.append(Line2D([], [], color=color, lw=1.6, marker=markers[i % len(markers)], markersize=5,
                                  markeredgecolor="black", markeredgewidth=0.4,
                                  label=f"{name}: {row['sampler']}, {counted(row['num_inference_steps'], 'step')}"
                                  + (f", shift {row['shift']:.2f}" if np.isfinite(row["shift"]) else "")
                                  + (f" (mu {row['mu']:.2f})" if np.isfinite(row["mu"]) else "")))
            seen = visits[visits["family"] == name].drop_duplicates("t")
            finite = seen[np.isfinite(seen["log_snr"]) & (seen["log_snr"] > low)]
            few = len(seen) <= 8  # few-step samplers: larger marks, drawn above the dense ones
            ax.scatter(finite["t"], finite["log_snr"].clip(upper=high), marker=markers[i % len(markers)],
                       s=70 if few else 26, color=color, edgecolors="black", linewidths=0.5, zorder=3.5 if few else 3)
            off = seen.drop(finite.index)
            ax.scatter(off["t"], np.full(len(off), low), marker="v", s=40, facecolors="none", edgecolors=color,
                       linewidths=1.2, zorder=3, clip_on=False)
        # 2. Crossings: a ring on the zero line, and a list in the empty upper right (all curves are below 0 there).
        ax.axhline(0.0, color="0.4", lw=0.8, ls="--")
        lines = [("log-SNR = 0 (signal = noise) at:", "black")]
        for i, row in enumerate(rows):
            color = PALETTE[i % len(PALETTE)]
            if np.isfinite(row["crossing_t"]):
                ax.scatter([row["crossing_t"]], [0.0], s=90, facecolors="none", edgecolors=color, linewidths=1.6,
                           zorder=4)
                lines.append((f"t = {row['crossing_t']:.3f}  {row['family']}", color))
        for j, (text, color) in enumerate(lines):
            ax.text(0.985, 0.97 - 0.055 * j, text, transform=ax.transAxes, ha="right", va="top", fontsize=8,
                    color=color, fontweight="bold" if j == 0 else None)
        # 3. Axes, legend below the axes so it covers no curve.
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(low, high)
        ax.set_xlabel("normalised time t  (DDPM: (timestep + 1) / 1000;  flow matching: sigma before the shift)")
        ax.set_ylabel("log-SNR = log(signal² / noise²)   (−∞ at t = 1 is off-scale)")
        ax.set_title("log-SNR against normalised time, DDPM and flow-matching families; markers: sampler steps, "
                     "rings: log-SNR = 0\n"
                     "flow: SNR = ((1 − σ')/σ')², σ' = sσ/(1 + (s − 1)σ) (SD3 eq. 23), Flux s = exp(mu(resolution)); "
                     "▽ on the bottom edge: a step at −∞")
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
        fig.tight_layout()
        save_figure(fig, target)
