"""The labelled X/Y/Z grid: axes from the sweep's manifest, pages only for combinations that exist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from sdlab.bench.grid import (
    CELL_MAX, CELL_MIN, EMPTY_CELL, FONT_SIZE, LABEL_LINES, LABEL_WIDTH, NOTE_INK, axis_labels, cell_side, image_grid, text_size,
    wrapped,
)
from sdlab.bench.report import summarize
from sdlab.bench.summary import sweep_axes


def shade(i: int) -> tuple[int, int, int]:
    return 200, 40 + 20 * i, 60  # distinct per cell, and a colour no grey label pixel can take


def frame_of(tmp_path, cells: list[dict]) -> pd.DataFrame:
    """One row per cell (its values as columns, as typed) with its own image."""
    rows = []
    for i, cell in enumerate(cells):
        path = f"img{i}.png"
        Image.fromarray(np.full((16, 16, 3), shade(i), np.uint8)).save(tmp_path / path)
        rows.append({**cell, "seed": int(cell.get("seed", 0)), "image_path": path})
    return pd.DataFrame(rows)


def test_axes_follow_command_line_order_and_grid_is_drawn(tmp_path):
    cells = [{"seed": str(s), "guidance_scale": str(g)} for s in (1, 2) for g in (1, 7.5)]
    frame = frame_of(tmp_path, cells)
    assert sweep_axes(frame, ["seed", "guidance_scale"]) == ["seed", "guidance_scale"]
    assert sweep_axes(frame, ["guidance_scale", "seed"]) == ["guidance_scale", "seed"]
    assert sweep_axes(frame) == ["seed", "guidance_scale"]  # a single run: the seed, then the parameters that vary
    out = image_grid(frame, tmp_path, tmp_path / "grid.png", sweep_axes(frame))
    assert out is not None and Image.open(out).size[0] > 200


def test_sparse_mixture_of_jobs_draws_no_grid(tmp_path, caplog):
    cells = [{"experiment": f"e{i}", "prompt": f"p{i}", "scheduler": f"s{i}"} for i in range(6)]
    assert image_grid(frame_of(tmp_path, cells), tmp_path, tmp_path / "grid.png", ["experiment", "prompt", "scheduler"]) is None
    assert not (tmp_path / "grid.png").exists() and "too few" in caplog.text


def test_cells_are_the_images_at_cell_size_and_a_failed_cell_is_marked(tmp_path):
    cells = [{"seed": str(s), "guidance_scale": str(g)} for s in (1, 2) for g in (1, 7.5)]
    frame = frame_of(tmp_path, cells)
    frame.loc[3, "image_path"] = "gone.png"  # a failed image: its row is there, its file is not
    out = image_grid(frame, tmp_path, tmp_path / "grid.png", ["seed", "guidance_scale"])
    canvas = np.asarray(Image.open(out).convert("RGB"))
    side = CELL_MIN  # 16 px images are enlarged 8x with nearest neighbours
    found = []
    for i in range(3):
        mask = np.all(canvas == shade(i), axis=-1)
        rows, cols = np.nonzero(mask)
        found.append((rows.max() - rows.min() + 1, cols.max() - cols.min() + 1, int(mask.sum())))
    assert found == [(side, side, side * side)] * 3
    grey = np.all(canvas == EMPTY_CELL, axis=-1)
    assert side * side * 0.8 < grey.sum() < side * side  # the empty cell, minus its "failed" text
    assert (canvas.sum(-1) < 200).sum() > 100  # labels are drawn in dark ink


def test_a_failed_cell_a_cell_that_did_not_run_and_an_image_gone_are_each_named_so(tmp_path, monkeypatch):
    """A failed row (no image) was drawn "missing", and an ok row whose file was gone "failed": the other way round."""
    from sdlab.bench.resume import NOT_RUN

    said = []
    draw_text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, text, *a, **k: said.append(text)
                        or draw_text(self, xy, text, *a, **k))
    cells = [{"seed": str(s), "guidance_scale": str(g)} for s in (1, 2) for g in (1, 7.5, 12)]
    frame = frame_of(tmp_path, cells).assign(status="ok", error=None)
    frame.loc[1, ["image_path", "status", "error"]] = None, "error", "ValueError: boom"
    frame.loc[2, ["image_path", "status", "error"]] = None, "error", NOT_RUN
    frame.loc[3, "image_path"] = "gone.png"
    assert image_grid(frame, tmp_path, tmp_path / "grid.png", ["seed", "guidance_scale"]) is not None
    assert sorted(t for t in said if t in ("failed", "missing", "not run")) == ["failed", "missing", "not run"]


def test_a_cell_with_a_note_says_it_under_its_image_and_hides_none_of_it(tmp_path):
    """A8: the image judged not to draw its prompt is marked below it; the mark's white box hid the image's foot."""
    cells = [{"seed": str(s), "guidance_scale": str(g)} for s in (1, 2) for g in (1, 7.5)]
    frame = frame_of(tmp_path, cells).assign(note=["", "NOT the prompt", "", ""])
    canvas = np.asarray(Image.open(image_grid(frame, tmp_path, tmp_path / "grid.png", ["seed", "guidance_scale"],
                                              note="note")).convert("RGB"))
    boxes = [np.nonzero(np.all(canvas == shade(i), axis=-1)) for i in range(4)]
    assert [rows.size for rows, _ in boxes] == [CELL_MIN ** 2] * 4  # every image whole, the marked one too
    red = np.all(canvas == NOTE_INK, axis=-1)
    ink = [red[rows.max() + 3:rows.max() + 3 + 2 * FONT_SIZE, cols.min():cols.max() + 1].sum() for rows, cols in boxes]
    assert ink[1] > 50 and ink[3] == 0  # the note under its image, nothing under its unmarked neighbour
    frame = [red[rows.min() - 2:rows.min(), cols.min():cols.max() + 1].mean() for rows, cols in boxes]
    assert frame[1] == 1 and frame[0] == frame[2] == frame[3] == 0  # only the noted image is framed, all along


def test_a_wrapped_grid_title_leaves_no_word_alone_on_its_last_line():
    """A8's title line broke as '... same-subject pairs: it' / 'follows the seed'; it wraps to lines of even width."""
    from sdlab.bench.grid import even_lines

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = "background alike in 7/9 same-seed, 3/9 same-subject pairs: it follows the seed"
    width = text_size(draw, line, bold=True)[0] * 0.85
    greedy = wrapped(draw, line, width, bold=True).split("\n")
    lines = even_lines(draw, line, width).split("\n")
    widths = [text_size(draw, part, bold=True)[0] for part in lines]
    assert len(lines) == len(greedy) == 2 and " ".join(lines) == line and max(widths) <= width
    assert min(widths) > 0.6 * max(widths), lines  # greedy: 'the seed' alone under a full line


def test_a_third_axis_makes_pages_stacked_below_each_other(tmp_path):
    cells = [{"scheduler": k, "seed": str(s), "guidance_scale": str(g)} for k in ("ddim", "euler")
             for s in (1, 2) for g in (1, 7.5)]
    frame = frame_of(tmp_path, cells)
    canvas = np.asarray(Image.open(image_grid(frame, tmp_path, tmp_path / "grid.png", axes=["seed", "guidance_scale",
                                                                                        "scheduler"])).convert("RGB"))
    boxes = []
    for i in range(len(cells)):
        rows, cols = np.nonzero(np.all(canvas == shade(i), axis=-1))
        boxes.append((rows.min(), rows.max(), cols.min()))
        assert rows.max() - rows.min() + 1 == CELL_MIN
    assert max(b[1] for b in boxes[:4]) < min(b[0] for b in boxes[4:])  # euler's page lies below ddim's
    assert [b[2] for b in boxes[:4]] == [b[2] for b in boxes[4:]]  # in the same columns


def test_cell_size_keeps_small_images_sharp_and_big_grids_bounded(tmp_path):
    def image(side: int) -> Path:
        path = tmp_path / f"{side}.png"
        Image.new("RGB", (side, side)).save(path)
        return path

    assert cell_side([image(64)], 4) == 128  # enlarged 2x, nearest neighbours
    assert cell_side([image(48)], 4) == 144  # 3x, a whole factor
    assert cell_side([image(512)], 16) == 512  # SD images at their own resolution
    assert cell_side([image(768)], 16) == CELL_MAX
    assert cell_side([image(512)], 400) == 200  # 400 cells of 200 px: 16 megapixels
    assert cell_side([], 4) == CELL_MIN and cell_side([tmp_path / "gone.png"], 4) == CELL_MIN


def test_a_reused_run_folder_drops_the_grid_sdlab_drew_there_and_keeps_a_users(tmp_path):

    two = frame_of(tmp_path, [{"seed": "1"}, {"seed": "2"}]).assign(status="ok")
    summarize(two, tmp_path)
    assert (tmp_path / "grid.png").is_file()
    summarize(two.iloc[:1], tmp_path)  # the folder's table now lists one image: no grid, and not the old one
    assert not (tmp_path / "grid.png").exists()
    (tmp_path / "grid.png").write_bytes(b"mine")  # not drawn by sdlab (no caption): left alone
    summarize(two.iloc[:1], tmp_path)
    assert (tmp_path / "grid.png").read_bytes() == b"mine"


def test_the_last_lines_name_each_figure_and_its_headline_once(tmp_path):
    from sdlab.bench.captions import record_caption

    for name, caption in {"a.png": "crossing at t=284 | panel", "b.png": "mini: crossing at t=284",
                          "c.png": "11.9 B parameters"}.items():
        Image.new("RGB", (4, 4)).save(tmp_path / name)
        record_caption(tmp_path / name, caption)
    lines = summarize(pd.DataFrame({"status": ["ok"]}), tmp_path).splitlines()
    assert lines[1:] == ["  a.png: crossing at t=284", "  c.png: 11.9 B parameters",
                         f"  open: {tmp_path / 'a.png'}, {tmp_path / 'b.png'}, {tmp_path / 'c.png'}"]
    assert summarize(pd.DataFrame({"status": ["ok"]}), tmp_path, since=2e9).splitlines()[1:] == []  # none new


def test_a_headline_keeps_a_titles_lines_apart_as_clauses(tmp_path):
    from sdlab.bench.captions import read_captions, record_caption

    record_caption(tmp_path / "a.png", "mean PSNR 36.9 dB; latent channels min-max scaled\nthe article reports 30 dB\n"
                                       "seed 42:\n  a red circle | step 0\nt=999")
    assert read_captions(tmp_path)["a.png"] == ("mean PSNR 36.9 dB; latent channels min-max scaled; the article reports "
                                                "30 dB; seed 42: a red circle | step 0; t=999")


def test_a_seed_that_would_be_a_page_sits_side_by_side_in_each_cell(tmp_path):
    cells = [{"scheduler": k, "guidance_scale": str(g), "seed": str(s)} for k in ("ddim", "euler")
             for g in (1, 7.5) for s in (1, 2)]
    frame = frame_of(tmp_path, cells)
    out = image_grid(frame, tmp_path, tmp_path / "grid.png", ["scheduler", "guidance_scale", "seed"], seeds_within=True)
    canvas = np.asarray(Image.open(out).convert("RGB"))
    boxes = []
    for i in range(len(cells)):
        rows, cols = np.nonzero(np.all(canvas == shade(i), axis=-1))
        boxes.append((rows.min(), cols.min(), cols.max()))
    for cell in range(4):  # one page: the two seeds of a cell on one line, left to right, close together
        top, lefts = {boxes[2 * cell + s][0] for s in range(2)}, [boxes[2 * cell + s][1] for s in range(2)]
        assert len(top) == 1 and lefts == sorted(lefts)
        assert all(boxes[2 * cell + s + 1][1] - boxes[2 * cell + s][2] - 1 < 4 for s in range(1))
    assert len({b[0] for b in boxes}) == 2  # two rows (guidance scales), not a page per seed
    assert "seed 1, 2, left to right" in json.loads((tmp_path / "captions.json").read_text())["grid.png"]


def test_many_values_with_their_seeds_side_by_side_go_down_the_rows(tmp_path):
    """17 schedulers x 3 scales x 6 seeds was one row 102 images wide; the axis with more values goes down instead."""
    cells = [{"scheduler": f"s{k}", "guidance_scale": str(g), "seed": str(s)} for k in range(5)
             for g in (1, 7.5) for s in (1, 2, 3)]
    frame = frame_of(tmp_path, cells)
    colour = [(200, 8 * i, 60) for i in range(len(cells))]  # distinct for all 30 images
    for i, path in enumerate(frame["image_path"]):
        Image.fromarray(np.full((16, 16, 3), colour[i], np.uint8)).save(tmp_path / path)
    out = image_grid(frame, tmp_path, tmp_path / "grid.png", ["scheduler", "guidance_scale", "seed"], seeds_within=True)
    width, height = Image.open(out).size
    assert 0.5 < width / height < 2, (width, height)
    canvas = np.asarray(Image.open(out).convert("RGB"))
    tops = [int(np.nonzero(np.all(canvas == colour[i], axis=-1))[0].min()) for i in range(len(cells))]
    assert len(set(tops)) == 5  # a row per scheduler, the two scales and three seeds across
    assert len({tops[i] for i in range(6)}) == 1  # scheduler s0's six images share its row


def test_long_labels_wrap_to_a_few_lines_and_never_widen_a_column_past_its_bound(tmp_path):
    long = "a watercolour painting of " + "a very small red circle " * 3000  # about 72,000 characters, one row
    word = "x" * 5000  # one word, no space to break at
    cells = [{"prompt": p, "guidance_scale": str(g)} for p in (long, word, "a cat") for g in (1, 7.5)]
    frame = frame_of(tmp_path, cells)
    out = image_grid(frame, tmp_path, tmp_path / "grid.png", ["prompt", "guidance_scale"])
    width, height = Image.open(out).size
    # 3 columns of at most LABEL_WIDTH each, the row labels and margins; before, the long prompt alone was 500,000 px
    assert width <= 3 * (LABEL_WIDTH + 16) + LABEL_WIDTH + 64, width
    assert height <= 2 * CELL_MIN + 2 * 20 * LABEL_LINES + 200, height
    grey = np.asarray(Image.open(out).convert("L"))
    assert (grey[:, : width // 2] < 128).any()  # the labels are drawn, not dropped


def test_wrapped_breaks_at_spaces_cuts_long_words_and_marks_what_it_leaves_out():
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    assert wrapped(draw, "a cat", 200) == "a cat"
    prompt = "a small red circle in the centre on a blue background"
    two = wrapped(draw, prompt, 200).split("\n")
    assert len(two) == 2 and " ".join(two) == prompt and all(text_size(draw, line)[0] <= 200 for line in two), two
    cut = wrapped(draw, "y" * 400, 100, most=3).split("\n")
    assert len(cut) == 3 and cut[-1].endswith("…") and all(text_size(draw, line)[0] <= 100 for line in cut)
    assert "".join(cut[:2]) == "y" * len("".join(cut[:2]))  # nothing but the word's own letters before the cut


def test_an_axis_names_its_key_on_every_label_or_on_none():
    short, long = "a red circle on a blue field", "a red circle on a green field"  # 28 and 29 characters
    assert axis_labels("prompt", [short[:-1], long]) == [short[:-1], long]
    assert axis_labels("prompt", ["a cat", "a dog"]) == ["prompt=a cat", "prompt=a dog"]
    assert axis_labels("seed", ["1", "2"]) == ["seed=1", "seed=2"]
    assert axis_labels("grid_label", ["cfg 1"]) == ["cfg 1"] and axis_labels(None, ["x"]) == [""]


def test_no_text_drawn_on_a_grid_overlaps_another(tmp_path, monkeypatch):
    """B7 with two guidance scales: a nine-line title was measured at 2 px between lines and drawn at PIL's 4, so its
    last line ran into the column labels; a page's header the same, and one wider than the columns ran off the
    canvas."""
    drawn = []
    draw_text = ImageDraw.ImageDraw.multiline_text

    def recorded(self, xy, text, *args, **kwargs):
        drawn.append(self.multiline_textbbox(xy, text, *args, **{k: v for k, v in kwargs.items() if k != "fill"}))
        return draw_text(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "multiline_text", recorded)
    cells = [{"guidance_scale": str(g), "seed": str(s), "scheduler": k} for g in (20, 1) for s in (1, 2, 3)
             for k in ("ddim", "a scheduler whose name is long enough to wrap over two or three lines of its header on a grid as narrow as this one")]
    title = ("a small red circle in the centre on a blue background (mini, 6 steps) CLIP score 42.0 at w=1 -> 93.9 at "
             "w=20: change +51.9 (paired 95% CI -36.7 to +100.0; lower in 0 of 3 seeds); prompt followed 0% at w=1 -> "
             "67% at w=20: change +67 (paired 95% CI -77 to +100; lower in 0 of 3 seeds) (n=3 seeds); w=1 -> 20 does "
             "not raise CLIP score or prompt following here (no paired 95% CI above 0)")
    out = image_grid(frame_of(tmp_path, cells), tmp_path, tmp_path / "grid.png", ["guidance_scale", "seed", "scheduler"],
                     title)
    width, height = Image.open(out).size
    assert len(drawn) > 10 and all(0 <= box[0] and box[2] <= width and 0 <= box[1] and box[3] <= height
                                   for box in drawn), (width, height, drawn)
    overlaps = [(a, b) for i, a in enumerate(drawn) for b in drawn[i + 1:]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]]
    assert not overlaps, overlaps
