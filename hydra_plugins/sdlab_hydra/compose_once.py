"""A sweeper on Hydra's public Sweeper API: the basic sweeper's cartesian product, each job composed once (most of
them not at all), pre-flighted whole before anything is written."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import pickle
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (FloatRange, Override, OverrideType, QuotedString, RangeSweep,
                                              Transformer, ValueType)
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext
from omegaconf import OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from hydra_plugins.sdlab_hydra.chunks import ChunkedSubmitit, submitit_cluster
from hydra_plugins.sdlab_hydra.lean_launcher import AHEAD_WINDOW
from sdlab.app.arguments import RECIPES_SUBDIR, display_overrides, hydra_quote, named_by_sdlab, override_parser
from sdlab.app.callbacks import CollectSweep, Progress, deaf_children
from sdlab.app.compose import JOB_FOLDER_WIDTH, JOB_FOLDERS, composed_run, parse_job, resolved, task_overrides
from sdlab.app.preflight import check_job, check_sweep, misfit, sweep_plan
from sdlab.bench import lock, ownership
from sdlab.bench.plan import Cell, cell_of, cell_work, plan_text
from sdlab.bench.records import job_number_width
from sdlab.bench.resume import (clean_temp_files, finished_job, made_from_other_weights, marked_jobs, read_manifest,
                                varying_keys, write_manifest)
from sdlab.bench.run import typed_run
from sdlab.config import Run, check_seeds, limits
from sdlab.errors import CannotRun, UserError, repeats
from sdlab.jobs import work_of

log = logging.getLogger(__name__)
MMAP_MODES = ("r", "r+", "w+", "c")  # numpy.memmap's, which joblib's mmap_mode passes on
ANNOUNCED_CELLS = 1000  # a sweep this size is checked for seconds (about 5 ms a cell): it says so first
FOLDER_KEYS = {"hydra.sweep.subdir", "hydra.output_subdir", "hydra.job.name"}  # what names a job's folders and files
MAX_CELLS = 10**9  # more jobs than a sweep has: a submitit task's jobs work ahead over the rest of its chunk
CHECK_LINES_EVERY = 2.0  # and where its checks stand, every this many seconds
EXACT_STEPS = 10**5  # a float range() of about this many values is counted by stepping it (0.1 s)


def touched(key: str, keys: list[str]) -> bool:
    """True when another of `keys` names `key`'s parent, child or element: Hydra applies them in order, so
    re-applying `key` alone on an earlier job's config would not give what composing gives."""
    return any(other != key and (other.startswith(key + ".") or key.startswith(other + ".")) for other in keys)


def range_size(bounds: range | FloatRange) -> int:
    """How many values a range() takes, counted from its start, stop and step as Hydra's range() defines them (start +
    i*step short of stop), never by making them: len() stops at 2**63, and Hydra makes a float range one Decimal step at
    a time (7 s and 0.9 GB for 2*10**7 values). A float range of up to EXACT_STEPS values is stepped as Hydra steps it:
    its 28-digit sums can fall a hair short of the stop and take one value more (range(0,0.4,0.1) has 5)."""
    if isinstance(bounds, range):
        return max(0, -((bounds.start - bounds.stop) // bounds.step))  # range() itself refuses a zero step
    if not (bounds.start.is_finite() and bounds.stop.is_finite() and bounds.step.is_finite() and bounds.step):
        raise ValueError("range() takes finite numbers and a step other than zero")
    count = max(0, math.ceil((bounds.stop - bounds.start) / bounds.step))
    return sum(1 for _ in bounds) if count <= EXACT_STEPS else count


class RangeValues:
    """The values of a range() that is shuffled or of floats, made only when iterated (shuffled again each time, as
    Hydra's `sweep_iterator` does), and their `size`, counted from the range's arguments when it is parsed."""

    def __init__(self, override: Override):
        self.override = override
        self.size = range_size(override.value().range())

    def __iter__(self) -> Iterator:
        return iter(self.override.sweep_iterator())

    def head(self) -> list:
        """Its first value before any shuffle: a shuffle makes every value first."""
        return list(itertools.islice(self.override.value().range(), 1))


def sweep_axes(overrides: list[Override]) -> dict[str, tuple[Override, Iterable]]:
    """Each key of a command line with the values it takes, not yet made into overrides: a sweep's listed once (an
    integer range() kept a range, any other range() a `RangeValues`), so a sweep is counted (`cell_count`) before any
    of its cells is built."""
    axes: dict[str, tuple[Override, Iterable]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes[key] = (override, [override_parser().parse_override(f"{key}={override.get_value_element_as_str()}")])
        elif override.is_discrete_sweep():
            value = override.value()
            try:
                if not isinstance(value, RangeSweep):
                    axes[key] = (override, list(override.sweep_iterator()))
                    if twice := repeats(v.text if isinstance(v, QuotedString) else v for v in axes[key][1]):
                        raise UserError(f"{override.input_line}: lists {twice[0]!r} twice; list each value once")
                elif not value.shuffle and isinstance(value.range(), range):
                    axes[key] = (override, value.range())
                else:
                    axes[key] = (override, RangeValues(override))
            except ValueError as e:  # range(0,3,0)
                raise UserError(f"{override.input_line}: {e}") from None
        else:
            raise UserError(f"{override.input_line}: a sweep takes a list, range() or glob(), not an interval()")
    return axes


def cell_count(axes: dict[str, tuple[Override, Iterable]]) -> int:
    """How many jobs the sweep of `axes` has, none of them made."""
    return math.prod(range_size(values) if isinstance(values, range) else
                     values.size if isinstance(values, RangeValues) else len(values) for _, values in axes.values())


def cells(overrides: list[Override] | dict[str, tuple[Override, Iterable]], first: bool = False) -> list[list[Override]]:
    """Every job of a command line (or of its `sweep_axes`; only the first when `first`): the cartesian product of the
    swept values, the last key varying fastest but the seed slowest, so that a sweep stopped early has run every value
    of every other axis at its first seed. Each value is the override Hydra's parser makes of its text (`input_line`),
    made from the command line's own parse: a 10,000-value sweep is not parsed again value by value (0.25 ms each)."""
    axes = overrides if isinstance(overrides, dict) else sweep_axes(overrides)
    made = {key: [value if isinstance(value, Override) else
                  Override(type=override.type, key_or_group=override.key_or_group, value_type=ValueType.ELEMENT,
                           _value=value, package=override.package, input_line=f"{key}={Transformer.str(value)}")
                  for value in (values if not first else values.head() if isinstance(values, RangeValues) else
                                itertools.islice(values, 1))]
            for key, (override, values) in axes.items()}
    order = sorted(made, key=lambda key: key.lstrip("+~") not in ("seed", "seeds"))
    return [[dict(zip(order, job))[key] for key in made] for job in itertools.product(*(made[k] for k in order))]


SUBMITIT_LEAST = {"timeout_min": 1, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 1, "gpus_per_node": 0,
                  "mem_gb": 1, "array_parallelism": 1, "max_num_timeout": 0}


def is_joblib(launcher: Any) -> bool:
    """Whether `launcher` is Hydra's joblib launcher, whose jobs run in loky worker processes."""
    try:
        from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
    except ImportError:
        return False
    return isinstance(launcher, JoblibLauncher)


def check_launcher(launcher: Any) -> None:
    """Refuse a launcher option that its launcher would fail on only after the sweep dir is written, or would ignore:
    submitit's counts and sizes below their least (`SUBMITIT_LEAST`); joblib's `n_jobs=0`, a `require`, `backend` or
    `prefer` (its jobs always run in loky processes), an `mmap_mode` numpy has not, a `pre_dispatch` that is no positive
    number of jobs, a `timeout` <= 0, or any value joblib's Parallel refuses (batch_size...)."""
    params = getattr(getattr(launcher, "inner", None), "params", None)  # a submitit launcher's, chunked (`setup`)
    if isinstance(params, dict):
        for key, least in SUBMITIT_LEAST.items():
            value = params.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise UserError(f"hydra.launcher.{key}={value!r} must be an integer >= {least}")
    if not is_joblib(launcher):
        return
    from joblib import Parallel, delayed

    options = launcher.joblib
    if options.get("n_jobs") == 0:
        raise UserError("hydra.launcher.n_jobs=0 must be a number of joblib workers: N >= 1, or -1 for one per CPU "
                        "(-2 for all but one, and so on)")
    if options.get("require") is not None:
        raise UserError(f"hydra.launcher.require={options['require']} with prefer={options.get('prefer')}: Hydra's "
                        "joblib launcher runs every job in a loky worker process, which shares no memory; require "
                        "takes null only")
    for key, allowed in (("backend", (None, "loky")), ("prefer", ("processes",))):  # the launcher sets loky over them
        if options.get(key, allowed[0]) not in allowed:
            raise UserError(f"hydra.launcher.{key}={options[key]}: Hydra's joblib launcher runs every job in a loky "
                            f"worker process; {key} takes {' or '.join(str(a).replace('None', 'null') for a in allowed)} "
                            "only")
    if options.get("mmap_mode") not in MMAP_MODES:  # joblib reads it only once an array is big enough to share
        raise UserError(f"hydra.launcher.mmap_mode={options.get('mmap_mode')} must be one of {', '.join(MMAP_MODES)} "
                        "(numpy.memmap's modes)")
    if options.get("timeout") is not None and not options["timeout"] > 0:
        raise UserError(f"hydra.launcher.timeout={options['timeout']:g} must be the seconds a job may take, > 0, or "
                        "null for no limit")
    try:
        Parallel(**{**options, "backend": "loky"})  # as the launcher makes it (always loky); starts no worker
    except ValueError as e:
        raise UserError(f"hydra.launcher: {e}") from None
    try:  # Parallel reads pre_dispatch once called, after the sweep dir is written: a call of one no-op on threads
        dispatched = Parallel(**{**options, "backend": "threading", "verbose": 0, "timeout": None})([delayed(int)()])
    except ValueError:
        dispatched = []
    if not dispatched:  # 0 dispatches no job at all
        raise UserError(f"hydra.launcher.pre_dispatch={options.get('pre_dispatch')} must be 'all', a number of jobs "
                        ">= 1 or an expression of n_jobs worth one or more, such as 2*n_jobs")


def settable(key: str, value: Any, config_text: str) -> bool:
    """True when setting `key` to `value` in a parsed recipe is what composing and parsing with it give: a scalar that
    is no interpolation, of a key that no interpolation reads and that picks no params file or model world."""
    plain = value is None or isinstance(value, (bool, int, float)) or (
        isinstance(value, str) and not {"$", "\\"} & set(value))
    merged = key == "params" or key.startswith(("world", "model."))
    return plain and not merged and not re.search(r"\$\{[^}]*\b" + re.escape(key) + r"\b", config_text)


def overrides_dirname(overrides: list[Override], exclude_keys: list[str], item_sep: str, kv_sep: str) -> str:
    """`hydra.job.override_dirname` of these overrides, as Hydra spells it."""
    lines = sorted(o.input_line for o in overrides if o.key_or_group not in exclude_keys)
    return item_sep.join(lines).replace("=", kv_sep)


def skipped_line(cannot: dict[tuple, str], jobs: list[list[str]]) -> str:
    """One line naming the cells a sweep skips because their model cannot run them (by the values that vary across
    the sweep), and why (the first reason)."""
    varying = set(varying_keys(jobs))
    cells = [" ".join(item for item in job if item.partition("=")[0].lstrip("+~") in varying) or " ".join(job)
             for job in cannot]
    shown = ", ".join(cells[:4]) + (f" and {len(cells) - 4} more" if len(cells) > 4 else "")
    return (f"sdlab: skipping {len(cells)} of {len(jobs)} cells their model cannot run: {shown} "
            f"({next(iter(cannot.values()))})")


def misfit_of(run: Run, fits: dict[tuple, str | None]) -> str | None:
    """`misfit` of a run, kept in `fits` by its model and scheduler (with its options)."""
    key = (run.job, run.model.key, run.scheduler.name, repr(sorted(run.scheduler.options.items())))
    if key not in fits:
        fits[key] = misfit(run)
    return fits[key]


def job_places(sweep_dir: Path, job_dirs: list[Path], runs: list[Run], width: int) -> tuple[list[Path], dict[int, int]]:
    """Each job's folder, and {job number: folder number} of those not in their own number's (`job_dirs`, numbers
    zero-padded to `width`): a job takes the job dir whose mark names its hash, wherever a rerun that reordered or
    added values left it; one whose own job dir holds another job's mark takes the first number no folder has."""
    owners, moved, homeless = {job.name: h for job, h in marked_jobs(sweep_dir).items()}, {}, []
    marked = {}
    for name, job_hash in owners.items():
        marked.setdefault(job_hash, Path(sweep_dir) / name)  # the first job dir that names it
    used = {int(found.group(1)) for entry in (Path(sweep_dir).iterdir() if Path(sweep_dir).is_dir() else ())
            if (found := re.match(r"(\d+)", entry.name))}
    root = Path(sweep_dir).resolve()
    for num, (job_dir, run) in enumerate(zip(job_dirs, runs)):
        head = str(num).zfill(width)
        if not job_dir.name.startswith(head) or job_dir.parent.resolve() != root:
            continue  # named otherwise by hydra.sweep.subdir: as it says
        found = marked.get(run.job_hash)
        at = re.fullmatch(r"(\d+)" + re.escape(job_dir.name[len(head):]), found.name) if found else None
        if at:
            moved[num] = int(at.group(1))
        elif job_dir.name in owners and not made_from_other_weights(job_dir, run):
            homeless.append(num)  # its own holds another job's cells
        else:
            used.add(num)
    for num in homeless:
        moved[num] = min(set(range(len(used) + 1)) - used)
        used.add(moved[num])
    moved = {num: number for num, number in moved.items() if number != num}
    places = [job_dir.with_name(str(moved[num]).zfill(width) + job_dir.name[len(str(num).zfill(width)):])
              if num in moved else job_dir for num, job_dir in enumerate(job_dirs)]
    return places, moved


def snapshot(config: Any) -> bytes:
    """A composed config frozen to copy from: unpickling it makes a deep copy in a sixth of `copy.deepcopy`'s time
    (1.2 against 7 ms for sdlab's config, Hydra node included)."""
    return pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)


class ComposedConfigs:
    """A config loader that hands the launcher the sweep configs its sweeper already composed to validate them.

    Jobs that differ from an earlier job only in plain values (seed=2 against seed=1, same config groups)
    get that job's config with the new values applied, as Hydra applies them after composing; a value
    whose key another override's key contains or extends is not plain (see `touched`).
    """

    def __init__(self, loader: Any, limit: int = 512):
        self._loader, self._limit = loader, limit
        self._kept: dict[tuple[str, ...], Any] = {}
        self.runs: dict[tuple[str, ...], Any] = {}  # each job's Run, as its pre-flight parsed it
        self._templates: dict[tuple, tuple[list[Override], bytes]] = {}  # each as a `snapshot`
        self._groups: dict[str, bool] = {}  # whether a key is a config group: asked of every override of every job
        self.known: dict[str, Override] = {}  # each override text of the sweep, parsed

    def compose(self, master_config: Any, sweep_overrides: Sequence[str], keep: bool = True) -> Any:
        """Compose one job's config (raising as Hydra would), from an earlier job's template when there is one; with
        `keep`, as the sweeper composes its jobs, it becomes a template and is kept for the launcher, up to `limit`."""
        parsed = self.parsed(sweep_overrides)
        signature = self.signature(parsed)
        config = self._from_template(master_config, signature, parsed)
        if config is None:
            config = self._loader.load_sweep_config(master_config=master_config, sweep_overrides=list(sweep_overrides))
            if keep and signature is not None:
                self._templates[signature] = (parsed, snapshot(config))
        if keep and len(self._kept) < self._limit:
            self._kept[tuple(sweep_overrides)] = config
        return config

    def parsed(self, items: Sequence[str]) -> list[Override]:
        """One job's override texts as Hydra's parser reads them, each parsed once per sweep."""
        return [self.known.get(item) or self.known.setdefault(item, override_parser().parse_override(item))
                for item in items]

    def signature(self, parsed: list[Override]) -> tuple | None:
        """Each override's key, with its value where a job differing in it must be composed afresh."""
        keys = [o.key_or_group for o in parsed]
        if len(set(keys)) != len(keys):
            return None
        values = [o.key_or_group for o in parsed if not self._is_group(o)]
        return tuple((o.key_or_group, None if self._plain_value(o) and not touched(o.key_or_group, values)
                      else o.input_line) for o in parsed)

    def _is_group(self, override: Override) -> bool:
        """A config group choice (a dict value is merged as config, as Hydra does): composed before any value."""
        return self._group_exists(override.key_or_group) and not isinstance(override.value(), dict)

    def _group_exists(self, key: str) -> bool:
        if key not in self._groups:
            self._groups[key] = self._loader.repository.group_exists(key)
        return self._groups[key]

    def _plain_value(self, override: Override) -> bool:
        """A `key=value` change of a config value (not a group, package, hydra key, addition or dict merge)."""
        return (override.type == OverrideType.CHANGE and override.package is None
                and not override.is_hydra_override() and not isinstance(override.value(), dict)
                and not self._group_exists(override.key_or_group))

    def _from_template(self, master_config: Any, signature: tuple | None, parsed: list[Override]) -> Any:
        """The config of an earlier job with the same groups, given these values, or None if there is none."""
        if signature is None or signature not in self._templates:
            return None
        template_overrides, template = self._templates[signature]
        config = pickle.loads(template)  # this process's own snapshot, never a file
        changed = [o for o, was in zip(parsed, template_overrides) if o.input_line != was.input_line]
        try:  # a plain value of a key the template has: what Hydra does for it after composing
            for override in changed:
                OmegaConf.update(config, override.key_or_group, override.value(), merge=True)
        except OmegaConfBaseException:  # a wrong type for a typed node: composing says so as Hydra does
            return None
        app_overrides = [o for o in parsed if not o.is_hydra_override()]
        config.hydra.overrides.task = [o.input_line for o in app_overrides]
        dirname = config.hydra.job.config.override_dirname
        config.hydra.job.override_dirname = overrides_dirname(
            overrides=app_overrides, exclude_keys=list(dirname.exclude_keys), item_sep=dirname.item_sep,
            kv_sep=dirname.kv_sep)
        OmegaConf.copy_cache(from_config=master_config, to_config=config)
        return config

    def forget_templates(self) -> None:
        """Compose later jobs afresh: the sweep's Hydra config changed since the templates were composed."""
        self._templates.clear()

    def load_sweep_config(self, master_config: Any, sweep_overrides: list[str]) -> Any:
        """The kept config of these overrides (handed out once), else one composed again (from its template when an
        earlier job has its config groups)."""
        kept = self._kept.pop(tuple(sweep_overrides), None)
        return kept if kept is not None else self.compose(master_config, sweep_overrides, keep=False)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet, as while unpickling in a launcher's worker
            raise AttributeError(name)
        return getattr(self._loader, name)

    def __getstate__(self) -> dict:
        """A launcher's workers compose nothing ahead: ship them no configs, templates or parsed overrides."""
        return {**self.__dict__, "_kept": {}, "_templates": {}, "runs": {}, "known": {}}


class ComposeOnceSweeper(Sweeper):
    """The basic sweeper's jobs, whose up-front check that every job composes also supplies the launcher's configs."""

    def __init__(self, max_batch_size: int | None, params: dict[str, str] | None = None, preflight: bool = True,
                 cells_per_task: int | None = None):
        """The basic sweeper's options, whether each job is an sdlab job to pre-flight (false for other apps), and how
        many cells a submitit task runs (None: about four tasks per array slot)."""
        self.max_batch_size, self.params, self.preflight = max_batch_size, params or {}, preflight
        self.cells_per_task = cells_per_task
        self.cannot_run: set[tuple] = set()
        self.checking = Progress(Path(), 0.0, 0, math.inf)  # where the checks of the sweep under way stand

    def setup(self, *, hydra_context: HydraContext, task_function: Any, config: Any) -> None:
        """Put the composing loader between the sweeper, its launcher and Hydra's loader."""
        self.config = config
        self.composed = ComposedConfigs(hydra_context.config_loader)
        self.hydra_context = HydraContext(config_loader=self.composed, callbacks=hydra_context.callbacks)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, task_function=task_function, config=config)
        cluster = submitit_cluster(self.launcher)
        if cluster:  # a task per chunk of cells, each loading the model once
            self.launcher = ChunkedSubmitit(self.launcher, cluster, self.cells_per_task)

    def sweep(self, arguments: list[str]) -> Any:
        """Compose (and for sdlab, pre-flight) every job of the sweep, lock its dir, then run it as BasicSweeper does.

        Hydra's basic sweeper writes the sweep dir before it checks the first batch; here a bad value in any job
        stops the sweep with one line before anything is written.
        """
        sweep_dir = str(self.config.hydra.sweep.dir)  # resolved first: jobs copy its `${now:}` from here
        fresh = self.preflight and named_by_sdlab(self.config, "hydra.sweep.dir")
        if fresh and os.path.lexists(sweep_dir):  # a sweep started in the same second has it: take the next name
            sweep_dir = self.move_to(ownership.next_free(Path(sweep_dir)), [])
        for key, null in (("max_batch_size", "all jobs at once"), ("cells_per_task", "about four submitit tasks per "
                                                                             "array slot")):
            if (value := getattr(self, key)) is not None and value < 1:  # typed: Hydra refused any but an integer
                raise UserError(f"hydra.sweeper.{key}={value!r} must be a positive integer or null ({null})")
        check_launcher(self.launcher)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        if swept := next((o for o in overrides if o.get_key_element() == "plan" and o.is_sweep_override()), None):
            raise UserError(f"{swept.input_line} sweeps plan, which takes one value: true plans the sweep, false runs it")
        axes = sweep_axes(overrides)
        count = cell_count(axes)
        if not count:
            raise UserError(f"the sweep {' '.join(arguments)} has no jobs: a glob() or range() that matches nothing?")
        if self.preflight:  # before building and composing them all: a 10**9-cell typo is one line, not memory
            first = resolved(self.composed.compose(self.config, [o.input_line for o in cells(axes, first=True)[0]]))
            if count > limits(first)["max_cells"]:
                raise UserError(f"the sweep has {count} cells, more than limits.max_cells="
                                f"{limits(first)['max_cells']}; raise it with limits.max_cells=N or sweep fewer values")
        parsed_jobs = cells(axes)
        self.composed.known.update((o.input_line, o) for job in parsed_jobs for o in job)
        jobs = [[o.input_line for o in job] for job in parsed_jobs]
        typed = display_overrides([o.input_line for o in overrides])
        if self.preflight and first.get("plan") is True:
            hashed = Path(sweep_dir).is_dir()  # a new folder has no finished cell to match by hash
            planned, cannot = self.plan_cells(jobs, hashed, typed)
            if cannot and not planned:
                raise UserError(next(iter(cannot.values())))
            typed_hydra = OmegaConf.to_container(self.config.hydra.overrides.hydra, resolve=False)
            if FOLDER_KEYS & display_overrides(typed_hydra).keys():  # folders not the default's: checked as the sweep will
                width = job_number_width(Path(sweep_dir), len(jobs))
                os.environ[JOB_FOLDER_WIDTH], os.environ[JOB_FOLDERS] = str(width), ""
                self.check_dirs(sweep_dir, [self.composed.compose(self.config, job) for job in jobs])
            print(plan_text(planned, Path(sweep_dir), [skipped_line(cannot, jobs)] if cannot else [], *self.packing()),
                  flush=True)
            return []
        announced = self.preflight and len(jobs) >= ANNOUNCED_CELLS
        if announced:
            log.info("sdlab: checking %d cells before anything is written", len(jobs))
        self.checking = Progress(Path(sweep_dir), time.time(), 3 * len(jobs),  # composed, pre-flighted, its folder
                                 CHECK_LINES_EVERY if announced else math.inf)
        composed = []
        for job in jobs:
            composed.append(self.composed.compose(self.config, job))
            self.checking.checked(len(jobs))
        if self.preflight:
            warnings, runs, cannot = {}, [], {}
            parsed, recorded = self.recorded_runs(sweep_dir, composed)
            parsed = parsed or [composed_run(config) for config in composed]  # every value typed before any file check
            for job, run in zip(jobs, parsed):
                self.checking.checked(len(jobs))
                try:
                    job_warnings = [] if recorded else check_job(run)
                except CannotRun as e:  # a scheduler with no solver for this cell's model, from a glob(*) say
                    cannot[tuple(job)] = str(e)
                    continue
                warnings.update(dict.fromkeys(job_warnings))
                runs.append(run)
                self.composed.runs[tuple(job)] = run
            if cannot and not runs:
                raise UserError(next(iter(cannot.values())))
            check_sweep(runs, typed)  # the jobs that will run, together
            warnings = [*warnings, *([skipped_line(cannot, jobs)] if cannot else [])]
            for warning in warnings:
                log.warning(warning)
            self.cannot_run = set(cannot)
        width = job_number_width(Path(sweep_dir), len(jobs) - len(self.cannot_run))
        os.environ[JOB_FOLDER_WIDTH], os.environ[JOB_FOLDERS], moved = str(width), "", {}  # each in its number's
        if self.preflight:  # sdlab's folders: its own, and every job dir inside
            job_dirs = self.check_dirs(sweep_dir, composed)
            if not fresh:
                ownership.claim(Path(sweep_dir), "hydra.sweep.dir")  # before the first write; a second sdlab stops here
            elif (claimed := ownership.claim_new(Path(sweep_dir), "hydra.sweep.dir")) != Path(sweep_dir):
                sweep_dir = self.move_to(claimed, composed)  # another sweep made it since: this one has the next name
                job_dirs = self.check_dirs(sweep_dir, composed)
            if len(job_dirs) == len(runs):  # each job where its cell is, whatever its number now
                job_dirs, moved = job_places(Path(sweep_dir), job_dirs, runs, width)
        else:
            job_dirs = []
            lock.hold(Path(sweep_dir))
        for job_dir in job_dirs:  # locked by a single run into it: it is not this sweep's to write
            holder = lock.live_holder(job_dir) if job_dir.is_dir() else None
            if holder is not None:
                lock.release(Path(sweep_dir))
                raise lock.DirInUse(f"{job_dir} is in use by sdlab process {holder.get('pid')} on {holder.get('host')}; "
                                    f"wait for it or choose another hydra.sweep.dir")
        clean_temp_files(Path(sweep_dir))  # a kill during the last collection
        launched = [job for job in jobs if tuple(job) not in self.cannot_run]
        if self.preflight:  # how a rerun of this command finds this folder, and what grid, summary and report label by
            finished, reweighted = set(), []
            if len(job_dirs) == len(runs):  # a launcher that runs every cell counts them in its progress from the start
                finished = {num for num, (job_dir, run) in enumerate(zip(job_dirs, runs))
                            if run.resume and finished_job(job_dir, run.job_hash) is not None}
                if hasattr(self.launcher, "finished"):  # it spends nothing on them
                    self.launcher.finished = finished
                reweighted = [num for num, (job_dir, run) in enumerate(zip(job_dirs, runs))
                              if num not in finished and run.resume and made_from_other_weights(job_dir, run)]
            try:
                for num, run in enumerate(runs if recorded else ()):  # a cell recorded finished whose files went since
                    for warning in check_job(run) if num not in finished else ():
                        log.warning(warning)
            except UserError:
                lock.release(Path(sweep_dir))
                raise
            task, hydra = (OmegaConf.to_container(self.config.hydra.overrides[k], resolve=False) for k in ("task", "hydra"))
            hydra = [h for h in hydra if h != RECIPES_SUBDIR]  # sdlab's own over recipes: a rerun adds it again
            write_manifest(Path(sweep_dir), task, launched, hydra, hashes=[run.job_hash for run in runs],
                           finished=len(finished), warnings=None if recorded else warnings,
                           shown=[display_overrides(job) for job in launched], folders=moved,
                           work=[0 if num in finished else cell_work(cell_of(run, work_of))
                                 for num, run in enumerate(runs)])
            os.environ[JOB_FOLDERS] = str(sweep_dir) if moved else ""  # its manifest says where they go
            taken = (f"; {len(finished)} finished before: not run again (resume=false runs them again)"
                     if finished and hasattr(self.launcher, "finished") else "")
            taken += f"; {len(reweighted)} made from weights that changed since: made again" if reweighted else ""
            log.info("sdlab: %s -> %s%s", sweep_plan(runs), sweep_dir, taken)
        return self.launch(launched, Path(sweep_dir))

    def packing(self) -> tuple[int | None, Callable[[int], int] | None]:
        """How the launcher groups the jobs it runs into shared calls, for a plan: how many jobs from each one work
        ahead with it (None: each job makes its own calls), and how many of N cells a submitit task takes."""
        launcher = self.launcher
        if isinstance(launcher, ChunkedSubmitit):
            return (MAX_CELLS if getattr(launcher.inner.task_function, "works_ahead", False) else None,
                    launcher.task_size)
        return (AHEAD_WINDOW if getattr(launcher, "ahead", False) is True else None), None

    def move_to(self, folder: Path, composed: list[Any]) -> str:
        """Point the sweep, each job `composed` so far and each one composed later (here or in a launcher, from the
        sweep's Hydra overrides) at `folder`, the free name its default dir gave way to; that dir, as text."""
        with read_write(self.config.hydra):
            self.config.hydra.sweep.dir = str(folder)
            self.config.hydra.overrides.hydra.append(f"hydra.sweep.dir={hydra_quote(str(folder))}")
        for config in composed:
            with read_write(config.hydra):
                config.hydra.sweep.dir = str(folder)
        self.composed.forget_templates()
        HydraConfig.instance().set_config(self.config)
        CollectSweep.follow(folder)
        return str(folder)

    def recorded_runs(self, sweep_dir: str, composed: list[Any]) -> tuple[list[Run] | None, bool]:
        """When the launcher leaves finished cells alone and the sweep's manifest is complete for as many cells: each
        cell's Run, parsed ahead, and whether the manifest records every one finished with the same hash (then nothing
        will run, so nothing is pre-flighted and nothing imported to check weights and schedulers; a cell whose files
        went since is checked before the launch). Else (None, False)."""
        manifest = read_manifest(Path(sweep_dir)) if hasattr(self.launcher, "finished") else None
        if not manifest or manifest.get("complete") is not True or manifest.get("cells") != len(composed):
            return None, False
        runs = [composed_run(config) for config in composed]
        return runs, manifest.get("hashes") == [run.job_hash for run in runs] and all(run.resume for run in runs)

    def plan_cells(self, jobs: list[list[str]], hashed: bool,
                   given: dict[str, str]) -> tuple[list[Cell], dict[tuple, str]]:
        """Each job as the plan sees it, its values checked and typed as the sweep's are (its model and schedulers are
        pre-flighted when the sweep starts: that imports diffusers), but fast: a job differing from an earlier one of
        the same config groups only in plain values (see `ComposedConfigs`) is that job's recipe with those values set,
        typed once per distinct set of values but the seed. Without `hashed`, a cell's hash is left empty. Jobs whose
        model cannot run their scheduler (`misfit`, asked once per model and scheduler) are left out, with why. The
        settings `given` on the command line are checked as the sweep checks them (`check_sweep`)."""
        shapes, typed, planned, cannot, fits, runs = {}, {}, [], {}, {}, []
        for job in jobs:
            parsed = self.composed.parsed(job)
            signature = self.composed.signature(parsed)
            template, base, text = shapes.get(signature, (None, None, ""))
            changed = {o.key_or_group: o.value() for o, was in zip(parsed, template or [])
                       if o.input_line != was.input_line}
            if base is None or not all(settable(key, value, text) for key, value in changed.items()):
                config = self.composed.compose(self.config, job)
                run = parse_job(config, set(display_overrides(task_overrides(config.hydra))))
                if signature is not None and base is None:
                    unresolved = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
                    shapes[signature] = parsed, run, OmegaConf.to_yaml(unresolved)
                runs.append(run)
                if (why := misfit_of(run, fits)) is not None:
                    cannot[tuple(job)] = why
                    continue
                planned.append(cell_of(run, work_of))
                continue
            recipe = dict(base.recipe)
            for key, value in changed.items():  # as composing sets a plain value: the world and params merges keep it
                *parents, leaf = key.split(".")
                node = recipe
                for part in parents:
                    node[part] = node = dict(node[part])
                node[leaf] = value
            values = (signature, *sorted((k, repr(v)) for k, v in changed.items() if k != "seed"))
            if values not in typed:
                run = typed_run(recipe)
                typed[values] = run, cell_of(run, work_of)
            run, cell = typed[values]
            runs.append(run)
            if (why := misfit_of(run, fits)) is not None:
                cannot[tuple(job)] = why
                continue
            seeds = check_seeds((recipe["seed"],)) if "seed" in recipe and recipe.get("seeds") is None else cell.seeds
            planned.append(dataclasses.replace(cell, job_hash=dataclasses.replace(run, recipe=recipe).job_hash
                                               if hashed else "", seeds=seeds))
        check_sweep(runs, given)  # a job of the fast path: its values' run (its seed aside)
        return planned, cannot

    def launch(self, jobs: list[list[str]], sweep_dir: Path) -> list[Any]:
        """Run the jobs in batches of `max_batch_size` (all at once by default), raising a failed job's error."""
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        size = self.max_batch_size or max(len(jobs), 1)
        returns = []
        # a loky worker or local submitit task that Ctrl-C meets would print a traceback of its own
        local = is_joblib(self.launcher) or getattr(self.launcher, "cluster", None) == "local"
        workers = deaf_children if local else contextlib.nullcontext
        for start in range(0, len(jobs), size):
            with workers():
                results = self.launcher.launch(jobs[start:start + size], initial_job_idx=start)
            for result in results:
                _ = result.return_value  # raises the job's exception, as the basic sweeper does
            returns.append(results)
        return returns

    def check_dirs(self, sweep_dir: str, composed: list[Any]) -> list[Path]:
        """Each job's folder, once its number is known: the sweep dir and every job dir are sdlab's (new, empty or
        marked), and every job dir, log and `.hydra/` resolves inside it (never the sweep dir itself) and is no other
        job's; refused with one line before anything is written."""
        root = ownership.checked_folder(sweep_dir, "hydra.sweep.dir")
        ownership.check_writes_inside(root, "hydra.sweep.dir", str(self.config.hydra.job.name), None, shown=sweep_dir)
        if (pickles := self.config.hydra.launcher.get("submitit_folder")) is not None:  # submitit's pickles and logs
            ownership.confined(root, str(Path(str(pickles).replace("%j", "0")).absolute()),
                               "hydra.launcher.submitit_folder")
        original = HydraConfig.instance().cfg
        job_dirs, owners = [], {}
        try:
            for num, config in enumerate(composed):
                with open_dict(config):  # as the launcher numbers it (and will again)
                    config.hydra.job.id = num
                    config.hydra.job.num = num
                given = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
                if "${hydra:" in str(given):
                    readonly = OmegaConf.is_readonly(config.hydra)
                    HydraConfig.instance().set_config(config)  # `${hydra:...}` needs it (and it sets read-only)
                    OmegaConf.set_readonly(config.hydra, readonly)
                job_dir = ownership.confined(root, str(config.hydra.sweep.subdir), "hydra.sweep.subdir")
                if (owner := owners.setdefault(job_dir, num)) != num:  # its rows, images and .hydra/ written over
                    raise UserError(f"hydra.sweep.subdir={given} gives jobs {owner} and {num} the same folder "
                                    f"{job_dir}; each job needs its own folder: use ${{hydra.job.num}} (the default) "
                                    "or the swept values in it")
                # taken as the sweep dir is: new, empty or marked (a marked sweep dir's other folders are not sdlab's),
                # or holding only what a launch cut short wrote before its job could mark it
                shown = str(Path(sweep_dir, str(config.hydra.sweep.subdir)))
                name, subdir = str(config.hydra.job.name), config.hydra.output_subdir
                subdir = None if subdir is None else str(subdir)
                ownership.check_owned(job_dir, "hydra.sweep.subdir", shown, ownership.launch_files(name, subdir))
                ownership.check_writes_inside(job_dir, "hydra.sweep.subdir", name, subdir, shown=shown)
                job_dirs.append(job_dir)
                self.checking.checked(len(composed))
        finally:
            HydraConfig.instance().cfg = original
        return job_dirs
