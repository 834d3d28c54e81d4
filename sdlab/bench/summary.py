"""What a sweep varies and measures, and by swept value: n, mean and interval of every metric, and the ranking.

Values are ranked by mean and compared with the best by the paired difference over images sharing the seed and every
other swept value (Student-t 95% interval): one whose interval spans 0 is tied with the best. Nothing is ranked from
fewer than MIN_N images per value or from a score that does not vary. Set scorers (fd, kid, cmmd, precision_recall)
add rows per slice and feature extractor, with a bootstrap interval and a warning where n is too small.
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from sdlab.bench.captions import printable
from sdlab.bench.figures import summary_figure
from sdlab.bench.grid import axis_values
from sdlab.bench.records import PARAM_COLUMNS, write_table
from sdlab.bench.references import cache_dir, reference_features
from sdlab.bench.scorers import decode_features, direction, registered
from sdlab.lazy import pandas as pd, parquet as pq
from sdlab.metrics.stats import CONFIDENCE, MIN_N, bootstrap_ci, calls, finite, mean_ci, metric_range, n_mean_ci, named

SUMMARY_NAME, RANKING_NAME = "summary", "ranking"
ALL = "(all)"
# inputs, and the indices a job numbers its rows by (a prompt's, a call's, a step's, a token's position)
NOT_METRICS = {*PARAM_COLUMNS, "batch_size", "prompt_truncated_tokens", "job", "stochastic", "prompt_index", "call",
               "step", "timestep", "position"}
REPLICATES = ("seed", "seeds")  # the unit of pairing, never a parameter to rank
MAIN_METRICS = ("clip_score", "adherence_all")  # the first one present is the sweep's main metric
LOWER_IS_BETTER = ("time_", "nfe", "latent_rmse", "peak_mem_bytes")
# Scores: measurements of an image with a declared direction, by exact name or by prefix ending in "_".
HIGHER_SCORES = ("psnr", "ssim")  # the scheduler study's distances; the scorers declare their own columns
LOWER_SCORES = ("latent_rmse",)
COSTS = ("nfe", "time_total_s")  # what a value spends, cheapest first in this order of preference
BEST, TIED, BEHIND, UNPAIRED, TOO_FEW = "best", "tied", "behind", f"fewer than {MIN_N} pairs", f"fewer than {MIN_N} images"
STATS = ["n", "mean", "lo", "hi", "n_paired", "delta_mean", "delta_lo", "delta_hi"]
RANKING_COLUMNS = ["parameter", "metric", "better", "rank", "value", *STATS, "group", *COSTS, "cheapest_tied"]
SET_SUMMARY_COLUMNS = ["features", "n_reference", "warning"]  # set scorers: extractor, reference size, small-n warning
SUMMARY_COLUMNS = ["parameter", "value", "parameter2", "value2", "metric", *STATS[:5], "delta_vs", *STATS[5:],
                   *SET_SUMMARY_COLUMNS]
MAX_NAMED = 8  # a line names at most this many tied values; ranking.csv has them all


def sweep_axes(frame: pd.DataFrame, axes: Sequence[str] = ()) -> list[str]:
    """What varies across the rows: the sweep's `axes` (command-line order), then the seed and other varying columns."""
    axes = ["seed" if a == "seeds" and "seed" in frame else a for a in axes]  # a job's seeds are one per row
    varied = (c for c in ("seed", *PARAM_COLUMNS) if c in frame and c not in axes and frame[c].dropna().nunique() > 1)
    return list(dict.fromkeys([*axes, *varied]))


def swept_parameters(frame: pd.DataFrame, axes: Sequence[str] = ()) -> list[str]:
    """The sweep's axes but seeds (the replicates) and columns that only follow a swept one (a model's scheduler)."""
    chosen = [a for a in axes if a not in REPLICATES]
    keys = {a: axis_values(frame, a) for a in chosen}
    follows = lambda column, axis: bool(  # noqa: E731 - one value of `column` per value of `axis`
        (frame[column].astype(str).groupby(keys[axis], dropna=False).nunique() <= 1).all())
    return chosen + [c for c in sweep_axes(frame, axes) if c not in chosen and c not in REPLICATES
                     and not any(follows(c, a) for a in chosen)]


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric and boolean measurement columns (scores, distances, times, NFE); a failed cell may make one `object`."""
    def numeric(series: pd.Series) -> bool:  # an object column of None only: no finite value, left out below
        return (pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)
                or series.dtype == object and all(isinstance(v, (bool, int, float, np.bool_, np.number))
                                                  for v in series.dropna()))

    return [c for c in frame.columns if c not in NOT_METRICS and not c.endswith("_id") and numeric(frame[c])
            and finite(frame[c]).size]


def score_direction(metric: str) -> int:
    """+1 for a score where higher is better, -1 where lower is better, 0 for anything else (costs, parameters)."""
    return direction(metric) or (1 if named(metric, HIGHER_SCORES) else -1 if named(metric, LOWER_SCORES) else 0)


def main_metric(metrics: list[str]) -> str | None:
    """The metric a sweep is judged by: CLIP score, else full adherence, else the first measured one."""
    return next((m for m in MAIN_METRICS if m in metrics), metrics[0] if metrics else None)


def paired_delta(values: np.ndarray, keys: list[tuple], mine: np.ndarray, best: np.ndarray,
                 bounds: tuple[float, float], units: np.ndarray | None = None,
                 confidence: float = CONFIDENCE) -> tuple[int, float, float, float]:
    """n, mean and interval of (this value - the best) over cells paired by `keys` (with `units`: distinct calls)."""
    unit = units if units is not None else np.arange(len(values))
    reference = {k: i for i in np.flatnonzero(best) for k in [keys[i]] if np.isfinite(values[i])}
    diffs = {(unit[i], unit[j]): values[i] - values[j] for i in np.flatnonzero(mine)
             for j in [reference.get(keys[i])] if j is not None and np.isfinite(values[i])
             and (units is None or unit[i] != unit[j])}
    width = bounds[1] - bounds[0]
    return len(diffs), *mean_ci(list(diffs.values()), bounds=(-width, width), confidence=confidence)


class Swept:
    """The ok rows of a sweep, read once: each swept parameter's label per row, the pairing keys, and numbers."""

    def __init__(self, frame: pd.DataFrame, axes: Sequence[str] = ()):
        self.params = swept_parameters(frame, axes)
        self.frame = (frame[frame["status"] == "ok"] if "status" in frame else frame).reset_index(drop=True)
        self.labels = {k: np.asarray(axis_values(self.frame, k), dtype=object) for k in self.params}
        self.seeds = [str(s) for s in self.frame["seed"]] if "seed" in self.frame else [""] * len(self.frame)

    def number(self, column: str) -> np.ndarray:
        """A column as floats (NaN where it is not a number)."""
        return pd.to_numeric(self.frame[column], errors="coerce").to_numpy(dtype=float)

    def measured(self, metric: str, mask: np.ndarray | None = None) -> tuple[int, float, float, float]:
        """n, mean and interval of `metric` over the rows `mask` selects (all by default), a call counted once."""
        mask = np.ones(len(self.frame), bool) if mask is None else np.asarray(mask)
        units = calls(self.frame, metric)
        return n_mean_ci(self.number(metric)[mask], metric_range(metric), None if units is None else units[mask])

    def values(self, key: str) -> list[str]:
        """The values of a swept parameter in order of appearance."""
        return list(dict.fromkeys(self.labels[key]))

    def pairs(self, key: str) -> list[tuple]:
        """Per row, what makes two cells comparable when `key` changes: the seed and every other swept value."""
        others = [self.labels[k] for k in self.params if k != key]
        return [(seed, *(o[i] for o in others)) for i, seed in enumerate(self.seeds)]

    def on_shared_pairs(self, key: str, metric: str, values: Sequence[str]) -> np.ndarray:
        """The rows whose pairing key has a `metric` value for every one of `values` of `key`: a like-for-like subset."""
        x, column, pairs = self.number(metric), self.labels[key], self.pairs(key)
        made = [{pairs[i] for i in np.flatnonzero((column == v) & np.isfinite(x))} for v in values]
        shared = set.intersection(*made) if made else set()
        return np.fromiter((p in shared for p in pairs), bool, len(pairs))

    def by_value(self, key: str, metric: str, best, min_n: int = 0) -> tuple[dict[str, dict], str | None]:
        """Per value of `key`, `metric`'s stats (from `min_n` images paired to the value `best(stats)`); that value."""
        x, column, bounds = self.number(metric), self.labels[key], metric_range(metric)
        units = calls(self.frame, metric)
        stats = {v: dict(zip(STATS, self.measured(metric, column == v))) for v in self.values(key)}
        reference, pairs = best(stats), self.pairs(key)
        compared = [v for v, row in stats.items() if v != reference and row["n"] >= min_n]
        confidence = 1 - (1 - CONFIDENCE) / max(1, len(compared))  # Bonferroni: 95% over all the comparisons
        for v, row in stats.items():
            row.update(zip(STATS[4:], paired_delta(x, pairs, column == v, column == reference, bounds, units,
                                                   confidence)
                           if reference is not None and row["n"] >= min_n else (0, math.nan, math.nan, math.nan)))
        return stats, reference


def rank(frame: pd.DataFrame, axes: Sequence[str] = ()) -> pd.DataFrame:
    """Per swept parameter and score, its values by mean: the best, those tied with it, those behind; cheapest tied."""
    swept = Swept(frame, axes)
    rows = []
    for key in swept.params:
        spent = {v: {c: swept.measured(c, swept.labels[key] == v) for c in COSTS if c in swept.frame}
                 for v in swept.values(key)}  # n, mean and interval of each cost
        for metric in (m for m in metric_columns(swept.frame) if score_direction(m)):
            sign, x = score_direction(metric), swept.number(metric)
            def order(stats: dict[str, dict]) -> list[str]:  # by mean on the seeds all made (a failed cell's
                kept = [v for v, s in stats.items() if s["n"] >= MIN_N]  # seed would favour who made it), stable
                shared = swept.on_shared_pairs(key, metric, kept)
                mean = {v: swept.measured(metric, shared & (swept.labels[key] == v))[1] for v in kept}
                return sorted(kept, key=lambda v: -sign * (mean[v] if shared.sum() >= MIN_N * len(kept)
                                                           else stats[v]["mean"]))
            stats, best = swept.by_value(key, metric, best=lambda s: next(iter(order(s)), None), min_n=MIN_N)
            ranked = order(stats)
            scored = finite(x[np.isin(swept.labels[key], ranked)])
            if len(ranked) < 2 or np.ptp(scored) <= 1e-12 * max(1.0, float(np.abs(scored).max())):
                continue
            mine = []
            for position, v in enumerate([*ranked, *(v for v in stats if v not in ranked)]):
                s, kept = stats[v], v in ranked
                group = (BEST if v == best else TOO_FEW if not kept else UNPAIRED if s["n_paired"] < MIN_N
                         else TIED if s["delta_lo"] <= 0 <= s["delta_hi"] else BEHIND)
                mine.append({"parameter": key, "metric": metric, "better": "higher" if sign > 0 else "lower",
                             "rank": position + 1 if kept else None, "value": v, **s, "group": group,
                             "cheapest_tied": False, **{c: math.nan for c in COSTS},
                             **{c: mean for c, (_, mean, _, _) in spent[v].items()}})
            for row in cheapest(swept, key, [r for r in mine if r["group"] in (BEST, TIED)], spent):
                row["cheapest_tied"] = True
            rows += mine
    return pd.DataFrame(rows, columns=RANKING_COLUMNS)


def cheapest(swept: Swept, key: str, tied: list[dict], spent: dict) -> list[dict]:
    """The tied rows no other one beats on cost (fewest NFE, then seconds): those whose cost, paired over like cells
    with the least costly one's (as scores are), is not above it by a 95% interval; none if cost parts none of them."""
    found = [r for r in tied if not any(math.isnan(mean) for _, mean, _, _ in spent[r["value"]].values())]
    column, pairs = swept.labels[key], swept.pairs(key)
    for cost in (c for c in COSTS if found and c in spent[found[0]["value"]]):
        least = min(found, key=lambda r: spent[r["value"]][cost][1])["value"]
        x, bounds, units = swept.number(cost), metric_range(cost), calls(swept.frame, cost)
        found = [r for r in found  # a NaN bound (under 3 pairs): not parted
                 if not paired_delta(x, pairs, column == r["value"], column == least, bounds, units)[2] > 0]
    return found if len(found) < len(tied) else []


def ranking_line(ranking: pd.DataFrame, parameter: str) -> str:
    """`scheduler by clip_score: best a 95.5; tied: b, c (3 of 17); cheapest tied: c (NFE 8)`, or why it is not ranked."""
    mine = ranking[ranking["parameter"] == parameter]
    if mine.empty:
        return f"{parameter}: not ranked (no score varies with {MIN_N}+ images for two of its values)"
    rows = mine[mine["metric"] == main_metric(list(dict.fromkeys(mine["metric"])))]
    best = rows[rows["group"] == BEST].iloc[0]

    def listed(chosen: pd.Series) -> str:
        values = [printable(v) for v in rows.loc[chosen, "value"]]
        more = f" and {len(values) - MAX_NAMED} more" if len(values) > MAX_NAMED else ""
        return ", ".join(values[:MAX_NAMED]) + more if values else "none"

    def span(column: str, form: str) -> str | None:  # the cheapest's costs: `8`, `0.8-0.81`
        found = sorted({format(x, form) for x in rows.loc[rows["cheapest_tied"], column].dropna()}, key=float)
        return "-".join(dict.fromkeys([found[0], found[-1]])) if found else None

    tied = int((rows["group"] == TIED).sum())
    line = (f"{parameter} by {best['metric']}: best {printable(best['value'])} {best['mean']:.3g}"
            f"{' (lower is better)' if best['better'] == 'lower' else ''}; tied: {listed(rows['group'] == TIED)} "
            f"({tied + 1} of {int(rows['rank'].notna().sum())})")
    if rows["cheapest_tied"].any():
        nfe, seconds = (span(c, form) if c in rows else None for c, form in (("nfe", "g"), ("time_total_s", ".2g")))
        cost = ", ".join(p for p in (nfe and f"NFE {nfe}", seconds and f"{seconds} s") if p)
        line += f"; cheapest tied: {listed(rows['cheapest_tied'])} ({cost})"
        behind = mine[(mine["group"] == BEHIND) & mine["value"].isin(rows.loc[rows["cheapest_tied"], "value"])]
        line += "".join(f", but {printable(value)} is behind by {', '.join(scores[:3])}"
                        + (f" and {len(scores) - 3} more" if len(scores) > 3 else "")
                        for value, scores in behind.groupby("value", sort=False)["metric"].agg(list).items())
    for group, why in ((UNPAIRED, "not compared"), (TOO_FEW, "not ranked")):
        line += f"; {why} ({group}): {listed(rows['group'] == group)}" if (rows["group"] == group).any() else ""
    return line


def ranking_lines(frame: pd.DataFrame, ranking: pd.DataFrame, axes: Sequence[str] = ()) -> dict[str, str]:
    """`ranking_line` of each swept parameter, by name."""
    return {key: ranking_line(ranking, key) for key in swept_parameters(frame, axes)}


def summary_table(frame: pd.DataFrame, axes: Sequence[str] = (), ranking: pd.DataFrame | None = None) -> pd.DataFrame:
    """A row per (parameter, value[, parameter2, value2], metric): n, mean, interval, paired difference to the best."""
    ranking = rank(frame, axes) if ranking is None else ranking
    swept = Swept(frame, axes)
    metrics = metric_columns(swept.frame)
    rows = [{"parameter": ALL, "value": ALL, "metric": m, **dict(zip(STATS, swept.measured(m)))} for m in metrics]
    for key in swept.params:
        for metric in metrics:
            ranked = ranking[(ranking["parameter"] == key) & (ranking["metric"] == metric) & (ranking["group"] == BEST)]

            def reference(stats: dict) -> str | None:
                if len(ranked):
                    return ranked["value"].iloc[0]
                if not (score_direction(metric) or metric.startswith(LOWER_IS_BETTER)):
                    return None
                means = {v: s["mean"] for v, s in stats.items() if s["n"] >= MIN_N and not math.isnan(s["mean"])}
                return (min if metric.startswith(LOWER_IS_BETTER) else max)(means, key=means.get) if means else None

            stats, best = swept.by_value(key, metric, best=reference)
            rows += [{"parameter": key, "value": v, "metric": metric, **s, "delta_vs": best} for v, s in stats.items()]
    for a, b in combinations(swept.params, 2):
        for va, vb in dict.fromkeys(zip(swept.labels[a], swept.labels[b])):  # each pair of values met, in sweep order
            mask = (swept.labels[a] == va) & (swept.labels[b] == vb)
            for metric in metrics:
                rows.append({"parameter": a, "value": va, "parameter2": b, "value2": vb, "metric": metric,
                             **dict(zip(STATS, swept.measured(metric, mask)))})
    return pd.DataFrame(rows + set_rows(swept), columns=SUMMARY_COLUMNS)


def set_rows(swept: Swept) -> list[dict]:
    """Each set scorer's rows per slice (all, each value, each pair of values) and extractor, against its references."""
    frame = swept.frame
    if "image_features" not in frame:
        return []
    features = [decode_features(x) for x in frame["image_features"]]
    present = np.array([x is not None for x in features])
    slices = [({"parameter": ALL, "value": ALL}, present)]
    slices += [({"parameter": k, "value": v}, present & (swept.labels[k] == v))
               for k in swept.params for v in swept.values(k)]
    slices += [({"parameter": a, "value": va, "parameter2": b, "value2": vb}, mask)
               for a, b in combinations(swept.params, 2) for va in swept.values(a) for vb in swept.values(b)
               for mask in [present & (swept.labels[a] == va) & (swept.labels[b] == vb)] if mask.any()]
    references = {key: reference_features(key) for key in frame.loc[present, "reference"].unique()}
    kinds, rows = registered(), []
    for labels, mask in slices:
        for (extractor, names), group in frame[mask].groupby(["features", "set_metrics"], sort=False):
            keys = list(dict.fromkeys(group["reference"]))
            sets = [[features[i] for i in group.index], *(references[k] for k in keys if references[k] is not None)]
            if len({x.shape[-1] for s in sets for x in s}) > 1:  # a table edited by hand: no set to compare
                continue
            missing = [k for k in keys if references[k] is None]
            reference = np.concatenate(sets[1:]) if not missing else np.zeros((0, 1))
            for name in (n for n in str(names).split() if n in kinds):
                rows += set_statistic(name, kinds[name], np.stack(sets[0]), reference, missing,
                                      {**labels, "features": extractor, "n_reference": len(reference)})
    return rows


def set_statistic(name: str, kind, generated: np.ndarray, reference: np.ndarray, missing: list[str],
                  labels: dict) -> list[dict]:
    """One summary row per column of set scorer `name` on one slice."""
    n, m = len(generated), len(reference)
    values, intervals = [math.nan] * len(kind.columns), [(math.nan, math.nan)] * len(kind.columns)
    if missing:
        warning = f"reference set {missing[0]} is not in {cache_dir()}: rerun the sweep to render it again"
    elif min(n, m) < kind.min_n:
        warning = f"{name} needs at least {kind.min_n} images per set (n={n}, reference {m}): not computed"
    else:
        warning = (f"{name} needs about {kind.advised_n} images per set to be trusted (n={n}, reference {m})"
                   if min(n, m) < kind.advised_n else None)
        values, intervals = kind.statistic(generated, reference), bootstrap_ci(kind.statistic, generated, reference)
    return [{**labels, "metric": column, "n": n, "mean": float(value), "lo": lo, "hi": hi, "n_paired": 0,
             "warning": warning} for column, value, (lo, hi) in zip(kind.columns, values, intervals)]


def owns_summary(folder: Path) -> bool:
    """True when `folder` has no summary table or one this module wrote (a study job writes its own)."""
    target = Path(folder) / f"{SUMMARY_NAME}.parquet"
    if not target.is_file():
        return True
    older = SUMMARY_COLUMNS[:-len(SET_SUMMARY_COLUMNS)]  # from before the set scorers
    return pq.read_schema(target).names in (SUMMARY_COLUMNS, older)


def write_summary(frame: pd.DataFrame, folder: Path, axes: Sequence[str] = (), figure: bool = False,
                  ranking: pd.DataFrame | None = None) -> pd.DataFrame:
    """Write `summary.{parquet,csv}` into `folder` (with `figure`, also the ranking and `summary.png`) and return it."""
    ranking = rank(frame, axes) if ranking is None else ranking
    summary = summary_table(frame, axes, ranking)
    write_table(summary, folder, SUMMARY_NAME)
    if figure:
        write_table(ranking, folder, RANKING_NAME)
    if figure and (summary["parameter"] != ALL).any():  # nothing swept: the table's overall rows say it all
        summary_figure(summary, Path(folder) / f"{SUMMARY_NAME}.png", ranking)
    return summary
