"""Confidence intervals across seeds."""

import math

import numpy as np
import pandas as pd
import pytest

from sdlab.metrics.stats import mean_ci, metric_range, summarize_ci


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
    assert out.loc["a", "psnr_mean"] == 10.0 and out.loc["b", "psnr_mean"] == 20.0 and math.isnan(out.loc["b", "psnr_lo"])
    assert out.loc["a", "n"] == 2


def test_intervals_never_leave_the_metric_range():
    """The n=2..3 spreads that gave SSIM -1.3..2.6 and CLIP up to 112 stay inside [-1, 1] and [0, 100]."""
    for name, values in (("ssim", [0.99, -0.2, 0.97]), ("clip_score", [99.0, 60.0, 98.0]), ("psnr", [1.0, 40.0, 2.0]),
                         ("time_total_s", [0.01, 3.0, 0.02])):
        lower, upper = metric_range(name)
        mean, lo, hi = mean_ci(values, bounds=(lower, upper))
        assert lower <= lo <= mean <= hi <= upper, name
    assert metric_range("adherence_colour") == (0.0, 1.0) and metric_range("whatever") == (-math.inf, math.inf)


def test_no_interval_from_fewer_than_three_values():
    for values in ([5.0], [5.0, 9.0], [5.0, float("nan"), 9.0]):
        mean, lo, hi = mean_ci(values)
        assert mean == 7.0 or mean == 5.0
        assert math.isnan(lo) and math.isnan(hi)


def test_proportions_get_a_wilson_interval_inside_zero_one():
    mean, lo, hi = mean_ci([True, True, True, True], bounds=(0.0, 1.0))
    assert mean == 1.0 and hi == 1.0 and 0.4 < lo < 0.6  # Wilson: 0.51 for 4 of 4, not a zero-width [1, 1]
    mean, lo, hi = mean_ci([1, 0, 1, 0, 1, 0], bounds=(0.0, 1.0))
    assert math.isclose(mean, 0.5) and math.isclose(0.5 - lo, hi - 0.5) and 0.15 < lo < 0.25
    assert mean_ci([0, 0, 0, 0, 0], bounds=(0.0, 1.0))[1] == 0.0  # exactly: it was 2.8e-17, rounding's


def test_every_summary_row_says_its_n_per_metric():
    frame = pd.DataFrame({"s": ["a"] * 4 + ["b"] * 2, "ssim": [0.9, 0.8, np.nan, 0.95, 0.5, 0.6],
                          "clip_score": [90.0, 99.0, 98.0, 97.0, 10.0, 20.0]})
    out = summarize_ci(frame, ["s"], ["ssim", "clip_score"]).set_index("s")
    assert out.loc["a", "n"] == 4 and out.loc["a", "ssim_n"] == 3 and out.loc["a", "clip_score_n"] == 4
    assert out.loc["a", "clip_score_hi"] <= 100 and out.loc["a", "ssim_hi"] <= 1
    assert out.loc["b", "clip_score_n"] == 2 and math.isnan(out.loc["b", "clip_score_lo"])


def test_a_per_call_measurement_counts_each_call_once():
    frame = pd.DataFrame({"s": ["a"] * 6, "call_id": ["x"] * 3 + ["y"] * 3, "time_total_s": [0.2] * 3 + [0.4] * 3,
                          "psnr": [30.0, 31.0, 32.0, 33.0, 34.0, 35.0]})
    out = summarize_ci(frame, ["s"], ["time_total_s", "psnr"]).set_index("s")
    assert out.loc["a", "time_total_s_n"] == 2 and out.loc["a", "time_total_s_mean"] == pytest.approx(0.3)
    assert math.isnan(out.loc["a", "time_total_s_lo"])  # two calls: no interval, not one from six copies
    assert out.loc["a", "psnr_n"] == 6 and not math.isnan(out.loc["a", "psnr_lo"])
    assert mean_ci([0.2] * 3 + [0.4] * 3, units=["x"] * 3 + ["y"] * 3)[0] == pytest.approx(0.3)
