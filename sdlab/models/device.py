"""Where a model runs: its device, its dtype and the process-wide CPU settings it asks for."""

from __future__ import annotations

import time

from sdlab.config import ModelSpec
from sdlab.errors import UserError
from sdlab.lazy import torch


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


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """A ModelSpec's dtype as torch's: `auto` is float16 on GPUs and float32 on CPU."""
    if dtype == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return getattr(torch, dtype)


def clock(device: torch.device) -> float:
    """`time.perf_counter()` once the work queued on `device` (CUDA, MPS: asynchronous) is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()


def use_process_options(spec: ModelSpec, network: str = "denoiser") -> None:
    """Switch the CPU convolutions `spec` asks for; `mkldnn=auto`: direct ones for the denoiser (batch-invariant: oneDNN
    rounds by batch, NNPACK is 2x slower), oneDNN for the VAE, where nothing amplifies a rounding (BENCHMARKS.md 4)."""
    direct = spec.mkldnn == "auto" and network == "denoiser"
    torch.backends.mkldnn.enabled = not direct if spec.mkldnn == "auto" else spec.mkldnn
    torch.backends.nnpack.set_flags(not direct)


def switch_per_network(spec: ModelSpec, denoiser: torch.nn.Module, vae: torch.nn.Module) -> None:
    """Under `mkldnn=auto`, each network switches to its own convolutions whenever it is called, on every path."""
    if spec.mkldnn != "auto":
        return
    coders = [getattr(vae, part, vae) for part in ("encoder", "decoder")]
    for network, modules in (("denoiser", [denoiser]), ("vae", coders)):
        for module in modules:
            module.register_forward_pre_hook(lambda *_, network=network: use_process_options(spec, network))
