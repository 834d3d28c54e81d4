"""Means with confidence intervals across seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two-sided Student-t interval (mean - h, mean + h); a single value has a zero-width interval."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    h = float(stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - h, mean + h


def summarize_ci(frame: pd.DataFrame, by: list[str], metrics: list[str], confidence: float = 0.95) -> pd.DataFrame:
    """Per group: `<metric>_mean`, `<metric>_lo`, `<metric>_hi` and the sample count `n`."""
    rows = []
    for key, group in frame.groupby(by, sort=True):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)), n=len(group))
        for metric in metrics:
            row[f"{metric}_mean"], row[f"{metric}_lo"], row[f"{metric}_hi"] = mean_ci(group[metric], confidence)
        rows.append(row)
    return pd.DataFrame(rows)
