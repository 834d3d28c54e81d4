"""The command line: Hydra composes conf/ + experiments/, this module turns it into plain data and runs the job."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import uuid
from functools import lru_cache
from pathlib import Path

import yaml

from sdlab.errors import UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "scheduler", "clip", "experiment")
log = logging.getLogger("sdlab")


def group_options(group: str) -> list[str]:
    """Selectable config names of a group (files not starting with `_`)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.name.startswith("_"))


@lru_cache(maxsize=None)
def _yaml_keys(path: Path) -> frozenset[str]:
    data = yaml.safe_load(path.read_text()) or {}
    return frozenset(data) - {"defaults"}


def _known_keys(group: str | None) -> set[str]:
    if group is None:
        recipes = [_yaml_keys(p) for p in (CONF_DIR / "experiment").glob("*.yaml")]
        return (_yaml_keys(CONF_DIR / "config.yaml") | set().union(*recipes)) - {"hydra"}
    files = (CONF_DIR / group).glob("*.yaml")
    return set().union(*(_yaml_keys(p) for p in files))


def check_overrides(args: list[str]) -> None:
    """Reject unknown group choices and config keys up front, with the allowed values, before Hydra runs."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        if key.startswith(("+", "~")) or key.startswith("hydra") or key.startswith("experiment."):
            continue
        if key in GROUPS:
            if value.startswith(("glob(", "choice(", "range(")):
                continue
            for option in value.split(","):
                if option not in group_options(key):
                    raise UserError(f"unknown {key} {option!r}; choose one of: {', '.join(group_options(key))}")
            continue
        group, _, sub = key.partition(".")
        if sub and group in ("model", "scheduler", "clip"):
            if sub not in _known_keys(group):
                allowed = ", ".join(sorted(_known_keys(group)))
                raise UserError(f"unknown config key {key!r}; {group}.* keys are: {allowed}")
        elif key not in _known_keys(None) and group not in _known_keys(None):
            raise UserError(f"unknown config key {key!r}; top-level keys are: {', '.join(sorted(_known_keys(None)))}")


def check_output_dir(args: list[str]) -> None:
    """Refuse a run or sweep dir that cannot be created or written, before Hydra tries."""
    import tempfile

    targets = [a.split("=", 1)[1] for a in args if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    for target in targets or ["outputs"]:
        existing = Path(target).absolute()
        while not existing.exists():
            existing = existing.parent
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError:
            raise UserError(f"output dir {target} cannot be written ({existing} is not a writable folder)") from None


def fail(message: str) -> None:
    """Print one error line and exit with code 2."""
    print(f"sdlab: error: {message}", file=sys.stderr)
    sys.exit(UserError.exit_code)


def quiet_libraries() -> None:
    """Silence library chatter that would bury sdlab's one line per image."""
    import warnings

    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)


def job_overrides(task: list[str]) -> dict[str, str]:
    """The job's command-line overrides as {key: value}, in command-line order."""
    out = {}
    for item in task:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


def apply_params_file(config: dict, overridden: set[str]) -> dict:
    """Merge `params=FILE.json` into the config; explicit command-line overrides still win."""
    from sdlab.config import limits
    from sdlab.params import load_params

    if not config.get("params"):
        return config
    params = load_params(config["params"], limits(config)["max_params_bytes"])
    for key, value in params.items():
        if key in overridden:
            continue
        if key == "scheduler":
            config["scheduler"] = {**config["scheduler"], "name": value}
        else:
            config[key] = value
    if "seed" in params and "seeds" not in params and "seeds" not in overridden:
        config["seeds"] = None  # the file's single seed wins over a recipe's seed list
    return config


def set_threads(threads) -> None:
    """Pin torch's CPU thread count (CPU results depend on it bit for bit); None keeps torch's default."""
    import torch

    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"threads={threads!r} must be a positive integer or null")
    torch.set_num_threads(threads)


def error_frame(ctx, error: BaseException):
    """One failed row for a job that could not produce its own rows."""
    from sdlab.records import ordered

    return ordered([{"run_id": ctx.run_id, "experiment": ctx.experiment, "job": ctx.config.get("job"),
                     "overrides": ctx.overrides, "status": "error", "error": f"{type(error).__name__}: {error}"}])


def only_hydra_files(folder: Path) -> bool:
    """True when `folder` holds nothing but what Hydra writes at job start (config and log)."""
    return all(p.name == ".hydra" or p.suffix == ".log" for p in folder.iterdir()) if folder.is_dir() else False


def run(cfg) -> None:
    """Hydra's task function: compose -> plain dict -> job (or its finished rows) -> results table."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from sdlab import resume
    from sdlab.collect import summarize
    from sdlab.config import config_hash
    from sdlab.jobs import JobContext, get_job
    from sdlab.models import preflight

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = job_overrides(list(hc.overrides.task))
    ctx = JobContext(
        config=OmegaConf.to_container(cfg, resolve=True),
        out_dir=out_dir,
        experiment=hc.runtime.choices.get("experiment") or "generate",
        overrides=json.dumps(overrides),
        run_id=uuid.uuid4().hex[:12],
    )
    resume.clean_temp_files(out_dir)
    try:
        set_threads(ctx.config.get("threads"))
        ctx.config = apply_params_file(ctx.config, set(overrides))
        preflight(ctx.config)
        job_hash = config_hash({k: v for k, v in ctx.config.items() if k != "resume"})
        frame = resume.finished_job(out_dir, job_hash) if ctx.config.get("resume", True) else None
        if frame is not None:
            log.info("skipped: already complete in %s (resume=false recomputes)", out_dir)
        else:
            resume.unmark(out_dir)
            frame = get_job(ctx.config["job"])(ctx)
    except UserError as e:
        if not multirun:
            if only_hydra_files(out_dir):
                shutil.rmtree(out_dir, ignore_errors=True)
            fail(str(e))
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


def entry() -> None:
    """Console script `sdlab`: check overrides, then hand over to Hydra."""
    import hydra

    try:
        check_overrides(sys.argv[1:])
        check_output_dir(sys.argv[1:])
    except UserError as e:
        fail(str(e))
    from sdlab import collect

    collect.sweep_failures = 0
    quiet_libraries()
    register_resolvers()
    hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")(run)()
    if collect.sweep_failures:
        sys.exit(1)


if __name__ == "__main__":
    entry()
