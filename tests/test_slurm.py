"""The README's SLURM sweep, scaled down, on a real one-node SLURM (`.ci/slurm` starts it; CI runs it, never skips it):
cells go in chunks per array task, a task cancelled mid-run leaves failed rows and the rest go on, and a rerun of the
same command runs exactly the cells it left, each image made once; no `sacct` warnings on a cluster without accounting."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hydra_plugins.sdlab_hydra.chunks import cells_per_task, task_slots

README = Path(__file__).resolve().parent.parent / "README.md"
# The README command's sizes for a 2-core test node: each one must be in the README as written.
SCALED = {"model=sd15": "model=mini", "seed='range(0,64)'": "seed='range(0,2)'",
          "hydra.launcher.gpus_per_node=1 ": "", "hydra.launcher.cpus_per_task=8": "hydra.launcher.cpus_per_task=1",
          "hydra.launcher.mem_gb=32": "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=60": "hydra.launcher.timeout_min=10",
          "hydra.launcher.array_parallelism=8": "hydra.launcher.array_parallelism=1"}


def slurm_up() -> str | None:
    """The default partition of a SLURM that answers, else None."""
    if not shutil.which("sinfo"):
        return None
    found = subprocess.run(["sinfo", "--noheader", "--format=%P %T"], capture_output=True, text=True)
    up = [line.split() for line in found.stdout.splitlines() if re.search(r"idle|mixed|allocated", line)]
    return up[0][0].rstrip("*") if found.returncode == 0 and up else None


@pytest.fixture(scope="module")
def partition() -> str:
    name = slurm_up()
    if name is None:
        if os.environ.get("CI"):
            pytest.fail("no SLURM answers; .ci/run starts one with `bash .ci/slurm`")
        pytest.skip("no SLURM here (as root: bash .ci/slurm)")
    return name


def readme_command() -> str:
    """The README's SLURM sweep, continuation lines joined."""
    text = re.sub(r"\\\n\s*", "", README.read_text())
    [command] = [line.strip() for line in text.splitlines() if "hydra/launcher=submitit_slurm" in line]
    return command


def scaled(command: str, partition: str, sweep_dir: Path) -> str:
    for big, small in SCALED.items():
        assert command.count(big) == 1, f"the README's SLURM command no longer has {big!r}"
        command = command.replace(big, small)
    command = re.sub(r"hydra\.launcher\.partition=\S+", f"hydra.launcher.partition={partition}", command)
    return re.sub(r"hydra\.sweep\.dir=\S+", f"hydra.sweep.dir={sweep_dir}", command) + " threads=1"


def run(command: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def running_task(deadline_s: float = 120) -> str:
    """The id of the first array task SLURM runs."""
    end = time.time() + deadline_s
    while time.time() < end:
        found = subprocess.run(["squeue", "--noheader", "--array", "--states=R", "--format=%i"], capture_output=True,
                               text=True).stdout.split()
        if found:
            return found[0]
        time.sleep(0.3)
    raise AssertionError("no SLURM task started")


def pngs(sweep_dir: Path) -> dict[str, float]:
    return {str(p.relative_to(sweep_dir)): p.stat().st_mtime for p in sweep_dir.glob("*/images/*.png")}


def test_local_tasks_run_at_once_so_there_are_as_many_as_the_cores_allow(monkeypatch):
    """submitit's local executor starts every task at once: 64 cells were 64 processes, each loading the model."""
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert task_slots("local", {"array_parallelism": 256}) == 8
    assert task_slots("local", {"array_parallelism": 256, "cpus_per_task": 4}) == 2
    assert task_slots("local", {"array_parallelism": 3, "cpus_per_task": None}) == 3
    assert task_slots("local", {"cpus_per_task": 16}) == 1
    assert task_slots("slurm", {"array_parallelism": 8}) == 8  # a cluster's queue refills its slots
    assert cells_per_task(64, None, 8, per_slot=1) == 8  # 8 tasks of 8
    assert cells_per_task(64, None, 8) == 2  # about four tasks a slot


def test_cells_per_task_gives_tens_of_tasks_for_ten_thousand_cells():
    assert cells_per_task(10_000, None, 8) == 313  # 32 tasks
    assert cells_per_task(6, None, 1) == 2
    assert cells_per_task(6, 5, 1) == 5
    assert cells_per_task(3, None, None) == 1


def test_readme_slurm_sweep_survives_a_cancelled_task_and_reruns_only_its_cells(partition, tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = scaled(readme_command(), partition, sweep_dir)  # 2 seeds x 3 schedulers, 2 cells a task, 1 at a time

    first = run(command, tmp_path)
    cancelled = running_task()
    subprocess.run(["scancel", cancelled], check=True)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 1, out[-3000:]
    assert "6 cells in 3 slurm tasks of up to 2" in out
    assert f"task {cancelled} ended before its 2 cells finished" in out
    assert "sacct" not in out  # this cluster keeps no accounting: the queue is asked instead, quietly
    frame = pd.read_csv(sweep_dir / "results.csv")
    assert sorted(frame["status"]) == ["error", "error", "ok", "ok", "ok", "ok"], out[-3000:]
    assert frame.loc[frame["status"] == "error", "error"].str.startswith("did not run").all()
    made = pngs(sweep_dir)
    assert len(made) == 4

    second = run(command, tmp_path)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out[-3000:]
    assert "; 4 finished before: not run again" in out and "sdlab: 2 cells in 2 slurm tasks of up to 1" in out
    assert "(4 finished before)" not in out  # said once, by the sweep's first line
    # as the two tasks finish: the 4 cells finished before count as done from the start, and the last line is there
    assert re.search(r"sdlab: 5 of 6 cells done \(\d\), \d+\.\d\d images/s, about [\d.]+ (s|min|h) left", out), out[-3000:]
    assert re.search(r"sdlab: 6 of 6 cells done \(\d\), \d+\.\d\d images/s, nothing left", out), out[-3000:]
    frame = pd.read_csv(sweep_dir / "results.csv")
    assert (frame["status"] == "ok").all() and len(frame) == 6
    assert sorted(zip(frame["seed"], frame["scheduler"])) == sorted(
        (seed, scheduler) for seed in (0, 1) for scheduler in ("ddim", "dpmpp_2m", "euler_a"))
    again = pngs(sweep_dir)
    assert len(again) == 6 and {k: again[k] for k in made} == made  # the 4 finished images were not made twice


def test_a_submission_slurm_refuses_is_one_line(partition, tmp_path):
    """A partition the cluster has not: sbatch refuses the array, which was a 50-line traceback and exit 1."""
    command = ("sdlab -m seed=1,2 model=tiny num_inference_steps=2 threads=1 hydra/launcher=submitit_slurm "
               f"hydra.launcher.partition=nopart hydra.sweep.dir={tmp_path / 'sweep'}")
    process = run(command, tmp_path)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("sdlab: error:")]
    assert "Traceback" not in out and errors == [
        "sdlab: error: SLURM refused the sweep's array: sbatch: error: invalid partition specified: nopart; "
        "check hydra.launcher's settings (partition, account, qos, sizes) against the cluster's"], out[-3000:]
