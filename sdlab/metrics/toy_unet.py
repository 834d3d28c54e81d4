"""Parameters and activation memory per level of a toy U-Net, measured on the meta device (no memory used)."""

from __future__ import annotations

from sdlab.lazy import pandas as pd, torch


def level_table(channels: tuple[int, ...], in_channels: int = 1, size: int = 32) -> pd.DataFrame:
    """Per level of a diffusers UNet2DModel with one resolution level per entry of `channels`: channels, resolution,
    params (down + mirrored up block), fp32 bytes of the skip activations kept at its resolution."""
    from diffusers import UNet2DModel

    with torch.device("meta"):
        unet = UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=in_channels,
                           block_out_channels=tuple(channels), layers_per_block=2,
                           down_block_types=("DownBlock2D",) * len(channels),
                           up_block_types=("UpBlock2D",) * len(channels), norm_num_groups=min(32, min(channels)))
    kept: list[torch.Size] = []  # every skip the up blocks take: conv_in's output, then each down block's
    hooks = [unet.conv_in.register_forward_hook(lambda m, i, o: kept.append(o.shape)),
             *(block.register_forward_hook(lambda m, i, o: kept.extend(t.shape for t in o[1]))
               for block in unet.down_blocks)]
    with torch.no_grad():
        unet(torch.zeros(1, in_channels, size, size, device="meta"), torch.tensor([10], device="meta"))
    for h in hooks:
        h.remove()
    rows = []
    for level, width in enumerate(channels):  # a level's skips are those at its resolution (a downsample's included)
        up = unet.up_blocks[len(channels) - 1 - level]
        params = sum(p.numel() for p in unet.down_blocks[level].parameters()) + sum(p.numel() for p in up.parameters())
        side = size // 2**level
        rows.append({"level": str(level), "channels": width, "resolution": f"{side}x{side}", "params": params,
                     "activation_bytes_fp32": 4 * sum(s.numel() for s in kept if s[-1] == side)})
    total = sum(p.numel() for p in unet.parameters())
    rows.append({"level": "total", "channels": None, "resolution": None, "params": total,
                 "activation_bytes_fp32": sum(r["activation_bytes_fp32"] for r in rows)})
    return pd.DataFrame(rows).assign(config=str(list(channels)))
