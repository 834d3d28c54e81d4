"""The anatomy job: parameter counts and weight bytes per component and per UNet block, built on the meta device."""

from __future__ import annotations

import json
import math

import torch

from sdlab.bench.figures import bar_chart
from sdlab.bench.records import identity, ordered, write_table
from sdlab.config import ModelSpec
from sdlab.jobs import JobContext, job
from sdlab.lazy import pandas as pd
from sdlab.metrics.anatomy import component_table, denoiser_block_table
from sdlab.metrics.vae import compression_ratio, downsampling_factor, latent_shape
from sdlab.models.architectures import Part, build_on_meta, build_part, component_class
from sdlab.models.loading import built_in, model_folder
from sdlab.models.model_files import check_weights_folder, read_object


def meta_components(spec: ModelSpec) -> dict:
    """Every weighted component on the meta device, from sdlab's architectures or a diffusers folder's configs."""
    if arch := built_in(spec):
        return build_on_meta(arch)
    folder = model_folder(spec)
    check_weights_folder(folder, spec.variant)
    components = {}
    for name, entry in read_object(folder / "model_index.json").items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            continue
        try:
            cls = component_class(entry[1])
        except (AttributeError, ValueError, KeyError):
            continue
        if issubclass(cls, torch.nn.Module):
            with torch.device("meta"):
                components[name] = build_part(Part(entry[1], read_object(folder / name / "config.json")))
    return components


def denoiser_name(components: dict) -> str:
    """The component that predicts noise or velocity: `unet` (SD 1/2, SDXL) or `transformer` (SD3, Flux)."""
    return "unet" if "unet" in components else "transformer"


def config_json(module) -> str:
    """A component's config as sorted JSON (diffusers config dict, or a transformers config's non-default keys)."""
    config = module.config
    config = config.to_diff_dict() if hasattr(config, "to_diff_dict") else dict(config)
    return json.dumps({k: v for k, v in config.items() if not str(k).startswith("_")}, default=str, sort_keys=True)


def percent(share: float, decimals: int = 0) -> str:
    """`share` in % to `decimals` places; one that would print as zero as `<1%` (`<0.1%`, ...)."""
    least = 10.0**-decimals / 100
    return f"<{least:.{decimals}%}" if 0 < share < least else f"{share:.{decimals}%}"


def binary_size(n_bytes: int) -> str:
    """`n_bytes` in MiB below 1 GiB, else in GiB, to three significant digits: `23.8 MiB`, `3.97 GiB`."""
    value, unit = (n_bytes / 2**30, "GiB") if n_bytes >= 2**30 else (n_bytes / 2**20, "MiB")
    decimals = max(0, 2 - math.floor(math.log10(value))) if value else 0
    return f"{value:,.{decimals}f} {unit}"


@job("anatomy")
def run_anatomy(ctx: JobContext) -> pd.DataFrame:
    """A row per component plus total, table `<denoiser>_blocks` (unet or transformer), figure anatomy.png."""
    spec = ctx.run.model
    components = meta_components(spec)
    vae = components["vae"].config
    factor = downsampling_factor(vae.block_out_channels)
    side = spec.resolution
    z_shape = latent_shape(side, side, vae.latent_channels, factor)
    geometry = {"resolution": side, "latent_shape": "x".join(map(str, z_shape)), "downsampling": factor,
                "compression_ratio": compression_ratio((3, side, side), z_shape)}
    table = component_table(components)
    rows = [{**identity(ctx, "anatomy", spec.name), **r, "params_m": r["params"] / 1e6, **geometry,
             "config": config_json(components[r["component"]]) if r["component"] in components else None}
            for r in table.to_dict("records")]
    denoiser = denoiser_name(components)
    blocks = denoiser_block_table(components[denoiser]).assign(model=spec.name)
    write_table(blocks[["model", "block", "params", "share", "bytes_fp32", "bytes_fp16", "bytes_bf16"]], ctx.out_dir,
                f"{denoiser}_blocks")
    parts = table[table["component"] != "total"]
    total = table[table["component"] == "total"].iloc[0]
    bar_chart([
        {"labels": list(parts["component"]), "values": list(parts["params"] / 1e6), "xlabel": "parameters (millions)",
         "notes": [f"{p / 1e6:,.1f} M ({percent(s)} of the model), {binary_size(b)} fp16" for p, s, b in
                   zip(parts["params"], parts["share"], parts["bytes_fp16"])],
         "title": f"model={spec.name}: {total['params']:,} parameters, {binary_size(total['bytes_fp32'])} fp32, "
                  f"{binary_size(total['bytes_fp16'])} fp16; "
                  f"latent {geometry['latent_shape']} at {side}px (x{geometry['compression_ratio']:g})"},
        {"labels": list(blocks["block"].str.replace(" (", "\n(")), "values": list(blocks["params"] / 1e6),
         "xlabel": "parameters (millions)", "notes": [percent(s, 1) for s in blocks["share"]],
         "title": f"{denoiser} blocks in forward order (% of the {denoiser}'s parameters)"},
    ], ctx.out_dir / "anatomy.png")
    return ordered(rows)
