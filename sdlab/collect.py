"""The Hydra callback that turns a finished multirun into one table and one labelled grid."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pandas as pd
from hydra.experimental.callback import Callback

from sdlab import lock, ownership
from sdlab.cli import fail
from sdlab.errors import UserError
from sdlab.figure_index import write_index
from sdlab.grid import image_grid
from sdlab.records import collect, write_table
from sdlab.summary import best_line, owns_summary, write_summary

log = logging.getLogger(__name__)
sweep_failures = 0


def summarize(frame: pd.DataFrame, folder: Path, grid: bool = True, sweep: bool = False) -> str:
    """Write the table (and grid, summary by swept value; at a sweep's end also summary.png and report.html) into
    `folder`; return the "N ok, M failed" line (and the best value per swept parameter)."""
    try:
        write_table(frame, folder)
    except OSError as e:  # e.g. disk full: the table last written stays, so do the images it lists
        print(f"sdlab: error: cannot write the table in {folder} ({type(e).__name__}: {e}); the one there keeps "
              f"the images finished before", file=sys.stderr)
        raise SystemExit(1) from None
    images = frame[frame["status"] == "ok"] if "status" in frame else frame
    several = "image_path" in frame and images["image_path"].notna().sum() > 1
    if grid and several:
        image_grid(frame, folder, folder / "grid.png")
    failed = frame[frame["status"] != "ok"] if "status" in frame else frame.iloc[:0]
    line = f"{len(frame) - len(failed)} ok, {len(failed)} failed"
    for _, row in failed.iterrows():
        line += f"\n  failed: {row.get('overrides') or '-'} seed={row.get('seed')}: {row.get('error')}"
    if grid and (several or sweep) and owns_summary(folder):  # a study's own summary table stays
        best = best_line(write_summary(frame, folder, figure=sweep))
        line += f"\n  {best}" if best else ""
    if sweep:
        from sdlab.report import build_report

        build_report(folder, frame)
    return line


def hold(folder: Path) -> None:
    """Lock a run dir for this process and mark it as sdlab's, or stop with one line and exit code 2 before anything
    is written."""
    try:
        ownership.claim(folder, "hydra.run.dir")
    except UserError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot lock {folder}: {type(e).__name__}: {e}")


class CollectSweep(Callback):
    """Lock a run dir (the sweeper locks a sweep dir); at multirun end, collect every job's rows into
    `<sweep_dir>/results.{parquet,csv}`, `grid.png`, the summary by swept value and `report.html`."""

    def on_run_start(self, config, **kwargs) -> None:
        hold(Path(str(config.hydra.run.dir)))

    def on_run_end(self, config, **kwargs) -> None:
        lock.release(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config, **kwargs) -> None:
        self.started = time.time()

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            self.collect(sweep_dir)
        finally:
            lock.release(sweep_dir)

    def collect(self, sweep_dir: Path) -> None:
        """Write the sweep table and grid, print the summary line, and set `sweep_failures`."""
        global sweep_failures
        if not sweep_dir.is_dir():
            return
        try:
            frame = collect(sweep_dir, since=getattr(self, "started", 0.0))
            # Over recipes, a grid or a summary by recipe means nothing; an index of their figures does.
            recipes = "experiment" in frame and frame["experiment"].nunique() > 1
            line = summarize(frame, sweep_dir, grid=not recipes, sweep=True)
            if recipes:
                line += f"\n  {write_index(sweep_dir)}"
        except Exception as e:  # Hydra would only warn; a sweep without its table must not look fine
            log.exception("collecting %s failed", sweep_dir)
            print(f"sdlab: error: collecting the sweep in {sweep_dir} failed: {type(e).__name__}: {e}")
            sweep_failures = max(sweep_failures, 1)
            return
        sweep_failures = int((frame["status"] != "ok").sum()) if "status" in frame else 0
        log.info("sweep %s: %s", sweep_dir, line)
        print(f"sdlab: {sweep_dir}/results.csv: {line}")
