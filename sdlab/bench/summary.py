"""Summary by swept value: n, mean and a range-respecting interval of every metric per value and pair of values."""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from sdlab.bench.columns import (
    LOWER_IS_BETTER,
    higher_is_better,
    metric_columns,
    ok_rows,
    score_direction,
    swept_parameters,
)
from sdlab.bench.figures import summary_figure
from sdlab.bench.grid import axis_values
from sdlab.bench.ranking import BEST, RANKING_NAME, pair_keys, paired_delta, rank
from sdlab.bench.records import write_table
from sdlab.metrics.stats import MIN_N, finite, mean_ci, metric_range

SUMMARY_NAME = "summary"
ALL = "(all)"
SUMMARY_COLUMNS = ["parameter", "value", "parameter2", "value2", "metric", "n", "mean", "lo", "hi",
                   "n_paired", "delta_vs", "delta_mean", "delta_lo", "delta_hi"]


def reference(ranking: pd.DataFrame, key: str, metric: str, stats: dict[str, tuple[float, float, float]],
              n: dict[str, int]) -> str | None:
    """The value differences are taken against: the ranking's best for a ranked score, else for a score or a cost the
    best mean among values with MIN_N images; None for columns without a direction."""
    ranked = ranking[(ranking["parameter"] == key) & (ranking["metric"] == metric) & (ranking["group"] == BEST)]
    if len(ranked):
        return ranked["value"].iloc[0]
    if not (score_direction(metric) or metric.startswith(LOWER_IS_BETTER)):
        return None
    means = {v: s[0] for v, s in stats.items() if n[v] >= MIN_N and not math.isnan(s[0])}
    return (max if higher_is_better(metric) else min)(means, key=means.get) if means else None


def summary_table(frame: pd.DataFrame, ranking: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (parameter, value[, parameter2, value2], metric): n, mean, interval, and for single parameters
    the paired difference to the value `reference` names (same seed, same other swept values)."""
    ranking = rank(frame) if ranking is None else ranking
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
            n = {v: int(finite(x[column == v]).size) for v in values}
            best = reference(ranking, key, metric, stats, n)
            for v in values:
                n_paired, d_mean, d_lo, d_hi = (paired_delta(x, keys, column == v, column == best, bounds)
                                                if best is not None else (0, math.nan, math.nan, math.nan))
                rows.append({"parameter": key, "value": v, "metric": metric, "n": n[v],
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


def owns_summary(folder: Path) -> bool:
    """True when `folder` has no summary table or one this module wrote (a study job writes its own)."""
    target = Path(folder) / f"{SUMMARY_NAME}.parquet"
    if not target.is_file():
        return True
    import pyarrow.parquet as pq

    return pq.read_schema(target).names == SUMMARY_COLUMNS


def write_summary(frame: pd.DataFrame, folder: Path, figure: bool = False,
                  ranking: pd.DataFrame | None = None) -> pd.DataFrame:
    """Write `summary.{parquet,csv}` into `folder` (and when `figure`, as at a sweep's end, `ranking.{parquet,csv}`
    and `summary.png`); return the summary table."""
    ranking = rank(frame) if ranking is None else ranking
    summary = summary_table(frame, ranking)
    write_table(summary, folder, SUMMARY_NAME)
    if figure:
        write_table(ranking, folder, RANKING_NAME)
    if figure and (summary["parameter"] != ALL).any():  # nothing swept: the table's overall rows say it all
        summary_figure(summary, Path(folder) / f"{SUMMARY_NAME}.png", ranking)
    return summary
