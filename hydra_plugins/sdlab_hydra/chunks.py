"""Submitit launchers (`hydra/launcher=submitit_slurm`, `submitit_local`) with several cells per task: a task loads
the model once and runs its chunk of cells in turn, those that share a pipeline call together, so a 10,000-cell sweep
is tens of array tasks, not 10,000.

The launcher waits on the queue itself (`squeue`, which every SLURM cluster has) instead of `sacct`, which clusters
without accounting refuse with a warning at every poll; a task that leaves the queue without its result (cancelled,
preempted, out of time or memory) leaves its unfinished cells without rows (the sweep's table lists them failed), the
other tasks go on, and a rerun of the same command runs just those cells.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, setup_globals
from hydra.types import HydraContext
from omegaconf import OmegaConf

from sdlab.app.callbacks import SweepWatch, ctrl_c_after
from sdlab.bench.captions import counted
from sdlab.bench.plan import call_groups
from sdlab.config import Run
from sdlab.errors import UserError
from sdlab.jobs import work_ahead

log = logging.getLogger(__name__)
TASKS_PER_SLOT = 4  # with cells_per_task unset: about this many tasks per array slot, so slots that finish early refill


def submitit_cluster(launcher: Any) -> str | None:
    """"slurm" or "local" for Hydra's submitit launchers, None for any other launcher (or without the plugin)."""
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
    except ImportError:
        return None
    return "slurm" if isinstance(launcher, SlurmLauncher) else "local" if isinstance(launcher, LocalLauncher) else None


def preflighted(hydra_context: HydraContext, overrides: Sequence[str]) -> Run | None:
    """The Run of a job that sdlab's sweeper parsed in its pre-flight (`ComposedConfigs.runs`), else None."""
    return getattr(hydra_context.config_loader, "runs", {}).get(tuple(overrides))


def cells_per_task(cells: int, given: int | None, parallelism: int | None, per_slot: int = TASKS_PER_SLOT) -> int:
    """`given`, else enough cells per task for about `per_slot` tasks per array slot (`array_parallelism`)."""
    if given:
        return given
    return max(1, math.ceil(cells / (per_slot * (parallelism or 256))))


def task_slots(cluster: str, params: dict[str, Any]) -> int | None:
    """How many tasks run at once: a cluster's `array_parallelism`; on this machine, whose executor starts every task
    at once, as many as its cores take by `cpus_per_task`, at most `array_parallelism`."""
    if cluster != "local":
        return params.get("array_parallelism")
    cores = max(1, (os.cpu_count() or 1) // max(1, params.get("cpus_per_task") or 1))
    return min(cores, params.get("array_parallelism") or cores)


@contextlib.contextmanager
def stderr_into(file) -> Any:
    """What is written to file descriptor 2 meanwhile (a child's too: sbatch's) goes into `file`; it is passed on to
    stderr after, unless an exception ends the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
    file.seek(0)
    sys.stderr.write(file.read())


class ChunkedSubmitit:
    """A submitit launcher whose array tasks each run a chunk of cells in turn (each cell its own Hydra job dir)."""

    def __init__(self, inner: Any, cluster: str, size: int | None = None, poll_s: float = 2.0):
        self.inner, self.cluster, self.size, self.poll_s = inner, cluster, size, poll_s
        self.finished: set[int] = set()  # cell numbers the sweeper found finished: no task is spent on them
        self.sweep_pid = os.getpid()  # made in the sweep's process, pickled with this launcher into each task

    def setup(self, **kwargs: Any) -> None:
        """Set up the submitit launcher it wraps."""
        self.inner.setup(**kwargs)

    def __call__(self, chunk: list[tuple[int, list[str], Run | None]], singleton_state: dict) -> list[JobReturn]:
        """In the task: run each (number, overrides, pre-flighted Run) cell of the chunk as the submitit launcher runs
        one job, sdlab's cells that share work doing it together first (generate cells sharing a pipeline call:
        `work_ahead`)."""
        setup_globals()  # Hydra's resolvers: the default sweep dir is `${now:...}` (cached when the sweep resolved it)
        if self.cluster == "local":  # this machine's task: it ends with the sweep's process, as a joblib worker does
            SweepWatch.start_once(self.sweep_pid, descendant=True)
        runs = [run for _, _, run in chunk] if getattr(self.inner.task_function, "works_ahead", False) else []
        sweep_dir, returns = Path(str(self.inner.config.hydra.sweep.dir)), {}
        for group in call_groups(len(chunk), (lambda i: {i + k for k in work_ahead(runs[i:], sweep_dir)}) if runs
                                 else None):
            for i in group:
                num, overrides, _ = chunk[i]
                returns[i] = self.inner(overrides, "hydra.sweep.dir", num, f"job_id_for_{num}", singleton_state)
        return [returns[i] for i in range(len(chunk))]

    def checkpoint(self, *args: Any) -> Any:
        """Requeued on preemption with the same chunk: its finished cells are found by their hash, not run again."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args)

    def executor(self) -> Any:
        """A submitit executor with the launcher's parameters, as Hydra's submitit launcher makes it."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        params = dict(self.inner.params)
        folder, timeouts = params.pop("submitit_folder"), params.pop("max_num_timeout", None)
        executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster,
                                         **({f"{self.cluster}_max_num_timeout": timeouts} if timeouts is not None else {}))
        common = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in common else f"{self.cluster}_{k}": v for k, v in params.items()})
        return executor

    def task_size(self, cells: int) -> int:
        """How many of `cells` cells to run a task takes."""
        return cells_per_task(cells, self.size, task_slots(self.cluster, self.inner.params),
                              TASKS_PER_SLOT if self.cluster == "slurm" else 1)  # local tasks do not refill slots

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        """Submit the cells as one array of chunks, wait for every task to leave the queue, and return the JobReturn of
        each cell that ran (a task that ended without its result returns none: its cells have no rows)."""
        cells = [(num, list(o), preflighted(self.inner.hydra_context, o))
                 for num, o in enumerate(job_overrides, initial_job_idx) if num not in self.finished]
        size = self.task_size(len(cells))
        chunks = [cells[i:i + size] for i in range(0, len(cells), size)]
        log.info(f"sdlab: {counted(len(cells), 'cell')} in {counted(len(chunks), f'{self.cluster} task')} of up to "
                 f"{size}")
        for num, overrides, _ in cells:
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        if not chunks:
            return []
        from submitit.core.utils import FailedJobError

        with (ctrl_c_after() if self.cluster == "local" else contextlib.nullcontext(),  # sbatch may hang: not there
              tempfile.TemporaryFile("w+") as said, stderr_into(said)):  # sbatch's errors: one line of sdlab's
            try:
                jobs = self.executor().map_array(self, chunks, [Singleton.get_state()] * len(chunks))
            except FailedJobError as e:
                said.seek(0)
                why = next((line.strip() for line in [*said, *str(e).splitlines()] if line.strip()), str(e))
                raise UserError(f"{'SLURM' if self.cluster == 'slurm' else 'submitit'} refused the sweep's array: "
                                f"{why}; check hydra.launcher's settings (partition, account, qos, sizes) against "
                                "the cluster's") from None
        self.wait(jobs)
        returns = []
        for job, chunk in zip(jobs, chunks):
            if job.paths.result_pickle.exists():
                returns += job.results()[0]
                continue
            log.warning(f"sdlab: task {job.job_id} ended before its {counted(len(chunk), 'cell')} finished (cancelled, "
                        "preempted, out of time or memory?); rerun the same command to run what it left")
        return returns

    def wait(self, jobs: list[Any]) -> None:
        """Until every task has its result or has left the queue."""
        while True:
            pending = [j for j in jobs if not j.paths.result_pickle.exists()]
            if not pending:
                return
            queued = self.queued(pending) if self.cluster == "slurm" else {j.job_id for j in pending if not j.done()}
            if queued is not None and not queued & {j.job_id for j in pending}:
                return
            time.sleep(self.poll_s)

    @staticmethod
    def queued(jobs: list[Any]) -> set[str] | None:
        """The ids of these SLURM tasks still pending or running (None when squeue cannot tell just now)."""
        arrays = sorted({j.job_id.split("_")[0] for j in jobs})
        found = subprocess.run(["squeue", "--noheader", "--array", "--format=%i", f"--jobs={','.join(arrays)}"],
                               capture_output=True, text=True)
        if found.returncode != 0:
            return set() if "Invalid job id" in found.stderr else None  # ended and purged from the queue
        return set(found.stdout.split())
