"""Explainer jobs: the small, exact toys behind the article figures (noise, toy U-Nets, CFG, DDIM steps, embeddings)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from sdlab.bench.captions import at_ends
from sdlab.bench.figures import bar_chart, curves, image_strip, save_figure, styled
from sdlab.bench.records import identity, write_table
from sdlab.errors import UserError
from sdlab.jobs import JobContext, job
from sdlab.lazy import pandas as pd
from sdlab.metrics import toy
from sdlab.metrics.clip import cosine_matrix
from sdlab.metrics.toy_unet import level_table

CURVE_POINTS = 1000  # timesteps on the cosine curve, at most


def finish(ctx: JobContext, frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Write the explainer's table under its own name and return it as the job's rows."""
    write_table(frame, ctx.out_dir, name)
    return frame.assign(**identity(ctx, ctx.run.job))


@job("noise_image")
def run_noise_image(ctx: JobContext) -> pd.DataFrame:
    """A image of pure N(0, I) noise and its histogram against the standard normal pdf."""
    size, seed = ctx.recipe.size, ctx.recipe.seed
    x = np.random.default_rng(seed).standard_normal((size, size, 3))
    shown = np.clip((x + 3) / 6, 0, 1)  # +-3 sigma onto [0, 1]
    image_strip([[shown]], ctx.out_dir / "noise.png", cell_inches=5.0,
                col_labels=[f"N(0, I), {size}x{size}x3, seed {seed}\nshown as (x + 3) / 6, clipped to [0, 1]"])
    edges = np.linspace(-4.5, 4.5, 91)
    density, _ = np.histogram(x, bins=edges, density=True)
    centres = (edges[:-1] + edges[1:]) / 2
    flat = x.ravel()
    ks = stats.kstest(flat, "norm")
    curves([{"lines": [{"x": centres, "y": density, "label": "pixels (histogram)", "style": "-"},
                       {"x": centres, "y": stats.norm.pdf(centres), "label": "N(0, 1) pdf", "style": "--"}],
             "xlabel": "value", "ylabel": "density",
             "title": f"pure noise is standard normal: mean {flat.mean():+.4f}, std {flat.std():.4f} over {flat.size:,} "
                      f"values; KS distance to N(0, 1) {ks.statistic:.4f}"}],
           ctx.out_dir / "noise_histogram.png")
    frame = pd.DataFrame([{"size": size, "seed": seed, "values": flat.size, "mean": flat.mean(), "std": flat.std(),
                           "skew": stats.skew(flat), "excess_kurtosis": stats.kurtosis(flat),
                           "ks_statistic": ks.statistic, "ks_pvalue": ks.pvalue}])
    return finish(ctx, frame, "noise_stats")


@job("toy_predictor")
def run_toy_predictor(ctx: JobContext) -> pd.DataFrame:
    """DDPM loss of a zero, a random and a perfect noise predictor per timestep bin on a toy diffusion."""
    r = ctx.recipe
    frame = toy.toy_noise_predictor_mse(T=r.T, n=r.n, shape=tuple(r.shape), bins=r.bins, seed=r.seed)
    x = (frame["t_lo"] + frame["t_hi"]) / 2
    curves([{"lines": [{"x": x, "y": frame[c], "label": c.removeprefix("mse_") + " predictor", "style": "o-"}
                       for c in ("mse_zero", "mse_random", "mse_perfect")],
             "xlabel": "timestep bin centre", "ylabel": "MSE(eps, eps_hat)",
             "title": "what the noise-prediction loss rewards: mean MSE " + ", ".join(
                 f"{c.removeprefix('mse_')} {frame[c].mean():.2f}" for c in ("mse_zero", "mse_random", "mse_perfect"))}],
           ctx.out_dir / "toy_predictor.png")
    return finish(ctx, frame, "toy_predictor")


@job("toy_unet")
def run_toy_unet(ctx: JobContext) -> pd.DataFrame:
    """Parameters and skip-activation memory per level for toy U-Net channel configurations."""
    r = ctx.recipe
    frame = pd.concat([level_table(tuple(c), r.in_channels, r.size) for c in r.configs], ignore_index=True)
    levels = frame[frame["level"] != "total"]
    labels = [f"L{lvl} ({res})" for lvl, res in zip(levels["level"], levels["resolution"])]
    groups = [f"channels {c}" for c in levels["config"]]
    totals = frame[frame["level"] == "total"].set_index("config")  # with the mid block, time embedding, in/out convs
    share = {column: levels[column] / levels["config"].map(totals[column])
             for column in ("params", "activation_bytes_fp32")}
    first = levels["config"] == levels["config"].iloc[0]
    deepest, shallowest = levels[first].index[-1], levels[first].index[0]
    claim = (f"deepest level: {share['params'][deepest]:.0%} of the model's {totals['params'].iloc[0]:,} parameters; "
             f"shallowest: {share['activation_bytes_fp32'][shallowest]:.0%} of the skip activations "
             f"(channels {levels['config'].iloc[0]})")
    bar_chart([{"labels": labels, "values": levels["params"] / 1e6, "groups": groups, "xlabel": "parameters (millions)",
                "notes": [f"{v:.0%}" for v in share["params"]],
                "title": "parameters per level (down + up block), in % of all the model's parameters"},
               {"labels": labels, "values": levels["activation_bytes_fp32"] / 2**10, "groups": groups,
                "notes": [f"{v:.0%}" for v in share["activation_bytes_fp32"]], "xlabel": "KiB (fp32, batch 1)",
                "title": "skip activations kept per level"}], ctx.out_dir / "toy_unet.png", title=claim)
    return finish(ctx, frame, "toy_unet")


def vae_compression_table(sizes: list[int], latent_channels: int = 4, factor: int = 8) -> pd.DataFrame:
    """Pixel values 3HW against latent values C(H/f)(W/f): the ratio is constant, the saving grows as H^2."""
    rows = []
    for side in sizes:
        if side % factor:
            raise UserError(f"vae_compression size {side} is not a multiple of {factor}")
        pixels, latents = 3 * side * side, latent_channels * (side // factor) ** 2
        rows.append({"size": side, "latent_shape": f"{latent_channels}x{side // factor}x{side // factor}",
                     "pixel_values": pixels, "latent_values": latents, "ratio": pixels / latents,
                     "saved_values": pixels - latents, "saved_mib_fp32": 4 * (pixels - latents) / 2**20})
    return pd.DataFrame(rows)


@job("vae_compression")
def run_vae_compression(ctx: JobContext) -> pd.DataFrame:
    """How much the VAE shrinks what the UNet sees, across resolutions."""
    r = ctx.recipe
    frame = vae_compression_table(list(r.sizes), r.latent_channels, r.factor)
    side, saved = frame["size"], frame["saved_values"] / 1e6
    small, big = frame.iloc[0], frame.iloc[-1]
    curves([{"lines": [{"x": side, "y": frame["pixel_values"] / 1e6, "label": "pixel values (3 H W)", "style": "o-"},
                       {"x": side, "y": frame["latent_values"] / 1e6, "label": "latent values", "style": "o-"},
                       {"x": side, "y": saved[0] * (side / side[0]) ** 2, "style": ":", "color": "0.3",
                        "label": f"{saved[0]:.2f}M x (side / {side[0]})² (quadratic)"}],
             "points": [{"x": side, "y": saved, "label": "values saved", "color": "C2", "notes": [
                 f"{v:.2f}M ({m:.1f} MiB fp32)" for v, m in zip(saved, frame["saved_mib_fp32"])], "offset": (10, -8)}],
             "xlabel": "image side (px)", "ylabel": "values (millions, linear axis)",
             "title": f"ratio {small.ratio:g}x at every size, so the values saved grow as the side squared: "
                      f"{big['size'] / small['size']:g}x the side ({small['size']} -> {big['size']} px) saves "
                      f"{big.saved_values / small.saved_values:.0f}x as much" if len(frame) > 1 else
                      f"ratio {small.ratio:g}x at {small['size']} px: {saved[0]:.2f}M values saved; one size: nothing "
                      "to compare (give two or more sizes to see the savings grow as the side squared)"}],
           ctx.out_dir / "vae_compression.png", panel_inches=(7.5, 4.2))
    return finish(ctx, frame, "vae_compression")


@job("cfg_toy")
def run_cfg_toy(ctx: JobContext) -> pd.DataFrame:
    """Classifier-free guidance on synthetic vectors: alignment with the signal and norm growth per scale."""
    r = ctx.recipe
    frame = toy.cfg_simulation(scales=tuple(r.scales), dim=r.dim, seed=r.seed)
    factor = float(r.norm_factor)
    threshold = toy.norm_threshold_scale(frame, factor)
    curves([{"lines": [{"x": frame["scale"], "y": frame["cosine_to_signal"], "style": "o-"}],
             "xlabel": "guidance scale w", "ylabel": "cos(eps_w, signal)",
             "title": "guidance aligns with the signal: cos " + at_ends(
                 [f"{c:.2f}" for c in frame["cosine_to_signal"]], [f"w={w:g}" for w in frame["scale"]], "guidance scale")},
            {"lines": [{"x": frame["scale"], "y": frame["amplification"], "style": "o-"}], "hline": factor,
             "xlabel": "guidance scale w", "ylabel": "|eps_w| / |eps_cond|",
             "title": f"and amplifies the prediction: passes {factor:g}x at w = {threshold:.2f}" if np.isfinite(threshold)
             else f"and amplifies the prediction: {frame['amplification'].iloc[-1]:.2f}x at w={frame['scale'].iloc[-1]:g}, "
                  f"short of {factor:g}x at every scale tried"}],
           ctx.out_dir / "cfg_toy.png")
    return finish(ctx, frame.assign(norm_threshold_scale=threshold), "cfg_toy")


@job("ddim_steps")
def run_ddim_steps(ctx: JobContext) -> pd.DataFrame:
    """DDIM round-trip error of a 1-D signal against steps: the share each doubling removes, the knee and the bend."""
    r = ctx.recipe
    x0 = np.sin(np.linspace(0, 4 * math.pi, r.length))
    frame = toy.ddim_perfect_predictor_mse(x0, T=r.T, steps_list=tuple(r.steps), schedule=r.schedule, seed=r.seed)
    steps, mse = frame["steps"].to_numpy(), frame["mse"].to_numpy()
    cuts = toy.cut_per_doubling(steps, mse)
    flat = [int(n) for n, cut in zip(steps, cuts) if cut < toy.KNEE_CUT]
    knee, bend = (flat[0] if flat else None), toy.knee(steps, mse)
    left = float(mse[steps == bend][0] / mse[0])
    rule = f"a doubling of the steps cuts the error by less than {toy.KNEE_CUT:.0%}"
    absolute = (f"{steps[0]} -> {bend} steps remove {1 - left:.0%} of the {steps[0]}-step error, {bend} -> {steps[-1]} "
                f"({steps[-1] / bend:.0f}x the work) the last {left:.0%}")
    title = (f"from {steps[0]} to {steps[-1]} steps the error falls {1 - mse[-1] / mse[0]:.0%}; a knee needs three step "
             "counts or more" if len(steps) < 3 else
             f"knee at {knee} steps: from there {rule}\n{absolute}" if knee else
             f"no knee by the article's definition ({rule}):\neach doubling from {steps[0]} to {steps[-1]} steps cuts "
             f"it {100 * cuts.min():.0f}-{cuts.max():.0%};\n'more steps stop paying' holds only for the absolute "
             f"error:\n{absolute}")
    slope = np.polyfit(np.log(steps), np.log(mse), 1)[0]
    # nothing marked on the straight log-log line: a marked bend there reads as the knee the title denies
    curves([{"lines": [{"x": steps, "y": mse, "style": "o-", "label": f"DDIM round trip, {r.schedule} schedule"}],
             "xlabel": "steps (log scale)", "ylabel": "reconstruction MSE", "logx": True, "logy": True,
             "title": f"the error falls {mse[0] / mse[-1]:.0f}x from {steps[0]} to {steps[-1]} steps"
                      + f", close to a power law (slope {slope:.2f} on log-log axes)" * (len(steps) > 2)},
            {"points": [{"x": steps[1:], "y": 100 * cuts, "notes": [f"{c:.0%}" for c in cuts], "color": "C0"}],
             "lines": [{"x": steps[1:], "y": 100 * cuts, "style": "-"}], "hline": 100 * toy.KNEE_CUT, "ylim": (0, 100),
             "logx": True, "xlabel": "steps at the end of each interval (log scale)",
             "ylabel": "error removed per doubling (%)",
             "title": f"share of the error one doubling of the steps removes; dashed: the article's knee "
                      f"({toy.KNEE_CUT:.0%})"}],
           ctx.out_dir / "ddim_steps.png", title=title, panel_inches=(8.0, 3.4))
    return finish(ctx, frame.assign(cut_per_doubling=[np.nan, *cuts], knee=knee, bend=bend), "ddim_steps")


def stays_below_half(cosine: np.ndarray) -> int | None:
    """The index from which the cosine to t=0 stays below 1/2 (None when its last value is not)."""
    above = np.flatnonzero(cosine >= 0.5)
    return int(above[-1]) + 1 if above[-1] + 1 < len(cosine) else None


def dims(first: int, last: int) -> str:
    """A span of embedding dimensions: `0-33`, or `0` alone."""
    return f"{first}-{last}" if last > first else f"{first}"


def heatmap_title(timesteps: np.ndarray, dim: int) -> str:
    """What the heatmap's rows resolve: every sinusoid (over half a cycle between rows aliases), or which they alias."""
    freqs, half = toy.timestep_frequencies(dim), dim // 2
    gap = int(np.diff(timesteps).max(initial=1))
    spacing = f"all {len(timesteps)} timesteps" if gap == 1 else f"{len(timesteps)} timesteps up to {gap} apart"
    head = f"the embedding of {spacing}, one row each:\n"
    fast = int((freqs * gap >= math.pi).sum())  # the fastest first: fewer than two rows per period
    if not fast:
        return (f"{head}every sinusoid resolved, the fastest (dims 0 and {half}) turns once per "
                f"{2 * math.pi / (freqs[0] * gap):.1f} rows")
    return (f"{head}dims {dims(0, fast - 1)} and {dims(half, half + fast - 1)} turn over half a cycle per row: "
            "aliased, not their sinusoids")


def pixel_rows(fig, ax, rows: int) -> None:
    """Grow `fig` until `ax` is at least `rows` pixels high: a row per pixel, the screen resamples none away."""
    for _ in range(3):  # the constrained layout gives the panels nearly all the growth: a second pass settles it
        fig.get_layout_engine().execute(fig)  # lays the panels out without drawing the image
        short = rows - ax.get_position().height * fig.get_figheight() * fig.dpi
        if short <= 0:
            return
        fig.set_figheight(fig.get_figheight() + (short + 1) / fig.dpi)


@job("timestep_embedding")
def run_timestep_embedding(ctx: JobContext) -> pd.DataFrame:
    """The SD UNet's sinusoidal timestep embedding as a heatmap, beside each t's cosine to t=0's (a table row per t)."""
    T, dim, rows = ctx.recipe.T, ctx.recipe.dim, ctx.recipe.rows
    timesteps = np.unique(np.linspace(0, T - 1, min(rows, T)).round().astype(int))
    embedding = toy.sinusoidal_timestep_embedding(timesteps, dim)
    t = np.unique(np.linspace(0, T - 1, min(T, CURVE_POINTS)).round().astype(int))
    curve = toy.sinusoidal_timestep_embedding(t, dim)
    cosine = cosine_matrix(curve, curve[:1])[:, 0]
    frame = pd.DataFrame({"t": t, "norm": np.linalg.norm(curve, axis=1), "cosine_to_t0": cosine})
    half = stays_below_half(cosine)
    middle = int(np.abs(t - T // 2).argmin())
    quoted = [(i, f"{cosine[i]:.2f} at t={t[i]}") for i in sorted({middle, len(t) - 1} - {half})]
    claims = ([f"below 0.5 from t={t[half]} on"] if half is not None else []) + [note for _, note in quoted]
    with styled() as plt:
        fig, (ax, side) = plt.subplots(1, 2, figsize=(10, 5.2), sharey=True, width_ratios=(2.4, 1),
                                       layout="constrained")
        im = ax.imshow(embedding, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
                       extent=(0, dim, timesteps[-1], timesteps[0]))
        ax.grid(False)
        ax.set_xlabel("embedding dimension (cos half, then sin half)")
        ax.set_ylabel("timestep t")
        ax.set_title(heatmap_title(timesteps, dim))
        fig.colorbar(im, ax=ax, location="bottom", shrink=0.6, aspect=40, pad=0.02,
                     label="embedding value: cos(t w_k) or sin(t w_k)")
        side.plot(cosine, t, color="C0", lw=1)
        side.axvline(0.5, color="0.4", lw=0.8, ls="--")
        notes = ([(half, f"< 0.5 from t={t[half]}")] if half is not None else []) + quoted
        for i, note in notes:  # right of the dashed line, which the curve stays left of once it has crossed it
            side.scatter([cosine[i]], [t[i]], color="C3", s=24, zorder=3, edgecolors="black", linewidths=0.4)
            side.annotate(note, (cosine[i], t[i]), xytext=(0.56, 8 if i == len(t) - 1 else -10),
                          textcoords=("data", "offset points"), fontsize=8, color="C3", va="center",
                          arrowprops={"arrowstyle": "-", "color": "C3", "lw": 0.6})
        side.set_xlim(min(0.0, float(cosine.min()) - 0.05), 1.05)
        side.set_xlabel("cosine similarity to t=0's embedding")
        side.set_title("cosine of t's embedding to t=0's\n(the same for any two timesteps t apart)")
        fig.suptitle(f"sinusoidal timestep embedding, dim {dim}: cosine to t=0 is {', '.join(claims)}")
        pixel_rows(fig, ax, len(timesteps))
        save_figure(fig, ctx.out_dir / "timestep_embedding.png")
    return finish(ctx, frame, "timestep_embedding")
