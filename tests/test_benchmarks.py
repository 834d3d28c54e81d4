"""The benchmark script's in-process sections still run against sdlab's API: BENCHMARKS.md must stay reproducible."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    """benchmarks/run.py as a module."""
    spec = importlib.util.spec_from_file_location("sdlab_benchmarks_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def measured(report, section: str) -> dict[str, float]:
    """The values a section recorded, none of them an error."""
    rows = {row["metric"]: row["value"] for row in report.rows if row["section"] == section}
    assert "error" not in rows and rows, report.rows
    return rows


def test_the_trajectory_section_captures_every_step(bench):
    report = bench.Report()
    bench.bench_trajectory(report, "tiny", 32, 3, 1)
    rows = measured(report, "trajectory")
    assert rows["tiny_capture_over_plain"] > 0 and math.isfinite(rows["tiny_linear_vs_vae_psnr_final_db"])
    assert report.sections[-1].startswith("### 5. Trajectory capture (tiny, 32x32, 3 steps")


def test_the_batch_and_options_sections_time_each_way(bench):
    report = bench.Report()
    bench.bench_batches(report, "tiny", 32, 2, 4, batches=(1, 2), guidance=1)
    bench.bench_options(report, "tiny", 32, 2, 1, {"default": {}, "channels_last_off": {"channels_last": False}})
    assert set(measured(report, "batch")) == {"tiny_batch1_images_per_s", "tiny_batch2_images_per_s"}
    options = measured(report, "options")
    assert all(value > 0 for value in options.values()) and len(options) == 2


def test_the_memory_section_runs_jobs_as_a_sweep_does(bench):
    report = bench.Report()
    bench.bench_memory(report, "tiny", 3, 2)
    assert measured(report, "memory")["rss_after_job3_mb"] > 0
