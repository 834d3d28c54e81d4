"""A composed Hydra config made into the Run a job takes: resolved here, at the edge, then parsed once."""

from __future__ import annotations

import os
import re
import sys
from functools import lru_cache
from pathlib import Path

from hydra.errors import MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from sdlab.app.arguments import display_overrides
from sdlab.app.preflight import check_job, check_sweep
from sdlab.bench.resume import FOLDERS, MANIFEST, read_manifest
from sdlab.bench.run import parse
from sdlab.config import Run
from sdlab.errors import UserError

JOB_FOLDER_WIDTH = "SDLAB_JOB_FOLDER_WIDTH"  # set by the sweeper; an environment variable reaches a launcher's workers
JOB_FOLDERS = "SDLAB_JOB_FOLDERS"  # set by the sweeper: the sweep dir whose manifest lists jobs not in their own folder


def job_folder(num) -> str:
    """`${job_folder:${hydra.job.num}}`: the job number zero-padded as the sweeper says (07 of 26; see
    `records.job_number_width`), or the number of the folder the sweep's manifest says the job takes instead."""
    sweep_dir = os.environ.get(JOB_FOLDERS, "")
    try:  # the manifest read again only when it changed
        moved = _moved_jobs(sweep_dir, os.stat(Path(sweep_dir) / MANIFEST).st_mtime_ns) if sweep_dir else {}
    except OSError:
        moved = {}
    return str(moved.get(str(num), num)).zfill(int(os.environ.get(JOB_FOLDER_WIDTH) or 1))


@lru_cache(maxsize=1)
def _moved_jobs(sweep_dir: str, changed: int) -> dict[str, int]:
    """{job number: folder number} from the manifest of `sweep_dir`."""
    return (read_manifest(Path(sweep_dir)) or {}).get(FOLDERS, {})


CLEAR_LINE = "\r\x1b[K"  # erases the line a progress bar an interrupt left half-drawn was on


def fail(message: str, code: int = UserError.exit_code, leave=sys.exit) -> None:
    """Print one error line (on a terminal, over the line under way) and exit (code 2 for bad input) through `leave`."""
    print(f"{CLEAR_LINE if sys.stderr.isatty() else ''}sdlab: error: {message}", file=sys.stderr, flush=True)
    leave(code)


MERGE_FAILED = re.compile(r"Error merging override (?P<key>[^=]+)=(?P<value>.*)")  # a typed option refused a value
NOT_OF_TYPE = ((re.compile(r"Value '(.*)' of type '\w+' could not be converted to Integer"), "is not an integer"),
               (re.compile(r"Value '(.*)' of type '\w+' could not be converted to Float"), "is not a number"),
               (re.compile(r"Value '(.*)' is not a valid bool \(type \w+\)"), "must be true or false"))


def one_line(error: BaseException) -> str:
    """Hydra's or OmegaConf's multi-line message and its OmegaConf cause as one line, without links and boilerplate;
    an unknown option of a config group (hydra/launcher=nope) and a typed option's wrong value as sdlab says its own."""
    if isinstance(error, MissingConfigException) and error.options and error.missing_cfg_file:
        group, _, name = str(error.missing_cfg_file).rpartition("/")
        return f"unknown {group} {name!r}; choose one of: {', '.join(error.options)}"
    cause = [error.__cause__] if isinstance(error.__cause__, OmegaConfBaseException) else []
    lines = [line.strip() for e in (error, *cause) for line in str(e).splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(("See https://", "full_key:", "object_type=",
                                                            "reference_type=", "Set the environment"))]
    if len(keep) == 2 and (merge := MERGE_FAILED.fullmatch(keep[0])):  # a typed option: said as sdlab says its own
        why = keep[1]
        typed = next((f"={'null' if m[1] == 'None' else repr(m[1])} {said}" for pattern, said in NOT_OF_TYPE
                      if (m := pattern.fullmatch(why))), None)
        return merge["key"].lstrip("+~") + (typed or f"={merge['value']}: {why[:1].lower()}{why[1:]}")
    return "; ".join(keep) or type(error).__name__


def unresolvable(error: InterpolationResolutionError) -> str:
    """One line for a value whose interpolation cannot be resolved (`${oc.env:NOPE}`): its key, value as typed, why."""
    parent, why = error.parent_node, str(error.msg).splitlines()[0]
    why = re.sub(r"^\w+ raised while resolving interpolation: ", "", why).strip('"')
    why = re.sub(r"^[\w.<>]+\(\) (missing )?", lambda m: "its resolver " + ("is missing " if m[1] else ""), why)
    value = (f"={OmegaConf.to_container(parent, resolve=False)[error.key]!r}"
             if OmegaConf.is_config(parent) and error.key is not None else "")
    return f"{error.full_key}{value} cannot be resolved: {why[:1].lower()}{why[1:]}"


def task_overrides(hydra_node) -> list[str]:
    """The job's command-line overrides as typed (unresolved: `prompt=${x}` is text here, not a lookup)."""
    return OmegaConf.to_container(hydra_node.overrides.task, resolve=False)


def resolved(cfg) -> dict:
    """A job's config but its Hydra node, resolved to a plain dict part by part (a copy first took 3 ms a job)."""
    try:
        parts = {key: cfg[key] for key in cfg if key != "hydra"}
        return {key: OmegaConf.to_container(part, resolve=True) if OmegaConf.is_config(part) else part
                for key, part in parts.items()}
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise UserError(f"{key}: {one_line(e)}" if key else one_line(e)) from None


def parse_job(cfg, overridden: set[str]) -> Run:
    """The Run of a composed job config, the one place a composed config becomes typed: resolved, then parsed."""
    return parse(resolved(cfg), overridden)


def composed_run(cfg) -> Run:
    """The Run of one composed job config (Hydra node included)."""
    return parse_job(cfg, set(display_overrides(task_overrides(cfg.hydra))))


def check_composed(cfg) -> tuple[list[str], Run]:
    """Pre-flight of one composed job config (Hydra node included), a single run: (warnings, its Run)."""
    typed = display_overrides(task_overrides(cfg.hydra))
    run = parse_job(cfg, set(typed))
    check_sweep([run], typed)
    return check_job(run), run
