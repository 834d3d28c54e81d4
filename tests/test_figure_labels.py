"""Labels of a figure's rows and columns: cut, when they must be, at a word boundary with an ellipsis, and never the
same label for two different values on one axis."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from sdlab.bench import figures

SHAPES = ["a large red circle in the centre on a blue background",  # A6's prompts on mini
          "a large orange circle in the centre on a blue background",
          "a small green triangle on the right on a white background"]
STEM = "a watercolor of a lighthouse on a cliff above a stormy sea at dusk, seen from the beach below, " * 2


def drawn_heatmap(tmp_path, monkeypatch, rows: list[str], cols: list[str]):
    drawn, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k))
    figures.heatmap(np.eye(len(rows), len(cols)), rows, cols, tmp_path / "h.png")
    ax = drawn[0].axes[0]
    return [t.get_text() for t in ax.get_yticklabels()], [t.get_text() for t in ax.get_xticklabels()]


def whole_words(label: str, value: str) -> bool:
    """Every word of `label` (its "…" aside) is a whole word of `value`: no word cut in the middle."""
    words = value.split()
    return all(word in words for part in label.split("…") for word in part.split())


def test_heatmap_row_labels_wrap_at_word_boundaries_and_keep_the_whole_prompt(tmp_path, monkeypatch):
    rows = [f"P{i + 1}: {p}" for i, p in enumerate(SHAPES)]
    labels, _ = drawn_heatmap(tmp_path, monkeypatch, rows, ["P1", "P2", "P3"])
    assert [" ".join(label.split("\n")) for label in labels] == rows  # wrapped, not cut ("blue backgrou…")
    assert all(label.count("\n") <= 2 and "…" not in label for label in labels)


def test_heatmap_labels_too_long_to_wrap_are_cut_at_a_word_and_stay_apart(tmp_path, monkeypatch):
    prompts = [STEM + "in oil", STEM + "in ink", STEM[:50] + "!" + STEM[50:]]  # alike for the first 180 characters
    rows, cols = drawn_heatmap(tmp_path, monkeypatch, prompts, prompts)
    for labels in (rows, cols):
        assert len(set(labels)) == 3, labels
        assert all("…" in label and whole_words(label, p) for label, p in zip(labels, prompts)), labels


def test_bar_chart_labels_of_prompts_alike_for_as_long_as_a_label_stay_apart(tmp_path, monkeypatch):
    """The token counts of A6 (clip_tokens): a bar per prompt, labelled in one line."""
    drawn, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k))
    prompts = [STEM + "in oil", STEM + "in ink", "a cat on a sofa"]
    figures.bar_chart([{"labels": prompts, "values": [40, 40, 6]}], tmp_path / "b.png")
    labels = [t.get_text() for t in drawn[0].axes[0].get_yticklabels()]
    assert len(set(labels)) == 3 and labels[2] == prompts[2], labels
    assert all(whole_words(label, p) for label, p in zip(labels, prompts)), labels


def test_a_cut_keeps_every_whole_word_that_fits():
    pirate = "a pirate ship sailing through a storm, dramatic lighting, oil painting"  # A6's prompt on SD 1.5
    assert figures._short(pirate, 48) == "a pirate ship sailing through a storm, dramatic…"
    assert figures._short(pirate, 46) == "a pirate ship sailing through a storm…"


def test_a_points_note_is_moved_off_the_line_it_would_sit_on(tmp_path, monkeypatch):
    """F1's 'min at w = 2' sat on its own curve, up and to the right of the minimum where the curve rises: a note
    goes to the first place beside its point that no line crosses."""
    drawn, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k))
    w, kid = [1, 1.5, 2, 3, 5, 7.5, 12], [0.38, 0.19, 0.17, 0.31, 1.4, 2.2, 3.36]  # F1's KID curve on mini
    figures.curves([{"lines": [{"x": w, "y": kid, "label": "dpmpp_2m"}], "hline": -0.08,
                     "points": [{"x": [2], "y": [0.17], "marker": "v", "color": "black", "notes": ["min at w = 2"]}]}],
                   tmp_path / "f1.png", panel_inches=(8.0, 3.2))
    ax = drawn[0].axes[0]
    renderer = FigureCanvasAgg(drawn[0]).get_renderer()  # saving closed it: a canvas of its own, as laid out
    [note] = [t for t in ax.texts if t.get_text() == "min at w = 2"]
    box = note.get_window_extent(renderer)
    assert ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1)  # inside its panel
    for line in ax.lines:
        assert not line.get_path().transformed(line.get_transform()).intersects_bbox(box, filled=False), line


def test_a_curve_figure_grows_with_its_title_and_keeps_its_panels_height(tmp_path, monkeypatch):
    """D3's title took 7 lines of a 3.6 in figure and squeezed its one panel to half of it: the figure grows instead."""
    drawn, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k))
    panel = {"lines": [{"x": [7, 12.5], "y": [95.3, 94.4], "label": "mean"}], "xlabel": "w", "ylabel": "CLIP score"}
    claim = "\n".join(["CLIP score 95.3 at w=7 -> 94.4 at w=12.5: change -0.9 (paired 95% CI -2.2 to +0.5)"] * 4)
    for title in ("", claim):
        figures.curves([panel, panel], tmp_path / "c.png", title=title)
    (bare, titled), inches = drawn, lambda fig: [ax.get_position().height * fig.get_figheight() for ax in fig.axes]
    assert titled.get_figheight() > bare.get_figheight() + 1.0
    assert all(t > 0.95 * b for t, b in zip(inches(titled), inches(bare))), (inches(titled), inches(bare))
    box = titled.get_suptitle() and titled._suptitle.get_window_extent(FigureCanvasAgg(titled).get_renderer())
    assert box.y1 <= titled.bbox.height and box.y0 > max(ax.get_window_extent().y1 for ax in titled.axes)


def test_a_long_image_strip_wraps_into_bands_of_its_rows_no_wider_than_the_page(tmp_path, monkeypatch):
    """A4 at 16 timesteps drew two rows of 17 images 2,949 px wide: the strip wraps, each band all its rows."""
    drawn, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k))
    rows = [[np.full((8, 8, 3), 10 * c, np.uint8) for c in range(17)] for _ in range(2)]
    labels = [[f"t={c}\n{r} dB" for c in range(17)] for r in range(2)]
    figures.image_strip(rows, tmp_path / "s.png", col_labels=labels, row_labels=["pixel x_t", "latent z_t, decoded"],
                        title="PSNR vs x_0", horizontal_row_labels=True)
    assert Image.open(tmp_path / "s.png").width <= figures.PAGE_INCHES * 100
    shown = [ax for ax in drawn[0].axes if ax.images]
    assert sorted(ax.get_title() for ax in shown) == sorted(label for row in labels for label in row)
    bands = [[ax.get_title() for ax in shown if ax.get_subplotspec().rowspan.start == r] for r in range(6)]
    assert [band[0] for band in bands] == ["t=0\n0 dB", "t=0\n1 dB", "t=6\n0 dB", "t=6\n1 dB", "t=12\n0 dB", "t=12\n1 dB"]
    assert [ax.get_ylabel() for ax in shown if ax.get_subplotspec().colspan.start == 0] == [
        "pixel x_t", "latent z_t, decoded"] * 3


def test_a_count_axis_of_one_value_is_ticked_at_whole_numbers_only(tmp_path, monkeypatch):
    """A3 at one step drew its 'model evaluation (0 = the first)' axis with ticks -0.045 ... 0.045."""
    drawn, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k))
    for xs in ([0], [0, 1, 2, 3]):
        figures.curves([{"lines": [{"x": xs, "y": [1.0] * len(xs)}], "integer_x": True}], tmp_path / "c.png")
        ax = drawn[-1].axes[0]
        low, high = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if low <= t <= high]
        assert shown and all(float(t).is_integer() for t in shown), (xs, shown)
