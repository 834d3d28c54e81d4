"""Each job's recipe dataclass (see `read_recipe`), apart from the jobs: a wrong value is refused before torch loads."""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from functools import partial
from typing import Any

from sdlab.bench.inputs import IMAGES
from sdlab.config import (AS_GIVEN, LIMITS, MAX_GUIDANCE, MAX_SEED, POSITIVE, SEED_RULE, SIDE_MULTIPLE, Field,
                          check_fields, checked, refuse_unknown, suggestion)
from sdlab.errors import UserError, choose
from sdlab.metrics import toy
from sdlab.metrics.schedule import SCHEDULES, beta_schedule_spec
from sdlab.models.model_files import check_scheduler_config
from sdlab.models.schedulers import FAMILY_CONFIGS, SCHEDULERS

rule = partial(checked, plain=False)  # a wrong value is named with what its field allows: "noise.size=-5 must be ..."


@dataclass(frozen=True, kw_only=True)
class ImageInput:
    """Where a job's input images come from: `images` (a folder or files), else drawings of the `sample_world`."""

    images: list[str] | None = field(default=None, metadata={"check": IMAGES})
    sample_world: str | None = None


@dataclass(frozen=True, kw_only=True)
class Prompts:
    """The prompts a job compares; one string counts as a list of one."""

    replaces = {"prompt": "prompts", "prompt_file": "prompts"}
    prompts: tuple[str, ...] = rule(MISSING, "strs")


@dataclass(frozen=True, kw_only=True)
class PromptGrid(Prompts):
    """A grid's prompts, a column each: each named once (a similarity matrix may repeat one, its cosine 1)."""

    prompts: tuple[str, ...] = rule(MISSING, "strs", distinct=True)


class Tokenized(Prompts):
    """Prompts a job only tokenizes: their words need not be any the model knows."""

    tokens_only = True


@dataclass(frozen=True, kw_only=True)
class Similarity(Prompts, ImageInput):
    num_images: int = rule(4, "int", 0, 1000, optional=True)  # drawn when no `images` are given


@dataclass(frozen=True, kw_only=True)
class VaeRoundtrip(ImageInput):
    num_images: int = rule(4, "int", 1, 1000, optional=True)  # drawn when no `images` are given


@dataclass(frozen=True)
class Img2img:
    """Strengths, each in (0, 1], and the input: an `image` file, else `image_caption` drawn in the `sample_world`."""

    strengths: tuple[float, ...] = rule(MISSING, "numbers", distinct=True)
    image: str | None = checked(None, "str", optional=True, rule="an image file path")
    image_caption: str | None = None
    sample_world: str | None = None

    def __post_init__(self):
        for s in self.strengths:
            if not 0.0 < s <= 1.0:
                raise UserError(f"strength {s:g} must be in (0, 1]")


@dataclass(frozen=True)
class Study:
    """The `compare:` block: schedulers x steps over seeds and prompts, against a deterministic reference solve."""

    block = "compare"
    replaces = {"scheduler": "schedulers", "seed": "seeds", "seeds": "seeds", "prompt": "prompts",
                "prompt_file": "prompts", "num_inference_steps": "steps"}
    fixes = {"eta": "eta=0 (DDIM stays deterministic, as its reference solve needs)",
             "batch_size": "every seed of a solve in one call"}  # what it runs with instead
    # each listed once: a repeat makes the same images again, counted as more seeds in n and the intervals
    schedulers: tuple[str, ...] = rule(None, "strs", distinct=True)
    steps: tuple[int, ...] = rule(None, "ints", 1, 1000, distinct=True)
    seeds: tuple[int, ...] = rule(None, "ints", 0, MAX_SEED, distinct=True,
                                  rule="a non-empty list of distinct integers in [0, 2**63-1]")
    prompts: tuple[str, ...] = rule(None, "strs", distinct=True)
    reference_scheduler: str = rule("dpmpp_2m", "str")
    reference_steps: int = rule(200, "int", 1, 1000)
    psnr_target: float = rule(30.0, "number", 0, 1000)
    visit_steps: tuple[int, ...] = rule((10, 25), "ints", 1, 1000)

    def __post_init__(self):
        if missing := [k for k in ("schedulers", "steps", "seeds", "prompts") if getattr(self, k) is None]:
            raise UserError(f"compare.{missing[0]} is missing: a study lists schedulers, steps, seeds and prompts")
        for name in (*self.schedulers, self.reference_scheduler):
            choose("scheduler", name, SCHEDULERS)
        if SCHEDULERS[self.reference_scheduler].stochastic:
            raise UserError(f"compare.reference_scheduler={self.reference_scheduler!r} is stochastic; "
                            "pick a deterministic one")
        if self.reference_steps < max(self.steps):
            raise UserError(f"compare.steps must be <= compare.reference_steps={self.reference_steps}")


@dataclass(frozen=True)
class DistanceStudy:
    """The `distance:` block: cells guidance_scales x schedulers x steps, each against `references` real images."""

    block = "distance"
    replaces = {"scheduler": "schedulers", "guidance_scale": "guidance_scales", "prompt": "prompts",
                "prompt_file": "prompts", "num_inference_steps": "steps"}
    fixes = dict.fromkeys(("seed", "seeds"), "seeds 0 to distance.images - 1 (the same set in every cell)")
    guidance_scales: tuple[float, ...] = rule(None, "numbers", 0, MAX_GUIDANCE, distinct=True)
    schedulers: tuple[str, ...] = rule(None, "strs", distinct=True)
    steps: tuple[int, ...] = rule(None, "ints", 1, 1000, distinct=True)
    prompts: tuple[str, ...] = rule(None, "strs", distinct=True)
    images: int = rule(None, "int", 4, 100000)
    references: int = rule(None, "int", 4, 100000)
    kid_subsets: int = rule(None, "int", 2, 10000,
                            rule="an integer >= 2 and <= 10000 (one subset has no spread to judge KID gaps by)")
    bootstrap: int = rule(None, "int", 10, 10000)

    def __post_init__(self):
        if missing := [f.name for f in fields(self) if getattr(self, f.name) is None]:
            raise UserError(f"distance.{missing[0]} is missing: the block lists "
                            f"{', '.join(f.name for f in fields(self))}")
        for name in self.schedulers:
            choose("scheduler", name, SCHEDULERS)


MOST_NUMBERS = 100_000_000  # the most numbers one toy array holds (800 MB of float64): more is a typo, not a toy


def check_numbers(block: str, **factors: int | list[int]) -> None:
    """One line naming the keys when the toy array their `factors` (a list: its product) span is over MOST_NUMBERS."""
    count = math.prod(math.prod(v) if isinstance(v, (list, tuple)) else v for v in factors.values())
    if count > MOST_NUMBERS:
        shown = " x ".join(str(list(v)) if isinstance(v, (list, tuple)) else str(v) for v in factors.values())
        raise UserError(f"{block}.{' x '.join(factors)} = {shown} is {count} numbers, above the {MOST_NUMBERS} a toy "
                        "holds; lower them")


@dataclass(frozen=True)
class Noise:
    block = "noise"
    size: int = rule(512, "int", 1, 4096)
    seed: int = checked(0, **SEED_RULE)


@dataclass(frozen=True)
class ToyPredictor:
    block = "toy_predictor"
    T: int = rule(200, "int", 2, 100_000)
    n: int = rule(50, "int", 1, 100_000)
    shape: tuple[int, ...] = rule((1, 32, 32), "ints", 1, 1024)
    bins: int = rule(10, "int", 1, 1000)
    seed: int = checked(0, **SEED_RULE)

    def __post_init__(self):
        check_numbers(self.block, n=self.n, shape=self.shape)


@dataclass(frozen=True)
class ToyUnet:
    """Channel configurations; each halves `size` per level below the first, its GroupNorm groups divide each width."""

    block = "toy_unet"
    configs: tuple[tuple[int, ...], ...] = rule(((64, 128, 256),), "int_lists", 1, 4096)
    in_channels: int = rule(1, "int", 1, 1024)
    size: int = rule(32, "int", 1, 4096)

    def __post_init__(self):
        for channels in self.configs:
            if self.size % 2 ** (len(channels) - 1):
                raise UserError(f"toy_unet.size={self.size} must be divisible by {2 ** (len(channels) - 1)} for the "
                                f"{len(channels)} levels of configuration {list(channels)}")
            groups = min(32, min(channels))
            if any(c % groups for c in channels):
                raise UserError(f"toy_unet.configs entry {list(channels)}: every width must be a multiple of "
                                f"{groups} (its GroupNorm groups, min(32, narrowest width))")


@dataclass(frozen=True)
class VaeCompression:
    """Image sides, each a multiple of the VAE factor."""

    block = "vae_compression"
    sizes: tuple[int, ...] = rule((256, 512, 768, 1024), "ints", 1, 65_536)
    latent_channels: int = rule(4, "int", 1, 1024)
    factor: int = rule(8, "int", 1, 1024)

    def __post_init__(self):
        if bad := [side for side in self.sizes if side % self.factor]:
            raise UserError(f"vae_compression.sizes {bad} must be multiples of vae_compression.factor={self.factor}")


@dataclass(frozen=True)
class CfgToy:
    block = "cfg_toy"
    scales: tuple[float, ...] = rule(toy.CFG_SCALES, "numbers", 0, MAX_GUIDANCE)
    dim: int = rule(768, "int", 1, 1_000_000)
    norm_factor: float = rule(3.0, "number", 1e-6, 1e6)
    seed: int = checked(0, **SEED_RULE)


@dataclass(frozen=True)
class DdimSteps:
    """A 1-D signal's DDIM round trip at step counts up to T."""

    block = "ddim_steps"
    length: int = rule(256, "int", 1, 1_000_000)
    T: int = rule(1000, "int", 2, 100_000)
    steps: tuple[int, ...] = rule(toy.DDIM_STEPS, "ints", 1, 100_000)
    schedule: str = rule("linear", "choice", choices=SCHEDULES)
    seed: int = checked(0, **SEED_RULE)

    def __post_init__(self):
        if bad := [n for n in self.steps if n > self.T]:
            raise UserError(f"ddim_steps.steps {bad} must be <= ddim_steps.T={self.T}")
        if len(self.steps) < 2:
            raise UserError(f"ddim_steps.steps={list(self.steps)} needs two step counts or more: the figure is the error "
                            "against the steps")


HEAT_ROWS = 1000  # timesteps on the embedding's heatmap, at most: each gets a pixel row, the figure grows to fit them


@dataclass(frozen=True)
class TimestepEmbedding:
    block = "timestep_embedding"
    T: int = rule(1000, "int", 1, 1_000_000)
    dim: int = rule(320, "int", 2, 8192)  # SD's is 320; its heatmap draws rows x dim cells
    rows: int = rule(HEAT_ROWS, "int", 1, HEAT_ROWS)  # the heatmap's timesteps: T of them at most


SPACES = ("pixel", "latent")


@dataclass(frozen=True, kw_only=True)
class ForwardProcess(ImageInput):
    """Timesteps to noise one image at, under `schedules` (see schedule_snr; null: the model's), in `spaces`."""

    timesteps: tuple[int, ...] = rule(MISSING, "ints", distinct=True)
    schedules: list | None = rule(None, "entries", optional=True)
    spaces: tuple[str, ...] = rule(SPACES, "strs", distinct=True)
    seed: int = 0  # of the fixed eps

    def __post_init__(self):
        if not set(self.spaces) <= set(SPACES):
            raise UserError(f"spaces={self.spaces} must list pixel and/or latent")
        for item in self.schedules or ():  # the model's own is checked with its folder
            if item != "model":
                beta_schedule_spec(item)


@dataclass(frozen=True)
class GuidanceGrid:
    replaces = {"guidance_scale": "guidance_scales"}  # a setting its job does not read: the field it draws instead
    guidance_scales: tuple[float, ...] = rule(MISSING, "numbers", 0, MAX_GUIDANCE, distinct=True)


@dataclass(frozen=True)
class SchedulerGrid:
    """The samplers side by side, and the many-step solve each image's PSNR is taken to (with `reference_steps`)."""

    replaces = {"scheduler": "schedulers"}

    schedulers: tuple[str, ...] = rule(MISSING, "strs", distinct=True)
    reference_scheduler: str = rule("dpmpp_2m", "str")
    reference_steps: int | None = rule(None, "int", 0, 1000, optional=True)  # 0 or null: none

    def __post_init__(self):
        if self.reference_scheduler in SCHEDULERS and SCHEDULERS[self.reference_scheduler].stochastic:
            raise UserError(f"reference_scheduler={self.reference_scheduler!r} is stochastic; pick a deterministic one")


SIDE = Field("int", SIDE_MULTIPLE, LIMITS["max_side"])
FAMILY_FIELDS = {"name": Field("str", plain=True), "config": AS_GIVEN, "options": Field("mapping", optional=True),
                 "sampler": Field("str", plain=True), "steps": Field("int", 1, LIMITS["max_steps"]), "width": SIDE,
                 "height": SIDE, "flux_sigmas": Field("bool", plain=True)}  # config: checked in check_family


def check_family(item: Any) -> None:
    """A `families` entry's keys and values; its config a name of FAMILY_CONFIGS, `model`, or a scheduler config dict
    (its sampler's options are checked against the sampler where the family is drawn)."""
    if not isinstance(item, dict):
        raise UserError(f"families entry {item!r} must be a dict with config, sampler and steps")
    if unknown := sorted(set(item) - set(FAMILY_FIELDS)):
        raise UserError(f"families entry has no key {unknown[0]!r}{suggestion(unknown[0], set(FAMILY_FIELDS))}; its "
                        f"keys are: {', '.join(FAMILY_FIELDS)}")
    config = item.get("config")
    if isinstance(config, str) and config not in (*FAMILY_CONFIGS, "model"):
        raise UserError(f"unknown families config {config!r}; choose one of: {', '.join(FAMILY_CONFIGS)}, model "
                        "or give a scheduler config dict")
    if not isinstance(config, (str, dict)):
        raise UserError(f"families config {config!r} must be one of {', '.join(FAMILY_CONFIGS)}, model or a dict")
    if isinstance(config, dict):
        check_scheduler_config(config, "families config")
    check_fields(item, FAMILY_FIELDS, "families ")
    if item.get("sampler"):
        choose("scheduler", item["sampler"], SCHEDULERS)


@dataclass(frozen=True)
class ScheduleSnr:
    """Beta schedules, samplers whose steps are shown (null: the configured one; []: none), timesteps, `families`."""

    schedules: list | None = rule(None, "entries", optional=True)
    visit_schedulers: list | None = rule(None, "entries", optional=True)
    report_timesteps: tuple[int, ...] | None = rule(None, "ints", optional=True)
    families: list | None = rule(None, "entries", optional=True)

    def __post_init__(self):
        for item in self.schedules or ():  # the model's and the configured scheduler's are checked with their folder
            if item not in ("model", "scheduler"):
                beta_schedule_spec(item)
        for item in self.visit_schedulers or ():  # their options are checked against their classes (check_schedules)
            if isinstance(item, dict) and not isinstance(item.get("name"), str):
                raise UserError(f"visit_schedulers entry {item!r} needs the name of a scheduler, e.g. {{name: euler}}")
            choose("scheduler", item if isinstance(item, str) else item["name"], SCHEDULERS)
        for item in self.families or ():
            check_family(item)


STAGES = ("vae", "clip", "unet")
EXTRA_STAGES = ("vae_decoder",  # decoder-only VAE refinement: the latents stay fixed, so it can run beside unet
                "flow")  # mini_flow's transformer on mini's frozen parts (experiment=train_mini_flow)
# Each stage's keys as sdlab.mini reads them, checked before training; `steps`, `batch_size` and `lr` have no default.
NEEDED = ("steps", "batch_size", "lr")
LOOP_RULES = {"steps": Field("int", 1), "batch_size": Field("int", 1, 4096),  # mini: 4096 images of 64 px, 200 MB
              "lr": Field("number", 1e-12, 1, rule="a number in (0, 1]"), "warmup": Field("int", 0),
              "weight_decay": Field("number", 0, 1), "checkpoint_every": Field("int", 1),
              "ema_decay": Field("number", 0, 1 - 1e-12, rule="a number in [0, 1)"),
              "max_minutes": Field("number", 0, 1e6, optional=True), "clip": Field("number", 1e-6, 1e6),
              "init_from": Field("str", optional=True)}
WEIGHT = Field("number", 0, 1e6)
MODEL_CONFIG = Field("mapping", optional=True)  # entries of the stage model's config (sdlab.mini.architecture)
VAE_RULES = {**LOOP_RULES, "architecture": MODEL_CONFIG,
             **dict.fromkeys(("kl_weight", "l1_weight", "foreground_weight", "latent_rgb_weight"), WEIGHT),
             "eval_images": Field("int", 1, 100_000), "scale_images": Field("int", 1),
             "decoder_only": Field("bool", plain=True), "sample_posterior": Field("bool", plain=True)}
CAPTION_RULES = dict.fromkeys(("uncond_probability", "caption_noise", "partial_captions"), Field("number", 0, 1))
UNET_RULES = {**LOOP_RULES, **CAPTION_RULES, "architecture": MODEL_CONFIG,
              "snr_gamma": Field("number", 1e-6, 1e6, optional=True)}
FLOW_RULES = {**LOOP_RULES, **CAPTION_RULES, "architecture": MODEL_CONFIG, "frozen_from": Field("str"),
              "shift": Field("number", 0.01, 100), "logit_mean": Field("number", -5, 5),
              "logit_std": Field("number", 0.01, 10)}
CLIP_RULES = {**{k: rule for k, rule in LOOP_RULES.items() if k != "ema_decay"},  # the clip stage keeps no EMA
              "text": MODEL_CONFIG, "vision": MODEL_CONFIG}
STAGE_RULES = {"vae": VAE_RULES, "vae_decoder": VAE_RULES, "clip": CLIP_RULES, "unet": UNET_RULES, "flow": FLOW_RULES}
EXPORTS = {"unet": "the unet stage reads the trained vae/ and text_encoder/ from it",
           "flow": "the flow stage writes its SD3 folder into it"}


@dataclass(frozen=True)
class Train:
    """The `train:` block: the stage (or all), seed, threads, folders, images, each stage's settings (sdlab.mini's)."""

    block = "train"
    stage: str = MISSING
    seed: int = checked(MISSING, **SEED_RULE)
    out: str = rule(MISSING, "str")
    num_images: int = rule(MISSING, "int", 1, 1_000_000)
    threads: int = checked(2, **POSITIVE)
    export: str | None = rule(None, "str", optional=True)
    vae: dict[str, Any] | None = None
    clip: dict[str, Any] | None = None
    unet: dict[str, Any] | None = None
    vae_decoder: dict[str, Any] | None = None
    flow: dict[str, Any] | None = None

    def __post_init__(self):
        choose("train.stage", str(self.stage), STAGES + EXTRA_STAGES + ("all",))
        for name in STAGES if self.stage == "all" else (self.stage,):
            settings = getattr(self, name)
            if not isinstance(settings, dict):
                hint = ": use experiment=train_mini_flow" if name == "flow" else ""
                raise UserError(f"train.stage={self.stage} needs a train.{name} block{hint}")
            if missing := [key for key in NEEDED if key not in settings]:
                raise UserError(f"train.{name}.{missing[0]} is missing: each stage sets {', '.join(NEEDED)}")
            refuse_unknown(settings, STAGE_RULES[name], f"train.{name}")
            check_fields(settings, STAGE_RULES[name], f"train.{name}.")
            if name in EXPORTS and not self.export:
                raise UserError(f"train.stage={self.stage} needs train.export: {EXPORTS[name]}")
        if self.stage == "flow":
            patch = (self.flow.get("architecture") or {}).get("patch_size", 1)
            Field("choice", choices=(1, 2)).check("train.flow.architecture.patch_size", patch)


PREVIEWS = ("vae", "linear")


@dataclass(frozen=True)
class Trajectory:
    """`frames` in the strip, `gif_ms` per GIF frame, and `preview`: `vae` decodes frames, `linear` maps channels."""

    frames: int = rule(8, "int", 2, 10_000, optional=True)
    gif_ms: int = rule(150, "int", 1, 60_000, optional=True)
    preview: str = "vae"

    def __post_init__(self):
        choose("preview", self.preview, PREVIEWS)


RECIPES: dict[str, type] = {
    "clip_tokens": Tokenized, "clip_similarity": Similarity, "vae_roundtrip": VaeRoundtrip, "img2img_strength": Img2img,
    "compare_schedulers": Study, "distribution_distance": DistanceStudy, "noise_image": Noise,
    "toy_predictor": ToyPredictor, "toy_unet": ToyUnet, "vae_compression": VaeCompression, "cfg_toy": CfgToy,
    "ddim_steps": DdimSteps, "timestep_embedding": TimestepEmbedding, "forward_process": ForwardProcess,
    "guidance_grid": GuidanceGrid, "prompt_grid": PromptGrid, "scheduler_grid": SchedulerGrid, "schedule_snr": ScheduleSnr,
    "train_mini": Train, "trajectory": Trajectory,
}
