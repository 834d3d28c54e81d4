"""The command line: Hydra composes conf/ + experiments/, this module turns it into plain data and runs the job."""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
import uuid
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path

INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C
TERMINATED = 143  # and by SIGTERM

try:  # the libraries load for about a second: a Ctrl-C then ends as one later does, not in a traceback
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

    from sdlab.app.arguments import check_output_dir, display_overrides, prepare
    from sdlab.app.callbacks import CollectSweep, Preflight
    from sdlab.app.compose import fail, job_folder, one_line, parse_job, task_overrides, unresolvable
    from sdlab.app.help import help_text, version_text
    from sdlab.bench import lock, ownership, resume
    from sdlab.bench.captions import settings_text
    from sdlab.bench.records import failed_count, failed_rows, ordered
    from sdlab.bench.report import rebuild, summarize
    from sdlab.conf_files import CONF_DIR
    from sdlab.errors import UserError
    from sdlab.jobs import MODEL_FREE_JOBS, JobContext, get_job
    from sdlab.lazy import torch
except KeyboardInterrupt:
    print("sdlab: error: interrupted while starting; nothing was written", file=sys.stderr)
    sys.exit(INTERRUPTED)

log = logging.getLogger("sdlab")


def quiet_libraries() -> None:
    """Silence library chatter that would bury sdlab's one line per image; set before they are imported (if ever)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights"/"pipeline components" bars
    warnings.filterwarnings("ignore", category=FutureWarning)
    # loky's and multiprocessing's resource trackers warn of each semaphore they free after a Ctrl-C: no leak
    quiet = [f"ignore::UserWarning:{tracker}.resource_tracker"
             for tracker in ("multiprocessing", "joblib.externals.loky.backend")]
    asked = [option for option in os.environ.get("PYTHONWARNINGS", "").split(",") if option]
    os.environ["PYTHONWARNINGS"] = ",".join(asked + [option for option in quiet if option not in asked])
    # torchsde warns when a sigma rounded to float32 lands a hair below its start: rounding, not a wrong interval
    warnings.filterwarnings("ignore", message="Should have ta>=t0")
    warnings.showwarning = log_warning


def log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one log line, so that a job's log keeps it too (not only the console)."""
    logging.getLogger("py.warnings").warning("%s: %s (%s:%d)", category.__name__, message, filename, lineno)


def refuse_run(out_dir: Path, job_name: str, error: UserError) -> None:
    """End a single run on bad input: take back what Hydra wrote into folders it made, print one line, exit 2."""
    lock.release(out_dir)
    if out_dir.absolute() in Preflight.new_dirs:  # its configs, log and mark, then every folder made that is left empty
        for name in (*(f".hydra/{name}" for name in ownership.HYDRA_FILES), f"{job_name}.log", ownership.MARK,
                     resume.CONFIG):
            ownership.confined(out_dir.resolve(), name, "hydra.job.name").unlink(missing_ok=True)
        for made in (out_dir / ".hydra", *Preflight.new_dirs):
            if made.is_dir() and not any(made.iterdir()):
                made.rmdir()
    fail(str(error))


def run(cfg) -> None:
    """Hydra's task function: compose -> plain dict -> job (or its finished rows) -> results table."""
    quiet_libraries()  # again in the job's own process: a launcher may run it in a fresh interpreter
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = display_overrides(task_overrides(hc))
    extra, job_lock = {}, False
    if multirun:
        sweep_dir = out_dir.parents[len(Path(str(hc.sweep.subdir)).parts) - 1]
        extra = {"sweep_dir": str(sweep_dir), **resume.sweep_position(sweep_dir, int(hc.job.num))}
        axes = extra.get("axes", list(overrides))
        log.info("%s: %s", extra.get("progress", f"job {int(hc.job.num) + 1}"),
                 settings_text({k: v for k, v in overrides.items() if k in axes}) or "-")
        # A job dir is locked while its job runs, unless this process holds the sweep's lock (covering what is under it)
        job_lock = not lock.holds(sweep_dir)
        if job_lock:
            lock.acquire(out_dir, parents=False)
        ownership.adopt(out_dir)
    ctx = JobContext(run=None, out_dir=out_dir, experiment=hc.runtime.choices.get("experiment") or "generate",
                     overrides=json.dumps(overrides), run_id=uuid.uuid4().hex[:12], extra=extra)
    try:
        finish_job(ctx, cfg, set(overrides), multirun, hc.job.name)
    finally:
        if job_lock:
            lock.release(out_dir)


run.works_ahead = True  # the lean launcher lets sdlab's jobs work ahead (share pipeline calls), no other app's
run.takes_composed_config = True  # it reads all but the Hydra node, changing nothing: the lean launcher skips a copy


def finish_job(ctx, cfg, overridden: set[str], multirun: bool, job_name: str) -> None:
    """Run one job into `out_dir` (a sweep's finished job is left as it is) and write its table."""
    out_dir, started = ctx.out_dir, time.time() - 1  # file times are coarser than the clock
    try:
        ctx.run = run = parse_job(cfg, overridden)  # checked before the run or sweep began
        resume.clean_temp_files(out_dir)
        job_hash = run.job_hash
        frame = resume.finished_job(out_dir, job_hash) if run.resume else None
        if frame is not None:  # its table, mark (with the time a later plan estimates from) and config stay as written
            log.info("skipped: already complete in %s (resume=false recomputes)", out_dir)
            if multirun:
                log.info("%s: %d ok, 0 failed", out_dir / "results.csv", len(frame))
                return
            started = 0.0  # its figures are from the run that finished it
        else:
            resume.record_config(out_dir, run.recipe)
            if run.threads is not None:  # CPU results depend on it bit for bit; None keeps torch's default
                torch.set_num_threads(run.threads)
            resume.unmark(out_dir)
            frame = get_job(run.job)(ctx)
    except Exception as e:  # noqa: BLE001 - one failing cell must not stop the sweep
        if not isinstance(e, UserError):
            log.exception("job failed")
        elif not multirun:
            refuse_run(out_dir, job_name, e)
        else:
            log.error("job failed: %s", e)
        request = ctx.run is not None and ctx.run.job not in MODEL_FREE_JOBS
        job_hash, frame = None, ordered(failed_rows(ctx, f"{type(e).__name__}: {e}", request))
    line = summarize(frame, out_dir, grid=not multirun, since=started)
    failed = failed_count(frame)
    if job_hash and not failed and started:
        made = {"gen_s": float(frame["time_total_s"].sum()) if "time_total_s" in frame else 0.0,  # a plan's estimate
                "calls": resume.calls_made(frame),  # the progress line's
                "images": [p for p in frame.get("image_path", ()) if isinstance(p, str)]}  # a plan's check they stay
        resume.mark_finished(out_dir, job_hash, {"rows": len(frame), "weights": ctx.run.weights,
                                                 "elsewhere": ctx.elsewhere, "overrides": ctx.overrides, **made})
    elif multirun and not resume.read_mark(out_dir):  # ended all the same: a launcher's own process sees it end
        resume.mark_finished(out_dir, None, {"rows": len(frame), "failed": failed})
    log.info("%s: %s", out_dir / "results.csv", line)
    if not multirun and failed:
        sys.exit(1)


def register_resolvers() -> None:
    """`${project:PATH}` in recipes: PATH inside the sdlab checkout; `${job_folder:N}`: a sweep job's folder name."""
    for name, resolver in (("project", lambda path="": str(CONF_DIR.parent / path)), ("job_folder", job_folder)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()  # at import too: a launcher's worker process unpickles `run` from here and resolves its folder


@contextmanager
def hydra_errors_as_user_errors():
    """Hydra's errors as UserErrors with their OmegaConf cause (HYDRA_FULL_ERROR=1 raises them, not reports)."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except (HydraException, OmegaConfBaseException) as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        if isinstance(e, InterpolationResolutionError):  # a Hydra value the sweeper resolves: hydra.sweep.subdir
            raise UserError(unresolvable(e)) from None
        raise UserError(one_line(e)) from None
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)
        if before is not None:
            os.environ["HYDRA_FULL_ERROR"] = before


REPORT_HELP = """usage: sdlab report DIR

Rebuild the table, summary, ranking, summary.png and report.html of an sdlab run or sweep dir, older ones too,
from the rows its jobs wrote. It writes only into a folder carrying sdlab's .sdlab mark (touch DIR/.sdlab once for
one made before the mark); in a marked folder those files are sdlab's to write again, whoever put them there."""


def report_command(args: list[str]) -> None:
    """`sdlab report DIR`: rebuild the summary, summary.png and report.html of a run or sweep dir, then exit."""
    if args in (["--help"], ["-h"]):
        print(REPORT_HELP)
        sys.exit(0)
    if len(args) != 1 or args[0].startswith("-"):
        fail(f"sdlab report takes one run or sweep dir, got {' '.join(args) or 'nothing'}")
    try:
        target = rebuild(Path(args[0]))
    except UserError as e:
        fail(str(e))
    print(f"sdlab: {target}")
    sys.exit(0)


PAGES = {"--help": help_text, "-h": help_text, "--version": version_text, "-V": version_text}


def entry() -> None:
    """`sdlab report DIR`, --help or --version; else the command line checked and prepared, then run by Hydra."""
    if sys.argv[1:2] == ["report"]:
        report_command(sys.argv[2:])
    argv = sys.argv[1:]
    if page := next((PAGES[word] for word in argv if word in PAGES), None):  # anywhere, as argparse reads them
        print(page())
        return
    try:
        args = prepare(argv)
        check_output_dir(args)
    except UserError as e:
        fail(str(e))
    CollectSweep.failures, CollectSweep.sweep_dir, CollectSweep.began = 0, None, time.time()
    Preflight.new_dirs = []
    quiet_libraries()
    sys.argv = [sys.argv[0], *args]
    default = signal.signal(signal.SIGTERM, terminate)
    try:
        with hydra_errors_as_user_errors():
            hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")(run)()
    except UserError as e:
        fail(str(e))
    except BrokenPipeError:  # a reader that stopped (`| head`): `main` ends quietly
        lock.release_held()
        raise
    except OSError as e:  # a disk that fills or goes away between the jobs, where no job can make it a failed row
        lock.release_held()
        fail(f"{e.strerror or e}: {e.filename}" if e.filename else f"{type(e).__name__}: {e}", 1)
    except KeyboardInterrupt as e:
        for worker in multiprocessing.active_children():  # a launcher's pool: one no job reached would idle on
            with suppress(OSError, TypeError):  # by pid: loky's workers have no Popen.kill; a gone one, no process
                os.kill(worker.pid, signal.SIGKILL)
        lock.release_held()
        logging.shutdown()
        sys.stdout.flush()
        sweep_dir = CollectSweep.sweep_dir
        then = "rerun the same command to resume" + (f" in {sweep_dir}" if sweep_dir else "")
        if sweep_dir and not Path(sweep_dir).is_dir():
            then = "nothing was written"
        elif sweep_dir:  # the report's wall time counts what this command spent on the cells it wrote
            with suppress(OSError):
                resume.record_spent(Path(sweep_dir), CollectSweep.began, CollectSweep.began)
        word, code = ("terminated", TERMINATED) if isinstance(e, Terminated) else ("interrupted", INTERRUPTED)
        # not sys.exit: a worker pool (weights loading) whose lock the interrupt left taken would hang the exit's join
        fail(f"{word}; {then}", code, leave=os._exit)
    finally:
        signal.signal(signal.SIGTERM, default)
    if CollectSweep.failures:
        sys.exit(1)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a batch scheduler's time limit): the run ends as Ctrl-C ends it."""


def terminate(signum, frame) -> None:
    """The SIGTERM handler while a run or sweep works."""
    raise Terminated


def main() -> None:
    """Console script `sdlab`: `entry`, the cycle collector run rarely (it cost a sweep a tenth of its time)."""
    gc.set_threshold(100_000, 50, 100)
    try:
        try:
            entry()
        finally:
            sys.stdout.flush()  # here, not at exit: a reader that stopped is met below
    except BrokenPipeError:  # `sdlab --help | head -1`: end quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush meets no closed pipe again
        sys.exit(1)
    finally:
        gc.freeze()  # nothing left to collect at exit, where it idled about 4 s


if __name__ == "__main__":
    main()
