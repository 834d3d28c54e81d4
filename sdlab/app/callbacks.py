"""Hydra's callbacks: pre-flight of a single run, the run dir's lock, and a finished sweep collected into one table."""

from __future__ import annotations

import contextlib
import functools
import logging
import logging.handlers
import math
import os
import signal
import sys
import threading
import time
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Callable, Iterator

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import read_write
from omegaconf.errors import InterpolationResolutionError

from sdlab.app.arguments import named_by_sdlab
from sdlab.app.compose import check_composed, fail, unresolvable
from sdlab.bench import lock, ownership
from sdlab.bench.captions import counted
from sdlab.bench.figure_index import write_index
from sdlab.bench.records import failed_count, job_dirs
from sdlab.bench.report import over_recipes, summarize
from sdlab.bench.plan import cell_of, duration, plan_text, record_cost
from sdlab.bench.resume import (MARKER, check_cell_of_its_sweep, collect, mark_calls, read_manifest, read_mark,
                               record_spent, update_manifest)
from sdlab.errors import UserError
from sdlab.jobs import work_of

log = logging.getLogger("sdlab")


def stops_on_error(method: Callable) -> Callable:
    """A callback method whose exception stops the run with one line (Hydra would only warn), exit 2 or 1."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except UserError as e:
            fail(str(e))
        except InterpolationResolutionError as e:  # a value the user gave, such as hydra.run.dir='${oc.env:NOPE}'
            fail(unresolvable(e))
        except Exception as e:  # noqa: BLE001 - any fault here must stop the run, not become a warning
            fail(f"{type(self).__name__}.{method.__name__}: {type(e).__name__}: {e}", 1)

    return guarded


class Preflight(Callback):
    """Checks a single run and its folder before Hydra writes it; notes the folders it makes (`cli.refuse_run`)."""

    new_dirs: list[Path] = []  # the folders this run made, for `cli.refuse_run`
    said = logging.handlers.MemoryHandler(capacity=1 << 30)  # what it logged before the run's log file existed

    def on_run_start(self, config, **kwargs) -> None:
        """`check_run`, keeping what it logs for the run's log file (`on_job_start`)."""
        Preflight.said.buffer.clear()
        logging.getLogger().addHandler(Preflight.said)
        try:
            self.check_run(config)
        finally:
            logging.getLogger().removeHandler(Preflight.said)

    def on_job_start(self, config, **kwargs) -> None:
        """Write what the pre-flight logged into the run's log file, now that Hydra has opened it."""
        if config.hydra.mode == RunMode.RUN:
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.FileHandler):
                    for record in Preflight.said.buffer:
                        handler.handle(record)
        Preflight.said.buffer.clear()

    @stops_on_error
    def check_run(self, config) -> None:
        """Warn about what the model was not made for; end the run with one line on bad input."""
        HydraConfig.instance().set_config(config)  # the run dir's `${hydra:...}` parts need it
        typed = str(config.hydra.run.dir)
        if named_by_sdlab(config, "hydra.run.dir"):  # the folder it will take if another sdlab has this one
            typed = str(ownership.next_free(Path(typed)))
        folder = ownership.checked_root(typed, "hydra.run.dir")
        output_subdir = config.hydra.output_subdir
        ownership.check_run_dir(folder, "hydra.run.dir", str(config.hydra.job.name),
                                None if output_subdir is None else str(output_subdir), shown=typed)
        run_dir = Path(typed).absolute()
        Preflight.new_dirs = [d for d in (run_dir, *run_dir.parents) if not d.exists()]
        warnings, run = check_composed(config)
        check_cell_of_its_sweep(folder, run, typed)
        if run.recipe.get("plan") is True:  # before Hydra makes the run dir
            print(plan_text([cell_of(run, work_of)], run_dir), flush=True)
            sys.exit(0)
        for warning in warnings:
            log.warning(warning)


class Progress:
    """A sweep's progress line as each job finishes: cells done, images per second and time left, from its mark; or,
    every `every` seconds, as its cells are checked (`checked`). Time left goes by work: the manifest's `work` of each
    cell (its denoiser's latents), else one a cell."""

    def __init__(self, sweep_dir: Path, started: float, cells: int | None = None, every: float = 0.0):
        self.sweep_dir, self.started, self.done, self.images = sweep_dir, started, 0, 0
        self.cells = cells  # else read at the first finished job: the sweep writes its manifest before it launches any
        self.every, self.shown = every, started
        self.work: dict[str, float] = {}  # job hash -> the work of its cell, until its job is done
        self.mean = 1.0  # the work of a cell the manifest does not weigh
        self.total = float(cells or 0)  # the work of the cells this command runs
        self.counted = self.made = 0.0  # the work of the jobs done, and of those that made their images here
        self.calls: dict[str, tuple[int, float]] = {}  # the calls finished jobs' images came from: images, work each
        self.taken = [0, 0.0]  # the images of those calls whose jobs have finished, and their work
        self.call_time = [0.0, 0.0]  # those calls' seconds and work: the pace before a second job has ended
        self.first: tuple[float, float] | None = None  # when the first job that made work ended, and the work by then

    def weigh(self, manifest: dict) -> None:
        """Take the sweep's `cells`, those `finished` before and each cell's `work` (0 for those) from its manifest."""
        self.cells, self.done = manifest.get("cells", "?"), manifest.get("finished", 0)
        hashes, work = manifest.get("hashes"), manifest.get("work")
        if isinstance(hashes, list) and isinstance(work, list) and len(hashes) == len(work):
            weighs = [isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < math.inf for w in work]
            known = [w for w, ok in zip(work, weighs) if ok]
            self.mean = sum(known) / len(known) if known else 1.0
            self.work = {h: w if ok else self.mean for h, w, ok in zip(hashes, work, weighs)}
        self.total = sum(self.work.values()) if self.work else float(self.cells if isinstance(self.cells, int) else 0)

    def left(self, now: float, ahead: float = 0.0) -> str:
        """The time left of the sweep's work at `now`, with the work `ahead` shared calls did for jobs to come: at the
        pace since the first job ended (the start-up before it, workers starting and models loading, is paid once),
        for that first job at its calls' own pace, else from the start."""
        if isinstance(self.cells, int) and self.done >= self.cells:
            return "nothing left"
        work = self.made + ahead
        if not isinstance(self.cells, int) or not work:
            return "time left unknown"
        since, before = self.first = self.first or (now, work)
        per_work = ((now - since) / (work - before) if work > before else
                    self.call_time[0] / self.call_time[1] if self.call_time[1] else max(now - self.started, 1e-6) / work)
        return f"about {duration(max(0.0, self.total - self.counted - ahead) * per_work)} left"

    def line(self, job: Path, ended: float | None = None) -> str:
        """Count the finished `job` and say where the sweep stood when it `ended` (now unless told)."""
        mark = read_mark(job)  # none for a failed job: done, with nothing made
        if self.cells is None:
            self.weigh(read_manifest(self.sweep_dir) or {})
        self.done += 1
        work = self.work.pop(mark.get("job_hash"), self.mean) if self.work else 1.0
        self.counted += work
        rows = int(mark.get("rows", 0))
        if "gen_s" in mark:
            self.made, self.images = self.made + work, self.images + rows
        now, calls, each = time.time() if ended is None else ended, mark_calls(mark), work / max(rows, 1)
        new = {call: made for call, made in calls.items() if call not in self.calls}
        self.started = min(self.started, now - sum(seconds for _, seconds, _ in new.values()))  # made before the clock
        self.calls.update({call: (images, each) for call, (images, _, _) in new.items()})
        self.call_time = [self.call_time[0] + sum(seconds for _, seconds, _ in new.values()),
                          self.call_time[1] + sum(images * each for images, _, _ in new.values())]
        here = sum(own for *_, own in calls.values())
        self.taken = [self.taken[0] + here, self.taken[1] + here * each]
        # what shared calls made for jobs still to come: its images, and their work
        images_ahead = max(0, sum(images for images, _ in self.calls.values()) - self.taken[0])
        work_ahead = max(0.0, sum(images * w for images, w in self.calls.values()) - self.taken[1])
        rate = (self.images + images_ahead) / max(now - self.started, 1e-6)
        return (f"sdlab: {self.done} of {counted(self.cells, 'cell')} done ({job.name}), {rate:.2f} images/s, "
                f"{self.left(now, work_ahead)}")

    def checked(self, jobs: int) -> None:
        """Count a step of checking the sweep's `jobs`; print where the checks stand, at most every `every` seconds."""
        self.done, self.counted, self.made, now = self.done + 1, self.counted + 1, self.made + 1, time.time()
        if now - self.shown >= self.every:
            self.shown = now
            print(f"sdlab: checked {100 * min(self.done, self.cells) // self.cells}% of {counted(jobs, 'cell')}, "
                  f"{self.left(now)}", flush=True)


class FinishedJobs(threading.Thread):
    """Prints the progress line as each job a launcher runs in another process gets its finished mark."""

    def __init__(self, sweep_dir: Path, since: float, every: float = 1.0):
        super().__init__(daemon=True)
        self.sweep_dir, self.since, self.every, self.stopped = sweep_dir, since, every, threading.Event()
        self.progress = Progress(sweep_dir, since)

    def run(self) -> None:
        seen: set[str] = set()
        while True:
            stopping = self.stopped.wait(self.every)  # one more look once stopped: the last jobs' lines too
            ended = []  # those that ended since the last look, in the order they ended
            for job in job_dirs(self.sweep_dir):
                mark = job / MARKER
                if job.name not in seen and mark.is_file() and mark.stat().st_mtime >= self.since:
                    seen.add(job.name)
                    ended.append((mark.stat().st_mtime, job))
            for when, job in sorted(ended):
                print(self.progress.line(job, when), flush=True)
            if stopping:
                return

    def stop(self) -> None:
        self.stopped.set()
        self.join()


class SweepWatch(threading.Thread):
    """Ends a launcher's worker once the sweep's process is gone: loky's would idle 5 min with the model loaded, and a
    local submitit task would go on running cells for no one."""

    started = False  # one watch a process, however many jobs it runs

    def __init__(self, sweep_pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.sweep_pid, self.every = sweep_pid, every

    @classmethod
    def start_once(cls, sweep_pid: int, descendant: bool = False) -> None:
        """Watch the sweep's process from a process it started (not from itself, nor from a cluster's job); with
        `descendant`, from a process on this machine that a process it started started (a local submitit task)."""
        if cls.started or os.getpid() == sweep_pid or not (descendant or os.getppid() == sweep_pid):
            return
        cls.started = True
        if threading.current_thread() is threading.main_thread():  # Ctrl-C is the sweep's to answer, not a worker's
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        watch = cls(sweep_pid)
        if watch.sweep_gone():  # before the caller writes a thing
            os._exit(1)
        watch.start()

    def sweep_gone(self) -> bool:
        """Whether the sweep's process has ended: it is no longer an ancestor of this one (its children pass to init
        as it ends, though it may stay a zombie a while); without /proc, whether its pid still runs."""
        try:
            pid = os.getppid()
            while pid > 1:
                if pid == self.sweep_pid:
                    return False
                with open(f"/proc/{pid}/stat", "rb") as f:
                    pid = int(f.read().rsplit(b")", 1)[1].split()[1])
            return True
        except (OSError, ValueError, IndexError):
            try:
                os.kill(self.sweep_pid, 0)
            except (ProcessLookupError, PermissionError):  # gone, or its pid another user's since
                return True
            return False

    def run(self) -> None:
        while not self.sweep_gone():
            time.sleep(self.every)
        os._exit(1)


@contextlib.contextmanager
def deaf_children() -> Iterator[None]:
    """Processes started inside never take Ctrl-C, from their first instruction on (a blocked SIGINT is inherited):
    the sweep answers it and their SweepWatch ends them. A thread started before it is where the sweep hears it."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    resource_tracker.ensure_running()  # started later, Python's would unblock SIGINT on its way (3.11)
    if not any(thread.name == "sdlab-ctrl-c" for thread in threading.enumerate()):
        threading.Thread(target=threading.Event().wait, name="sdlab-ctrl-c", daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def ctrl_c_after() -> Iterator[None]:
    """Ctrl-C inside is answered as the block ends: a local submission cut in half would leave a started controller,
    deaf to Ctrl-C, without the folder it logs into (it then prints a traceback of its own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    heard = []
    previous = signal.signal(signal.SIGINT, lambda *_: heard.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if heard and previous is not signal.SIG_IGN:
        raise KeyboardInterrupt


class CollectSweep(Callback):
    """Lock a run dir; at multirun end, collect the jobs' rows into the sweep's table, grid and report."""

    failures = 0  # failed rows of the last sweep collected in this process (the exit code)

    sweep_dir: Path | None = None  # the sweep under way, for the interrupt line
    watch: FinishedJobs | None = None  # the lines as jobs finish in a launcher's other processes
    progress: Progress | None = None  # the lines as jobs finish in this process
    began = 0.0  # when the command started (`cli.entry`): a sweep's cost record counts its start-up

    @stops_on_error
    def on_run_start(self, config, **kwargs) -> None:
        """Lock and mark the run dir; a default one another sdlab took since the pre-flight gives way to the next."""
        folder = Path(str(config.hydra.run.dir))
        try:
            if not named_by_sdlab(config, "hydra.run.dir"):
                ownership.claim(folder, "hydra.run.dir")
                return
            taken = ownership.claim_new(folder, "hydra.run.dir")
        except OSError as e:
            fail(f"cannot lock {folder}: {type(e).__name__}: {e}")
        with read_write(config.hydra.run):
            config.hydra.run.dir = str(taken)
        made = taken.absolute()
        Preflight.new_dirs = [made, *(d for d in Preflight.new_dirs if d in made.parents)]

    @stops_on_error
    def on_run_end(self, config, **kwargs) -> None:
        lock.release(Path(str(config.hydra.run.dir)))

    @stops_on_error
    def on_multirun_start(self, config, **kwargs) -> None:
        self.started, self.sweep_pid = time.time(), os.getpid()  # pickled with this callback for the workers
        CollectSweep.sweep_dir = Path(str(config.hydra.sweep.dir))
        CollectSweep.watch = None  # on the class: the launcher pickles this callback with it for its workers
        CollectSweep.progress = Progress(CollectSweep.sweep_dir, self.started)
        # a plan runs nothing (the sweeper prints it); jobs a launcher runs elsewhere are said as they end
        if config.get("plan") is not True and "sdlab_hydra" not in str(config.hydra.launcher.get("_target_", "")):
            CollectSweep.watch = FinishedJobs(CollectSweep.sweep_dir, self.started - 1)
            CollectSweep.watch.start()

    @classmethod
    def follow(cls, sweep_dir: Path) -> None:
        """The sweep's default dir gave way to the next free name (see `ComposeOnceSweeper.move_to`): say that one."""
        cls.sweep_dir = sweep_dir
        for watching in (cls.progress, cls.watch, cls.watch and cls.watch.progress):
            if watching is not None:
                watching.sweep_dir = sweep_dir

    def on_job_start(self, config, **kwargs) -> None:
        """Start the progress clock at a sweep's first job; in a launcher's worker, watch the sweep's process."""
        if getattr(self, "sweep_pid", None):
            SweepWatch.start_once(self.sweep_pid)
        if CollectSweep.progress is not None and CollectSweep.progress.done == 0:
            CollectSweep.progress.started = time.time()

    def on_job_end(self, config, job_return=None, **kwargs) -> None:
        """The progress line of a sweep job run in this process."""
        if CollectSweep.watch is None and CollectSweep.progress is not None and config.hydra.mode == RunMode.MULTIRUN:
            print(CollectSweep.progress.line(Path(str(config.hydra.runtime.output_dir))), flush=True)

    @stops_on_error
    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if config.get("plan") is True:
            return
        if CollectSweep.watch is not None:
            CollectSweep.watch.stop()
        try:
            self.collect(sweep_dir)
        finally:
            lock.release(sweep_dir)

    def began_at(self) -> float:
        """When this sweep's command started (its start-up counts), else when the sweep did."""
        return min(CollectSweep.began or self.started, self.started)

    def collect(self, sweep_dir: Path) -> None:
        """Write the sweep table and grid, print the summary line, and set `failures`."""
        if not sweep_dir.is_dir():
            return
        try:
            if hasattr(self, "started"):  # a sweep this process ran: its time, for the report's header
                record_spent(sweep_dir, self.began_at(), self.started)
            frame = collect(sweep_dir, since=getattr(self, "started", 0.0))
            # Over recipes, a grid or a summary by recipe means nothing; an index of their figures does.
            recipes = over_recipes(frame)
            line = summarize(frame, sweep_dir, grid=not recipes, sweep=True)
            if recipes:
                line += f"\n  {write_index(sweep_dir)}"
        except Exception as e:  # noqa: BLE001 - Hydra would only warn; a sweep without its table must not look fine
            print(f"sdlab: error: collecting the sweep in {sweep_dir} failed: {type(e).__name__}: {e}", file=sys.stderr)
            CollectSweep.failures = max(CollectSweep.failures, 1)
            return
        CollectSweep.failures = failed_count(frame)
        if hasattr(self, "started"):  # a sweep this process ran: what it cost, for later plans (their only loss)
            try:
                record_cost(sweep_dir, frame, self.began_at(), self.started)
            except Exception as e:  # noqa: BLE001 - the sweep's results stand without it
                log.warning("sdlab: the sweep's cost was not recorded for later plans: %s: %s", type(e).__name__, e)
        if not CollectSweep.failures:
            update_manifest(sweep_dir, complete=True)
        log.debug("sweep %s: %s", sweep_dir, line)  # printed once below; Hydra's console logger would repeat it
        print(f"sdlab: {sweep_dir}/results.csv: {line}")
