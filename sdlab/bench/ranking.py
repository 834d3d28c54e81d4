"""Which value of each swept parameter is best by each score, and which are indistinguishable from it.

Values are ranked by mean; each is compared with the best by the paired difference over images that share the
seed and every other swept value (Student-t 95% interval, sdlab.metrics.stats). A value whose interval spans 0 is
tied with the best. Nothing is ranked from fewer than MIN_N images per value or from a score that does not vary.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sdlab.bench.columns import (
    COSTS,
    MAIN_METRICS,
    metric_columns,
    ok_rows,
    score_direction,
    swept_parameters,
)
from sdlab.bench.grid import axis_values
from sdlab.metrics.stats import MIN_N, finite, mean_ci, metric_range

RANKING_NAME = "ranking"
BEST, TIED, BEHIND, UNPAIRED, TOO_FEW = "best", "tied", "behind", f"fewer than {MIN_N} pairs", f"fewer than {MIN_N} images"
RANKING_COLUMNS = ["parameter", "metric", "better", "rank", "value", "n", "mean", "lo", "hi", "n_paired",
                   "delta_mean", "delta_lo", "delta_hi", "group", *COSTS, "cheapest_tied"]
MAX_NAMED = 8  # a line names at most this many tied values; ranking.csv has them all


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


def cheapest(rows: list[dict]) -> dict | None:
    """The row with the lowest cost (NFE first, then seconds); None when no row has a cost."""
    costed = [r for r in rows if any(not math.isnan(r[c]) for c in COSTS)]
    key = lambda r: tuple(math.inf if math.isnan(r[c]) else r[c] for c in COSTS)  # noqa: E731
    return min(costed, key=key) if costed else None


def rank_one(x: np.ndarray, column: np.ndarray, keys: list[tuple], values: list[str], metric: str,
             costs: dict[str, np.ndarray]) -> list[dict]:
    """The ranking of one parameter's `values` by one score `x`; empty when fewer than two values can be ranked or
    the score is constant over them."""
    sign = score_direction(metric)
    bounds = metric_range(metric)
    n = {v: int(finite(x[column == v]).size) for v in values}
    rankable = [v for v in values if n[v] >= MIN_N]
    scored = finite(x[np.isin(column, rankable)])
    if len(rankable) < 2 or np.ptp(scored) <= 1e-12 * max(1.0, float(np.abs(scored).max())):
        return []
    stats = {v: mean_ci(x[column == v], bounds=bounds) for v in values}
    order = sorted(rankable, key=lambda v: -sign * stats[v][0])  # stable: equal means keep sweep order
    best = order[0]
    rows = []
    for position, v in enumerate([*order, *(v for v in values if v not in rankable)]):
        ranked = v in rankable
        n_paired, d_mean, d_lo, d_hi = paired_delta(x, keys, column == v, column == best, bounds) if ranked else (
            0, math.nan, math.nan, math.nan)
        group = (BEST if v == best else TOO_FEW if not ranked else UNPAIRED if n_paired < MIN_N
                 else TIED if d_lo <= 0 <= d_hi else BEHIND)
        rows.append({"parameter": None, "metric": metric, "better": "higher" if sign > 0 else "lower",
                     "rank": position + 1 if ranked else None, "value": v, "n": n[v], "mean": stats[v][0],
                     "lo": stats[v][1], "hi": stats[v][2], "n_paired": n_paired, "delta_mean": d_mean,
                     "delta_lo": d_lo, "delta_hi": d_hi, "group": group, "cheapest_tied": False,
                     **{c: float(np.mean(finite(costs[c][column == v]))) if finite(costs[c][column == v]).size
                        else math.nan for c in costs}})
    for c in COSTS:
        for row in rows:
            row.setdefault(c, math.nan)
    pick = cheapest([r for r in rows if r["group"] in (BEST, TIED)])
    if pick is not None:
        pick["cheapest_tied"] = True
    return rows


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """For each swept parameter and each score: its values by mean, grouped into the best, those tied with it (paired
    95% interval of the difference spans 0) and those behind; the cheapest tied value flagged (one row per value)."""
    params = swept_parameters(frame)
    frame = ok_rows(frame)
    scores = [m for m in metric_columns(frame) if score_direction(m)]
    labels = {k: axis_values(frame, k) for k in params}
    number = lambda name: pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)  # noqa: E731
    costs = {c: number(c) for c in COSTS if c in frame}
    rows = []
    for key in params:
        column = np.asarray(labels[key], dtype=object)
        keys = pair_keys(frame, labels, [k for k in params if k != key])
        values = list(dict.fromkeys(labels[key]))
        for metric in scores:
            rows += [{**row, "parameter": key} for row in rank_one(number(metric), column, keys, values, metric, costs)]
    return pd.DataFrame(rows, columns=RANKING_COLUMNS)


def headline_metric(metrics: list[str]) -> str:
    """The score a parameter's line is about: CLIP score, else full adherence, else the first ranked one."""
    return next((m for m in MAIN_METRICS if m in metrics), metrics[0])


def cost_text(row: pd.Series) -> str:
    """`NFE 8, 0.21 s` from a ranking row's costs."""
    parts = [f"NFE {row['nfe']:g}" if "nfe" in row and not math.isnan(row["nfe"]) else "",
             f"{row['time_total_s']:.2g} s" if "time_total_s" in row and not math.isnan(row["time_total_s"]) else ""]
    return ", ".join(p for p in parts if p)


def names(values: list[str]) -> str:
    """Values joined by commas, at most MAX_NAMED of them."""
    shown = ", ".join(values[:MAX_NAMED])
    return shown + (f" and {len(values) - MAX_NAMED} more" if len(values) > MAX_NAMED else "") if values else "none"


def ranking_line(ranking: pd.DataFrame, parameter: str) -> str:
    """`scheduler by clip_score: best a 95.5; tied: b, c (3 of 17); cheapest tied: c (NFE 8)`, or why it is not ranked."""
    mine = ranking[ranking["parameter"] == parameter]
    if mine.empty:
        return f"{parameter}: not ranked (no score varies with {MIN_N}+ images for two of its values)"
    metric = headline_metric(list(dict.fromkeys(mine["metric"])))
    rows = mine[mine["metric"] == metric]
    best = rows[rows["group"] == BEST].iloc[0]
    tied = list(rows.loc[rows["group"] == TIED, "value"])
    ranked = int(rows["rank"].notna().sum())
    line = (f"{parameter} by {metric}: best {best['value']} {best['mean']:.3g}"
            f"{' (lower is better)' if best['better'] == 'lower' else ''}; tied: {names(tied)} ({len(tied) + 1} of {ranked})")
    pick = rows[rows["cheapest_tied"]]
    if tied and len(pick):
        line += f"; cheapest tied: {pick.iloc[0]['value']} ({cost_text(pick.iloc[0])})"
    unpaired = list(rows.loc[rows["group"] == UNPAIRED, "value"])
    few = list(rows.loc[rows["group"] == TOO_FEW, "value"])
    line += f"; not compared ({UNPAIRED}): {names(unpaired)}" if unpaired else ""
    return line + (f"; not ranked ({TOO_FEW}): {names(few)}" if few else "")


def ranking_lines(frame: pd.DataFrame, ranking: pd.DataFrame) -> dict[str, str]:
    """One line per swept parameter of `frame` (by name): its best value by the headline score, the values tied with
    it and the cheapest of those, or why it is not ranked."""
    return {key: ranking_line(ranking, key) for key in swept_parameters(frame)}
