"""Parameter counts and weight bytes of a pipeline's components and of its denoiser's blocks."""

from __future__ import annotations

import torch

from sdlab.lazy import pandas as pd

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
UNET_ORDER = ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block", "up_blocks", "conv_norm_out",
              "conv_out")
STACK = 5  # a list of this many blocks of one class (a transformer's) is one row: "transformer_blocks (24x ...)"


def count_parameters(module) -> int:
    """Number of parameter values of a torch module (works on the meta device)."""
    return int(sum(p.numel() for p in module.parameters()))


def weight_bytes(params: int) -> dict[str, int]:
    """Bytes of `params` values at each dtype: params x bytes per value (fp32 4, fp16 2, bf16 2)."""
    return {f"bytes_{name}": int(params) * size for name, size in DTYPE_BYTES.items()}


def component_table(components: dict) -> pd.DataFrame:
    """One row per component plus `total`: params, share of the total and bytes at fp32/fp16/bf16."""
    counts = {name: count_parameters(module) for name, module in components.items()}
    counts["total"] = sum(counts.values())
    return pd.DataFrame([{"component": name, "params": n, "share": n / counts["total"], **weight_bytes(n)}
                         for name, n in counts.items()])


def denoiser_block_table(denoiser) -> pd.DataFrame:
    """A row per block in forward order with its params; a stack of identical transformer blocks is one row."""
    children = dict(denoiser.named_children())
    order = [n for n in UNET_ORDER if n in children] + [n for n in children if n not in UNET_ORDER]
    parts = []
    for name in order:
        module = children[name]
        items = list(module) if isinstance(module, torch.nn.ModuleList) else []
        if len(items) >= STACK and len({type(item) for item in items}) == 1:
            parts.append((f"{name} ({len(items)}x {type(items[0]).__name__})", module))
        else:
            parts += [(f"{name}.{i} {type(item).__name__}", item) for i, item in enumerate(items)] or [(name, module)]
    counts = [(label, count_parameters(part)) for label, part in parts]
    table = pd.DataFrame([{"block": label, "params": n, **weight_bytes(n)} for label, n in counts if n])
    table["share"] = table["params"] / count_parameters(denoiser)
    return table
