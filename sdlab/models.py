"""Load SD-shaped diffusers pipelines by name, offline-first, safetensors only, cached once per process."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from sdlab.architectures import ARCHITECTURES, build_components
from sdlab.config import ATTENTION, MKLDNN, MODEL_NAMES, ModelSpec, model_spec, scheduler_choice
from sdlab.errors import UserError, choose
from sdlab.model_files import check_pipeline_folder, check_weights_folder, read_object  # noqa: F401
from sdlab.schedulers import check_steps

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent

_PIPELINES: dict[tuple, object] = {}
_BASE_SCHEDULERS: dict[tuple, dict] = {}
_SPECS: dict[tuple, ModelSpec] = {}
load_count = 0


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an unavailable device is a UserError."""
    has_mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"model.device={device!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": has_mps}
    if not available.get(chosen.type, False):
        raise UserError(f"model.device={device!r} is not available here; use auto or cpu")
    return chosen


def device_of(pipe) -> torch.device:
    """The device the pipeline's UNet runs on (diffusers' `pipe.device` walks every module: milliseconds a call)."""
    return next(pipe.unet.parameters()).device


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is float16 on GPUs and float32 on CPU."""
    if dtype == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    allowed = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    choose("model.dtype", dtype, list(allowed) + ["auto"])
    return allowed[dtype]


def cached_snapshot(repo_id: str) -> Path:
    """The local Hugging Face cache folder of `repo_id`, never downloading."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:
        raise UserError(
            f"{repo_id} is not in the local Hugging Face cache ({type(e).__name__}); download it where there "
            f"is internet (`hf download {repo_id}`) or pass model.path=DIR with a diffusers folder"
        ) from None


def _from_folder(folder: Path, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    check_pipeline_folder(folder)
    diffusers_logging.disable_progress_bar()  # its "Loading pipeline components" bar; sdlab logs one line per load
    try:
        return StableDiffusionPipeline.from_pretrained(
            str(folder), dtype=dtype, use_safetensors=True, local_files_only=True,
            safety_checker=None, requires_safety_checker=False,
        )
    except (OSError, ValueError, KeyError, TypeError) as e:  # what the checks could not foresee, still one line
        raise UserError(f"model.path={folder} cannot be loaded: {str(e).strip().splitlines()[0]}") from None


def _from_architecture(name: str):
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from sdlab.tokenizer import load_tokenizer

    arch = ARCHITECTURES[name]
    return StableDiffusionPipeline(
        **build_components(arch, seed=0),
        tokenizer=load_tokenizer(),
        scheduler=PNDMScheduler.from_config(arch.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def model_folder(spec: ModelSpec) -> Path:
    """Where a folder-backed model's weights are: `model.path`, the shipped mini model, or the HF cache."""
    if spec.path:
        path = Path(os.path.expanduser(spec.path))
        return path if path.is_absolute() else Path.cwd() / path
    if spec.name == "mini":
        return PROJECT_ROOT / "models" / "mini"
    return cached_snapshot(spec.repo_id)


def apply_speed_options(pipe, spec: ModelSpec):
    """Channels-last memory format, the attention implementation and torch.compile, as configured."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    choose("model.attention", spec.attention, ATTENTION)
    processor = AttnProcessor2_0 if spec.attention == "sdpa" else AttnProcessor
    pipe.unet.set_attn_processor(processor())
    pipe.vae.set_attn_processor(processor())
    if spec.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if spec.compile:
        pipe.unet = torch.compile(pipe.unet)
    return pipe


def configured_spec(name: str, **overrides) -> ModelSpec:
    """The ModelSpec that conf/model/<name>.yaml sets up, with `overrides` (benchmarks and hand-written loops)."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "conf" / "model" / f"{name}.yaml"))
    return model_spec({**values, **overrides})


ONEDNN_MIN_BATCH = 16  # mkldnn=auto: PyTorch's own convolutions below this UNet batch, oneDNN from it (BENCHMARKS.md 4)


def use_process_options(spec: ModelSpec, unet_batch: int = 1) -> None:
    """Switch the process-wide settings `spec` asks for: oneDNN (mkldnn) or PyTorch's own CPU convolutions.

    `mkldnn=auto` picks by the UNet's batch (images, doubled under classifier-free guidance): on mini's 8x8
    latents PyTorch's own are 0.85x the time per image up to batch 8 and 3x slower at 16.
    """
    choose("model.mkldnn", spec.mkldnn, MKLDNN)
    torch.backends.mkldnn.enabled = unet_batch >= ONEDNN_MIN_BATCH if spec.mkldnn == "auto" else spec.mkldnn


def use_batch_options(model_key: tuple, unet_batch: int) -> None:
    """`use_process_options` for a loaded pipeline's spec and the UNet batch about to run."""
    if model_key in _SPECS:
        use_process_options(_SPECS[model_key], unet_batch)


def load_pipeline(spec: ModelSpec):
    """The pipeline for `spec`, loaded once per process and reused by every later job."""
    global load_count
    use_process_options(spec)
    if spec.key in _PIPELINES:
        return _PIPELINES[spec.key]
    choose("model", spec.name, MODEL_NAMES)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    if spec.name in ARCHITECTURES and not spec.path:
        pipe = _from_architecture(spec.name)
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    else:
        pipe = _from_folder(model_folder(spec), dtype)
    pipe = apply_speed_options(pipe.to(device), spec)
    pipe.set_progress_bar_config(leave=False, desc="denoising")
    load_count += 1
    log.info("loaded model %s on %s (%s)", spec.name, device, dtype)
    _PIPELINES[spec.key] = pipe
    _SPECS[spec.key] = spec
    _BASE_SCHEDULERS[spec.key] = dict(pipe.scheduler.config)
    return pipe


def base_scheduler_config(spec: ModelSpec) -> dict:
    """The scheduler config the model shipped with, before any swap (loading the model if it is not cached)."""
    if spec.key not in _BASE_SCHEDULERS:
        load_pipeline(spec)
    return _BASE_SCHEDULERS[spec.key]


def shipped_scheduler_config(spec: ModelSpec) -> tuple[dict, str]:
    """The model's own scheduler config and where it comes from, read without loading any weights."""
    if spec.key in _BASE_SCHEDULERS:
        return _BASE_SCHEDULERS[spec.key], f"model {spec.name}"
    if spec.name in ARCHITECTURES and not spec.path:
        return ARCHITECTURES[spec.name].scheduler, f"model {spec.name}"
    folder = model_folder(spec)
    check_pipeline_folder(folder)
    path = folder / "scheduler" / "scheduler_config.json"
    return read_object(path), str(path)


def check_model(cfg: dict) -> None:
    """The model's device, files and the steps its scheduler allows, checked without loading any weights."""
    spec = model_spec(cfg["model"])
    resolve_device(spec.device)
    base, source = shipped_scheduler_config(spec)
    choice = scheduler_choice(cfg["scheduler"])
    check_steps(choice.name, base, choice.options, int(cfg.get("num_inference_steps", 25)), source)


def clear_cache() -> None:
    """Forget every cached pipeline (tests and memory-bound sweeps)."""
    _PIPELINES.clear()
    _BASE_SCHEDULERS.clear()
    _SPECS.clear()
