"""Parameter counts and weight bytes of a pipeline's components and of the UNet's blocks."""

from __future__ import annotations

import pandas as pd

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


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
    return pd.DataFrame([
        {"component": name, "params": n, "share": n / counts["total"], **weight_bytes(n)} for name, n in counts.items()
    ])


def unet_block_table(unet) -> pd.DataFrame:
    """One row per UNet block in forward order (conv_in, time_embedding, down_blocks.i, mid_block, up_blocks.i, conv_norm_out, conv_out) with params."""
    rows = []
    order = ["conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block", "up_blocks", "conv_norm_out", "conv_out"]
    children = dict(unet.named_children())
    for name in order + [n for n in children if n not in order]:
        module = children.get(name)
        if module is None:
            continue
        parts = list(enumerate(module)) if name in ("down_blocks", "up_blocks") else [(None, module)]
        for i, part in parts:
            n = count_parameters(part)
            if n:
                label = f"{name}.{i} {type(part).__name__}" if i is not None else name
                rows.append({"block": label, "params": n, **weight_bytes(n)})
    table = pd.DataFrame(rows)
    table["share"] = table["params"] / count_parameters(unet)
    return table
