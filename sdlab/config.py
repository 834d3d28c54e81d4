"""Plain dataclasses for a job's settings, built and validated from the composed config as a dict."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sdlab.errors import UserError

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


@dataclass(frozen=True)
class ModelSpec:
    """Which pipeline to load and where to run it."""

    name: str
    path: str | None = None
    repo_id: str | None = None
    resolution: int = 512
    device: str = "auto"
    dtype: str = "auto"
    channels_last: bool = False
    compile: bool = False
    attention: str = "sdpa"
    mkldnn: bool | str = True  # or "auto": by the UNet's batch

    @property
    def key(self) -> tuple:
        """Identity of the loaded pipeline in the per-process cache."""
        return (self.name, self.path, self.repo_id, self.device, self.dtype, self.channels_last, self.compile,
                self.attention, self.mkldnn)


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
    return float(value)


def validate_generation(p: GenerationParams) -> None:
    """Raise a UserError naming the first parameter outside its allowed range."""
    if not isinstance(p.prompt, str):
        raise UserError(f"prompt={p.prompt!r} is not a string")
    if not isinstance(p.negative_prompt, str):
        raise UserError(f"negative_prompt={p.negative_prompt!r} is not a string")
    if not p.seeds:
        raise UserError("seeds=[] is empty; give at least one integer seed")
    if _int("num_inference_steps", p.num_inference_steps) < 1:
        raise UserError(f"num_inference_steps={p.num_inference_steps} must be >= 1")
    if _number("guidance_scale", p.guidance_scale) < 0:
        raise UserError(f"guidance_scale={p.guidance_scale} must be >= 0")
    for side in ("width", "height"):
        value = _int(side, getattr(p, side))
        if value <= 0 or value % 8:
            raise UserError(f"{side}={value} must be a positive multiple of 8")
    if not 0.0 <= _number("eta", p.eta) <= 1.0:
        raise UserError(f"eta={p.eta} must be in [0, 1]")
    if _int("batch_size", p.batch_size) < 1:
        raise UserError(f"batch_size={p.batch_size} must be >= 1")


def generation_params(cfg: dict[str, Any], resolution: int) -> GenerationParams:
    """GenerationParams from the composed config: `seeds` (a list) wins over `seed`; sizes default to the model's."""
    seeds = cfg.get("seeds")
    if seeds is None:
        seeds = [cfg.get("seed", 0)]
    if isinstance(seeds, (int, str)):
        seeds = [seeds]
    seeds = tuple(_int("seed", s) for s in seeds)
    return GenerationParams(
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


def model_spec(cfg: dict[str, Any]) -> ModelSpec:
    """ModelSpec from the `model` group."""
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
