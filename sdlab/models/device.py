"""Where a model runs: its device, its dtype and the process-wide CPU settings it asks for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdlab.config import MKLDNN, ModelSpec
from sdlab.errors import UserError, choose

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an unavailable device is a UserError."""
    import torch

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
    """`auto` is float16 on GPUs and float32 on CPU."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    allowed = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    choose("model.dtype", dtype, list(allowed) + ["auto"])
    return allowed[dtype]


ONEDNN_MIN_BATCH = 16  # mkldnn=auto: PyTorch's own convolutions below this UNet batch, oneDNN from it (BENCHMARKS.md 4)


def use_process_options(spec: ModelSpec, unet_batch: int = 1) -> None:
    """Switch the process-wide settings `spec` asks for: oneDNN (mkldnn) or PyTorch's own CPU convolutions.

    `mkldnn=auto` picks by the UNet's batch (images, doubled under classifier-free guidance): on mini's 8x8
    latents PyTorch's own are 0.85x the time per image up to batch 8 and 3x slower at 16.
    """
    import torch

    choose("model.mkldnn", spec.mkldnn, MKLDNN)
    torch.backends.mkldnn.enabled = unet_batch >= ONEDNN_MIN_BATCH if spec.mkldnn == "auto" else spec.mkldnn
