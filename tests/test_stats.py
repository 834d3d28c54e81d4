"""Confidence intervals across seeds."""

import math

import numpy as np
import pandas as pd

from sdlab.metrics.stats import mean_ci, summarize_ci


def test_interval_matches_the_t_formula():
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert math.isclose(hi - mean, 3.182446305284263 * np.std([1, 2, 3, 4], ddof=1) / 2, rel_tol=1e-9)
    assert math.isclose(mean - lo, hi - mean)


def test_intervals_shrink_with_more_seeds():
    rng = np.random.default_rng(0)
    widths = []
    for n in (4, 16, 64, 256):
        _, lo, hi = mean_ci(rng.normal(30.0, 2.0, size=n))
        widths.append(hi - lo)
    assert all(a > b for a, b in zip(widths, widths[1:]))
    assert widths[-1] < widths[0] / 4


def test_nan_values_are_ignored_and_groups_summarized():
    frame = pd.DataFrame({"s": ["a", "a", "b"], "psnr": [10.0, float("nan"), 20.0]})
    out = summarize_ci(frame, ["s"], ["psnr"]).set_index("s")
    assert out.loc["a", "psnr_mean"] == 10.0 and out.loc["b", "psnr_lo"] == 20.0
    assert out.loc["a", "n"] == 2
