"""Parameters and activation memory per level of a toy U-Net, measured on the meta device (no memory used)."""

from __future__ import annotations

from sdlab.lazy import pandas as pd, torch


def level_table(channels: tuple[int, ...], in_channels: int = 1, size: int = 32) -> pd.DataFrame:
    """Per level of a diffusers UNet2DModel with one resolution level per entry of `channels`: channels, resolution,
    params (down + mirrored up block), fp32 bytes of the skip activations kept."""
    from diffusers import UNet2DModel

    with torch.device("meta"):
        unet = UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=in_channels,
                           block_out_channels=tuple(channels), layers_per_block=2,
                           down_block_types=("DownBlock2D",) * len(channels),
                           up_block_types=("UpBlock2D",) * len(channels), norm_num_groups=min(32, min(channels)))
    skips: dict[int, list[tuple[int, ...]]] = {}
    hooks = [block.register_forward_hook(lambda m, i, o, level=k: skips.__setitem__(level, [t.shape for t in o[1]]))
             for k, block in enumerate(unet.down_blocks)]
    with torch.no_grad():
        unet(torch.zeros(1, in_channels, size, size, device="meta"), torch.tensor([10], device="meta"))
    for h in hooks:
        h.remove()
    rows = []
    for level, width in enumerate(channels):
        up = unet.up_blocks[len(channels) - 1 - level]
        params = sum(p.numel() for p in unet.down_blocks[level].parameters()) + sum(p.numel() for p in up.parameters())
        shape = skips[level][0]
        rows.append({"level": str(level), "channels": width, "resolution": f"{shape[-2]}x{shape[-1]}", "params": params,
                     "activation_bytes_fp32": 4 * sum(int(torch.Size(s).numel()) for s in skips[level])})
    total = sum(p.numel() for p in unet.parameters())
    rows.append({"level": "total", "channels": None, "resolution": None, "params": total,
                 "activation_bytes_fp32": sum(r["activation_bytes_fp32"] for r in rows)})
    return pd.DataFrame(rows).assign(config=str(list(channels)))
