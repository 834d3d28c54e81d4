"""What the columns of a results table are: the sweep's parameters, its scores (with a direction) and its costs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sdlab.bench.grid import grid_axes, parse_overrides
from sdlab.bench.records import PARAM_COLUMNS
from sdlab.bench.scorers import direction
from sdlab.metrics.stats import finite

NOT_METRICS = {*PARAM_COLUMNS, "batch_size", "prompt_truncated_tokens", "job", "stochastic"}
REPLICATES = ("seed", "seeds")  # the unit of pairing, never a parameter to rank
MAIN_METRICS = ("clip_score", "adherence_all")  # the first one present is the sweep's main metric
LOWER_IS_BETTER = ("time_", "nfe", "latent_rmse", "peak_mem_bytes")
# Scores: measurements of an image with a declared direction, by exact name or by prefix ending in "_".
HIGHER_SCORES = ("psnr", "ssim")  # the scheduler study's distances; the scorers declare their own columns
LOWER_SCORES = ("latent_rmse",)
# Costs: what a value spends, cheapest first in this order of preference.
COSTS = ("nfe", "time_total_s")


def ok_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose status is ok (all rows when there is no status column)."""
    return frame[frame["status"] == "ok"].reset_index(drop=True) if "status" in frame else frame.reset_index(drop=True)


def sweep_axes(frame: pd.DataFrame) -> list[str]:
    """The grid's axes (sdlab.bench.grid.grid_axes) over every row, failed ones too, so a failed value keeps its place;
    then parameter columns a job varied itself (a scheduler study's schedulers and step counts)."""
    axes = grid_axes(frame.drop(columns=["image_path"], errors="ignore"))
    return axes + [c for c in PARAM_COLUMNS if c in frame and c not in axes and frame[c].dropna().nunique() > 1]


def follows(frame: pd.DataFrame, column: str, axis: str) -> bool:
    """True when `column` takes one value per value of `axis` (a model's default scheduler follows `model`)."""
    keys = [parse_overrides(o).get(axis) for o in frame["overrides"]]
    return bool((frame[column].astype(str).groupby(keys, dropna=False).nunique() <= 1).all())


def swept_parameters(frame: pd.DataFrame) -> list[str]:
    """The sweep's axes but seeds (the replicates, the unit of pairing) and columns that only follow a swept one."""
    axes = [axis for axis in sweep_axes(frame) if axis not in REPLICATES]
    overridden = set(grid_axes(frame.drop(columns=["image_path"], errors="ignore")))
    chosen = [a for a in axes if a in overridden]
    if "overrides" not in frame:
        return axes
    return chosen + [a for a in axes if a not in overridden and not any(follows(frame, a, b) for b in chosen)]


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric and boolean columns that are measurements (scores, distances, times, NFE), not parameters."""
    out = []
    for column in frame.columns:
        if column in NOT_METRICS or column.endswith("_id"):
            continue
        if numeric(frame[column]) and finite(frame[column]).size:
            out.append(column)
    return out


def numeric(series: pd.Series) -> bool:
    """True for numbers and booleans, also when a missing value (a failed cell's score) made the column `object`."""
    kind = series.dtype
    if pd.api.types.is_numeric_dtype(kind) or pd.api.types.is_bool_dtype(kind):
        return True
    present = series.dropna()
    return kind == object and len(present) > 0 and all(isinstance(v, (bool, int, float, np.bool_, np.number))
                                                       for v in present)


def _named(metric: str, names: tuple[str, ...]) -> bool:
    return any(metric == n or (n.endswith("_") and metric.startswith(n)) for n in names)


def score_direction(metric: str) -> int:
    """+1 for a score where higher is better, -1 where lower is better, 0 for anything else (costs, parameters)."""
    declared = direction(metric)
    if declared:
        return declared
    return 1 if _named(metric, HIGHER_SCORES) else -1 if _named(metric, LOWER_SCORES) else 0


def higher_is_better(metric: str) -> bool:
    """Scores go up, costs and distances go down."""
    return not metric.startswith(LOWER_IS_BETTER)


def main_metric(metrics: list[str]) -> str | None:
    """The metric a sweep is judged by: CLIP score, else full adherence, else the first measured one."""
    return next((m for m in MAIN_METRICS if m in metrics), metrics[0] if metrics else None)
