"""Schedulers by name: each a diffusers class plus options, swapped onto a pipeline with `from_config`."""

from __future__ import annotations

import importlib.util
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

import diffusers

from sdlab.errors import UserError, choose

KINDS = ("epsilon", "v_prediction", "flow")
DDPM_KINDS = frozenset({"epsilon", "v_prediction"})
FLOW_KINDS = frozenset({"flow"})


@dataclass(frozen=True)
class SchedulerSpec:
    """A diffusers scheduler class and the options that make the named variant."""

    cls: str
    options: dict[str, Any] = field(default_factory=dict)
    needs: str | None = None
    stochastic: bool = False
    kinds: frozenset = DDPM_KINDS


OPTION_VALUES: dict[str, tuple] = {
    "timestep_spacing": ("leading", "linspace", "trailing"),
    "use_karras_sigmas": (True, False),
    "rescale_betas_zero_snr": (True, False),
    "final_sigmas_type": ("zero", "sigma_min"),
}

KARRAS = {"use_karras_sigmas": True}
SDE = {"algorithm_type": "sde-dpmsolver++"}

SCHEDULERS: dict[str, SchedulerSpec] = {
    "ddim": SchedulerSpec("DDIMScheduler"),
    "ddpm": SchedulerSpec("DDPMScheduler", stochastic=True),
    "pndm": SchedulerSpec("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": SchedulerSpec("LMSDiscreteScheduler"),
    "lms_karras": SchedulerSpec("LMSDiscreteScheduler", KARRAS),
    "euler": SchedulerSpec("EulerDiscreteScheduler"),
    "euler_a": SchedulerSpec("EulerAncestralDiscreteScheduler", stochastic=True),
    "heun": SchedulerSpec("HeunDiscreteScheduler"),
    "dpm2": SchedulerSpec("KDPM2DiscreteScheduler"),
    "dpm2_a": SchedulerSpec("KDPM2AncestralDiscreteScheduler", stochastic=True),
    "dpmpp_2m": SchedulerSpec("DPMSolverMultistepScheduler"),
    "dpmpp_2m_karras": SchedulerSpec("DPMSolverMultistepScheduler", KARRAS),
    "dpmpp_2m_sde": SchedulerSpec("DPMSolverMultistepScheduler", SDE, stochastic=True),
    "dpmpp_2m_sde_karras": SchedulerSpec("DPMSolverMultistepScheduler", {**SDE, **KARRAS}, stochastic=True),
    "dpmpp_sde": SchedulerSpec("DPMSolverSDEScheduler", needs="torchsde", stochastic=True),
    "unipc": SchedulerSpec("UniPCMultistepScheduler"),
    "deis": SchedulerSpec("DEISMultistepScheduler"),
    "flow_euler": SchedulerSpec("FlowMatchEulerDiscreteScheduler", kinds=FLOW_KINDS),
}


def scheduler_class(name: str) -> type:
    """The diffusers class registered under `name`, checking its optional dependency."""
    choose("scheduler", name, SCHEDULERS)
    spec = SCHEDULERS[name]
    if spec.needs and importlib.util.find_spec(spec.needs) is None:
        raise UserError(f"scheduler {name!r} needs the {spec.needs!r} package: pip install torchsde")
    return getattr(diffusers, spec.cls)


def fitting(kind: str) -> list[str]:
    """Registered schedulers that fit a model of `kind`, in registry order."""
    return [name for name, spec in SCHEDULERS.items() if kind in spec.kinds]


def check_kind(name: str, kind: str) -> None:
    """Raise a one-line UserError unless scheduler `name` fits a model of `kind` (epsilon, v_prediction or flow)."""
    choose("scheduler", name, SCHEDULERS)
    choose("model kind", kind, KINDS)
    if kind not in SCHEDULERS[name].kinds:
        raise UserError(f"scheduler {name!r} does not fit a model of kind {kind!r}; "
                        f"schedulers for {kind}: {', '.join(fitting(kind))}")


def model_kind(config: dict[str, Any]) -> str:
    """The model kind a scheduler config was made for: 'flow' for flow matching, else its prediction_type."""
    flow = (str(config.get("_class_name", "")).startswith("FlowMatch") or bool(config.get("use_flow_sigmas"))
            or config.get("prediction_type") == "flow_prediction"
            or ("shift" in config and "beta_schedule" not in config))
    return "flow" if flow else str(config.get("prediction_type") or "epsilon")


def _option_types(default: Any) -> tuple[tuple[type, ...], str] | None:
    """The types an option takes, judged from its diffusers default (None for defaults that say nothing)."""
    for kinds, label in (((bool,), "true or false"), ((int,), "int"), ((int, float), "a number"), ((str,), "str")):
        if type(default) is kinds[-1]:
            return kinds, label
    return None


def check_options(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The user's non-null options for scheduler `name`, checked against its class, allowed values and types."""
    cls = scheduler_class(name)
    user = {k: v for k, v in (options or {}).items() if v is not None}
    parameters = inspect.signature(cls.__init__).parameters
    accepted = set(parameters) - {"self", "kwargs"}
    unknown = sorted(set(user) - accepted)
    if unknown:
        raise UserError(
            f"scheduler {name!r} has no option {unknown[0]!r}; its options are: {', '.join(sorted(accepted))}"
        )
    for key, value in user.items():
        allowed = OPTION_VALUES.get(key)
        if allowed and (value not in allowed or type(value) is not type(allowed[0])):
            raise UserError(f"scheduler.{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")
        expected = _option_types(parameters[key].default)
        if expected and (type(value) not in expected[0]):
            raise UserError(f"scheduler.{key}={value!r} must be {expected[1]}")
    return user


def make_scheduler(name: str, base_config: dict[str, Any], overrides: dict[str, Any] | None = None):
    """A scheduler `name` built from a pipeline's scheduler config, the variant's options and user overrides."""
    user = check_options(name, overrides)
    cls = scheduler_class(name)
    base = {k: v for k, v in base_config.items() if not k.startswith("_")}
    try:
        return cls.from_config(base, **SCHEDULERS[name].options, **user)
    except (ValueError, NotImplementedError) as e:
        raise UserError(f"scheduler {name!r} rejects options {user}: {e}") from e


def check_steps(name: str, base_config: dict[str, Any], options: dict[str, Any] | None, steps: int,
                source: str) -> None:
    """Raise a UserError when `steps` of scheduler `name` would visit a timestep the model was never trained on."""
    trained = base_config.get("num_train_timesteps", 1000)
    if isinstance(trained, bool) or not isinstance(trained, int) or trained < 1:
        raise UserError(f"{source}: num_train_timesteps={trained!r} is not a positive integer")
    if steps > trained:
        raise UserError(f"num_inference_steps={steps} is more than the {trained} timesteps the scheduler of {source} "
                        f"was trained on; use at most {trained}")
    scheduler = make_scheduler(name, base_config, options)
    dynamic = {"mu": 0.0} if scheduler.config.get("use_dynamic_shifting") else {}  # the pipeline computes mu by size
    try:
        scheduler.set_timesteps(steps, **dynamic)
    except (ValueError, IndexError, RuntimeError) as e:
        raise UserError(f"scheduler {name!r} cannot make num_inference_steps={steps}: {e}") from None
    if "flow" in SCHEDULERS[name].kinds:
        return  # sigmas in [0, 1] times num_train_timesteps: the top timestep is the trained maximum itself
    top = int(max(scheduler.timesteps))
    if top >= trained:
        spacing = scheduler.config.get("timestep_spacing")
        raise UserError(f"num_inference_steps={steps} with scheduler {name} (timestep_spacing={spacing}) reaches "
                        f"timestep {top}, past the {trained} the model was trained on; use fewer steps or "
                        "scheduler.timestep_spacing=trailing")


def resolved_config(scheduler) -> str:
    """The scheduler's full config as sorted JSON (the `scheduler_config` column)."""
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    return json.dumps({"class": type(scheduler).__name__, **config}, sort_keys=True, default=str)
