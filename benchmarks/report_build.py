"""Time building report.html (and the summary by swept value) for a 1,000-cell sweep.

    python benchmarks/report_build.py          # prints the medians; target: report under 2 s

The sweep is written as sdlab writes one (job folders, PNGs with their parameters, tables) by the tests' helper,
10 seeds x 10 guidance scales x 10 schedulers with one failed cell, 64 px images, so no model runs.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from report_helpers import fake_sweep  # noqa: E402

from sdlab.bench.report import build_report, load_results  # noqa: E402
from sdlab.bench.summary import summary_table, write_summary  # noqa: E402


def median_seconds(fn, repeat: int = 3) -> float:
    """Median wall seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Write the sweep, then time the report, the summary table and the summary figure."""
    with tempfile.TemporaryDirectory() as tmp:
        root = fake_sweep(Path(tmp) / "sweep", seeds=range(10), guidance=[1.0 + i for i in range(10)],
                          schedulers=[f"s{i}" for i in range(10)], failed=(3, 4.0, "s5"), side=64)
        frame = load_results(root)
        write_summary(frame, root, figure=True)
        report = median_seconds(lambda: build_report(root, load_results(root)))
        table = median_seconds(lambda: summary_table(frame))
        figure = median_seconds(lambda: write_summary(frame, root, figure=True), repeat=1)
        size = (root / "report.html").stat().st_size
    print(f"{len(frame)} cells: report.html {report:.2f} s ({size / 1e6:.1f} MB), summary table {table:.2f} s, "
          f"summary table + summary.png {figure:.2f} s")


if __name__ == "__main__":
    main()
