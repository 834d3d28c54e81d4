"""What sdlab's sweeper and launcher save over Hydra's basic ones: composing N cells, and a whole small sweep.

python benchmarks/sweep_plumbing.py [CELLS] [RUNS]
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

from hydra_plugins.sdlab_hydra.compose_once import ComposedConfigs
from sdlab.conf_files import CONF_DIR


def compose_ms(cells: int) -> tuple[float, float]:
    """Milliseconds a cell to compose a seed sweep: Hydra composing each, and sdlab's sweeper."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=["hydra.sweep.dir=/tmp/x"], run_mode=RunMode.MULTIRUN)
        jobs = [[f"seed={i}", "guidance_scale=7.5"] for i in range(cells)]
        start = time.perf_counter()
        for job in jobs:
            loader.load_sweep_config(master, job)
        hydra_ms = (time.perf_counter() - start) * 1000 / cells
        composed = ComposedConfigs(loader)
        start = time.perf_counter()
        for job in jobs:
            composed.compose(master, job)
        return hydra_ms, (time.perf_counter() - start) * 1000 / cells


PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")  # the sweep's own peak, in its own parent


def sweep(launcher: str, cells: int) -> tuple[float, float]:
    """(CPU s, peak MiB) of a 1-step seed sweep of `cells` jobs on mini with this launcher."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "sdlab.app.cli", "-m",
                              f"seed=range(0,{cells})", "num_inference_steps=1", "threads=1",
                              f"hydra/launcher={launcher}", f"hydra.sweep.dir={Path(folder) / 'sweep'}"],
                             check=True, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, int(out.stdout) / 1024


if __name__ == "__main__":
    cells, runs = (int(a) for a in (sys.argv[1:] + ["200", "3"])[:2])
    hydra_ms, ours_ms = compose_ms(cells)
    print(f"composing {cells} cells: Hydra {hydra_ms:.1f} ms a cell, sdlab's sweeper {ours_ms:.1f} ms "
          f"({ours_ms / hydra_ms:.2f}x)")
    jobs, pairs = 30, []
    for _ in range(runs):  # in turn, so a drifting machine moves both
        pairs.append((sweep("sdlab", jobs), sweep("basic", jobs)))
    cpu = statistics.median(ours[0] / basic[0] for ours, basic in pairs)
    peak = statistics.median(ours[1] / basic[1] for ours, basic in pairs)
    print(f"a {jobs}-job sweep: sdlab's launcher takes {cpu:.2f}x the CPU and {peak:.2f}x the peak memory of Hydra's "
          f"basic launcher (median of {runs} pairs; peak {statistics.median(o[1] for o, _ in pairs):.0f} against "
          f"{statistics.median(b[1] for _, b in pairs):.0f} MiB)")
