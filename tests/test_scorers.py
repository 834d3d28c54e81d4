"""The scorer list: a metric is one registered scorer and one config line, and its column reaches every output."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sdlab.bench.scorers import KINDS, ScorerKind, build_scorers, direction, registered, score_images

FAST = ("model=tiny", "num_inference_steps=1", "threads=1")


def brightness(cfg: dict, device: str):
    """Mean pixel value in [0, 1]: a scorer written in a test module, known to sdlab by config alone."""
    return lambda images, prompts: [{"brightness": float(np.asarray(image).mean() / 255)} for image in images]


def test_the_default_scorers_come_from_sdlab_and_the_embedded_models_plugin():
    assert {"clip", "shapes_adherence"} <= set(registered())
    assert direction("clip_score") == 1 and direction("adherence_all") == 1 and direction("time_total_s") == 0
    [adherence] = build_scorers({"scorers": ["shapes_adherence"]})
    black = np.zeros((64, 64, 3), np.uint8)
    assert score_images([adherence], [black, black], ["a red circle", "an oil painting"]) == [
        {"adherence_colour": False, "adherence_shape": False, "adherence_all": False}, {}]


def test_a_scorer_added_by_config_alone_reaches_rows_summary_ranking_and_report(run_sdlab, tmp_path, monkeypatch):
    monkeypatch.setitem(KINDS, "brightness", ScorerKind(brightness, ("brightness",)))
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "guidance_scale=1,7.5", "seeds=[1,2,3]", "scorers=[clip,brightness]", "hydra.sweep.dir=s",
                     *FAST) == 0
    rows = pd.read_csv(tmp_path / "s" / "results.csv")
    assert len(rows) == 6 and rows["brightness"].between(0, 1).all()
    assert "brightness" in set(pd.read_csv(tmp_path / "s" / "summary.csv")["metric"])
    assert "brightness" in set(pd.read_csv(tmp_path / "s" / "ranking.csv")["metric"])
    assert '"brightness"' in (tmp_path / "s" / "report.html").read_text()


def test_a_scorer_changes_the_cell_hash(run_sdlab, tmp_path, monkeypatch):
    """Adding a scorer is a new cell: resume never reuses a row that lacks its column."""
    monkeypatch.setitem(KINDS, "brightness", ScorerKind(brightness, ("brightness",)))
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("scorers=[clip]", "hydra.run.dir=r", *FAST) == 0
    assert run_sdlab("scorers=[clip,brightness]", "hydra.run.dir=r", *FAST) == 0
    rows = pd.read_csv(tmp_path / "r" / "results.csv")
    assert rows["config_hash"].nunique() == 2 and rows["brightness"].notna().sum() == 1


def test_an_unknown_scorer_is_one_line(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for value, fragment in [("[nope]", "unknown scorer 'nope'; scorers are: clip, cmmd, fd, kid, precision_recall, shapes_adherence"),
                            ("clip", "scorers='clip' must be a list of scorer names")]:
        assert run_sdlab(f"scorers={value}", *FAST) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    assert list(tmp_path.iterdir()) == []
