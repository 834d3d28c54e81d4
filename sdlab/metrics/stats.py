"""Means with confidence intervals across seeds that respect each metric's range and say their n."""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from sdlab.lazy import pandas as pd

MIN_N = 3  # below this, an interval is not reported (NaN): two seeds say nothing about spread
CONFIDENCE = 0.95
INF = math.inf
# (lower, upper) bound of each metric, by exact name or by prefix ending in "_"
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "clip_score": (0.0, 100.0), "adherence_": (0.0, 1.0), "ssim": (-1.0, 1.0), "psnr": (0.0, INF),
    "latent_rmse": (0.0, INF), "time_": (0.0, INF), "nfe": (0.0, INF), "peak_mem_bytes": (0.0, INF),
}

# Measured once per pipeline call, each of its images holding a share or a copy: a call's images are one measurement
PER_CALL = ("time_", "peak_mem_bytes")
CALL = "call_id"  # the row column that names a row's pipeline call


def metric_range(name: str) -> tuple[float, float]:
    """The (lower, upper) bound a metric's values and intervals live in; (-inf, inf) when unknown."""
    return next((bounds for key, bounds in METRIC_RANGES.items() if named(name, (key,))), (-INF, INF))


def named(metric: str, names) -> bool:
    """Whether `metric` is one of `names`, each an exact name or a prefix ending in "_"."""
    return any(metric == n or (n.endswith("_") and metric.startswith(n)) for n in names)


def calls(frame: pd.DataFrame, metric: str) -> np.ndarray | None:
    """Each row's pipeline call for a metric measured once per call (time, memory) when rows name calls, else None."""
    return frame[CALL].to_numpy(dtype=object) if named(metric, PER_CALL) and CALL in frame else None


def per_unit(values, units) -> np.ndarray:
    """The finite values as floats, averaged within each of `units` when given (a call's images: one measurement)."""
    if units is None:
        return finite(values)
    x = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(x)
    return pd.Series(x[keep]).groupby(np.asarray(units, dtype=object)[keep], sort=False).mean().to_numpy()


def finite(values) -> np.ndarray:
    """The finite values as floats (booleans count as 0/1; None, NaN and inf dropped)."""
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        x = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)
    return x[np.isfinite(x)]


@lru_cache(maxsize=256)
def t_quantile(dof: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student-t quantile for `confidence` with `dof` degrees of freedom."""
    from scipy import stats  # imported on first use: a single run's summary should not pay for scipy

    return float(stats.t.ppf((1 + confidence) / 2, dof))


def wilson(successes: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson 1927): never leaves [0, 1], sensible at 0 and n."""
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if successes == 0 else float(max(0.0, centre - half)),  # at 0 and n the bound is exact
            1.0 if successes == n else float(min(1.0, centre + half)))


def mean_ci(values, bounds: tuple[float, float] = (-INF, INF), units=None,
            confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and interval: Wilson for 0/1 values of a [0, 1] metric, else Student-t within `bounds`; NaN below MIN_N."""
    x = per_unit(values, units)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < MIN_N:
        return mean, math.nan, math.nan
    if bounds == (0.0, 1.0) and np.isin(x, (0.0, 1.0)).all():
        return mean, *wilson(float(x.sum()), x.size, confidence)
    h = t_quantile(x.size - 1, confidence) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, float(max(bounds[0], mean - h)), float(min(bounds[1], mean + h))


def n_mean_ci(values, bounds: tuple[float, float] = (-INF, INF), units=None) -> tuple[int, float, float, float]:
    """The number of measurements (`per_unit`) with `mean_ci` of them."""
    x = per_unit(values, units)
    return int(x.size), *mean_ci(x, bounds)


def bootstrap_ci(statistic, generated: np.ndarray, reference: np.ndarray, resamples: int = 100,
                 seed: int = 0) -> list[tuple[float, float]]:
    """Percentile interval (Efron 1979) of each value of `statistic`, resampling the generated rows; NaN below MIN_N."""
    if len(generated) < MIN_N:
        return [(math.nan, math.nan)] * len(statistic(generated, reference))
    rng = np.random.default_rng(seed)
    values = np.array([statistic(generated[rng.integers(len(generated), size=len(generated))], reference)
                       for _ in range(resamples)], dtype=float)
    tail = 50 * (1 - CONFIDENCE)
    return [(float(lo), float(hi)) for lo, hi in np.nanpercentile(values, [tail, 100 - tail], axis=0).T]


def summarize_ci(frame: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Per group: rows `n`, and per metric `<metric>_n` (measurements, `n_mean_ci`), `_mean`, `_lo`, `_hi`."""
    rows = []
    for key, group in frame.groupby(by, sort=True):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)), n=len(group))
        for metric in metrics:
            row[f"{metric}_n"], row[f"{metric}_mean"], row[f"{metric}_lo"], row[f"{metric}_hi"] = n_mean_ci(
                group[metric], metric_range(metric), calls(group, metric))
        rows.append(row)
    return pd.DataFrame(rows)
