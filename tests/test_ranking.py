"""Rankings of swept values: ties by paired intervals, nothing ranked from too little or from non-scores, one line."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sdlab.bench.report import summarize
from sdlab.bench.summary import BEHIND, BEST, TIED, TOO_FEW, rank, ranking_lines

SEEDS = (1, 2, 3, 4, 5, 6)
BASE = {1: 40.0, 2: 70.0, 3: 55.0, 4: 62.0, 5: 48.0, 6: 66.0}  # seeds differ far more than the values do
# paired differences to "a" per seed: b about 0 (tied), c exactly -5 (behind), d -1 with a wide spread (tied)
OFFSET = {"a": [0.0] * 6, "b": [0.5, -0.5, 0.5, -0.5, 0.3, -0.4], "c": [-5.0] * 6, "d": [2.0, -4.0, 2.0, -4.0, 2.0, -4.0]}
NFE = {"a": 16, "b": 8, "c": 8, "d": 12}
AXES = ("scheduler", "seed")  # what the sweep's manifest says varies


def frame(values=("a", "b", "c", "d"), seeds=SEEDS, **extra) -> pd.DataFrame:
    """A sweep of `scheduler` x seeds with known paired differences, a constant score and non-score columns."""
    rows = []
    for v in values:
        for i, seed in enumerate(seeds):
            rows.append({"seed": seed, "scheduler": v, "status": "ok", "nfe": NFE.get(v, 8), "time_total_s": 0.1 * NFE.get(v, 8),
                         "clip_score": BASE[seed] + OFFSET.get(v, [0.0] * 6)[i], "adherence_all": 0.0,
                         "beta_start": 0.001 * (i + 1) * (1 + len(v)), "overrides": json.dumps({"scheduler": v, "seed": str(seed)}),
                         **extra})
    return pd.DataFrame(rows)


def groups(ranking: pd.DataFrame, metric: str = "clip_score") -> dict[str, str]:
    """value -> group for one score."""
    rows = ranking[ranking["metric"] == metric]
    return dict(zip(rows["value"], rows["group"]))


def test_values_tied_with_the_best_by_the_paired_interval():
    ranking = rank(frame(), AXES)
    assert groups(ranking) == {"a": BEST, "b": TIED, "c": BEHIND, "d": TIED}
    rows = ranking[ranking["metric"] == "clip_score"].set_index("value")
    assert list(rows.sort_values("rank").index) == ["a", "b", "d", "c"]  # by mean
    assert rows.loc["c", "delta_mean"] == pytest.approx(-5) and rows.loc["c", "delta_hi"] == pytest.approx(-5)
    assert rows.loc["d", "delta_lo"] < 0 < rows.loc["d", "delta_hi"] and rows.loc["a", "n_paired"] == 6
    # unpaired, every value's interval overlaps the others': only pairing by seed separates c from a
    assert rows.loc["c", "hi"] > rows.loc["a", "lo"]


def test_the_cheapest_tied_value_is_named():
    f = frame()
    ranking = rank(f, AXES)
    rows = ranking[ranking["metric"] == "clip_score"].set_index("value")
    assert rows["cheapest_tied"].tolist().count(True) == 1 and rows.loc["b", "cheapest_tied"]  # NFE 8 beats 16 and 12
    assert not rows.loc["c", "cheapest_tied"]  # c costs as little but is behind
    line = ranking_lines(f, ranking, AXES)["scheduler"]
    assert line == "scheduler by clip_score: best a 56.8; tied: b, d (3 of 4); cheapest tied: b (NFE 8, 0.8 s)"


def test_no_value_is_called_cheapest_when_cost_does_not_separate_the_tied_ones():
    f = frame(values=("a", "b")).assign(nfe=8, time_total_s=0.8)  # b tied with a, both made in the same calls
    ranking = rank(f, AXES)
    assert groups(ranking) == {"a": BEST, "b": TIED} and not ranking["cheapest_tied"].any()
    assert ranking_lines(f, ranking, AXES)["scheduler"] == "scheduler by clip_score: best a 56.8; tied: b (2 of 2)"


def test_every_tied_value_of_the_lowest_cost_is_named_cheapest():
    f = frame()  # b and d cost NFE 8, their times within each other's interval; a costs NFE 16
    f.loc[f["scheduler"] == "d", "nfe"] = 8
    f.loc[f["scheduler"] == "b", "time_total_s"] = [0.78, 0.82, 0.80, 0.79, 0.81, 0.80]
    f.loc[f["scheduler"] == "d", "time_total_s"] = [0.80, 0.83, 0.81, 0.80, 0.82, 0.79]
    ranking = rank(f, AXES)
    rows = ranking[ranking["metric"] == "clip_score"].set_index("value")
    assert rows["cheapest_tied"].to_dict() == {"a": False, "b": True, "d": True, "c": False}
    assert ranking_lines(f, ranking, AXES)["scheduler"].endswith("; cheapest tied: b, d (NFE 8, 0.8-0.81 s)")
    f.loc[f["scheduler"] == "d", "time_total_s"] = 1.6  # the same NFE at twice the time: d is not the cheapest
    assert ranking_lines(f, rank(f, AXES), AXES)["scheduler"].endswith("; cheapest tied: b (NFE 8, 0.8 s)")


def test_a_cheapest_tied_value_behind_on_another_score_is_said_to_be():
    """Tied with the best by CLIP score and cheapest, yet clearly behind by adherence: the line does not leave it out."""
    f = frame()
    f["adherence_all"] = (f["scheduler"] != "b").astype(float)  # b misses every prompt, the others hit every one
    ranking = rank(f, AXES)
    assert groups(ranking, "adherence_all")["b"] == BEHIND
    assert ranking_lines(f, ranking, AXES)["scheduler"] == (
        "scheduler by clip_score: best a 56.8; tied: b, d (3 of 4); cheapest tied: b (NFE 8, 0.8 s), "
        "but b is behind by adherence_all")


def test_no_ranking_from_fewer_than_three_images_per_value():
    f = frame()
    f = pd.concat([f, frame(values=("e",), seeds=(1, 2)).assign(clip_score=99.0)])  # highest mean, two images
    rows = rank(f, AXES)
    assert groups(rows)["e"] == TOO_FEW and groups(rows)["a"] == BEST
    assert rows.loc[rows["value"] == "e", "rank"].isna().all()
    assert "not ranked (fewer than 3 images): e" in ranking_lines(f, rows, AXES)["scheduler"]
    assert rank(frame(seeds=(1, 2)), AXES).empty  # two seeds per value: nothing at all


def test_no_ranking_from_constant_scores_or_non_scores():
    ranking = rank(frame(), AXES)
    assert set(ranking["metric"]) == {"clip_score"}  # adherence_all is 0 everywhere; beta_start, nfe, time are not scores
    zeros = frame().assign(clip_score=0.0)
    assert rank(zeros, AXES).empty
    assert ranking_lines(zeros, rank(zeros, AXES), AXES) == {"scheduler": "scheduler: not ranked (no score varies with 3+ images "
                                                              "for two of its values)"}


def test_only_parameters_the_user_swept_are_ranked():
    f = frame()  # "models" swept; each model brings its own scheduler, which nobody swept
    f["model"] = f["scheduler"].map({"a": "m1", "b": "m2", "c": "m3", "d": "m4"})
    f["overrides"] = [json.dumps({"model": m, "seeds": "[1,2,3,4,5,6]"}) for m in f["model"]]
    ranking = rank(f, ("model", "seeds"))
    assert set(ranking["parameter"]) == {"model"} and groups(ranking) == {"m1": BEST, "m2": TIED, "m3": BEHIND, "m4": TIED}
    assert list(ranking_lines(f, ranking, ("model", "seeds"))) == ["model"]  # neither scheduler nor seeds
    study = frame().drop(columns="overrides")  # a study job varies schedulers itself: still a parameter
    assert set(rank(study)["parameter"]) == {"scheduler"}


def test_a_single_run_prints_no_ranking(tmp_path):
    from PIL import Image

    f = frame(values=("a", "b")).rename(columns={"scheduler": "prompt"})  # one run dir, two prompts, six seeds each
    f["image_path"] = [f"images/{i}.png" for i in range(len(f))]
    (tmp_path / "images").mkdir()
    for path in f["image_path"]:
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    assert summarize(f, tmp_path) == f"12 ok, 0 failed\n  open: {tmp_path / 'grid.png'}"  # no ranking line
    assert (tmp_path / "summary.csv").is_file() and not (tmp_path / "ranking.csv").exists()
    assert ranking_lines(f, rank(f))["prompt"].startswith("prompt by clip_score: best a")  # a sweep would have said


def test_a_failed_cell_does_not_hide_a_score():
    f = frame()
    f["adherence_all"] = [bool(i % 3) for i in range(len(f))]
    f = pd.concat([f, f.iloc[[0]].assign(status="error", adherence_all=None, clip_score=None)], ignore_index=True)
    assert f["adherence_all"].dtype == object  # the failed row's None
    assert "adherence_all" in set(rank(f, AXES)["metric"])


def test_a_value_with_a_line_break_stays_on_its_line():
    forged = "a\n[10:00:00][INFO] forged"  # a prompt that would print a log line of its own
    values = {"a": forged, "b": "b\tc", "c": "c\u202e", "d": "d"}
    f = frame()
    f["scheduler"] = f["scheduler"].map(values)
    line = ranking_lines(f, rank(f, AXES), AXES)["scheduler"]
    assert "\n" not in line and "\u202e" not in line and "\t" not in line
    assert "best a\\n[10:00:00][INFO] forged 56.8; tied: b\\tc, d (3 of 4)" in line, line


def test_the_best_is_chosen_on_the_seeds_every_value_made():
    f = frame(values=("a", "b"))
    f.loc[f["scheduler"] == "b", "clip_score"] = f[f["scheduler"] == "a"]["clip_score"].to_numpy() + 1  # by 1 a seed
    failed = (f["scheduler"] == "b") & (f["seed"] == 6)  # but fails on seed 6, where a scores above its mean
    f.loc[failed, ["status", "clip_score"]] = ["failed", float("nan")]
    assert f[f["scheduler"] == "a"]["clip_score"].mean() > f[f["scheduler"] == "b"]["clip_score"].mean()
    ranking = rank(f, AXES)
    assert groups(ranking) == {"b": BEST, "a": BEHIND}
    rows = ranking[ranking["metric"] == "clip_score"].set_index("value")
    assert rows.loc["a", "n_paired"] == 5 and rows.loc["a", "delta_mean"] == pytest.approx(-1)
    assert ranking_lines(f, ranking, AXES)["scheduler"].startswith("scheduler by clip_score: best b ")


def test_each_comparison_with_the_best_is_at_95_percent_over_all_of_them():
    """Bonferroni: with m values compared to the best, each paired interval is at 1 - 0.05 / m, so a sweep of values
    that do not differ calls one behind about one time in twenty, not once per value in twenty."""
    f = frame(values=("a", "b", "c"))
    a = f[f["scheduler"] == "a"]["clip_score"].to_numpy()
    f.loc[f["scheduler"] == "b", "clip_score"] = a + [-1, -1, -1, -1, -1, 0.5]  # behind at 95%, not at 97.5%
    f.loc[f["scheduler"] == "c", "clip_score"] = a - 5
    ranking = rank(f, AXES)
    assert groups(ranking) == {"a": BEST, "b": TIED, "c": BEHIND}
    b = ranking[(ranking["metric"] == "clip_score") & (ranking["value"] == "b")].iloc[0]
    assert b["delta_mean"] == pytest.approx(-0.75) and b["delta_hi"] == pytest.approx(0.0408, abs=1e-3)
    assert rank(f[f["scheduler"] != "c"], AXES).query("value == 'b' and metric == 'clip_score'")["group"].item() == BEHIND


def test_the_cheapest_tied_value_is_found_like_for_like_when_another_parameter_varies_its_cost():
    """heun makes 2N-1 model calls in N steps: at each step count it costs more than euler, though over the sweep
    their NFE intervals overlap (6 and 12 steps inside each value); costs are compared paired, as scores are."""
    rows = []
    for scheduler in ("euler", "heun"):
        for steps in (6, 12):
            for i, seed in enumerate(SEEDS[:4]):
                nfe = steps if scheduler == "euler" else 2 * steps - 1
                rows.append({"seed": seed, "scheduler": scheduler, "num_inference_steps": steps, "status": "ok",
                             "nfe": nfe, "clip_score": BASE[seed] + (0.3 * (-1) ** i if scheduler == "heun" else 0)})
    f = pd.DataFrame(rows)
    ranking = rank(f, ("scheduler", "num_inference_steps", "seed"))
    rows = ranking[(ranking["parameter"] == "scheduler") & (ranking["metric"] == "clip_score")].set_index("value")
    assert rows.loc["heun", "group"] == TIED and rows["cheapest_tied"].to_dict() == {"euler": True, "heun": False}
