"""Schedulers by name: each a diffusers class plus options, swapped onto a pipeline with `from_config`.

A name means the same solver on every model kind, as in k-diffusion and ComfyUI: on a DDPM-trained model (kind
"epsilon" or "v_prediction": SD 1.x, 2.x, SDXL) its DDPM class, on a rectified-flow model (kind "flow": SD3, Flux) the
class that runs it on the flow sigmas. A name with no faithful flow solver in diffusers fits DDPM kinds only.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from sdlab.config import MODEL_KINDS, SCHEDULER_OPTIONS, check_fields
from sdlab.errors import CannotRun, UserError, choose
from sdlab.metrics.schedule import dynamic_shift_mu, image_seq_len, model_kind
from sdlab.models.architectures import ARCHITECTURES

KINDS = MODEL_KINDS


@dataclass(frozen=True)
class SchedulerSpec:
    """A diffusers class and options making the named solver on a DDPM model, its `flow` twin, option `renames`."""

    cls: str
    options: dict[str, Any] = field(default_factory=dict)
    needs: str | None = None
    stochastic: bool = False
    renames: dict[str, str] = field(default_factory=dict)
    flow: SchedulerSpec | None = None
    calls: tuple[int, int] = (1, 0)  # a x steps + b timesteps, a denoiser call each (Heun: 2 a step but the last)
    dynamic_shifting: bool = True  # a flow solver's: shifts its sigmas by the image size (mu), as Flux's scheduler does

    @property
    def kinds(self) -> frozenset:
        return frozenset(KINDS) if self.flow else frozenset(KINDS) - {"flow"}

    def on(self, kind: str) -> SchedulerSpec:
        """The solver this name runs on a model of `kind` (the flow twin on a flow model)."""
        return self.flow if kind == "flow" and self.flow else self


KARRAS = {"use_karras_sigmas": True}
SDE = {"algorithm_type": "sde-dpmsolver++"}
FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
FLOW_SHIFT = {"shift": "flow_shift"}
FLOW_OPTIONS = {"shift", "use_dynamic_shifting"}  # what only flow sigmas read
# DDIM with eta = 0 is the Euler step of the probability-flow ODE (Karras et al. 2022, sec. 3), so on flow it is Euler.
FLOW_EULER = SchedulerSpec("FlowMatchEulerDiscreteScheduler")
# A DDPM multistep solver run on flow sigmas with a velocity model, as diffusers supports it
flow_solver = partial(SchedulerSpec, options=FLOW_SIGMAS, renames=FLOW_SHIFT)

# DDPM-only where diffusers has no faithful flow solver: the Karras variants take sigmas from alphas_cumprod, DEIS ends
# flow sigmas at the last one instead of 0, and the SD3/Flux pipelines pass no generator to a stochastic step.
SCHEDULERS: dict[str, SchedulerSpec] = {
    "ddim": SchedulerSpec("DDIMScheduler", flow=FLOW_EULER),
    "ddpm": SchedulerSpec("DDPMScheduler", stochastic=True),
    "pndm": SchedulerSpec("PNDMScheduler", {"skip_prk_steps": True}, calls=(1, 1)),
    "lms": SchedulerSpec("LMSDiscreteScheduler"),
    "lms_karras": SchedulerSpec("LMSDiscreteScheduler", KARRAS),
    "euler": SchedulerSpec("EulerDiscreteScheduler", flow=FLOW_EULER),
    "euler_a": SchedulerSpec("EulerAncestralDiscreteScheduler", stochastic=True),
    "heun": SchedulerSpec("HeunDiscreteScheduler", flow=SchedulerSpec("FlowMatchHeunDiscreteScheduler",
                                                                       dynamic_shifting=False), calls=(2, -1)),
    "dpm2": SchedulerSpec("KDPM2DiscreteScheduler", calls=(2, -1)),
    "dpm2_a": SchedulerSpec("KDPM2AncestralDiscreteScheduler", stochastic=True, calls=(2, -1)),
    "dpmpp_2m": SchedulerSpec("DPMSolverMultistepScheduler", flow=flow_solver("DPMSolverMultistepScheduler")),
    "dpmpp_2m_karras": SchedulerSpec("DPMSolverMultistepScheduler", KARRAS),
    "dpmpp_2m_sde": SchedulerSpec("DPMSolverMultistepScheduler", SDE, stochastic=True),
    "dpmpp_2m_sde_karras": SchedulerSpec("DPMSolverMultistepScheduler", {**SDE, **KARRAS}, stochastic=True),
    "dpmpp_sde": SchedulerSpec("DPMSolverSDEScheduler", needs="torchsde", stochastic=True, calls=(2, -1)),
    "unipc": SchedulerSpec("UniPCMultistepScheduler", flow=flow_solver("UniPCMultistepScheduler")),
    "deis": SchedulerSpec("DEISMultistepScheduler"),
    "lcm": SchedulerSpec("LCMScheduler", stochastic=True),  # few steps, for LCM-distilled models; re-noises each step
}

# scheduler_config.json as each family's Hub repo ships it (its architecture record): analysed with no weights
FAMILY_CONFIGS: dict[str, dict[str, Any]] = {
    key: {"_class_name": ARCHITECTURES[name].scheduler_class, **ARCHITECTURES[name].scheduler}
    for key, name in (("sd15", "sd15_arch"), ("sd2_v", "sd21_arch"), ("sdxl", "sdxl_arch"), ("sd3", "sd3_medium_arch"),
                      ("flux_dev", "flux_dev_arch"))}


def check_available(name: str) -> SchedulerSpec:
    """Scheduler `name`'s spec, once its optional dependency is found installed (nothing is imported)."""
    choose("scheduler", name, SCHEDULERS)
    spec = SCHEDULERS[name]
    if spec.needs and importlib.util.find_spec(spec.needs) is None:
        raise UserError(f"scheduler {name!r} needs the {spec.needs!r} package: pip install torchsde")
    return spec


def scheduler_class(name: str, kind: str = "epsilon") -> type:
    """The diffusers class scheduler `name` runs on a model of `kind`, checking its optional dependency."""
    import diffusers

    return getattr(diffusers, check_available(name).on(kind).cls)


def as_published(config: dict[str, Any]) -> dict[str, Any]:
    """A loaded scheduler's config less the values its class filled in (`_use_default_values`): what another class is
    built from, as diffusers' `from_config` builds it (PNDM's default timestep_spacing=leading is not Euler's)."""
    filled = set(config.get("_use_default_values") or ())
    return {k: v for k, v in config.items() if k not in filled and k != "_use_default_values"}


def denoiser_calls(name: str, steps: int) -> int:
    """Denoiser calls per image of `steps` steps of scheduler `name` on any model kind, without importing diffusers."""
    a, b = SCHEDULERS[name].calls
    return 1 if steps == 1 else a * steps + b


def fitting(kind: str) -> list[str]:
    """Registered schedulers that fit a model of `kind`, in registry order."""
    return [name for name, spec in SCHEDULERS.items() if kind in spec.kinds]


def check_kind(name: str, kind: str, usable: list[str] | None = None) -> None:
    """A CannotRun unless scheduler `name` has a solver for `kind`, naming those that do (or the `usable` ones)."""
    choose("scheduler", name, SCHEDULERS)
    choose("model kind", kind, KINDS)
    if kind not in SCHEDULERS[name].kinds:
        raise CannotRun(f"scheduler {name!r} does not fit a model of kind {kind!r}; schedulers for "
                        f"{'this model' if usable else kind}: {', '.join(usable or fitting(kind))}")


def check_fit(name: str, base_config: dict[str, Any], options: dict[str, Any] | None = None) -> None:
    """A CannotRun unless scheduler `name` has a solver for `base_config`'s kind, shifting by image size if it does."""
    kind = model_kind(base_config)
    dynamic = kind == "flow" and {**as_published(base_config), **(options or {})}.get("use_dynamic_shifting")
    usable = [n for n in fitting(kind) if SCHEDULERS[n].on(kind).dynamic_shifting] if dynamic else None
    check_kind(name, kind, usable)
    if usable is not None and name not in usable:
        raise CannotRun(f"scheduler {name!r} has no dynamic (resolution-dependent) shifting, which this model's "
                        f"scheduler uses; use one of: {', '.join(usable)}")


@functools.cache
def init_parameters(cls: str) -> frozenset[str]:
    """The parameters of diffusers class `cls`'s `__init__`, read from source (importing diffusers takes seconds)."""
    folder = Path(importlib.util.find_spec("diffusers").origin).parent / "schedulers"
    for path in sorted(folder.glob("scheduling_*.py")):
        text = path.read_text(encoding="utf-8")
        found = (node for node in ast.parse(text).body if isinstance(node, ast.ClassDef) and node.name == cls) if (
            f"class {cls}(" in text) else ()
        for init in (n for node in found for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"):
            return frozenset(a.arg for a in (*init.args.args, *init.args.kwonlyargs))
    import diffusers

    return frozenset(inspect.signature(getattr(diffusers, cls).__init__).parameters)


def _options(spec: SchedulerSpec) -> set[str]:
    """The options a solver takes, in sdlab's names (a renamed option under its sdlab name)."""
    mine = {theirs: ours for ours, theirs in spec.renames.items()}
    return {mine.get(k, k) for k in init_parameters(spec.cls) if k not in ("self", "kwargs")}


def check_options(name: str, options: dict[str, Any] | None = None, kind: str | None = None) -> dict[str, Any]:
    """The user's non-null options for scheduler `name` on `kind` (any it fits if None), checked against its class."""
    user = {k: v for k, v in (options or {}).items() if v is not None}
    user.update(check_fields(user, SCHEDULER_OPTIONS, "scheduler."))
    spec = check_available(name)
    solvers = [spec.on(kind)] if kind else [spec, spec.on("flow")]
    accepted = set().union(*map(_options, solvers))
    unknown = sorted(set(user) - accepted)
    flow = kind == "flow" if kind else spec.on("flow") is not spec
    if not flow and (flow_only := sorted(set(user) & FLOW_OPTIONS)):  # a VP solver may take them, to no effect
        which = f"on a model of kind {kind!r}" if kind else "has no flow solver and"
        raise UserError(f"scheduler.{flow_only[0]} is an option of the flow-matching models (SD3, Flux); "
                        f"scheduler {name!r} {which} has none")
    if unknown:
        raise UserError(f"scheduler {name!r} has no option {unknown[0]!r}; its options are: "
                        f"{', '.join(sorted(accepted & set(SCHEDULER_OPTIONS)))}")
    if unset := [k for k in user if k not in SCHEDULER_OPTIONS]:  # e.g. num_train_timesteps: a model folder's, sized
        raise UserError(f"scheduler {name!r}: option {unset[0]!r} is not one a run sets; the options are: "
                        f"{', '.join(SCHEDULER_OPTIONS)}")
    return user


def make_scheduler(name: str, base_config: dict[str, Any], overrides: dict[str, Any] | None = None):
    """Scheduler `name` for the model of `base_config`: its kind's solver from that config, options and `overrides`."""
    kind = model_kind(base_config)
    check_fit(name, base_config, overrides)
    user = check_options(name, overrides, kind)
    cls = scheduler_class(name, kind)
    spec = SCHEDULERS[name].on(kind)
    base = {k: v for k, v in as_published(base_config).items() if not k.startswith("_")}
    if kind == "flow":
        # 1. A flow config keeps only what this class reads: its dynamic shifting must survive, or it cannot run.
        if "flow_shift" in base:  # a multistep solver's config: its `flow_shift` is sdlab's `shift`
            base.setdefault("shift", base.pop("flow_shift"))
        accepted = set(inspect.signature(cls.__init__).parameters)
        dynamic = user.get("use_dynamic_shifting", base.get("use_dynamic_shifting"))
        if dynamic and "shift" in user:
            raise UserError(f"scheduler.shift={user['shift']} has no effect while the shift follows the image size "
                            "(use_dynamic_shifting); add scheduler.use_dynamic_shifting=false to use a fixed shift")
        base = {spec.renames.get(k, k): v for k, v in base.items()}
        base = {k: v for k, v in base.items() if k in accepted}
    user = {spec.renames.get(k, k): v for k, v in user.items()}
    try:
        return cls.from_config(base, **{**spec.options, **user})
    except (ValueError, NotImplementedError) as e:
        raise UserError(f"scheduler {name!r} rejects options {user}: {e}") from e


def seed_noise(scheduler, generators: list) -> None:
    """Seed DPM++ SDE's Brownian tree per image (not from torch's global generator) unless the config names a seed."""
    if hasattr(scheduler, "noise_sampler_seed") and scheduler.config.get("noise_sampler_seed") is None:
        scheduler.noise_sampler_seed = [generator.initial_seed() for generator in generators]


def timestep_kwargs(scheduler, width: int | None = None, height: int | None = None, steps: int | None = None,
                    linear_sigmas: bool = False) -> dict[str, Any]:
    """`set_timesteps` arguments beyond the step count: dynamic shifting's mu as FluxPipeline's `calculate_shift` makes
    it, and with `linear_sigmas` FluxPipeline's sigmas linspace(1, 1/N, N) to a scheduler that takes them."""
    config, kwargs = scheduler.config, {}
    takes = "sigmas" in inspect.signature(scheduler.set_timesteps).parameters and not config.get("use_flow_sigmas")
    if linear_sigmas and steps and takes:
        kwargs["sigmas"] = np.linspace(1.0, 1.0 / steps, steps)
    if not config.get("use_dynamic_shifting"):
        return kwargs
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    seq_len = image_seq_len(width, height) if width and height else base_len
    return {**kwargs, "mu": dynamic_shift_mu(seq_len, base_len, max_len, config.get("base_shift", 0.5),
                                             config.get("max_shift", 1.15))}


PASSED_STEP_CHECKS: set[str] = set()


def check_steps(name: str, base_config: dict[str, Any], options: dict[str, Any] | None, steps: int,
                source: str, width: int | None = None, height: int | None = None) -> None:
    """Refuse `steps` that visit a timestep the model was never trained on (flow: a sigma outside [0, 1]); cached."""
    key = json.dumps([name, base_config, options, steps, source, width, height], sort_keys=True, default=repr)
    if key in PASSED_STEP_CHECKS:
        return
    trained = base_config.get("num_train_timesteps", 1000)
    if steps > trained:
        raise UserError(f"num_inference_steps={steps} is more than the {trained} timesteps the scheduler of {source} "
                        f"was trained on; use at most {trained}")
    try:
        check_fit(name, base_config, options)
    except UserError as e:
        raise type(e)(f"{source}: {e}") from None
    scheduler = make_scheduler(name, base_config, options)
    try:
        scheduler.set_timesteps(steps, **timestep_kwargs(scheduler, width, height))
    except (ValueError, IndexError, RuntimeError) as e:
        raise UserError(f"scheduler {name!r} cannot make num_inference_steps={steps}: {e}") from None
    if model_kind(base_config) == "flow":
        sigmas = [float(s) for s in scheduler.sigmas]
        if not all(0.0 <= s <= 1.0 for s in sigmas):
            raise UserError(f"num_inference_steps={steps} with scheduler {name} on {source} makes sigmas outside "
                            f"[0, 1] (from {max(sigmas):.4g} to {min(sigmas):.4g}); check scheduler.shift")
    elif (top := int(max(scheduler.timesteps))) >= trained:
        spacing, offset = scheduler.config.get("timestep_spacing"), scheduler.config.get("steps_offset") or 0
        fix = (f"scheduler.steps_offset={offset} adds {offset} to each timestep; use a smaller one"
               if offset and top - offset < trained else "use fewer steps or scheduler.timestep_spacing=trailing")
        raise UserError(f"num_inference_steps={steps} with scheduler {name} (timestep_spacing={spacing}) reaches "
                        f"timestep {top}, past the {trained} the model was trained on; {fix}")
    PASSED_STEP_CHECKS.add(key)


def resolved_config(scheduler) -> str:
    """The scheduler's config as sorted JSON (`scheduler_config` column): only the options its own class reads."""
    reads = set(inspect.signature(type(scheduler).__init__).parameters)
    config = {k: v for k, v in dict(scheduler.config).items() if k in reads}
    return json.dumps({"class": type(scheduler).__name__, **config}, sort_keys=True, default=str)
