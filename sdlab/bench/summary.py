"""Summary by swept value: n, mean and a range-respecting interval of every metric per value and pair of values."""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from sdlab.bench.figures import (
    summary_figure,  # matplotlib only where a figure is drawn
)
from sdlab.bench.grid import axis_values, grid_axes
from sdlab.bench.records import PARAM_COLUMNS, write_table
from sdlab.metrics.stats import finite, mean_ci, metric_range

SUMMARY_NAME = "summary"
ALL = "(all)"
NOT_METRICS = {*PARAM_COLUMNS, "batch_size", "prompt_truncated_tokens", "job", "stochastic"}
MAIN_METRICS = ("clip_score", "adherence_all")  # the first one present is the sweep's main metric
LOWER_IS_BETTER = ("time_", "nfe", "latent_rmse", "peak_mem_bytes")
SUMMARY_COLUMNS = ["parameter", "value", "parameter2", "value2", "metric", "n", "mean", "lo", "hi",
                   "n_paired", "delta_vs", "delta_mean", "delta_lo", "delta_hi"]


def ok_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose status is ok (all rows when there is no status column)."""
    return frame[frame["status"] == "ok"].reset_index(drop=True) if "status" in frame else frame.reset_index(drop=True)


def sweep_axes(frame: pd.DataFrame) -> list[str]:
    """The grid's axes (sdlab.bench.grid.grid_axes) over every row, failed ones too, so a failed value keeps its place;
    then parameter columns a job varied itself (a scheduler study's schedulers and step counts)."""
    axes = grid_axes(frame.drop(columns=["image_path"], errors="ignore"))
    return axes + [c for c in PARAM_COLUMNS if c in frame and c not in axes and frame[c].dropna().nunique() > 1]


def swept_parameters(frame: pd.DataFrame) -> list[str]:
    """The sweep's axes but `seed`: seeds are the replicates, the unit of pairing."""
    return [axis for axis in sweep_axes(frame) if axis != "seed"]


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric and boolean columns that are measurements (scores, distances, times, NFE), not parameters."""
    out = []
    for column in frame.columns:
        if column in NOT_METRICS or column.endswith("_id"):
            continue
        kind = frame[column].dtype
        if (pd.api.types.is_numeric_dtype(kind) or pd.api.types.is_bool_dtype(kind)) and finite(frame[column]).size:
            out.append(column)
    return out


def higher_is_better(metric: str) -> bool:
    """Scores go up, costs and distances go down."""
    return not metric.startswith(LOWER_IS_BETTER)


def main_metric(metrics: list[str]) -> str | None:
    """The metric a sweep is judged by: CLIP score, else full adherence, else the first measured one."""
    return next((m for m in MAIN_METRICS if m in metrics), metrics[0] if metrics else None)


def pair_keys(frame: pd.DataFrame, labels: dict[str, list[str]], others: list[str]) -> list[tuple]:
    """Per row, what makes two cells comparable: the seed and every other swept value."""
    seeds = [str(s) for s in frame["seed"]] if "seed" in frame else [""] * len(frame)
    return [(seeds[i], *(labels[k][i] for k in others)) for i in range(len(frame))]


def paired_delta(values: np.ndarray, keys: list[tuple], mine: np.ndarray, best: np.ndarray,
                 bounds: tuple[float, float]) -> tuple[int, float, float, float]:
    """n, mean and interval of (this value - the best value) over cells matched by seed and the other swept values."""
    reference = {k: values[i] for i in np.flatnonzero(best) for k in [keys[i]] if np.isfinite(values[i])}
    diffs = [values[i] - reference[keys[i]] for i in np.flatnonzero(mine) if keys[i] in reference and np.isfinite(values[i])]
    width = bounds[1] - bounds[0]
    mean, lo, hi = mean_ci(diffs, bounds=(-width, width))
    return len(diffs), mean, lo, hi


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (parameter, value[, parameter2, value2], metric): n, mean, interval, and for single parameters
    the paired difference to that parameter's best value (same seed, same other swept values)."""
    params = swept_parameters(frame)
    frame = ok_rows(frame)
    metrics = metric_columns(frame)
    labels = {k: axis_values(frame, k) for k in params}
    arrays = {m: pd.to_numeric(frame[m], errors="coerce").to_numpy(dtype=float) for m in metrics}
    rows = []
    for metric in metrics:
        bounds = metric_range(metric)
        mean, lo, hi = mean_ci(arrays[metric], bounds=bounds)
        rows.append({"parameter": ALL, "value": ALL, "metric": metric, "n": int(finite(arrays[metric]).size),
                     "mean": mean, "lo": lo, "hi": hi})
    for key in params:
        column = np.asarray(labels[key], dtype=object)
        keys = pair_keys(frame, labels, [k for k in params if k != key])
        values = list(dict.fromkeys(labels[key]))
        for metric in metrics:
            x, bounds = arrays[metric], metric_range(metric)
            stats = {v: mean_ci(x[column == v], bounds=bounds) for v in values}
            means = {v: s[0] for v, s in stats.items() if not math.isnan(s[0])}
            best = (max if higher_is_better(metric) else min)(means, key=means.get) if means else None
            for v in values:
                n_paired, d_mean, d_lo, d_hi = (paired_delta(x, keys, column == v, column == best, bounds)
                                                if best is not None else (0, math.nan, math.nan, math.nan))
                rows.append({"parameter": key, "value": v, "metric": metric, "n": int(finite(x[column == v]).size),
                             "mean": stats[v][0], "lo": stats[v][1], "hi": stats[v][2], "n_paired": n_paired,
                             "delta_vs": best, "delta_mean": d_mean, "delta_lo": d_lo, "delta_hi": d_hi})
    for a, b in combinations(params, 2):
        pairs = pd.Series(list(zip(labels[a], labels[b])))
        for (va, vb), index in pairs.groupby(pairs, sort=False).groups.items():
            for metric in metrics:
                x = arrays[metric][np.asarray(index)]
                mean, lo, hi = mean_ci(x, bounds=metric_range(metric))
                rows.append({"parameter": a, "value": va, "parameter2": b, "value2": vb, "metric": metric,
                             "n": int(finite(x).size), "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def best_line(summary: pd.DataFrame) -> str:
    """`best by <main metric>: key=value (mean, n=N), ...` for every swept parameter; empty when nothing is swept."""
    metric = main_metric(list(dict.fromkeys(summary["metric"])))
    single = summary[(summary["metric"] == metric) & summary["parameter2"].isna() & (summary["parameter"] != ALL)]
    parts = []
    for key, group in single.groupby("parameter", sort=False):
        group = group.dropna(subset=["mean"])
        if len(group):
            row = group.loc[group["mean"].idxmax() if higher_is_better(metric) else group["mean"].idxmin()]
            parts.append(f"{key}={row['value']} ({row['mean']:.3g}, n={row['n']})")
    return f"best by mean {metric}: {', '.join(parts)}" if parts else ""


def owns_summary(folder: Path) -> bool:
    """True when `folder` has no summary table or one this module wrote (a study job writes its own)."""
    target = Path(folder) / f"{SUMMARY_NAME}.parquet"
    if not target.is_file():
        return True
    import pyarrow.parquet as pq

    return pq.read_schema(target).names == SUMMARY_COLUMNS


def write_summary(frame: pd.DataFrame, folder: Path, figure: bool = False) -> pd.DataFrame:
    """Write `summary.{parquet,csv}` (and `summary.png` when `figure`) into `folder`; return the table."""
    summary = summary_table(frame)
    write_table(summary, folder, SUMMARY_NAME)
    if figure and (summary["parameter"] != ALL).any():  # nothing swept: the table's overall rows say it all

        summary_figure(summary, Path(folder) / f"{SUMMARY_NAME}.png")
    return summary
