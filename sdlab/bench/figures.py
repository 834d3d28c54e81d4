"""Figures in one house style: curves, heatmaps, image strips, GIFs; all written atomically (image grids: sdlab.bench.grid)."""

from __future__ import annotations

import os
import re
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from sdlab.bench.captions import drawable, record_caption, uncut
from sdlab.io import atomic_path, atomic_save
from sdlab.lazy import pandas as pd
from sdlab.metrics.stats import MIN_N

STYLE = {"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "axes.titlesize": 9, "axes.spines.top": False,
         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
         "text.parse_math": False}  # labels and titles carry prompts and file names: a `$` in them is a dollar sign
CELL_INCHES = 1.6
PAGE_INCHES = 13.4  # the report's page (about 1400 px) at 100 dpi: the summary plot fills it, a strip no more
THUMB_POINTS = 36  # the side of a heatmap row's thumbnail
ROW_LABEL_POINTS = 9  # the font size of horizontal row labels
LOG_LABEL = re.compile(r"\$\\mathdefault\{(.*)\}\$")  # how matplotlib's log formatters write a tick label
SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


@contextmanager
def styled():
    """matplotlib's pyplot (Agg backend) in the house style, imported when a figure is drawn (not to read a command line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        yield plt


def save_figure(fig, target: Path, crop: bool = True) -> Path:
    """Save a figure as PNG atomically, its titles as caption, and close it; `crop` cuts it to its ink (drawn twice)."""
    import matplotlib.pyplot as plt

    in_its_font(fig)
    if crop:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
    else:
        fig.canvas.draw()
        atomic_save(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())), target, format="PNG", dpi=(fig.dpi,) * 2)
    record_caption(target, fig.get_label())
    plt.close(fig)
    return Path(target)


def in_its_font(fig) -> None:
    """`fig`'s texts and given tick labels made `drawable` (no glyph warning); its titles as typed: its label."""
    from matplotlib.font_manager import findfont
    from matplotlib.text import Text
    from matplotlib.ticker import FixedFormatter, FuncFormatter

    titles = (fig.get_suptitle(), *(ax.get_title() for ax in fig.axes))  # ' | ' apart: the caption
    fig.set_label(fig.get_label() or " | ".join(t for t in titles if t))
    for text in fig.findobj(Text):
        if not text.get_text().isascii():  # every font drawn here has ASCII: most texts are done in no time
            text.set_text(drawable(text.get_text(), findfont(text.get_fontproperties())))
    for axis in (axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)):
        for which in ("major", "minor"):
            given = getattr(axis, f"get_{which}_formatter")()
            if isinstance(given, (FixedFormatter, FuncFormatter)):  # set_xticks(labels) and the like: any text
                getattr(axis, f"set_{which}_formatter")(
                    FuncFormatter(lambda x, pos=None, given=given: figure_text(given(x, pos))))


def figure_text(value) -> str:
    """`value` as the figures' font draws it (`drawable`): what a layout counting characters before drawing counts."""
    from matplotlib.font_manager import FontProperties, findfont

    text = str(value)
    return text if text.isascii() else drawable(text, findfont(FontProperties()))


def log_scale(ax, which: str, **options) -> None:
    """`ax`'s x or y axis on a log scale (symlog with `linthresh=`), ticks in plain text (2×10⁻³), not mathtext."""
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLogFormatter(LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            label = super().__call__(x, pos)
            math = LOG_LABEL.fullmatch(label)
            if not math:
                return label
            text = re.sub(r"\^\{(-?\d+)\}", lambda power: power[1].translate(SUPERSCRIPT), math[1])
            return text.replace("\\times", "×").replace("-", "−")

    getattr(ax, f"set_{which}scale")("symlog" if "linthresh" in options else "log", **options)
    axis = getattr(ax, f"{which}axis")
    base = axis.get_transform().base
    axis.set_major_formatter(PlainLogFormatter(base))
    if isinstance(axis.get_minor_formatter(), LogFormatterSciNotation):
        axis.set_minor_formatter(PlainLogFormatter(base, labelOnlyBase=False))


def log_x(ax) -> None:
    """A log x axis with ticks 1, 2, 5, 10 ... written plainly; spanning less than a decade, 1, 1.5, 2, 3, 4, 6, 8."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    class FinerWithinADecade(LogLocator):
        def tick_values(self, vmin, vmax):
            vmin, vmax = sorted((vmin, vmax))
            self.set_params(subs=(1, 1.5, 2, 3, 4, 6, 8) if 0 < vmin and vmax < 10 * vmin else (1, 2, 5))
            return super().tick_values(vmin, vmax)

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FinerWithinADecade())
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


# --------------------------------------------------------------------------- analysis figures

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # matplotlib's tab10
DISTINCT = PALETTE + ("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d",
                      "#9edae5")  # tab20: its strong colours, then its light ones
MAX_LINES_PER_PANEL = 8


def curves(panels: Sequence[dict], target: Path, title: str = "", panel_inches: tuple[float, float] = (6.4, 3.6)) -> Path:
    """Line plots, one panel per dict: bands [{x, low, high, label, color}], lines [{x, y, label, style}], points [{x, y, label, marker, notes, offset}], xlabel, ylabel, title, logx, logy, symlog (linear threshold), hline, yticks (positions, labels), ylim, integer_x."""
    from matplotlib.ticker import MaxNLocator

    with styled() as plt:
        fig, axes = plt.subplots(len(panels), 1, figsize=(panel_inches[0], panel_inches[1] * len(panels)), squeeze=False)
        for ax, panel in zip(axes[:, 0], panels):
            for i, band in enumerate(panel.get("bands", ())):
                ax.fill_between(band["x"], band["low"], band["high"], color=band.get("color", PALETTE[i % len(PALETTE)]),
                                alpha=0.2, lw=0, label=band.get("label"))
            for i, line in enumerate(panel.get("lines", ())):
                ax.plot(line["x"], line["y"], line.get("style", "-"), label=line.get("label"),
                        color=line.get("color", PALETTE[i % len(PALETTE)]), lw=1.4, ms=3)
            for i, pts in enumerate(panel.get("points", ())):
                marker = pts.get("marker", "o")
                edge = {} if marker in ("|", "_", "x", "+", "1", "2", "3", "4") else {"edgecolors": "black", "linewidths": 0.4}
                ax.scatter(pts["x"], pts["y"], label=pts.get("label"), marker=marker, s=pts.get("size", 22),
                           color=pts.get("color", PALETTE[i % len(PALETTE)]), zorder=3, **edge)
                for x, y, note in zip(pts["x"], pts["y"], pts.get("notes", [None] * len(pts["x"]))):
                    if note:
                        ax.annotate(note, (x, y), textcoords="offset points", xytext=pts.get("offset", (4, 5)), fontsize=7,
                                    color=pts.get("color", "black"))
            if panel.get("hline") is not None:
                ax.axhline(panel["hline"], color="0.4", lw=0.8, ls="--")
            if panel.get("logy"):
                log_scale(ax, "y")
            if panel.get("symlog"):
                log_scale(ax, "y", linthresh=panel["symlog"], linscale=panel.get("linscale", 1.0))
            if panel.get("logx"):
                log_x(ax)
            if panel.get("yticks"):
                ax.set_yticks(*panel["yticks"])
            if panel.get("ylim"):
                ax.set_ylim(*panel["ylim"])
            if panel.get("integer_x"):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one point: its own tick
            ax.set_xlabel(panel.get("xlabel", ""))
            scale = f"\n(symmetric log scale, linear within +-{panel['symlog']:g})" if panel.get("symlog") else ""
            ax.set_ylabel(panel.get("ylabel", "") + scale)
            ax.set_title(panel.get("title", ""))
            if any(item.get("label") for kind in ("bands", "lines", "points") for item in panel.get(kind, ())):
                ax.legend(fontsize=7, frameon=False)
        suptitle = fig.suptitle(title) if title else None
        in_its_font(fig)
        fig.tight_layout()
        clear_legends(fig)
        fit_titles(fig, suptitle)
        clear_notes(fig)
        return save_figure(fig, target)


def crosses_lines(ax, box) -> bool:
    """Whether one of `ax`'s lines passes through `box` (display space)."""
    return any(line.get_path().transformed(line.get_transform()).intersects_bbox(box, filled=False)
               for line in ax.lines if len(line.get_xydata()) > 1)


def legend_covers_data(ax) -> bool:
    """Whether `ax`'s legend, where the last draw put it, lies over one of its lines or points (display space)."""
    box = ax.get_legend().get_window_extent()
    points = (box.contains(*p) for artist in [*ax.lines, *ax.collections]
              for p in artist.get_transform().transform(
                  artist.get_xydata() if hasattr(artist, "get_xydata") else artist.get_offsets()))
    return crosses_lines(ax, box) or any(points)


NOTE_PLACES = tuple(((4 * side, rise), "left" if side > 0 else "right") for rise in (5, -12, 16, -23, 27)
                    for side in (1, -1))  # beside its point, then farther above or below it: points of offset


def clear_notes(fig) -> None:
    """Move each point's note that lines or earlier notes cross (or its panel cuts) to the first free NOTE_PLACES."""
    from matplotlib.text import Annotation

    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        placed = []
        for note in [text for text in ax.texts if isinstance(text, Annotation)]:
            put = (note.xyann, note.get_horizontalalignment())
            for offset, align in (put, *NOTE_PLACES, put):  # crossed wherever it goes: where it was put
                note.xyann = offset
                note.set_horizontalalignment(align)
                box = note.get_window_extent(renderer)
                inside = ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1)
                if inside and not crosses_lines(ax, box) and not any(box.overlaps(other) for other in placed):
                    break
            placed.append(box)


def clear_legends(fig) -> None:
    """Move each legend that matplotlib's best place still lays over the data to the right of its panel."""
    if not any(ax.get_legend() is not None for ax in fig.axes):
        return
    fig.canvas.draw()
    moved = [ax for ax in fig.axes if ax.get_legend() is not None and legend_covers_data(ax)]
    for ax in moved:
        legend = ax.get_legend()
        ax.legend(legend.legend_handles, [t.get_text() for t in legend.get_texts()], fontsize=7, frameon=False,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    if moved:
        fig.tight_layout()


def fit_titles(fig, suptitle=None) -> None:
    """Wrap each title wider than its panels (the suptitle: the figure) at its spaces; the figure grows by its lines."""
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    renderer = fig.canvas.get_renderer()
    texts = [(ax.title, ax.get_window_extent(renderer).width) for ax in fig.axes] + (
        [(suptitle, fig.bbox.width)] if suptitle else [])  # the figure's title spans the figure as laid out
    heights = lambda: sum(text.get_window_extent(renderer).height for text, _ in texts)  # noqa: E731
    panel_titles = heights() - (suptitle.get_window_extent(renderer).height if suptitle else 0)  # in the panels' size
    for text, fits in texts:
        width, lines = text.get_window_extent(renderer).width, text.get_text().split("\n")
        if not text.get_text() or width <= fits:
            continue
        chars = max(20, int(0.97 * max(map(len, lines)) * fits / width))
        text.set_text("\n".join(balanced_lines(line, chars) for line in lines))
    if heights() > panel_titles:
        fig.set_figheight(fig.get_figheight() + (heights() - panel_titles) / fig.dpi)
        if not isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):  # that one lays out as it is drawn
            fig.tight_layout()


def balanced_lines(line: str, chars: int) -> str:
    """`line` wrapped at its spaces in as few lines of at most `chars` characters as it takes, of even length."""
    pieces = len(textwrap.wrap(line, chars, break_long_words=False, break_on_hyphens=False)) or 1
    for width in range(-(-len(line) // pieces), chars + 1):
        wrapped = textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False)
        if len(wrapped) <= pieces:
            return "\n".join(wrapped)
    return textwrap.fill(line, chars, break_long_words=False, break_on_hyphens=False)


def heatmap(matrix, row_labels: Sequence[str], col_labels: Sequence[str], target: Path, title: str = "",
            value_label: str = "", vmin: float | None = None, vmax: float | None = None,
            row_images: Sequence[np.ndarray] | None = None) -> Path:
    """A labelled matrix with its values in the cells; `row_images` puts a thumbnail (aspect kept) before each row."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    matrix = np.asarray(matrix, dtype=float)
    rows, cols = matrix.shape
    with styled() as plt:
        thumbs = row_images is not None
        fig, ax = plt.subplots(figsize=(2.5 + 0.55 * cols + 0.6 * thumbs, 1.5 + (0.6 if thumbs else 0.45) * rows))
        for r, image in enumerate(row_images if thumbs else ()):
            image = np.asarray(Image.fromarray(np.asarray(image)).convert("RGB"))
            ax.add_artist(AnnotationBbox(OffsetImage(image, zoom=THUMB_POINTS / max(image.shape[:2])), (0, r),
                                         xycoords=("axes fraction", "data"), box_alignment=(1.1, 0.5), frameon=False,
                                         annotation_clip=False))
        im = ax.imshow(matrix, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.grid(False)
        ax.set_xticks(range(cols), labels_apart(col_labels, _short, 56), rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(rows), labels_apart(  # at most 3 lines of 40 characters, cut after a whole word
            row_labels, lambda s: "\n".join(textwrap.wrap(s, 40, max_lines=3, placeholder="…")) or s, 40), fontsize=7)
        ax.tick_params(axis="y", pad=4 + (THUMB_POINTS + 6) * thumbs)
        mid = np.nanmean(matrix) if vmin is None or vmax is None else (vmin + vmax) / 2
        for r, c in np.ndindex(rows, cols):
            ax.text(c, r, f"{matrix[r, c]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if matrix[r, c] > mid else "white")
        fig.colorbar(im, ax=ax, label=value_label, fraction=0.04)
        ax.set_title(title)
        return save_figure(fig, target)


def _short(text: str, width: int = 56) -> str:
    """`text` in at most `width` characters, cut after the last whole word that fits, with an ellipsis."""
    text = str(text)
    if len(text) <= width:
        return text
    head = text[:uncut(text, width - 1)]
    space = text.rfind(" ", 0, len(head) + 1)  # the cut itself may fall at a word's end
    return (head[:space] if space > width // 2 else head).rstrip(" ,;:") + "…"


def labels_apart(values: Sequence, shorten, width: int) -> list[str]:
    """Each of `values` as drawn (`figure_text`), shortened by `shorten`, and kept `apart` (in `width` characters)."""
    texts = [figure_text(v) for v in values]
    return apart(texts, [shorten(text) for text in texts], width)


def apart(values: Sequence[str], labels: Sequence[str], width: int) -> list[str]:
    """`labels` of `values`; values sharing one get the part where they differ (`around`), else their whole text."""
    sharing = labelled(values, labels)
    labels = [label if len(sharing[label]) == 1 else
              around(value, max(len(os.path.commonprefix([value, other])) for other in sharing[label] - {value}), width)
              for value, label in zip(values, labels)]
    sharing = labelled(values, labels)
    return [label if len(sharing[label]) == 1 else value for value, label in zip(values, labels)]


def labelled(values: Sequence[str], labels: Sequence[str]) -> dict[str, set[str]]:
    """Each label and the different values it stands for."""
    return {label: {value for value, other in zip(values, labels) if other == label} for label in labels}


def around(text: str, at: int, width: int) -> str:
    """About `width` characters of `text` from a little before `at`, cut at near spaces, an ellipsis each cut end."""
    start = text.rfind(" ", 0, max(0, at - width // 3)) + 1
    if at - start > width // 2:  # no space near: cut inside the word
        start = max(0, at - width // 3)
    start = uncut(text, start)
    end = len(text) if start + width >= len(text) else text.rfind(" ", at + 1, start + width)
    end = end if end > at else uncut(text, min(len(text), start + width))
    return ("…" if start else "") + text[start:end].strip() + ("…" if end < len(text) else "")


def image_strip(rows: Sequence[Sequence[np.ndarray]], target: Path, col_labels: Sequence[str] | Sequence[Sequence[str]] = (),
                row_labels: Sequence[str] = (), title: str = "", cell_inches: float = CELL_INCHES,
                horizontal_row_labels: bool = False) -> Path:
    """Rows of images (HxWx3 or grey), column labels (a list, or one per row), row labels; in bands past the page."""
    per_row = bool(col_labels) and not isinstance(col_labels[0], str)
    heads = [col_labels[r] if per_row else (col_labels if r == 0 else ()) for r in range(len(rows))]
    row_texts = ["\n".join(_short(line, 28) for line in str(label).split("\n")) for label in row_labels]
    longest = max([len(line) for text in row_texts for line in text.split("\n")] or [0])
    margin = 0.6 * ROW_LABEL_POINTS / 72 * longest + 0.15 if horizontal_row_labels and longest else 0.0
    widest = max(len(r) for r in rows)
    bands = -(-widest // max(1, int((PAGE_INCHES - 0.6 - margin) / cell_inches)))
    n_cols, band_rows, n_rows = -(-widest // bands), len(rows), len(rows) * bands
    rows, heads = ([list(row)[b * n_cols:(b + 1) * n_cols] for b in range(bands) for row in x] for x in (rows, heads))
    label_lines = max([str(label).count("\n") + 1 for labels in heads for label in labels] or [1])
    title_lines = title.count("\n") + 1 if title else 0
    height = (cell_inches + 0.15 + 0.15 * label_lines) * n_rows + 0.25 * title_lines + 0.1
    with styled() as plt:
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell_inches * n_cols + 0.6 + margin, height), squeeze=False,
                                 layout="constrained")
        for r, (images, labels) in enumerate(zip(rows, heads)):
            for c in range(n_cols):
                ax = axes[r, c]
                ax.grid(False)
                ax.set(xticks=[], yticks=[])
                ax.spines[:].set_visible(False)
                if c >= len(images):
                    ax.axis("off")
                    continue
                image = np.asarray(images[c])
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
                if c < len(labels):
                    ax.set_title(labels[c], fontsize=8)
                if c == 0 and r % band_rows < len(row_texts):
                    flat = dict(fontsize=ROW_LABEL_POINTS, rotation=0, ha="right", va="center", labelpad=8)
                    ax.set_ylabel(row_texts[r % band_rows], **(flat if horizontal_row_labels else {"fontsize": 8}))
        if title:
            fig.suptitle(title)
        return save_figure(fig, target)


def bar_chart(panels: Sequence[dict], target: Path, title: str = "") -> Path:
    """Horizontal bars, a panel per dict: labels, values, xlabel, title, notes, limit (dashed line), groups (legend)."""
    heights = [max(1.2, 0.28 * len(p["labels"]) + 0.8) for p in panels]
    with styled() as plt:
        title_height = 0.22 * (title.count("\n") + 1) if title else 0.0
        fig, axes = plt.subplots(len(panels), 1, figsize=(7.0, sum(heights) + title_height), squeeze=False,
                                 gridspec_kw={"height_ratios": heights})
        for ax, panel in zip(axes[:, 0], panels):
            y = np.arange(len(panel["labels"]))
            groups = list(panel.get("groups") or [None] * len(y))
            names = list(dict.fromkeys(groups))
            for k, name in enumerate(names):
                at = [i for i, g in enumerate(groups) if g == name]
                ax.barh(y[at], np.asarray(panel["values"])[at], color=PALETTE[k % len(PALETTE)], label=name)
            if names != [None]:
                ax.legend(fontsize=7, frameon=False, loc="best")
            labels = labels_apart(panel["labels"], lambda s: "\n".join(_short(p, 48) for p in s.split("\n")), 48)
            ax.set_yticks(y, labels, fontsize=7)
            ax.invert_yaxis()
            ax.grid(axis="y", visible=False)
            for yi, value, note in zip(y, panel["values"], panel.get("notes", [None] * len(y))):
                if note:
                    ax.text(value, yi, f" {note}", va="center", fontsize=7)
            if panel.get("limit") is not None:
                ax.axvline(panel["limit"], color="tab:red", ls="--", lw=1)
            ax.set_xlabel(panel.get("xlabel", ""))
            ax.set_title(panel.get("title", ""))
            ax.margins(x=0.18)
        if title:
            fig.suptitle(title)
        in_its_font(fig)
        fig.tight_layout()
        return save_figure(fig, target)


def write_gif(frames: Sequence[Image.Image], target: Path, duration_ms: int = 150, hold_last_ms: int = 1000) -> Path:
    """An animated GIF that loops forever, the last frame held longer; written atomically."""
    frames = [f.convert("RGB") for f in frames]
    durations = [duration_ms] * (len(frames) - 1) + [max(duration_ms, hold_last_ms)]
    return atomic_save(frames[0], target, format="GIF", save_all=True, append_images=frames[1:], duration=durations,
                       loop=0)


def solver_groups(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Schedulers split by kind (deterministic at 1 or 2 NFE per step, stochastic) past MAX_LINES_PER_PANEL lines."""
    if summary["scheduler"].nunique() <= MAX_LINES_PER_PANEL:
        return [("", summary)]
    per_step = (summary["nfe_mean"] / summary["num_inference_steps"]).groupby(summary["scheduler"]).median()
    one = float(per_step.min())  # one UNet call per step (a batched call under classifier-free guidance)
    stochastic = summary.groupby("scheduler")["stochastic"].first()
    label = {n: "stochastic" if stochastic[n] else "deterministic, 1 eval/step" if per_step[n] < 1.5 * one
             else "deterministic, 2 evals/step" for n in per_step.index}
    kind = summary["scheduler"].map(label)
    order = ["deterministic, 1 eval/step", "deterministic, 2 evals/step", "stochastic"]
    return [(name, summary[kind == name]) for name in order if (kind == name).any()]


def convergence(summary: pd.DataFrame, cost: str, metrics: Sequence[str], target: Path, xlabel: str,
                psnr_target: float | None = None, title: str = "") -> Path:
    """A panel per metric against a cost (NFE or seconds), a line and 95% band per scheduler, columns by solver kind."""
    groups = solver_groups(summary)
    colours = {name: DISTINCT[i % len(DISTINCT)] for i, name in enumerate(sorted(summary["scheduler"].unique()))}
    with styled() as plt:
        fig, axes = plt.subplots(len(metrics), len(groups), figsize=(4.4 * len(groups) + 1.2, 3.4 * len(metrics)),
                                 squeeze=False, sharex=True, sharey="row", layout="constrained")
        for column, (group_name, part) in enumerate(groups):
            for row, metric in enumerate(metrics):
                ax, (label, scale) = axes[row, column], display_unit(metric)
                for name, group in part.sort_values(f"{cost}_mean").groupby("scheduler", sort=True):
                    style = "--" if bool(group["stochastic"].iloc[0]) else "-"
                    x, y = group[f"{cost}_mean"].to_numpy(), group[f"{metric}_mean"].to_numpy() * scale
                    # images identical to the reference: PSNR infinite, RMSE 0 (off a log axis), marked at its edge
                    edge = np.where(np.isposinf(y), 1, np.where((y == 0) & (metric == "latent_rmse"), 0, np.nan))
                    ax.plot(x, np.where(np.isnan(edge), y, np.nan), style, marker="o", ms=2.5, lw=1.2,
                            color=colours[name], label=name)
                    ax.fill_between(x, group[f"{metric}_lo"] * scale, group[f"{metric}_hi"] * scale,
                                    color=colours[name], alpha=0.15, lw=0)
                    for at, marker in ((1, "^"), (0, "v")):
                        if (edge == at).any():
                            ax.plot(x[edge == at], edge[edge == at], marker, ms=6, color=colours[name], clip_on=False,
                                    transform=ax.get_xaxis_transform())
                if metric == "psnr" and psnr_target is not None:
                    ax.axhline(psnr_target, color="0.3", lw=0.8, ls=":")
                log_x(ax)
                if cost == "nfe":  # a handful of values: each its own tick
                    ax.set_xticks(sorted(summary["nfe_mean"].unique()))
                if metric == "latent_rmse":
                    log_scale(ax, "y")
                ax.set_xlabel(xlabel if row == len(metrics) - 1 else "")
                ax.set_ylabel(label if column == 0 else "")
                ax.set_title(group_name if row == 0 else "")
            axes[0, column].legend(fontsize=7, frameon=False, loc="best", ncol=2 if len(part["scheduler"].unique()) > 4 else 1)
        dashed = "\n(dashed: stochastic, against its own high-step limit)" * bool(summary["stochastic"].any())
        suptitle = fig.suptitle(f"{title or 'distance to the reference solve'}{dashed}\n{band_note(summary['n'])}")
        in_its_font(fig)  # and its titles as typed, its caption, before they wrap
        fit_titles(fig, suptitle)
        return save_figure(fig, target)


def band_note(counts: pd.Series) -> str:
    """What a figure's bands are, with the n of images behind each point: none below MIN_N, and said so."""
    low, high = int(counts.min()), int(counts.max())
    n = f"n={low}" if low == high else f"n={low}-{high}"
    if high < MIN_N:
        return f"no bands: {n} images a point, fewer than the {MIN_N} an interval needs"
    return f"bands: 95% interval across the {n} images of each point" + (f"; none where n < {MIN_N}" if low < MIN_N else "")


def last_visits(visits: pd.DataFrame, by: str) -> str:
    """The lowest timestep each `by` group calls the model at, groups sharing one together: 't=0 for ddim, euler'."""
    last: dict[str, list[str]] = {}
    for label, group in visits.groupby(by, sort=False):
        last.setdefault(f"t={group['timestep'].min():g}", []).append(str(label))
    return "; ".join(f"{t} for {', '.join(names)}" for t, names in last.items())


def schedule_visits(visits: pd.DataFrame, curve: pd.DataFrame, target: Path) -> Path:
    """The schedule's SNR curve (t, snr_db) above the timesteps each scheduler visits (a row of marks per scheduler)."""
    step_counts = sorted(visits["num_inference_steps"].unique())
    names = list(dict.fromkeys(visits["scheduler"]))
    rows = 1.2 + 0.25 * len(names)
    with styled() as plt:
        fig, axes = plt.subplots(len(step_counts) + 1, 1, figsize=(8, 1.6 + rows * len(step_counts)), squeeze=False,
                                 sharex=True, height_ratios=[1.6] + [rows] * len(step_counts))
        axes[0, 0].plot(curve["t"], curve["snr_db"], color="0.4", lw=1)
        axes[0, 0].set(ylabel="SNR (dB)", title="SNR of the schedule")
        for ax, steps in zip(axes[1:, 0], step_counts):
            panel = visits[visits["num_inference_steps"] == steps]
            for i, name in enumerate(names):
                part = panel[panel["scheduler"] == name]
                ax.scatter(part["timestep"], np.full(len(part), i), marker="|", s=60, color="C0")
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_ylim(len(names) - 0.5, -0.5)
            ax.set_title(textwrap.fill(f"timesteps visited at {steps} steps; last at {last_visits(panel, 'scheduler')}",
                                       100))
        axes[-1, 0].set_xlabel("timestep t")
        fig.set_label(" | ".join(" ".join(ax.get_title().split()) for ax in axes[1:, 0]))  # its headline: the visits
        fig.tight_layout()
        return save_figure(fig, target)


def _positions(values: Sequence[str]) -> tuple[list[float], list[str], bool]:
    """x positions of swept values: the numbers themselves when all are numeric, else 0, 1, 2 ... in sweep order."""
    try:
        numbers = [float(v) for v in values]
        order = sorted(range(len(values)), key=lambda i: numbers[i])
        return [numbers[i] for i in order], [values[i] for i in order], True
    except ValueError:
        return list(range(len(values))), list(values), False


SUMMARY_FIGURE_METRICS = ("clip_score", "adherence_all", "fd", "kid", "cmmd", "precision", "recall", "psnr", "ssim",
                          "latent_rmse", "time_total_s", "nfe")
LEGEND_CHARS, LEGEND_CHAR_INCHES = 40, 0.055  # a summary legend's longest label, and a 7-point character's width
MAX_LINES = 5  # more values of the other parameter than this: one line of means over them instead of a legend
TIED_SHADE = "#d9f0d3"
TICK_CHAR_INCHES, TICK_LINES = 0.065, 3  # an 8-point character's width, about; most lines of a level tick label
Y_LABEL_INCHES = 0.7  # what a panel's y tick labels and axis label take of its column


def tick_labels(values: Sequence[str], slot_inches: float) -> tuple[list[str], bool]:
    """A category axis's tick labels, whole in TICK_LINES lines of its slot if all fit, else cut; whether rotated."""
    chars = int(slot_inches / TICK_CHAR_INCHES)
    values = [figure_text(v) for v in values]
    lines = [textwrap.wrap(str(v), chars, break_long_words=False) for v in values]
    if all(len(w) <= TICK_LINES and all(len(line) <= chars for line in w) for w in lines):
        return apart(values, ["\n".join(w) for w in lines], chars), False
    short = labels_apart(values, _middle, 22)
    return short, len(values) > 4 or max(map(len, short)) > 8


def _middle(text: str, width: int = 22) -> str:
    """`text` cut in the middle to about `width` characters, so values that differ only at the end stay apart."""
    text = str(text)
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:uncut(text, head)] + "…" + text[uncut(text, len(text) - (width - 1 - head)):]


def summary_figure(summary: pd.DataFrame, target: Path, ranking: pd.DataFrame | None = None) -> Path:
    """`summary.png`: draw_summary uncropped (its constrained layout keeps every text on the page)."""
    with styled():
        return save_figure(draw_summary(summary, ranking), target, crop=False)


def display_unit(metric: str) -> tuple[str, float]:
    """A metric's axis label with its unit (dB, s, MiB) and the factor from its column's unit."""
    if metric.endswith("_bytes"):
        return metric.removesuffix("_bytes") + " (MiB)", 2.0**-20
    if metric.startswith("time_") and metric.endswith("_s"):
        return metric.removesuffix("_s") + " (s)", 1.0
    if metric.startswith("psnr") or metric.endswith("_db"):
        return metric.removesuffix("_db") + " (dB)", 1.0
    return metric, 1.0


def draw_summary(summary: pd.DataFrame, ranking: pd.DataFrame | None = None, max_metrics: int = 6):
    """Each varying headline metric (rows) by each swept parameter (columns), a line per other value; ties shaded."""
    single = summary[summary["parameter2"].isna() & (summary["parameter"] != "(all)")]
    tied = ranking[ranking["group"].isin(("best", "tied"))] if ranking is not None else pd.DataFrame(
        columns=["parameter", "metric", "value"])
    params = list(dict.fromkeys(single["parameter"]))
    varying = single.groupby("metric", sort=False)["mean"].agg(lambda m: m.max() - m.min() > 1e-12 * max(1, abs(m).max()))
    present = list(dict.fromkeys(single["metric"]))
    scores = set(tied["metric"])  # the ranked ones
    others = sorted((m for m in present if m not in SUMMARY_FIGURE_METRICS), key=lambda m: m not in scores)
    ranked = [m for m in SUMMARY_FIGURE_METRICS if m in present] + others  # past the headline ones, ranked scores first
    staged = "time_total_s" in present  # a stage's time (text, UNet, VAE, scoring): the total is drawn instead
    metrics = [m for m in ranked if varying.get(m, False)
               and not (staged and m.startswith("time_") and m != "time_total_s")][:max_metrics]
    metrics = metrics or list(dict.fromkeys(summary["metric"]))[:1]
    keys = params or ["(all)"]
    positions = {k: _positions(list(dict.fromkeys(single.loc[single["parameter"] == k, "value"]))) for k in keys}
    widths = [max(3.0, 0.42 * len(positions[k][1])) if not positions[k][2] else 3.0 for k in keys]
    ticks = {k: tick_labels(positions[k][1], (PAGE_INCHES * w / sum(widths) - Y_LABEL_INCHES) / len(positions[k][1]))
             if not positions[k][2] else (labels_apart(positions[k][1], _middle, 22), False) for k, w in zip(keys, widths)}
    label_inches = max(0.07 * max(map(len, labels)) + 0.3 if rotated  # 45 degrees: the longest label's drop
                       else 0.14 * max(label.count("\n") + 1 for label in labels) + 0.16
                       for labels, rotated in ticks.values())
    with styled() as plt:
        fig, axes = plt.subplots(len(metrics), len(keys), squeeze=False, sharex="col", layout="constrained",
                                 figsize=(PAGE_INCHES, 2.1 * len(metrics) + label_inches + 0.9),
                                 gridspec_kw={"width_ratios": widths})
        for c, key in enumerate(keys):
            counts = {p: single.loc[single["parameter"] == p, "value"].nunique() for p in params if p != key}
            by = min(counts, key=counts.get) if counts and min(counts.values()) <= MAX_LINES else None
            xs, ordered_values, numeric = positions[key]
            where = dict(zip(ordered_values, xs))
            half = 0.4 * float(np.diff(sorted(xs)).min()) if len(xs) > 1 else 0.4
            for r, metric in enumerate(metrics):
                ax = axes[r, c]
                for v in tied.loc[(tied["parameter"] == key) & (tied["metric"] == metric), "value"]:
                    if v in where:
                        ax.axvspan(where[v] - half, where[v] + half, color=TIED_SHADE, lw=0, zorder=0)
                rows = summary[summary["metric"] == metric]  # one line per value of `by` (rows whose `value` is key's)
                ab = rows[(rows["parameter"] == key) & (rows["parameter2"] == by)]
                ba = rows[(rows["parameter"] == by) & (rows["parameter2"] == key)]
                both = pd.concat([ab.assign(line=ab["value2"]), ba.assign(line=ba["value"], value=ba["value2"])])
                lines = dict(list(both.groupby("line", sort=False))) if by is not None else {
                    None: rows[(rows["parameter"] == key) & rows["parameter2"].isna()]}
                unit, scale = display_unit(metric)
                for i, (name, part) in enumerate(lines.items()):
                    x = np.array([where.get(v, np.nan) for v in part["value"]], dtype=float)  # NaN: not on this axis
                    order = np.argsort(x)[:np.count_nonzero(~np.isnan(x))]  # NaN sorts last
                    color = DISTINCT[i % len(DISTINCT)] if by is not None else "C0"
                    x = x[order]
                    mean, lo, hi = (part[k].to_numpy(dtype=float)[order] * scale for k in ("mean", "lo", "hi"))
                    if numeric:
                        ax.plot(x, mean, "-o", ms=3, lw=1.3, color=color, label=name)
                        ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
                    else:  # categories: points with their interval, side by side per line, never joined
                        shift = (i - (len(lines) - 1) / 2) * min(0.12, 0.6 / max(1, len(lines)))
                        ax.errorbar(x + shift, mean, yerr=np.clip(np.nan_to_num([mean - lo, hi - mean]), 0, None),
                                    fmt="o", ms=3.5, lw=1.1, capsize=2, color=color, label=name)
                pad = 0.6 if not numeric else 1.25 * half  # the shading never widens the axis
                ax.set_xlim(min(xs) - pad, max(xs) + pad)
                if not numeric or len(xs) <= 8:
                    labels, many = ticks[key]
                    ax.set_xticks(xs, labels, rotation=45 if many else 0, ha="right" if many else "center",
                                  rotation_mode="anchor" if many else "default")
                ax.tick_params(axis="x", labelsize=7 if len(xs) > 8 else 8)
                ax.grid(axis="x", visible=False)
                ax.set_xlabel(key if r == len(metrics) - 1 else "")
                ax.set_ylabel(_short(unit, 22) if c == 0 else "")
            if by is not None:
                handles, names = axes[0, c].get_legend_handles_labels()
                names = labels_apart(names, lambda name: _middle(name, LEGEND_CHARS), LEGEND_CHARS)
                entry = LEGEND_CHAR_INCHES * max(map(len, names)) + 0.45  # marker, gap and text of one entry
                fits = int(PAGE_INCHES * widths[c] / sum(widths) // entry)
                axes[0, c].legend(handles, names, title=f"{by}:", fontsize=7,
                                  title_fontsize=7, frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0),
                                  ncol=max(1, min(len(lines), fits)), handletextpad=0.3, columnspacing=0.8)
            else:
                axes[0, c].set_title(f"mean over every {', '.join(counts) or 'seed'}", fontsize=8, loc="left")
        fig.suptitle("mean by swept value (bars and bands: 95% interval within the metric's range; none from n < 3; "
                     "green: tied with the best by the paired interval)", fontsize=9)
        return fig
