"""The vae_roundtrip job: encode and decode images through the model's VAE, reconstruction quality and latent statistics."""

from __future__ import annotations

import numpy as np

from sdlab.bench.figures import image_strip
from sdlab.bench.records import identity, ordered, write_table
from sdlab.jobs import JobContext, job
from sdlab.jobs.analysis import article_reports, input_images, to_model, to_uint8
from sdlab.lazy import pandas as pd
from sdlab.metrics.image import psnr, ssim
from sdlab.metrics.vae import channel_image, compression_ratio, latent_channel_stats
from sdlab.models.device import clock
from sdlab.models.loading import load_model


@job("vae_roundtrip")
def run_vae(ctx: JobContext) -> pd.DataFrame:
    """One row per image (PSNR, SSIM, compression ratio, latent mean/std); table `latent_channels`; figure vae_roundtrip.png."""
    spec, recipe = ctx.run.model, ctx.recipe
    model = load_model(spec)
    width, height = ctx.run.params.width, ctx.run.params.height
    images = input_images(recipe, width, height, recipe.num_images, ctx.run.limits["max_input_pixels"])

    rows, channel_tables, strip, labels = [], [], [], []
    for name, image, _ in images:
        x = to_model([image], model)
        start = clock(model.device)
        z = model.encode_image(x)
        mid = clock(model.device)
        recon = to_uint8(model.decode(z))[0]
        end = clock(model.device)
        latent = z[0].float().cpu().numpy()
        stats = latent_channel_stats(latent)
        channel_tables.append(stats.assign(image=name))
        quality = {"psnr_db": psnr(image, recon), "ssim": ssim(image, recon)}
        rows.append({**identity(ctx, "vae_roundtrip", spec.name), "image": name, "width": width, "height": height,
                     "latent_shape": "x".join(map(str, latent.shape)),
                     "compression_ratio": compression_ratio(image.shape, latent.shape), **quality,
                     "latent_mean": float(latent.mean()), "latent_std": float(latent.std()),
                     "scaling_factor": float(model.vae.config.scaling_factor),
                     "time_encode_s": mid - start, "time_decode_s": end - mid})
        strip.append([image, recon, *(channel_image(c) for c in latent)])
        labels.append(["input", f"reconstruction\n{quality['psnr_db']:.1f} dB, SSIM {quality['ssim']:.3f}",
                       *(f"z[{r.channel}] mean {r.mean:+.2f}\nstd {r.std:.2f}" for r in stats.itertuples())])
    channels = pd.concat(channel_tables, ignore_index=True)
    write_table(channels[["image", "channel", "mean", "std", "min", "max"]], ctx.out_dir, "latent_channels")
    image_strip(strip, ctx.out_dir / "vae_roundtrip.png", col_labels=labels, row_labels=[r["image"] for r in rows],
                title=f"VAE round trip, model={spec.name}: {width}x{height}x3 -> {rows[0]['latent_shape']} "
                      f"(x{rows[0]['compression_ratio']:g} fewer values), "
                      f"mean PSNR {np.mean([r['psnr_db'] for r in rows]):.1f} dB; "
                      f"latent channels min-max scaled{article_reports(ctx.run)}")
    return ordered(rows)
