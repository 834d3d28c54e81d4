"""Labels the house font cannot draw: each missing character drawn as its code point escape, with no glyph warning;
tables, PNGs, captions and the report keep the text as typed."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from sdlab.bench.captions import ESCAPE, drawable, read_captions
from sdlab.bench.figures import bar_chart, curves, draw_summary, save_figure, styled, tick_labels
from sdlab.bench.grid import LABEL_WIDTH, font, image_grid, text_size, wrapped
from sdlab.bench.summary import rank, summary_table

RED, BLUE = "一只红色的猫", "一只蓝色的猫"  # the same length, apart in one character
DRAWN = "café Ωμέγα привет × … 🐱"  # accents, Greek, Cyrillic, symbols and an emoji DejaVu Sans has


def whole_escapes(text: str) -> bool:
    """Whether `text`, its "…" and a `prompt=` aside, is nothing but escapes, none of them cut."""
    return all(ESCAPE.sub("", part) == "" for part in text.removeprefix("prompt=").split("…"))


def glyph_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "Glyph" in str(w.message)]


def test_only_what_the_font_has_no_glyph_for_is_escaped():
    path = font().path
    assert drawable(DRAWN, path) == DRAWN
    assert drawable(RED, path) == r"\u4e00\u53ea\u7ea2\u8272\u7684\u732b"
    assert drawable(RED, path) != drawable(BLUE, path)
    assert drawable(f"{RED} 🐱\nred", path) == drawable(RED, path) + " 🐱\nred"  # a line break stays one
    assert drawable("a\tb", path) == r"a\tb"  # as `printable` writes it
    assert drawable(drawable(RED, path), path) == drawable(RED, path)


def test_a_figure_draws_its_texts_escaped_without_a_glyph_warning_and_keeps_the_caption_as_typed(tmp_path):
    """Tick labels set with set_xticks(labels), titles, legends and the suptitle all pass through `drawable`."""
    with styled() as plt:
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1], label=RED)
        ax.set_xticks([0, 1], [RED, BLUE])
        ax.set_yticks([0, 1], [DRAWN, "b"])
        ax.set_title(BLUE)
        ax.set_xlabel(RED)
        ax.legend(title=BLUE)
        fig.suptitle(RED)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            save_figure(fig, tmp_path / "figure.png")
    assert glyph_warnings(caught) == []
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == [drawable(RED, font().path), drawable(BLUE, font().path)] and ticks[0] != ticks[1]
    assert ax.get_yticklabels()[0].get_text() == DRAWN
    texts = [ax.get_title(), ax.get_xlabel(), fig.get_suptitle(), ax.get_legend().get_texts()[0].get_text(),
             ax.get_legend().get_title().get_text()]
    assert all(ESCAPE.search(t) and not re.search("[\u4e00-\u9fff]", t) for t in texts), texts
    assert read_captions(tmp_path)["figure.png"] == f"{RED} | {BLUE}"


@pytest.mark.parametrize("draw,panel", [
    (curves, {"lines": [{"x": [1, 2], "y": [1, 2], "label": RED}], "title": BLUE}),
    (bar_chart, {"labels": ["a", "b"], "values": [1, 2], "groups": [RED, "b"], "title": BLUE}),
], ids=["curves", "bar_chart"])
def test_a_figure_laid_out_before_saving_is_laid_out_in_what_its_font_draws(tmp_path, draw, panel):
    """`curves` and `bar_chart` lay their texts out before saving: laid out as typed, matplotlib warned of glyphs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draw([panel], tmp_path / "c.png", title=RED)
    assert glyph_warnings(caught) == []
    assert read_captions(tmp_path)["c.png"] == f"{RED} | {BLUE}"


def test_the_summary_plot_of_two_cjk_prompts_labels_them_apart_and_warns_of_no_glyph(tmp_path):
    frame = pd.DataFrame([{"seed": seed, "prompt": p, "guidance_scale": g, "status": "ok", "nfe": 2,
                           "clip_score": 50.0 + 10 * i + g + seed,
                           "overrides": json.dumps({"prompt": p, "guidance_scale": str(g)})}
                          for i, p in enumerate((RED, BLUE)) for g in (1, 7.5) for seed in (1, 2, 3)])
    ranking = rank(frame, ("prompt", "guidance_scale"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with styled():
            fig = draw_summary(summary_table(frame, ("prompt", "guidance_scale"), ranking), ranking)
            save_figure(fig, tmp_path / "summary.png", crop=False)
    assert glyph_warnings(caught) == []
    labels = [t for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert sorted(t.get_text() for t in labels) == sorted(drawable(p, font().path) for p in (RED, BLUE))
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda box: box.x0)
    assert boxes[0].x1 < boxes[1].x0  # measured as drawn: apart


def test_tick_labels_count_the_escapes_and_cut_none():
    level, rotated = tick_labels([RED, BLUE], 1.0)  # 6 characters fit an inch, their 36 escaped ones do not
    assert rotated and all("…" in label and whole_escapes(label) for label in level), level


SHADES = ((200, 40, 60), (200, 120, 60))


def test_two_cjk_prompts_are_two_different_grid_labels(tmp_path):
    rows = []
    for i, prompt in enumerate((RED, BLUE)):
        Image.fromarray(np.full((16, 16, 3), SHADES[i], np.uint8)).save(tmp_path / f"img{i}.png")
        rows.append({"prompt": prompt, "seed": 1, "image_path": f"img{i}.png"})
    out = image_grid(pd.DataFrame(rows), tmp_path, tmp_path / "grid.png", ["prompt", "seed"])
    canvas = np.asarray(Image.open(out).convert("RGB"))
    cells = [np.nonzero(np.all(canvas == shade, axis=-1)) for shade in SHADES]
    top = min(int(ys.min()) for ys, _ in cells)
    centres = [(int(xs.min()) + int(xs.max())) // 2 for _, xs in cells]
    half = (centres[1] - centres[0]) // 2
    red, blue = (canvas[:top, c - half: c + half] for c in centres)  # each column's label, above its image
    assert (red < 128).any() and not np.array_equal(red, blue)


def test_a_long_cjk_label_wraps_its_escapes_whole_and_within_its_width():
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = wrapped(draw, "prompt=" + RED * 8, LABEL_WIDTH, most=4).split("\n")
    assert len(lines) == 4 and lines[-1].endswith("…")
    assert all(text_size(draw, line)[0] <= LABEL_WIDTH for line in lines)
    assert all(whole_escapes(line) for line in lines), lines


def test_a_cjk_sweep_warns_of_no_glyph_and_keeps_the_prompt_as_typed(run_sdlab, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = run_sdlab("-m", f"prompt='{RED} 🐱','{BLUE}'", "seed=1,2", "num_inference_steps=2", "threads=1",
                         "hydra.sweep.dir=sweep")
    assert code == 0
    assert glyph_warnings(caught) == [] and "Glyph" not in capfd.readouterr().err
    sweep = tmp_path / "sweep"
    frame = pd.read_parquet(sweep / "results.parquet")
    assert set(frame["prompt"]) == {f"{RED} 🐱", BLUE}
    assert any(RED in str(v) for v in Image.open(sweep / frame["image_path"].iloc[0]).text.values())
    page = (sweep / "report.html").read_text()
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1))
    assert f"{RED} 🐱" in json.dumps(data, ensure_ascii=False) and (sweep / "summary.png").is_file()


def test_the_contact_sheet_labels_two_cjk_ids_apart_in_what_the_font_draws(tmp_path, monkeypatch):
    """A thumbnail's label (id and file name) is drawn `drawable`: as empty boxes, two ids would read the same."""
    from sdlab.bench import figure_index

    drawn, draw_text = [], ImageDraw.ImageDraw.multiline_text
    monkeypatch.setattr(ImageDraw.ImageDraw, "multiline_text",
                        lambda self, xy, text, *a, **k: drawn.append(text) or draw_text(self, xy, text, *a, **k))
    sheets = []
    for i, name in enumerate((RED, BLUE)):
        job = tmp_path / str(i) / f"0_{name}"
        job.mkdir(parents=True)
        (job / "run_config.json").write_text(json.dumps({"article": {"id": name, "question": "?"}}))
        Image.new("RGB", (40, 40), "white").save(job / "figure.png")
        sheet = figure_index.contact_sheet(figure_index.index_rows(job.parent), job.parent, tmp_path / f"{i}.png")
        sheets.append(np.asarray(Image.open(sheet).convert("L")))
    assert ["".join(label.split()) for label in drawn] == [f"{drawable(name, font(True).path)}:figure.png"
                                                           for name in (RED, BLUE)]  # wrapped where it must be
    assert all(whole_escapes(line) for label in drawn for line in label.split(":")[0].split("\n"))
    assert not np.array_equal(*sheets)  # the labels' pixels, all the sheets differ in


LONG = "a watercolor painting of {} sitting on a windowsill in the morning light, soft focus"


def test_long_prompts_apart_only_in_cjk_have_different_labels_on_the_summary_axis_and_legend():
    """Cut in the middle, both would read "a watercol…soft focus": each label shows where its prompt differs instead."""
    prompts = [LONG.format(RED), LONG.format(BLUE)]
    level, rotated = tick_labels(prompts, 1.0)
    assert rotated and len(set(level)) == 2 and not any("\\" in ESCAPE.sub("", label) for label in level), level
    assert all(len(label) < len(drawable(p, font().path)) for label, p in zip(level, prompts)), level  # still short
    frame = pd.DataFrame([{"seed": seed, "prompt": p, "guidance_scale": g, "status": "ok", "nfe": 2,
                           "clip_score": 50.0 + 10 * i + g + seed,
                           "overrides": json.dumps({"prompt": p, "guidance_scale": str(g)})}
                          for i, p in enumerate(prompts) for g in (1, 7.5) for seed in (1, 2, 3)])
    ranking = rank(frame, ("prompt", "guidance_scale"))
    fig = draw_summary(summary_table(frame, ("prompt", "guidance_scale"), ranking), ranking)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]  # the prompt axis
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]  # a line per prompt on the w axis
    assert len(set(ticks)) == 2 and len(set(legend)) == 2, (ticks, legend)
