"""The command line: Hydra composes conf/ + experiments/, this module turns it into plain data and runs the job."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

from hydra.experimental.callback import Callback

from sdlab import lock, ownership
from sdlab.arguments import CONF_DIR, check_output_dir, display_overrides, prepare
from sdlab.errors import UserError

log = logging.getLogger("sdlab")
INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C


def fail(message: str, code: int = UserError.exit_code) -> None:
    """Print one error line and exit (code 2 for bad input)."""
    print(f"sdlab: error: {message}", file=sys.stderr)
    sys.exit(code)


def quiet_libraries() -> None:
    """Silence library chatter that would bury sdlab's one line per image, without importing the libraries
    (a job that needs no model never pays for them): they read these settings when first imported."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights"/"pipeline components" bars
    warnings.filterwarnings("ignore", category=FutureWarning)


def set_threads(threads) -> None:
    """Pin torch's CPU thread count (CPU results depend on it bit for bit); None keeps torch's default."""
    import torch

    from sdlab.config import check_threads

    check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)


def error_frame(ctx, error: BaseException):
    """One failed row for a job that could not produce its own rows."""
    from sdlab.records import ordered

    return ordered([{"run_id": ctx.run_id, "experiment": ctx.experiment, "job": ctx.config.get("job"),
                     "overrides": ctx.overrides, "status": "error", "error": f"{type(error).__name__}: {error}"}])


HYDRA_FILES = tuple(f".hydra/{name}" for name in ownership.HYDRA_FILES)


def remove_own_start_files(folder: Path, job_name: str) -> None:
    """Remove the files Hydra wrote when this run started (its config and log) if this run made their folder,
    then every folder this run made that is left empty."""
    if folder.absolute() not in Preflight.new_dirs:
        return
    for name in (*HYDRA_FILES, f"{job_name}.log", ownership.MARK):
        ownership.confined(folder.resolve(), name, "hydra.job.name").unlink(missing_ok=True)
    for made in (folder / ".hydra", *Preflight.new_dirs):
        if made.is_dir() and not any(made.iterdir()):
            made.rmdir()


def task_overrides(hydra_node) -> list[str]:
    """The job's command-line overrides as typed (unresolved: `prompt=${x}` is text here, not a lookup)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(hydra_node.overrides.task, resolve=False)


def refuse_run(out_dir: Path, job_name: str, error: UserError) -> None:
    """End a single run on bad input: take back what Hydra wrote into folders it made, print one line, exit 2."""
    lock.release(out_dir)
    remove_own_start_files(out_dir, job_name)
    fail(str(error))


def resolved(cfg) -> dict:
    """A job's config as a plain dict with every interpolation resolved; a broken one is a UserError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        return OmegaConf.to_container(task, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise UserError(f"{key}: {one_line(e)}" if key else one_line(e)) from None


def check_composed(cfg) -> tuple[list[str], dict]:
    """Pre-flight of one composed job config (Hydra node included): (warnings, plain config)."""
    from sdlab.preflight import check_job, job_config

    overridden = set(display_overrides(task_overrides(cfg.hydra)))
    config = job_config(resolved(cfg), overridden)
    return check_job(config), config


class Preflight(Callback):
    """Checks a single run before Hydra makes or writes its folder (a sweep's jobs are checked by the sweeper): the
    folder is sdlab's and every path written in it stays inside; notes which folders the run makes, so that a run
    refused later takes back only what it wrote."""

    new_dirs: list[Path] = []

    def on_run_start(self, config, **kwargs) -> None:
        """Warn about what the model was not made for; end the run with one line on bad input."""
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # the run dir's `${hydra:...}` parts need it
        try:
            typed = str(config.hydra.run.dir)
            folder = ownership.checked_root(typed, "hydra.run.dir")
            output_subdir = config.hydra.output_subdir
            ownership.check_run_dir(folder, "hydra.run.dir", str(config.hydra.job.name),
                                    None if output_subdir is None else str(output_subdir), shown=typed)
            run_dir = Path(typed).absolute()
            Preflight.new_dirs = [d for d in (run_dir, *run_dir.parents) if not d.exists()]
            warnings = check_composed(config)[0]
        except UserError as e:
            fail(str(e))  # SystemExit passes through Hydra's callback guard, which only warns on exceptions
        for warning in warnings:
            log.warning(warning)


def run(cfg) -> None:
    """Hydra's task function: compose -> plain dict -> job (or its finished rows) -> results table."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sdlab.jobs import JobContext

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = display_overrides(task_overrides(hc))
    ctx = JobContext(
        config={},
        out_dir=out_dir,
        experiment=hc.runtime.choices.get("experiment") or "generate",
        overrides=json.dumps(overrides),
        run_id=uuid.uuid4().hex[:12],
        extra={"sweep_dir": str(out_dir.parents[len(Path(str(hc.sweep.subdir)).parts) - 1])} if multirun else {},
    )
    if multirun:  # a job dir is locked while its job runs (the sweeper checked that it is sdlab's)
        lock.acquire(out_dir, parents=False)
        ownership.adopt(out_dir)
    try:
        finish_job(ctx, cfg, set(overrides), multirun, hc.job.name)
    finally:
        if multirun:
            lock.release(out_dir)


def finish_job(ctx, cfg, overridden: set[str], multirun: bool, job_name: str) -> None:
    """Run one job into `out_dir` (or take its finished rows) and write its table; a single run exits on failure."""
    from sdlab import resume
    from sdlab.collect import summarize
    from sdlab.config import config_hash
    from sdlab.jobs import get_job
    from sdlab.preflight import job_config

    out_dir = ctx.out_dir
    try:
        ctx.config = job_config(resolved(cfg), overridden)  # checked before the run or sweep began
        resume.clean_temp_files(out_dir)
        set_threads(ctx.config.get("threads"))
        job_hash = config_hash({k: v for k, v in ctx.config.items() if k not in ("resume", "limits")})
        frame = resume.finished_job(out_dir, job_hash) if ctx.config.get("resume", True) else None
        if frame is not None:
            log.info("skipped: already complete in %s (resume=false recomputes)", out_dir)
        else:
            resume.unmark(out_dir)
            frame = get_job(ctx.config["job"])(ctx)
    except UserError as e:
        if not multirun:
            refuse_run(out_dir, job_name, e)
        log.error("job failed: %s", e)
        job_hash, frame = None, error_frame(ctx, e)
    except Exception as e:  # one failing cell must not stop the sweep
        log.exception("job failed")
        job_hash, frame = None, error_frame(ctx, e)
    line = summarize(frame, out_dir, grid=not multirun)
    failed = int((frame["status"] != "ok").sum()) if "status" in frame else 0
    if job_hash and not failed:
        resume.mark_finished(out_dir, job_hash, {"rows": len(frame)})
    log.info("%s: %s", out_dir / "results.csv", line)
    if not multirun and failed:
        sys.exit(1)


def register_resolvers() -> None:
    """`${project:PATH}` in recipes: PATH inside the sdlab checkout, wherever sdlab runs from."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("project"):
        OmegaConf.register_new_resolver("project", lambda path="": str(CONF_DIR.parent / path))


def one_line(error: BaseException) -> str:
    """Hydra's or OmegaConf's multi-line message as one line, without its links and boilerplate."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(("See https://", "full_key:", "object_type=",
                                                            "reference_type=", "Set the environment"))]
    return "; ".join(keep) or type(error).__name__


@contextmanager
def hydra_errors_as_user_errors():
    """While Hydra runs, its composition and override errors become UserErrors instead of printed reports."""
    import hydra._internal.utils as hydra_utils
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    original = hydra_utils.run_and_report

    def run_and_raise(func):
        try:
            return func()
        except (HydraException, OmegaConfBaseException) as e:
            cause = e.__cause__ if isinstance(e.__cause__, UserError) else None
            raise cause or UserError(one_line(e)) from None

    hydra_utils.run_and_report = run_and_raise
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


def report_command(args: list[str]) -> None:
    """`sdlab report DIR`: rebuild the summary, summary.png and report.html of a run or sweep dir, then exit."""
    from sdlab.report import rebuild

    if len(args) != 1 or args[0].startswith("-"):
        fail(f"sdlab report takes one run or sweep dir, got {' '.join(args) or 'nothing'}")
    try:
        target = rebuild(Path(args[0]))
    except UserError as e:
        fail(str(e))
    print(f"sdlab: {target}")
    sys.exit(0)


def entry() -> None:
    """Console script `sdlab`: `sdlab report DIR`; answer --help/--version, check and prepare the command line, then run Hydra."""
    if sys.argv[1:2] == ["report"]:
        report_command(sys.argv[2:])
    import hydra

    from sdlab import collect
    from sdlab.help import help_text, version_text

    argv = sys.argv[1:]
    if argv[:1] in (["--help"], ["-h"]):
        print(help_text())
        return
    if argv[:1] in (["--version"], ["-V"]):
        print(version_text())
        return
    completing = any(a in ("-sc", "--shell-completion") for a in argv)
    try:
        args = argv if completing else prepare(argv)
        check_output_dir(args)
    except UserError as e:
        fail(str(e))
    collect.sweep_failures = 0
    Preflight.new_dirs = []
    quiet_libraries()
    register_resolvers()
    sys.argv = [sys.argv[0], *args]
    try:
        with hydra_errors_as_user_errors():
            hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")(run)()
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to resume", INTERRUPTED)
    if collect.sweep_failures:
        sys.exit(1)


if __name__ == "__main__":
    entry()
