"""Plain dataclasses for a job's settings, built and validated from the composed config as a dict."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sdlab.conf_files import group_options
from sdlab.errors import UserError, choose

GENERATION_KEYS = (
    "prompt",
    "negative_prompt",
    "seed",
    "seeds",
    "num_inference_steps",
    "guidance_scale",
    "width",
    "height",
    "eta",
    "batch_size",
)
MODEL_NAMES = tuple(group_options("model"))  # conf/model/<name>.yaml
MODEL_FAMILIES = tuple(sorted(p.stem for p in (Path(__file__).parent / "models" / "families").glob("*.py")
                              if p.stem not in ("__init__", "base")))  # sdlab/models/families/<family>.py
MODEL_KINDS = ("epsilon", "v_prediction", "flow")  # what a model predicts; schedulers declare the kinds they fit
DTYPES = ("auto", "float32", "float16", "bfloat16")
ATTENTION = ("sdpa", "eager")
MKLDNN = (True, False, "auto")
MAX_SEED = 2**63 - 1  # seeds live in int64 table columns
# Defaults of the `limits:` block in conf/config.yaml: checks that fail in under a second instead of filling memory.
LIMITS = {"max_side": 4096, "max_pixels": 2048 * 2048, "max_steps": 1000, "max_seeds": 10_000,
          "max_params_bytes": 1 << 20, "max_png_bytes": 64 << 20, "max_png_text_bytes": 8 << 20,
          "max_prompt_file_bytes": 1 << 20, "max_prompt_lines": 10_000, "max_batch_size": 64, "max_threads": 256,
          "max_cells": 100_000}


@dataclass(frozen=True)
class ModelSpec:
    """Which pipeline to load and where to run it."""

    name: str
    family: str = "sd"  # a folder's model_index.json decides over it
    path: str | None = None
    repo_id: str | None = None
    resolution: int = 512
    device: str = "auto"
    dtype: str = "auto"
    channels_last: bool = False
    compile: bool = False
    attention: str = "sdpa"
    mkldnn: bool | str = True  # or "auto": by the UNet's batch
    t5: bool = True  # SD3: false leaves the T5 text encoder out
    max_sequence_length: int | None = None  # T5 tokens (SD3, Flux); None: the family's default

    @property
    def key(self) -> tuple:
        """Identity of the loaded pipeline in the per-process cache."""
        return (self.name, self.family, self.path, self.repo_id, self.device, self.dtype, self.channels_last,
                self.compile, self.attention, self.mkldnn, self.t5, self.max_sequence_length)


@dataclass(frozen=True)
class SchedulerChoice:
    """A registered scheduler name and the user's option overrides (None keeps the model's value)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationParams:
    """One generate request, named as in diffusers; `seeds` are generated batched, `batch_size` at a time."""

    prompt: str = ""
    negative_prompt: str = ""
    seeds: tuple[int, ...] = (0,)
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    width: int = 512
    height: int = 512
    eta: float = 0.0
    batch_size: int = 4

    def __post_init__(self):
        validate_generation(self)


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{name}={value!r} is not an integer")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name}={value!r} is not a number")
    if not math.isfinite(value):
        raise UserError(f"{name}={value} is not a finite number")
    return float(value)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{name}={value!r} must be true or false")
    return value


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise UserError(f"{name}={value!r} must be a string or null")
    return value


def _side(name: str, value: Any) -> int:
    value = _int(name, value)
    if value <= 0 or value % 8:
        raise UserError(f"{name}={value} must be a positive multiple of 8")
    return value


def validate_generation(p: GenerationParams) -> None:
    """Raise a UserError naming the first parameter outside its allowed range."""
    if not isinstance(p.prompt, str):
        raise UserError(f"prompt={p.prompt!r} is not a string")
    if not isinstance(p.negative_prompt, str):
        raise UserError(f"negative_prompt={p.negative_prompt!r} is not a string")
    if not p.seeds:
        raise UserError("seeds=[] is empty; give at least one integer seed")
    for seed in p.seeds:
        if not 0 <= _int("seed", seed) <= MAX_SEED:
            raise UserError(f"seed={seed} must be in [0, 2**63-1]")
    if len(set(p.seeds)) < len(p.seeds):
        repeated = next(s for s in p.seeds if p.seeds.count(s) > 1)
        shown = list(p.seeds) if len(p.seeds) <= 20 else f"[{len(p.seeds)} seeds]"
        raise UserError(f"seeds={shown} repeats seed {repeated}; list each seed once (one image per seed)")
    if _int("num_inference_steps", p.num_inference_steps) < 1:
        raise UserError(f"num_inference_steps={p.num_inference_steps} must be >= 1")
    if _number("guidance_scale", p.guidance_scale) < 0:
        raise UserError(f"guidance_scale={p.guidance_scale} must be >= 0")
    for side in ("width", "height"):
        _side(side, getattr(p, side))
    if not 0.0 <= _number("eta", p.eta) <= 1.0:
        raise UserError(f"eta={p.eta} must be in [0, 1]")
    if _int("batch_size", p.batch_size) < 1:
        raise UserError(f"batch_size={p.batch_size} must be >= 1")


def limits(cfg: dict[str, Any]) -> dict[str, int]:
    """The `limits:` block over its defaults; each must be a positive integer."""
    given = cfg.get("limits") or {}
    if not isinstance(given, dict):
        raise UserError(f"limits={given!r} must be a mapping of {', '.join(LIMITS)}")
    out = dict(LIMITS)
    for key, value in given.items():
        if key not in LIMITS:
            raise UserError(f"unknown limit {key!r}; limits are: {', '.join(LIMITS)}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"limits.{key}={value!r} must be a positive integer")
        out[key] = value
    return out


def check_limits(p: GenerationParams, limit: dict[str, int]) -> None:
    """Raise a UserError when a request is bigger than the configured limits (raise them on big machines)."""
    hint = "raise it with limits.{}=N on a machine that can take it"
    for side in ("width", "height"):
        if getattr(p, side) > limit["max_side"]:
            raise UserError(f"{side}={getattr(p, side)} is above limits.max_side={limit['max_side']}; "
                            + hint.format("max_side"))
    if p.width * p.height > limit["max_pixels"]:
        raise UserError(f"width x height = {p.width} x {p.height} is above limits.max_pixels={limit['max_pixels']}; "
                        + hint.format("max_pixels"))
    if p.num_inference_steps > limit["max_steps"]:
        raise UserError(f"num_inference_steps={p.num_inference_steps} is above limits.max_steps={limit['max_steps']}; "
                        + hint.format("max_steps"))
    if p.batch_size > limit["max_batch_size"]:
        raise UserError(f"batch_size={p.batch_size} is above limits.max_batch_size={limit['max_batch_size']}; "
                        + hint.format("max_batch_size"))
    if len(p.seeds) > limit["max_seeds"]:
        raise UserError(f"{len(p.seeds)} seeds are more than limits.max_seeds={limit['max_seeds']} in one job; "
                        + hint.format("max_seeds"))


def generation_params(cfg: dict[str, Any], resolution: int) -> GenerationParams:
    """GenerationParams from the composed config: `seeds` (a list) wins over `seed`; sizes default to the model's."""
    seeds = cfg.get("seeds")
    if seeds is None:
        seeds = [cfg.get("seed", 0)]
    if isinstance(seeds, (int, str)):
        seeds = [seeds]
    if not isinstance(seeds, (list, tuple)):
        raise UserError(f"seeds={seeds!r} must be a list of integers or null")
    seeds = tuple(_int("seed", s) for s in seeds)
    params = GenerationParams(
        prompt=cfg.get("prompt") or "",
        negative_prompt=cfg.get("negative_prompt") or "",
        seeds=seeds,
        num_inference_steps=_int("num_inference_steps", cfg.get("num_inference_steps", 25)),
        guidance_scale=_number("guidance_scale", cfg.get("guidance_scale", 7.5)),
        width=resolution if cfg.get("width") is None else cfg["width"],
        height=resolution if cfg.get("height") is None else cfg["height"],
        eta=_number("eta", cfg.get("eta", 0.0)),
        batch_size=_int("batch_size", cfg.get("batch_size", 4)),
    )
    check_limits(params, limits(cfg))
    return params


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def validate_model(cfg: dict[str, Any], limit: dict[str, int] | None = None) -> None:
    """Raise a UserError naming the first field of the `model` group with a wrong type or value (and size limit)."""
    if not isinstance(cfg, dict):
        raise UserError(f"model={cfg!r} must be a model config; choose one of: {', '.join(MODEL_NAMES)}")
    if cfg.get("name") not in MODEL_NAMES:
        raise UserError(f"model.name={cfg.get('name')!r} is not a model; choose one of: {', '.join(MODEL_NAMES)}")
    for key in ("path", "repo_id"):
        _optional_str(f"model.{key}", cfg.get(key))
    resolution = _side("model.resolution", cfg.get("resolution", 512))
    if limit and resolution > limit["max_side"]:
        raise UserError(f"model.resolution={resolution} is above limits.max_side={limit['max_side']}")
    device = cfg.get("device", "auto")
    if not isinstance(device, str) or not DEVICE.fullmatch(device):
        raise UserError(f"model.device={device!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    choices = {"dtype": DTYPES, "attention": ATTENTION, "mkldnn": MKLDNN}
    for key, allowed in choices.items():
        value = cfg.get(key, allowed[0])
        if type(value) not in {type(a) for a in allowed}:  # 1 == True: the type decides
            raise UserError(f"model.{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")
        choose(f"model.{key}", value, allowed)
    for key in ("channels_last", "compile"):
        _bool(f"model.{key}", cfg.get(key, False))
    _bool("model.t5", cfg.get("t5", True))
    choose("model.family", cfg.get("family", "sd"), MODEL_FAMILIES)
    length = cfg.get("max_sequence_length")
    if length is not None and not 1 <= _int("model.max_sequence_length", length) <= 512:
        raise UserError(f"model.max_sequence_length={length} must be in [1, 512] or null")


def check_threads(threads: Any, most: int = LIMITS["max_threads"]) -> None:
    """`threads` is a positive integer up to `limits.max_threads`, or None (torch's default)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UserError(f"threads={threads!r} must be a positive integer or null")
    if threads is not None and threads > most:
        raise UserError(f"threads={threads} is above limits.max_threads={most}; raise it with limits.max_threads=N "
                        "on a machine that has them")


def validate_config(cfg: dict[str, Any]) -> None:
    """Raise a UserError naming the first bad value of a composed job config; reads no files, loads no model
    (the job name and scheduler options are checked by `preflight.check_job`)."""
    limit = limits(cfg)
    check_threads(cfg.get("threads"), limit["max_threads"])
    _bool("resume", cfg.get("resume", True))
    if cfg.get("params") is not None and not isinstance(cfg["params"], str):
        raise UserError(f"params={cfg['params']!r} must be a file path or null")
    validate_model(cfg.get("model"), limit)
    scheduler = cfg.get("scheduler")
    if not isinstance(scheduler, dict):
        raise UserError(f"scheduler={scheduler!r} must be a scheduler config")
    clip = cfg.get("clip")
    if clip is not None:
        if not isinstance(clip, dict):
            raise UserError(f"clip={clip!r} must be a clip config or null")
        for key in ("name", "path", "repo_id"):
            if clip.get(key) is not None and not isinstance(clip[key], str):
                raise UserError(f"clip.{key}={clip[key]!r} must be a string or null")
    generation_params(cfg, cfg["model"].get("resolution", 512))


def model_spec(cfg: dict[str, Any]) -> ModelSpec:
    """ModelSpec from the `model` group, every field checked."""
    validate_model(cfg)
    known = {f.name for f in fields(ModelSpec)}
    return ModelSpec(**{k: v for k, v in cfg.items() if k in known})


def scheduler_choice(cfg: dict[str, Any]) -> SchedulerChoice:
    """SchedulerChoice from the `scheduler` group: `name` plus every non-null option."""
    options = {k: v for k, v in cfg.items() if k != "name" and v is not None}
    return SchedulerChoice(name=cfg.get("name"), options=options)


def config_hash(payload: dict[str, Any]) -> str:
    """A short stable hash of a resolved config (sorted-key JSON)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def as_dict(obj) -> dict[str, Any]:
    """A dataclass as a plain dict."""
    return asdict(obj)
