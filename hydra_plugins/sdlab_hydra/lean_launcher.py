"""A launcher on Hydra's public Launcher API: jobs in turn in this process, as Hydra's basic launcher runs them, without
the per-job copies of the config that nothing reads."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra import version
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    env_override,
    setup_globals,
)
from hydra.errors import HydraDeprecationError
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from hydra_plugins.sdlab_hydra.chunks import preflighted
from sdlab.app.compose import composed_run
from sdlab.bench.ownership import adopt
from sdlab.bench.plan import call_groups
from sdlab.io import atomic_write_text
from sdlab.jobs import work_ahead

log = logging.getLogger(__name__)
AHEAD_WINDOW = 256  # jobs composed ahead to find those that share work with the next one


def job_chdir(chdir: bool | None) -> bool:
    """`hydra.job.chdir` as Hydra's run_job reads it: unset means False from version_base 1.2, else True (warned)."""
    if chdir is None and not version.base_at_least("1.2"):
        message = ("Future Hydra versions will no longer change working directory at job runtime by default.\n"
                   "See https://hydra.cc/docs/1.2/upgrades/1.1_to_1.2/changes_to_job_working_dir/ for more information.")
        if os.environ.get("HYDRA_DEPRECATION_WARNINGS_AS_ERRORS"):
            raise HydraDeprecationError(message)
        warnings.warn(message, stacklevel=3)
        return True
    return bool(chdir)


YAML_BOOLS = {case(word) for word in ("y", "n", "yes", "no", "true", "false", "on", "off")
              for case in (str.lower, str.title, str.upper)}  # what OmegaConf reads as a bool


class _Dumper(getattr(yaml, "CDumper", yaml.Dumper)):
    """OmegaConf's YAML dumper on libyaml's emitter: a string that OmegaConf would read back as a bool or a number is
    quoted."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        return self.represent_scalar("tag:yaml.org,2002:str", data, style="'" if reads_typed(data) else None)


def reads_typed(text: str) -> bool:
    """Whether OmegaConf reads this string from YAML as a bool, an int or a float."""
    try:
        float(text)
    except ValueError:
        return text in YAML_BOOLS
    return True


_Dumper.add_representer(str, _Dumper.represent_str)


def yaml_text(node: DictConfig | ListConfig | dict | list) -> str:
    """`OmegaConf.to_yaml(node)`, the same text in under half the time (a sweep writes three of them a job); a plain
    dict or list is taken as a config's container."""
    content = container(node) if OmegaConf.is_config(node) else node
    return yaml.dump(content, Dumper=_Dumper, default_flow_style=False, allow_unicode=True, sort_keys=False)


def job_files(config: DictConfig) -> dict[str, str]:
    """The text of each `.hydra/` file of a job, as Hydra writes them: the config without its Hydra node, the Hydra
    node, and the job's overrides; the whole config made plain once (not its copy without the Hydra node again)."""
    task = container(config)
    hydra = task.pop("hydra")
    return {"config.yaml": yaml_text(task), "hydra.yaml": yaml_text({"hydra": hydra}),
            "overrides.yaml": yaml_text(hydra["overrides"]["task"])}


def container(node: DictConfig | ListConfig) -> Any:
    """A config node as plain dicts and lists, interpolations unresolved, as `OmegaConf.to_yaml` writes it."""
    return OmegaConf.to_container(node, resolve=False, enum_to_str=True)


def publish(config: DictConfig) -> None:
    """`HydraConfig.instance().set_config(config)` without its copy of the Hydra node (about 9 ms a job): the Hydra
    node, read-only, is read in place, its parent the job's config, as the copy's is."""
    OmegaConf.set_readonly(config.hydra, True)
    HydraConfig.instance().cfg = config


def flush_logs() -> None:
    """Flush every handler of every logger, as Hydra does between jobs (a handler whose stream is closed is passed)."""
    loggers = [logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for handler in {h for logger in loggers for h in logger.handlers}:
        try:
            handler.flush()
        except (OSError, ValueError):
            pass


class LeanLauncher(Launcher):
    """Runs jobs one after another in this process, as BasicLauncher does, writing the same job dirs and files.

    Hydra's `run_job` copies each job's config three times over (about 11 ms a job): the Hydra node twice
    to publish it, then the whole config and the Hydra node again for the job's return value. Here the
    Hydra node is published in place (read-only, as Hydra leaves it) and the task gets the one copy: the config
    without it; a task marked `takes_composed_config` (sdlab's, which reads every part but the Hydra node and changes
    nothing) gets the config itself. The `.hydra/` files are written atomically, so a killed sweep never leaves half
    a config behind.
    """

    def __init__(self, ahead: bool = False):
        """`ahead`: jobs are sdlab's, and those that can share work (generate cells sharing a pipeline call) do it
        together before the first of them runs (see `sdlab.jobs.job`)."""
        self.ahead = ahead
        self.finished: set[int] = set()  # job numbers the sweeper found finished: not run again, their dirs untouched

    def setup(self, *, hydra_context: HydraContext, task_function: Any, config: DictConfig) -> None:
        """Keep what `launch` needs; jobs work ahead only when the task is sdlab's (its `works_ahead`)."""
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.ahead = self.ahead and getattr(task_function, "works_ahead", False)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Compose and run each job in turn (BasicLauncher.launch with the lean `run_job`)."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        pending = [i for i in range(len(job_overrides)) if initial_job_idx + i not in self.finished]
        if pending:  # a rerun of a finished sweep launches none, which its sweeper's line already says
            log.info(f"Launching {len(pending)} jobs locally")
        returns, configs, parsed, position = {}, {}, {}, {i: n for n, i in enumerate(pending)}

        def ahead(n: int) -> set[int]:
            window = pending[n:n + AHEAD_WINDOW]
            return {position[i] for i in self.work_ahead(job_overrides, window, initial_job_idx, configs, parsed)}

        for group in call_groups(len(pending), ahead if self.ahead else None):
            for i in (pending[n] for n in group):
                sweep_config = configs.pop(i) if i in configs else self.compose(job_overrides[i], initial_job_idx + i)
                parsed.pop(i, None)
                returns[i] = self.run_job(sweep_config)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # the group's jobs set their own
        return [returns[i] for i in pending]

    def compose(self, overrides: Sequence[str], idx: int) -> DictConfig:
        """Job `idx`'s config, numbered."""
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        return sweep_config

    def work_ahead(self, job_overrides: Sequence[Sequence[str]], window: list[int], initial_job_idx: int,
                   configs: dict, parsed: dict) -> set[int]:
        """Let the first job of `window` (job indices to run, in order) do its work together with the others' that
        share it, composing and parsing them ahead; the jobs it covered. Any failure here leaves each job to do its
        own work."""
        for j in window:
            if j not in parsed:
                if j not in configs:
                    configs[j] = self.compose(job_overrides[j], initial_job_idx + j)
                parsed[j] = preflighted(self.hydra_context, job_overrides[j])
                if parsed[j] is None:
                    try:
                        parsed[j] = composed_run(configs[j])
                    except Exception:  # noqa: BLE001 - the job itself reports its bad config
                        parsed[j] = None
        return {window[k] for k in work_ahead([parsed[j] for j in window], Path(str(self.config.hydra.sweep.dir)))}

    def run_job(self, config: DictConfig) -> JobReturn:
        """hydra.core.utils.run_job for one sweep job, publishing the Hydra node without a copy and copying the task
        config once."""
        callbacks = self.hydra_context.callbacks
        old_cwd, orig_hydra_cfg = os.getcwd(), HydraConfig.instance().cfg
        publish(config)  # the job's own `${hydra:...}` values decide its dir
        output_dir = os.path.abspath(os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = output_dir
        chdir = job_chdir(config.hydra.job.chdir)
        try:
            task_cfg = config if getattr(self.task_function, "takes_composed_config", False) else OmegaConf.masked_copy(
                config, [key for key in config if key != "hydra"])
            OmegaConf.set_struct(task_cfg, OmegaConf.is_struct(config))
            ret = JobReturn(overrides=OmegaConf.to_container(config.hydra.overrides.task), cfg=task_cfg,
                            hydra_cfg=config, working_dir=output_dir if chdir else old_cwd)
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            if getattr(self.task_function, "works_ahead", False):  # an sdlab job dir (checked free): marked first
                adopt(Path(output_dir))
            if chdir:
                os.chdir(output_dir)
            configure_log(config.hydra.job_logging, config.hydra.verbose)
            if config.hydra.output_subdir is not None:  # as Hydra writes them, but atomically
                hydra_output = Path(output_dir) / str(config.hydra.output_subdir)
                for name, text in job_files(config).items():
                    atomic_write_text(hydra_output / name, text, sync=False)
            with env_override(config.hydra.job.env_set):
                callbacks.on_job_start(config=config, task_function=self.task_function)
                try:
                    ret.return_value = self.task_function(task_cfg)
                    ret.status = JobStatus.COMPLETED
                except Exception as e:  # noqa: BLE001 - the sweeper raises it, as Hydra's basic launcher does
                    ret.return_value = e
                    ret.status = JobStatus.FAILED
            ret.task_name = JobRuntime.instance().get("name")
            flush_logs()
            callbacks.on_job_end(config=config, job_return=ret)
            return ret
        finally:
            HydraConfig.instance().cfg = orig_hydra_cfg
            if chdir:
                os.chdir(old_cwd)
