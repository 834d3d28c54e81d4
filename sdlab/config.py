"""The settings of a run as dataclasses; each field carries the Field that checks it, the one way a value is checked."""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable

from sdlab.conf_files import conf_values, group_options
from sdlab.errors import UserError, near_miss, repeats
from sdlab.untrusted import check_text

MODEL_NAMES = tuple(group_options("model"))  # conf/model/<name>.yaml
MODEL_FAMILIES = tuple(sorted(p.stem for p in (Path(__file__).parent / "models" / "families").glob("*.py")
                              if p.stem not in ("__init__", "base")))  # sdlab/models/families/<family>.py
MODEL_KINDS = ("epsilon", "v_prediction", "flow")  # what a model predicts; schedulers declare the kinds they fit
DTYPES = ("auto", "float32", "float16", "bfloat16")
VARIANTS = ("fp16", "bf16", "fp32", "non_ema", "ema")  # `model.variant`: weights saved under that name
ATTENTION = ("sdpa", "eager")
MKLDNN = (True, False, "auto")
MAX_SEED = 2**63 - 1  # seeds live in int64 table columns
# keys of which only one takes effect, on the command line and in a params file alike, and why
EXCLUSIVE = {("prompt", "prompt_file"): "both set the prompts", ("seed", "seeds"): "seeds, when set, replaces seed"}
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
WORDS = {"int": "an integer", "number": "a number", "str": "a string", "ints": "a non-empty list of integers",
         "numbers": "a non-empty list of numbers", "strs": "a non-empty list of strings",
         "int_lists": "a non-empty list of non-empty integer lists", "entries": "a list of names or mappings",
         "mapping": "a mapping"}
ALIASES = {  # names users bring from other image tools
    "steps": "num_inference_steps", "cfg": "guidance_scale", "cfg_scale": "guidance_scale",
    "sampler": "scheduler", "sampler_name": "scheduler", "negative": "negative_prompt",
    "neg_prompt": "negative_prompt", "size": "width and height", "n_iter": "seeds", "batch_count": "seeds",
}


def suggestion(word: str, candidates: list[str] | set[str]) -> str:
    """' (did you mean X?)' for a near miss or a name from another tool, else ''."""
    if word in ALIASES:
        return f" (did you mean {ALIASES[word]}?)"
    return near_miss(word, candidates)


@dataclass(frozen=True)
class Field:
    """What one value may be; a `plain` one names a wrong type before its range, `rule` words what bounds cannot."""

    kind: str = "int"
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    optional: bool = False
    plain: bool = False
    rule: str = ""
    multiple: int = 1
    distinct: bool = False  # a list that names each value once

    def allowed(self) -> str:
        """What the field takes, in words."""
        if self.rule:
            return self.rule
        if self.kind == "choice":
            return f"one of: {', '.join(map(as_written, self.choices))}"
        bounds = " and ".join(f"{sign} {bound:g}" for sign, bound in ((">=", self.low), ("<=", self.high))
                              if bound is not None)
        each = "" if self.kind in ("int", "number") else ", each"
        return f"{WORDS[self.kind]}{each} {bounds}" if bounds else WORDS[self.kind]

    def check(self, name: str, value: Any) -> Any:
        """The value, normalised (integral float -> int, lone item -> list), or a UserError naming what is allowed;
        text holds no control character."""
        value = self._check(name, value)
        for text in [value] if isinstance(value, str) else value if self.kind == "strs" and value else ():
            check_text(text, name)
        return value

    def _check(self, name: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if self.plain:
            return self._plain(name, value)
        lone = (self.kind in ("ints", "numbers", "strs") and isinstance(value, (int, float, str))
                and not isinstance(value, bool)) or (self.kind == "entries" and isinstance(value, (str, dict)))
        listed = [value] if lone else value
        if listed is not None and self.fits(listed):
            return listed
        if self.distinct and not self.rule and replace(self, distinct=False).fits(listed):
            raise UserError(f"{name}={as_typed(value)} repeats {repeats(listed)[0]!r}; list each once")
        raise UserError(f"{name}={as_typed(value)} must be {self.allowed()}" + (" or null" if self.optional else ""))

    def fits(self, value: Any) -> bool:
        """Whether `value` has the field's type and lies inside its bounds."""
        if self.kind == "choice":
            return value in self.choices
        if self.kind == "str":
            return isinstance(value, str) and bool(value)
        if self.kind == "entries":
            return isinstance(value, (list, tuple)) and all(isinstance(v, (str, dict)) and v for v in value)
        if self.kind == "mapping":
            return isinstance(value, dict)
        if self.kind in ("int", "number"):
            return _scalar(value, self.kind == "int") and self._inside(value)
        if not isinstance(value, (list, tuple)) or not value:
            return False
        if self.kind == "int_lists":
            return all(isinstance(v, (list, tuple)) and v and all(_scalar(x, True) and self._inside(x) for x in v)
                       for v in value)
        if self.kind == "strs":
            each = all(isinstance(v, str) and v for v in value)
        else:
            each = all(_scalar(v, self.kind == "ints") and self._inside(v) for v in value)
        return each and (not self.distinct or len(set(value)) == len(value))

    def _inside(self, value) -> bool:
        return ((self.low is None or value >= self.low) and (self.high is None or value <= self.high)
                and (self.multiple == 1 or value % self.multiple == 0))

    def _plain(self, name: str, value: Any) -> Any:
        null = " or null" if self.optional else ""
        if self.kind in ("bool", "str"):
            if not isinstance(value, bool if self.kind == "bool" else str):
                said = "true or false" if self.kind == "bool" else f"{self.rule or 'a string'}{null}"
                raise UserError(f"{name}={as_typed(value)} must be {said}")
            return value
        if self.kind == "choice":
            if type(value) not in {type(c) for c in self.choices}:  # 1 == True: the type decides
                raise UserError(f"{name}={as_typed(value)} is not allowed; choose one of: "
                                f"{', '.join(map(as_written, self.choices))}")
            if value not in self.choices:
                raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(map(as_written, self.choices))}")
            return value
        if self.kind == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            elif isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{name}={as_typed(value)} is not an integer")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{name}={as_typed(value)} is not a number")
            if not math.isfinite(value):
                raise UserError(f"{name}={value} is not a finite number")
            value = float(value)
        if not self._inside(value):
            bounds = f"in [{self.low:g}, {self.high:g}]" if self.high is not None else f">= {self.low:g}"
            raise UserError(f"{name}={value} must be {self.rule or bounds}{null}")
        return value


def as_written(value: Any) -> str:
    """A choice as YAML and the command line write it: true, false, null, else as it is."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def as_typed(value: Any) -> str:
    """A value as the user typed it: `null`, `true` and `false` (on the command line and in JSON), else its repr."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def _scalar(value: Any, integer: bool) -> bool:
    return not isinstance(value, bool) and isinstance(value, int if integer else (int, float))


AS_GIVEN = SimpleNamespace(check=lambda name, value: value)  # a field no Field describes: its user checks it


def checked(default: Any, kind: str, low: float | None = None, high: float | None = None, plain: bool = True,
            **rules) -> Any:
    """A dataclass field with its default and the Field that checks it (plain unless told)."""
    return field(default=default, metadata={"check": Field(kind, low, high, plain=plain, **rules)})


def check_fields(values: dict[str, Any], fields: dict[str, Field], prefix: str = "") -> dict[str, Any]:
    """Every field present in `values` fits (named `prefix` + name); the checked values."""
    return {name: rule.check(prefix + name, values[name]) for name, rule in fields.items() if name in values}


def refuse_unknown(block: dict[str, Any], known: Iterable[str], key: str) -> None:
    """A UserError naming the first key of the `key:` block that is not among `known`, with its near miss."""
    if unknown := sorted(set(block) - set(known)):
        raise UserError(f"{key}.{unknown[0]} is not a key of {key}{suggestion(unknown[0], set(known))}; its keys "
                        f"are: {', '.join(known)}")


def rules_of(cls) -> dict[str, Field]:
    """The Fields of a dataclass, by field name, in declaration order."""
    return {f.name: f.metadata["check"] for f in fields(cls) if "check" in f.metadata}


def check_block(cfg: dict[str, Any], key: str, fields: dict[str, Field],
                needed: tuple[str, ...] = ()) -> dict[str, Any]:
    """The recipe's `key:` block, a dict whose keys are `fields`, `needed` among them, and whose values fit them."""
    block = cfg.get(key)
    if not isinstance(block, dict):
        said = f"job {cfg.get('job')} needs a `{key}:` block" if block is None else f"{key}={block!r} must be a mapping"
        raise UserError(f"{said} of {', '.join(fields)}")
    refuse_unknown(block, fields, key)
    missing = [name for name in needed if name not in block]
    if missing:
        raise UserError(f"{key}.{missing[0]} is missing: the {key} block sets {', '.join(needed)}")
    return {**block, **check_fields(block, fields, f"{key}.")}


POSITIVE = {"kind": "int", "low": 1, "plain": False, "rule": "a positive integer"}
# What conf/common/scheduler.yaml sets, checked before any library loads; models/schedulers.check_options: if it fits
SCHEDULER_OPTIONS = {
    "timestep_spacing": Field("choice", choices=("leading", "linspace", "trailing"), plain=True),
    "use_karras_sigmas": Field("bool", plain=True),
    "rescale_betas_zero_snr": Field("bool", plain=True),
    "final_sigmas_type": Field("choice", choices=("zero", "sigma_min"), plain=True),
    "steps_offset": Field("int", 0, 1000, plain=True),  # added to every timestep: within the trained ones (check_steps)
    # a flow shift s maps sigma to s sigma / (1 + (s - 1) sigma): s > 0, the least positive float up
    "shift": Field("number", math.ulp(0.0), sys.float_info.max, rule="a positive finite number"),
    "use_dynamic_shifting": Field("bool", plain=True),
}
SEED_RULE = {"kind": "int", "low": 0, "high": MAX_SEED, "plain": False, "rule": "an integer in [0, 2**63-1]"}
# Defaults are written once, in conf/; `limits:` holds checks that fail in a second instead of filling memory
BASE, MODEL = conf_values("config.yaml"), conf_values("common/model.yaml")
LIMITS: dict[str, int] = dict(BASE["limits"])
MAX_GUIDANCE = 1000  # far past any useful scale; much larger ones overflow the guided latents (1e308: NaN at once)
SIDE_MULTIPLE = 8  # every family's VAE makes latents 8x smaller: no model makes other sides
# sd3 and flux then take the latents in 2x2 patches: SD3's pipeline refuses other sizes, Flux's would shrink them
SIDE_MULTIPLES = {"sd3": 16, "flux": 16}
SEED = Field("int", 0, MAX_SEED, plain=True, rule="in [0, 2**63-1]")
# A recipe's `made_for:` block: the models it was written for, and what it shows on the others (a warning)
MADE_FOR = {"what": Field("str", plain=True), "models": Field("strs"), "here": Field("str", plain=True)}
# An article recipe's `article:` block: its figure's id and question (the sweep index), what the article reports
ARTICLE = {"id": Field("str", plain=True), "question": Field("str", plain=True),
           "reports": Field("str", plain=True, optional=True)}


@dataclass(frozen=True)
class ModelSpec:
    """Which pipeline to load and where to run it."""

    name: str
    family: str = checked(MODEL["family"], "choice", choices=MODEL_FAMILIES)  # a folder's model_index.json wins
    path: str | None = checked(None, "str", optional=True)
    repo_id: str | None = checked(None, "str", optional=True)
    resolution: int = checked(MODEL["resolution"], "int", 1, rule="a positive integer")  # its multiple: check_sides
    device: str = MODEL["device"]
    dtype: str = checked(MODEL["dtype"], "choice", choices=DTYPES)
    channels_last: bool = checked(MODEL["channels_last"], "bool")
    compile: bool = checked(MODEL["compile"], "bool")
    attention: str = checked(MODEL["attention"], "choice", choices=ATTENTION)
    mkldnn: bool | str = checked(MODEL["mkldnn"], "choice", choices=MKLDNN)  # or "auto": by network (models/device.py)
    t5: bool = checked(MODEL["t5"], "bool")  # SD3: false leaves the T5 text encoder out
    max_sequence_length: int | None = checked(None, "int", 1, 512, optional=True)  # T5 tokens; None: the family's
    variant: str | None = checked(None, "choice", choices=VARIANTS, optional=True)  # weights named `*.fp16.*` and so on

    def __post_init__(self):
        for name, value in check_fields(asdict(self), rules_of(ModelSpec), "model.").items():
            object.__setattr__(self, name, value)  # an integral float as int

    @property
    def key(self) -> tuple:
        """Identity of the loaded pipeline in the per-process cache."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "resolution")

    @property
    def image_options(self) -> dict[str, Any]:
        """The settings besides its weights that change what the model draws, where they are not the defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name in ("dtype", "t5", "max_sequence_length") and getattr(self, f.name) != f.default}


@dataclass(frozen=True)
class SchedulerChoice:
    """A registered scheduler name and the user's option overrides (None keeps the model's value)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationParams:
    """One generate request, named as in diffusers; `seeds` are generated batched, `batch_size` at a time."""

    prompt: str = checked("", "str")
    negative_prompt: str = checked(BASE["negative_prompt"], "str")
    seeds: tuple[int, ...] = (0,)
    num_inference_steps: int = checked(BASE["num_inference_steps"], "int", 1)
    guidance_scale: float = checked(BASE["guidance_scale"], "number", 0, MAX_GUIDANCE)
    width: int = checked(512, "int", 1, rule="a positive integer")  # the multiple its family needs: check_sides
    height: int = checked(512, "int", 1, rule="a positive integer")
    eta: float = checked(BASE["eta"], "number", 0, 1)
    batch_size: int | str = checked(BASE["batch_size"], "int", 1)  # or "auto": as many as `limits.batch_pixels` allow

    def __post_init__(self):
        rules = rules_of(GenerationParams)
        if isinstance(self.batch_size, str) or self.batch_size is None:
            if self.batch_size != "auto":
                raise UserError(f"batch_size={as_typed(self.batch_size)} must be a positive integer or auto")
            del rules["batch_size"]
        for name, value in {"seeds": check_seeds(self.seeds), **check_fields(asdict(self), rules)}.items():
            object.__setattr__(self, name, value)  # an integral float as int, a plain number as float


# What one image is made with (its row, cell hash, PNG): every field but `seeds` (it has one) and `batch_size`
IMAGE_PARAMS = tuple(f.name for f in fields(GenerationParams) if f.name not in ("seeds", "batch_size"))
TEXT_PARAMS = tuple(f.name for f in fields(GenerationParams) if f.type == "str")  # prompt, negative_prompt


def image_params(params: GenerationParams) -> dict[str, Any]:
    """A request's IMAGE_PARAMS by name, as its rows carry them."""
    return {name: getattr(params, name) for name in IMAGE_PARAMS}


def check_seeds(seeds: tuple, key: str = "seed") -> tuple[int, ...]:
    """Seeds as a tuple of distinct integers in [0, 2**63-1], at least one; a bad one named as `key` gives it."""
    if not seeds:
        raise UserError("seeds=[] is empty; give at least one integer seed")
    seeds = tuple(SEED.check(key if key == "seed" else f"{key}[{i}]", s) for i, s in enumerate(seeds))
    if twice := repeats(seeds):
        shown = list(seeds) if len(seeds) <= 20 else f"[{len(seeds)} seeds]"
        raise UserError(f"seeds={shown} repeats seed {twice[0]}; list each seed once (one image per seed)")
    return seeds


def limits(cfg: dict[str, Any]) -> dict[str, int]:
    """The `limits:` block over its defaults; each must be a positive integer."""
    given = cfg.get("limits") or {}
    if not isinstance(given, dict):
        raise UserError(f"limits={given!r} must be a mapping of {', '.join(LIMITS)}")
    if unknown := [key for key in given if key not in LIMITS]:
        raise UserError(f"unknown limit {unknown[0]!r}; limits are: {', '.join(LIMITS)}")
    given = {k: v for k, v in given.items() if v is not None}
    return {**LIMITS, **check_fields(given, dict.fromkeys(LIMITS, Field(**POSITIVE)), "limits.")}


def check_threads(name: str, threads: Any, limit: dict[str, int]) -> int | None:
    """A torch CPU thread count (None: torch's default) of at most `limits.max_threads`."""
    threads = Field(**POSITIVE, optional=True).check(name, threads)
    if threads is not None and threads > limit["max_threads"]:
        raise UserError(f"{name}={threads} is above limits.max_threads={limit['max_threads']}; raise it with "
                        "limits.max_threads=N on a machine that has them")
    return threads


def clash(keys) -> tuple[tuple[str, str], str] | None:
    """The first EXCLUSIVE pair whose keys are both among `keys`, with why only one would take effect; else None."""
    return next(((pair, why) for pair, why in EXCLUSIVE.items() if all(key in keys for key in pair)), None)


def rivals(key: str) -> set[str]:
    """The keys EXCLUSIVE with `key`: one of them set leaves `key` without effect."""
    return {other for pair in EXCLUSIVE if key in pair for other in pair if other != key}


def generation_params(cfg: dict[str, Any], resolution: int) -> GenerationParams:
    """GenerationParams from the config, within its limits: `seeds` wins over `seed`, sizes default to the model's."""
    seeds = cfg.get("seeds")
    if seeds is None:
        seeds = [cfg.get("seed", 0)]
    if isinstance(seeds, (int, str)):
        seeds = [seeds]
    if not isinstance(seeds, (list, tuple)):
        raise UserError(f"seeds={seeds!r} must be a list of integers or null")
    if cfg.get("seeds") is not None:  # named as the user gave them (GenerationParams checks them as seeds of images)
        check_seeds(tuple(seeds), "seeds")
    given = {k: cfg[k] for k in rules_of(GenerationParams) if k in cfg and not (cfg[k] is None and BASE.get(k) is None)}
    p = GenerationParams(seeds=tuple(seeds), **{"width": resolution, "height": resolution, **given})
    limit = limits(cfg)
    if p.batch_size == "auto":  # a memory budget in pixels per call: 4 images at 512 x 512, 256 at 64 x 64
        fit = limit["batch_pixels"] // (p.width * p.height)
        p = replace(p, batch_size=max(1, min(fit, limit["max_batch_size"])))
    sizes = [(f"width={p.width}", p.width, "max_side"), (f"height={p.height}", p.height, "max_side"),
             (f"width x height = {p.width} x {p.height}", p.width * p.height, "max_pixels"),
             (f"num_inference_steps={p.num_inference_steps}", p.num_inference_steps, "max_steps"),
             (f"batch_size={p.batch_size}", p.batch_size, "max_batch_size"),
             (f"{len(p.seeds)} seeds", len(p.seeds), "max_seeds")]
    for said, value, key in sizes:
        if value > limit[key]:
            verb = "are more than" if key == "max_seeds" else "is above"
            raise UserError(f"{said} {verb} limits.{key}={limit[key]}{' in one job' * (key == 'max_seeds')}; "
                            f"raise it with limits.{key}=N on a machine that can take it")
    return p


def check_sides(spec: ModelSpec, family: str, width: Any = None, height: Any = None) -> None:
    """`model.resolution`, `width` and `height` (those given) are positive multiples of the side `family` makes."""
    multiple = SIDE_MULTIPLES.get(family, SIDE_MULTIPLE)
    rule = Field("int", 1, plain=True, multiple=multiple,
                 rule=f"a positive multiple of {multiple} on model={spec.name} (family {family})")
    sides = {"model.resolution": spec.resolution, "width": width, "height": height}
    check_fields({key: value for key, value in sides.items() if value is not None}, dict.fromkeys(sides, rule))


def model_spec(cfg: dict[str, Any], limit: dict[str, int] | None = None) -> ModelSpec:
    """ModelSpec from the `model` group, every field checked (and the resolution against `limit`)."""
    if not isinstance(cfg, dict):
        raise UserError(f"model={cfg!r} must be a model config; choose one of: {', '.join(MODEL_NAMES)}")
    if cfg.get("name") not in MODEL_NAMES:
        raise UserError(f"model.name={cfg.get('name')!r} is not a model; choose one of: {', '.join(MODEL_NAMES)}")
    given = {k: cfg[k] for k in rules_of(ModelSpec) if k in cfg}
    spec = ModelSpec(name=cfg["name"], device=cfg.get("device", "auto"), **given)
    if limit and spec.resolution > limit["max_side"]:
        raise UserError(f"model.resolution={spec.resolution} is above limits.max_side={limit['max_side']}")
    if not isinstance(spec.device, str) or not DEVICE.fullmatch(spec.device):
        raise UserError(f"model.device={spec.device!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    return spec


@dataclass(frozen=True)
class Run:
    """One job's settings, typed and checked once; `recipe`, the effective config, holds the job's own keys."""

    job: str
    model: ModelSpec
    scheduler: SchedulerChoice
    params: GenerationParams
    limits: dict[str, int]
    recipe: dict[str, Any]
    threads: int | None = None
    resume: bool = True
    weights: str | None = None  # what its rows are made from: the model's and scorers' weights (bench.run.typed_run)
    notes: tuple[str, ...] = ()  # what parsing skipped or overrode, said by pre-flight once every check passed

    @cached_property  # read for the manifest, the plan line and each resume check: worked out once (a frozen Run)
    def job_hash(self) -> str:
        """The recipe's hash (`resume`, `plan` and `limits` aside) with its weights: a rerun finds its rows by it."""
        recipe = {k: v for k, v in self.recipe.items() if k not in ("resume", "plan", "limits")}
        return config_hash(recipe if self.weights is None else {**recipe, "weights": self.weights})


def checked_run(cfg: dict[str, Any]) -> Run:
    """The Run of an effective config, or a UserError naming its first bad value; reads no files, loads no model."""
    limit = limits(cfg)
    threads = check_threads("threads", cfg.get("threads"), limit)
    resume = Field("bool", plain=True).check("resume", cfg.get("resume", True))
    Field("bool", plain=True).check("plan", cfg.get("plan", False))
    Field("str", plain=True, optional=True, rule="a file path").check("params", cfg.get("params"))
    spec = model_spec(cfg.get("model"), limit)
    if not spec.path:  # a folder's model_index.json names its family instead: check_model checks its sides
        check_sides(spec, spec.family, cfg.get("width"), cfg.get("height"))
    scheduler = cfg.get("scheduler")
    if not isinstance(scheduler, dict):
        raise UserError(f"scheduler={scheduler!r} must be a scheduler config")
    for key, block, needed in (("made_for", MADE_FOR, tuple(MADE_FOR)), ("article", ARTICLE, ("id", "question"))):
        if cfg.get(key) is not None:
            check_block(cfg, key, block, needed)
    clip = cfg.get("clip")
    if clip is not None:
        if not isinstance(clip, dict):
            raise UserError(f"clip={clip!r} must be a clip config or null")
        check_fields(clip, dict.fromkeys(("name", "path", "repo_id"), Field("str", plain=True, optional=True)), "clip.")
    options = {k: v for k, v in scheduler.items() if k != "name" and v is not None}
    options.update(check_fields(options, SCHEDULER_OPTIONS, "scheduler."))
    job = Field("str", plain=True, rule="a job's name, e.g. generate").check("job", cfg.get("job", "generate"))
    return Run(job=job, model=spec, scheduler=SchedulerChoice(scheduler.get("name"), options),
               params=generation_params(cfg, spec.resolution), limits=limit, recipe=cfg, threads=threads, resume=resume)


def config_hash(payload: dict[str, Any]) -> str:
    """A short stable hash of a resolved config (sorted-key JSON)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

