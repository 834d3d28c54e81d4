"""A run's or sweep's rows written as its table, grid, summary by swept value and report, with the line that says so."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from sdlab.bench.captions import forget_figure, headlines
from sdlab.bench.grid import image_grid
from sdlab.bench.ranking import rank, ranking_lines
from sdlab.bench.records import write_table
from sdlab.bench.report import build_report
from sdlab.bench.summary import owns_summary, write_summary


SUMMARY_FILES = ("grid.png", "summary.png", "report.html")  # what this module draws; a job's own figures besides


def summarize(frame: pd.DataFrame, folder: Path, grid: bool = True, sweep: bool = False, since: float = 0.0) -> str:
    """Write the table (and grid, summary by swept value; at a sweep's end also summary.png and report.html) into
    `folder`; return the "N ok, M failed" line (and at a sweep's end, one ranking line per swept parameter), the
    headline of each figure the job drew since `since`, then the files to open next."""
    try:
        write_table(frame, folder)
    except OSError as e:  # e.g. disk full: the table last written stays, so do the images it lists
        print(f"sdlab: error: cannot write the table in {folder} ({type(e).__name__}: {e}); the one there keeps "
              f"the images finished before", file=sys.stderr)
        raise SystemExit(1) from None
    images = frame[frame["status"] == "ok"] if "status" in frame else frame
    several = "image_path" in frame and images["image_path"].notna().sum() > 1
    if grid and not (several and image_grid(frame, folder, folder / "grid.png")):
        forget_figure(folder / "grid.png")  # an earlier run's grid would show images this table no longer lists
    failed = frame[frame["status"] != "ok"] if "status" in frame else frame.iloc[:0]
    line = f"{len(frame) - len(failed)} ok, {len(failed)} failed"
    for _, row in failed.iterrows():
        line += f"\n  failed: {row.get('overrides') or '-'} seed={row.get('seed')}: {row.get('error')}"
    if grid and (several or sweep) and owns_summary(folder):  # a study's own summary table stays
        ranking = rank(frame)
        write_summary(frame, folder, figure=sweep, ranking=ranking)
        line += "".join(f"\n  {text}" for text in ranking_lines(frame, ranking).values()) if sweep else ""
    if sweep:
        build_report(folder, frame)
    figures = headlines(folder, since, besides=SUMMARY_FILES)
    line += "".join(f"\n  {name}: {text}" for name, text in figures.items() if text)
    drawn = {"grid.png": grid and several, "summary.png": sweep, "report.html": sweep, **dict.fromkeys(figures, True)}
    made = [str(Path(folder) / name) for name, wrote in drawn.items() if wrote and (Path(folder) / name).is_file()]
    return line + (f"\n  open: {', '.join(made)}" if made else "")
