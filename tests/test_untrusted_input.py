"""What users hand sdlab is data: prompts are never interpolations, and every file (params JSON or PNG, prompt file)
is read through one bounded reader that refuses with one line, exit 2, nothing written."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from PIL import ExifTags, Image
from matplotlib.text import Text
from PIL.PngImagePlugin import PngInfo
from analysis_helpers import context
from cli_helpers import run_cli
from test_bad_input import assert_refused

from sdlab.app.arguments import display_overrides, literal, prepare
from sdlab.config import LIMITS
from sdlab.errors import UserError
from sdlab.bench.run import load_params
from sdlab.bench.records import rows_from_images
from sdlab.bench import figures
from sdlab.bench.references import read_image
from sdlab.bench.resume import read_manifest, write_manifest
from sdlab.jobs import analysis, get_job
from sdlab.untrusted import check_image, json_depth, parse_json, read_png_text, read_prompt_lines

FAST = ("num_inference_steps=1", "threads=1")
SECRET = "sdlab-test-secret-5e1f"


# 1. Prompts are text: `${...}` comes out as typed.

@pytest.mark.parametrize("text", ["${oc.env:HOME} a", "a \\${x}", "a \\\\${x} b\\", "it's ${now:%H}", "$${x}", "${",
                                  "a}b${", "\\", "${x}\\", "\\${x", "${a:${b}}", "plain, with (brackets:1.2)"])
def test_a_literal_prompt_resolves_to_itself_and_displays_as_typed(text):
    arg = "prompt=" + literal(text)
    value = OverridesParser.create().parse_override(arg).value()
    assert OmegaConf.to_container(OmegaConf.create({"prompt": value}), resolve=True)["prompt"] == text
    assert display_overrides([arg]) == {"prompt": text}


def test_prepare_escapes_prompts_typed_bare_quoted_or_swept():
    ready = prepare(["-m", "prompt=${oc.env:HOME}", "negative_prompt='${now:%H}'", "seed=1"])
    assert ready == ["-m", "prompt='\\${oc.env:HOME}'", "negative_prompt='\\${now:%H}'", "seed=1"]
    swept = prepare(["-m", "prompt='a, ${x}',\"b\""])
    assert swept == ["-m", "prompt='a, \\${x}','b'"]
    assert prepare(ready) == ready and prepare(swept) == swept  # a saved command line (overrides.yaml) reruns as is


def test_prompt_lists_of_recipes_are_text_too():
    ready = prepare(["-m", "experiment=prompt_grid", "prompts=[a cat,'b, ${x}',${oc.env:HOME}]"])
    assert ready[2:] == ["prompts=['a cat','b, \\${x}','\\${oc.env:HOME}']"]
    assert prepare(ready) == ready
    assert display_overrides([ready[2]]) == {"prompts": "[a cat,b, ${x},${oc.env:HOME}]"}
    study = prepare(["-m", "experiment=compare_schedulers", "compare.prompts=[x],[${y}]"])  # a study's prompt lists
    assert study[2:] == ["compare.prompts=['x'],['\\${y}']"]
    assert prepare(["experiment=prompt_grid", "prompts=null"]) == ["experiment=prompt_grid", "prompts=null"]


def test_a_prompt_that_is_not_text_is_one_line():
    with pytest.raises(UserError, match="prompt takes text"):
        prepare(["-m", "prompt='a',[1,2]"])


def read_rows(folder):
    frame = pd.concat([pd.read_csv(p) for p in sorted(folder.rglob("results.csv")) if p.parent != folder])
    return frame.sort_values("prompt")


def test_interpolations_in_prompts_reach_results_pngs_and_log_as_typed(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDLAB_TEST_SECRET", SECRET)
    (tmp_path / "prompts.txt").write_text("a ${oc.env:SDLAB_TEST_SECRET} circle\n${now:%H-%M-%S-%f}\n")
    sweep = tmp_path / "sweep"
    args = ("-m", "model=tiny", "prompt_file=prompts.txt", "negative_prompt=${oc.env:SDLAB_TEST_SECRET}", *FAST,
            f"hydra.sweep.dir={sweep}")
    assert run_sdlab(*args) == 0
    out = capsys.readouterr()
    rows = read_rows(sweep)
    assert rows["prompt"].tolist() == ["${now:%H-%M-%S-%f}", "a ${oc.env:SDLAB_TEST_SECRET} circle"]
    assert set(rows["negative_prompt"]) == {"${oc.env:SDLAB_TEST_SECRET}"}
    log = out.err + out.out
    assert "prompt=a ${oc.env:SDLAB_TEST_SECRET} circle" in log and SECRET not in log
    for path in sweep.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    with Image.open(next(sweep.rglob("images/*.png"))) as image:
        assert json.loads(image.text["sdlab"])["negative_prompt"] == "${oc.env:SDLAB_TEST_SECRET}"
    assert run_sdlab(*args) == 0  # a `${now:...}` prompt is the same prompt on a rerun: both cells resume
    out = capsys.readouterr()
    assert "; 2 finished before: not run again" in out.err + out.out


# 2. Bad files: one line naming the file and what is allowed.

def png(path, chunks: dict[str, str], zipped: bool = False):
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value, zip=zipped)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def with_exif_thumbnail(jpeg: bytes, side: int = 8) -> bytes:
    """`jpeg` with an APP1 Exif segment after its start marker holding a `side`-pixel JPEG thumbnail as IFD1's
    JPEGInterchangeFormat, as cameras write it: the thumbnail has its own scan and end-of-image marker."""
    thumbnail = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(thumbnail, "JPEG")
    thumbnail = thumbnail.getvalue()
    tiff = (b"II*\x00" + struct.pack("<IHI", 8, 0, 14)  # IFD0 at 8: no entries, IFD1 at 14: two, the thumbnail at 44
            + struct.pack("<HHHIIHHIII", 2, 0x0201, 4, 1, 44, 0x0202, 4, 1, len(thumbnail), 0) + thumbnail)
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def cut_short(folder, kind: str, count: int = 3, side: int = 64, thumbnail: bool = False):
    """A folder of `count` noise images in format `kind` (JPEGs with an EXIF `thumbnail`), the second cut to 60% of its
    bytes (its pixels short)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"{i}.{kind.lower().replace('jpeg', 'jpg')}"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, kind)
        if thumbnail:
            path.write_bytes(with_exif_thumbnail(path.read_bytes()))
    second = sorted(folder.iterdir())[1]
    second.write_bytes(second.read_bytes()[: second.stat().st_size * 6 // 10])
    return folder


def record(**values) -> str:
    return json.dumps({"prompt": "a red circle", "seed": 1, "num_inference_steps": 1, "model": "tiny", **values})


def bad_files(tmp):
    """(arguments, fragment of the one error line) for each bad file a user may hand sdlab."""
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    lines = tmp / "lines.txt"
    lines.write_text("a red circle\n" * 1_000_000)
    three = tmp / "three.txt"
    three.write_text("a\nb\nc\n")
    twice = write(tmp / "twice.txt", "a red circle\na blue square\n a red circle")
    twice_json = write(tmp / "twice.json", '{"seed": 1, "seed": 2}')
    latin = tmp / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    bomb = tmp / "bomb.png"
    png(bomb, {"sdlab": " " * (4 << 20)}, zipped=True)
    assert bomb.stat().st_size < 64 << 10
    huge_int = '{"seed": ' + "9" * 5000 + "}"
    nested = []
    for _ in range(40):
        nested = [nested]
    return [
        # files that are not regular files
        (["-m", f"params={fifo}"], f"params={fifo} is not a regular file (a FIFO)"),
        (["-m", f"prompt_file={fifo}"], f"prompt_file={fifo} is not a regular file (a FIFO)"),
        (["prompt_file=/dev/zero"], "prompt_file=/dev/zero is not a regular file (a device)"),
        ([f"prompt_file={tmp}"], f"prompt_file={tmp} is not a regular file (a folder)"),
        # prompt files over their limits
        (["-m", f"prompt_file={lines}"], f"prompt_file={lines} is larger than limits.max_prompt_file_bytes=1048576"),
        (["-m", f"prompt_file={lines}", "limits.max_prompt_file_bytes=100000000"],
         "holds 1000000 prompts, more than limits.max_prompt_lines=10000"),
        (["-m", f"prompt_file={three}", "limits.max_prompt_lines=2"], "more than limits.max_prompt_lines=2"),
        (["-m", f"prompt_file={three}", "limits.max_prompt_lines=none"], "limits.max_prompt_lines='none' must be"),
        ([f"prompt_file={latin}"], f"prompt_file={latin} is not UTF-8 text"),
        # a line twice is one cell: named by the file the user gave, not the sweep it is made into
        (["-m", f"prompt_file={twice}"], f"prompt_file={twice} lists 'a red circle' twice; list each prompt once"),
        ([f"params={twice_json}"], f"params={twice_json} sets 'seed' twice; keep one"),
        # PNG text chunks
        ([f"params={png(tmp / 'j.png', {'sdlab': '{oops'})}"], "j.png's sdlab text chunk is not valid JSON"),
        ([f"params={png(tmp / 'l.png', {'sdlab': '[1, 2]'})}"], "sdlab text chunk must hold a JSON object, not list"),
        ([f"params={png(tmp / 'd.png', {'sdlab': '[' * 5000 + ']' * 5000})}"], "nests too deeply"),
        ([f"params={png(tmp / 'i.png', {'sdlab': huge_int})}"],
         "cannot be read: it holds an integer of more than 4300 digits"),
        ([f"params={bomb}"], "bomb.png has more PNG text than limits.max_params_bytes=1048576"),
        ([f"params={png(tmp / 'many.png', {'a': 'x' * 2000, 'sdlab': record()})}", "limits.max_png_text_bytes=1000"],
         "has more PNG text than limits.max_png_text_bytes=1000"),
        ([f"params={png(tmp / 'big.png', {'sdlab': record()})}", "limits.max_png_bytes=100"],
         "big.png is larger than limits.max_png_bytes=100"),
        ([f"params={(tmp / 'text.png').write_text('not a png') and tmp / 'text.png'}"],
         "text.png is not a readable PNG image"),
        ([f"params={png(tmp / 'a1111.png', {'parameters': 'a cat'})}"], "a1111.png: the PNG's parameters text"),
        # images whose pixels are cut short: pre-flight reads them to their end
        (["experiment=vae_roundtrip", f"images={cut_short(tmp / 'cut', 'PNG')}"],
         f"images: {tmp / 'cut' / '1.png'} is not an image (image file is truncated)"),
        (["experiment=forward_process", f"images={cut_short(tmp / 'cut_jpeg', 'JPEG') / '1.jpg'}"],
         f"images: {tmp / 'cut_jpeg' / '1.jpg'} is not an image (image file is truncated)"),
        (["experiment=vae_roundtrip", f"images={cut_short(tmp / 'cut_exif', 'JPEG', thumbnail=True)}"],
         f"images: {tmp / 'cut_exif' / '1.jpg'} is not an image (image file is truncated)"),
        # values a params file may not set
        (["-m", f"params={png(tmp / 'two.png', {'sdlab': record(model='mini,tiny')})}"],
         "model='mini,tiny' is not a model; choose one of:"),
        ([f"params={png(tmp / 'm.png', {'sdlab': record(model='${oc.env:HOME}')})}"], "model='${oc.env:HOME}'"),
        ([f"params={write(tmp / 'm.json', record(model='sd99'))}"], "model='sd99' is not a model"),
        ([f"params={write(tmp / 't.json', record(scheduler_options={'num_train_timesteps': 2_000_000_000}))}"],
         "scheduler_options has no option 'num_train_timesteps'; a params file sets what scheduler.KEY= does"),
        ([f"params={png(tmp / 'o.png', {'sdlab': record(scheduler_options={'beta_end': 9.0})})}"],
         "scheduler_options has no option 'beta_end'"),
        ([f"params={write(tmp / 'n.json', record(scheduler_options={'shift': {'a': 1}}))}"],
         "scheduler_options.shift={'a': 1} must be a string, number or boolean"),
        ([f"params={write(tmp / 's.json', record(scheduler_options={'timestep_spacing': 'sideways'}))}"],
         "unknown scheduler.timestep_spacing 'sideways'"),
        ([f"params={write(tmp / 'k.json', record(scheduler_options={'use_karras_sigmas': 'yes'}))}"],
         "scheduler.use_karras_sigmas='yes' must be true or false"),
        ([f"params={write(tmp / 'off.json', record(scheduler_options={'steps_offset': 10 ** 20}))}"],
         "scheduler.steps_offset=100000000000000000000 must be in [0, 1000]"),
        ([f"params={write(tmp / 'steps.json', record(num_inference_steps=100_000_000))}"],
         "num_inference_steps=100000000 is above limits.max_steps=1000"),
        ([f"params={write(tmp / 'w.json', record(width=100))}"], "width=100 must be a positive multiple of 8"),
        ([f"params={write(tmp / 'deep.json', json.dumps({'seeds': nested}))}"], "nests too deeply"),
    ]


def write(path, text):
    path.write_text(text)
    return path


N_CASES = 35


def test_case_count_matches_the_list(tmp_path):
    cases = bad_files(tmp_path)
    assert len(cases) == N_CASES == len({tuple(args) for args, _ in cases})


@pytest.mark.parametrize("case", range(N_CASES))
def test_a_bad_file_is_one_line_and_exit_2(run_sdlab, tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    args, fragment = bad_files(tmp_path)[case]
    if "-m" in args:
        args = [*args, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert_refused(run_sdlab, capsys, tmp_path, [*args, "threads=1"], fragment)  # the file's steps stay its own
    assert not (tmp_path / "sweep").exists()


# 3. The reader's parts, directly.

def test_json_depth_counts_lists_and_objects():
    assert [json_depth(v) for v in (3, "x", [], {"a": [1, {"b": []}]})] == [0, 0, 1, 4]
    assert parse_json(json.dumps({"seeds": [[[1]]]}), "x") == {"seeds": [[[1]]]}


def test_prompt_lines_are_stripped_and_limited(tmp_path):
    path = write(tmp_path / "p.txt", "  a  \n\n b\r\n")
    assert read_prompt_lines(path, "prompt_file=p.txt", LIMITS) == ["a", "b"]
    with pytest.raises(UserError, match="limits.max_prompt_lines=1;"):
        read_prompt_lines(path, "prompt_file=p.txt", {**LIMITS, "max_prompt_lines": 1})


def test_a_byte_order_mark_from_a_windows_editor_is_not_part_of_the_first_prompt_or_key(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("a red circle\r\nb\r\n".encode("utf-8-sig"))
    assert read_prompt_lines(path, "prompt_file=p.txt", LIMITS) == ["a red circle", "b"]
    assert parse_json('{"seed": 1}'.encode("utf-8-sig"), "params=p.json") == {"seed": 1}


@pytest.mark.parametrize("control", ["\x00", "\x1b[2J", "\x7f"])
def test_a_control_character_in_a_prompt_file_or_params_file_is_refused_naming_where(tmp_path, control):
    path = write(tmp_path / "p.txt", f"a red circle\na blue{control} square\n")
    with pytest.raises(UserError, match=r"^prompt_file=p.txt line 2 holds the control character '\\x(00|1b|7f)'"):
        read_prompt_lines(path, "prompt_file=p.txt", LIMITS)
    params = write(tmp_path / "p.json", json.dumps({"prompt": f"a{control}", "seed": 1}))
    with pytest.raises(UserError, match=r"prompt holds the control character '\\x(00|1b|7f)'"):
        load_params(params)


def test_a_lone_surrogate_escape_in_a_params_file_is_refused_naming_it(tmp_path):
    """JSON may escape half a UTF-16 pair (\\ud800), which is no character: no text encoder or table can take it."""
    params = write(tmp_path / "p.json", '{"prompt": "a red \\ud800 circle", "seed": 1}')
    with pytest.raises(UserError, match=r"prompt='a red \\ud800 circle' is not UTF-8 text: '\\ud800' \(half a"):
        load_params(params)


@pytest.mark.parametrize("given,says", [({"steps": -5}, "num_inference_steps=-5 must be >= 1"),
                                        ({"cfg_scale": 1e9}, "guidance_scale=1000000000.0 must be")])
def test_a_value_out_of_range_in_a_params_file_is_named_with_its_file(tmp_path, given, says):
    params = write(tmp_path / "p.json", json.dumps(given))
    with pytest.raises(UserError, match=rf"^params={re.escape(str(params))}: {re.escape(says)}"):
        load_params(params)


def test_a_zlib_bomb_is_refused_before_it_is_inflated(tmp_path):
    path = png(tmp_path / "bomb.png", {"sdlab": " " * (64 << 20)}, zipped=True)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(UserError, match="more PNG text than limits.max_params_bytes"):
        load_params(path)
    assert load_params(png(tmp_path / "ok.png", {"sdlab": record()})) == json.loads(record())


def bad_pngs(tmp):
    """Files named .png that Pillow cannot read: not an image, cut short, a damaged chunk before the pixels."""
    good = png(tmp / "good.png", {}).read_bytes()
    chunk = b"gAMA\0\1"  # a gamma chunk of 2 bytes where 4 belong
    gama = len(chunk[4:]).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big")
    return {"text": b"not a png", "cut": good[:40], "gama": good[:33] + gama + good[33:]}


@pytest.mark.parametrize("name", ["text", "cut", "gama"])
def test_every_reader_of_images_words_a_bad_png_alike(tmp_path, name):
    path = tmp_path / f"{name}.png"
    path.write_bytes(bad_pngs(tmp_path)[name])
    lines = []
    for read, label in ((lambda: check_image(path, "images: X", "an image file", LIMITS["max_input_pixels"]),
                         "images: X"),
                        (lambda: read_png_text(path, "params=X", LIMITS), "params=X"),
                        (lambda: read_image(path, 8, 8), f"reference image {path}"),
                        (lambda: analysis.read_image(path, 8, 8, "image=X", LIMITS["max_input_pixels"]), "image=X")):
        with pytest.raises(UserError) as refused:
            read()
        line = str(refused.value)
        assert line.startswith(f"{label} is not ") and "; give " in line and "PNG text" not in line, line
        lines.append(line.removeprefix(label).split("; give ")[0])
    assert len({line.partition(" (")[2] for line in lines}) == 1, lines  # the same fault, in the same words


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_an_image_cut_short_is_refused_from_its_file_and_a_whole_one_passes(tmp_path, kind):
    """A PNG's chunks are read to their end (CRCs, IEND), a JPEG's to its end-of-image marker; bytes after that
    (a motion photo's video) are no damage."""
    folder = cut_short(tmp_path / "images", kind)
    whole, cut, _ = sorted(folder.iterdir())
    with pytest.raises(UserError, match=r"^images: X is not an image \(image file is truncated\); give an image"):
        check_image(cut, "images: X", "an image file", LIMITS["max_input_pixels"])
    check_image(whole, "images: X", "an image file", LIMITS["max_input_pixels"])
    whole.write_bytes(whole.read_bytes() + b"\0" * 100)
    check_image(whole, "images: X", "an image file", LIMITS["max_input_pixels"])


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"restart_marker_blocks": 1}])
def test_a_jpeg_cut_after_its_exif_thumbnail_is_refused_and_a_whole_one_passes(tmp_path, options):
    """A JPEG is walked segment by segment to its own end-of-image marker: the one that ends the thumbnail inside its
    APP1 segment does not count, however little of the image is left (a progressive one's scans, restart markers)."""
    path = tmp_path / "photo.jpg"
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", **options)
    whole = with_exif_thumbnail(path.read_bytes())
    thumbnail_end = whole.index(b"\xff\xd9") + 2
    scan = whole.index(b"\xff\xda", thumbnail_end)  # the image's own (first) scan
    assert Image.open(io.BytesIO(whole)).getexif().get_ifd(ExifTags.IFD.IFD1)[0x0202] > 0 and scan < len(whole) // 2
    for end in (scan + 20, len(whole) // 2, len(whole) * 6 // 10, len(whole) - 1):
        path.write_bytes(whole[:end])
        with pytest.raises(UserError, match=r"^X is not an image \(image file is truncated\)"):
            check_image(path, "X", "an image file", LIMITS["max_input_pixels"])
    for trailer in (b"", b"\0" * 100, b"\xff\xd8 a motion photo's video \xff\xd9"):
        path.write_bytes(whole + trailer)
        check_image(path, "X", "an image file", LIMITS["max_input_pixels"])


def test_a_lost_table_is_rebuilt_from_pngs_skipping_those_whose_record_is_not_one(tmp_path):
    (tmp_path / "images").mkdir()
    png(tmp_path / "images" / "a.png", {"sdlab": json.dumps({"row": {"seed": 1, "status": "ok"}})})
    png(tmp_path / "images" / "b.png", {"sdlab": "[" * 5000 + "]" * 5000})
    png(tmp_path / "images" / "c.png", {"sdlab": " " * (4 << 20)}, zipped=True)
    frame = rows_from_images(tmp_path)
    assert frame["seed"].tolist() == [1] and frame["image_path"].tolist() == ["images/a.png"]


# 4. Figures show text as typed: a `$` in a prompt or a file name is a dollar sign, never mathtext.

DOLLARS = ["$x^2$ a red circle", "a $\\nosuch$ b", "costs \\$5", "$"]


def analysis_job(recipe: str, out_dir, **overrides) -> pd.DataFrame:
    """The rows of an analysis job run directly on model=tiny."""
    ctx = context(recipe, out_dir, **overrides)
    return get_job(ctx.run.job)(ctx)


def drawn_figures(monkeypatch) -> list:
    """Every matplotlib figure sdlab saves from now on (the test's monkeypatch undoes it)."""
    drawn, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, *args, **kw: drawn.append(fig) or save(fig, *args, **kw))
    return drawn


def assert_shown_as_typed(drawn):
    texts = [t for fig in drawn for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert {label for label in DOLLARS if any(label in t.get_text() for t in texts)} == set(DOLLARS)
    for text in texts:  # a `$` read as math would be drawn as a formula, or fail to parse
        assert "$" not in text.get_text() or not text.get_parse_math(), text.get_text()
        assert "mathdefault" not in text.get_text(), text.get_text()  # log axes keep their 10⁻³ labels


def test_dollars_in_labels_and_titles_are_text_and_log_axes_keep_their_labels(tmp_path, monkeypatch):
    drawn = drawn_figures(monkeypatch)
    figures.bar_chart([{"labels": DOLLARS, "values": [1, 2, 3, 4], "title": DOLLARS[0]}], tmp_path / "b.png",
                      title=DOLLARS[1])
    figures.heatmap(np.eye(4), DOLLARS, DOLLARS, tmp_path / "h.png", title=DOLLARS[2])
    figures.image_strip([[np.zeros((8, 8, 3), np.uint8)] * 4], tmp_path / "s.png", col_labels=DOLLARS,
                        row_labels=[DOLLARS[3]], title=DOLLARS[0])
    figures.curves([{"lines": [{"x": [1, 2, 3], "y": [1e-3, 0.05, 20.0], "label": DOLLARS[1]}], "logy": True},
                    {"lines": [{"x": [1, 2, 3], "y": [-50.0, 0.3, 900.0]}], "symlog": 1.0, "title": DOLLARS[2]}],
                   tmp_path / "c.png", title=DOLLARS[3])
    assert_shown_as_typed(drawn)
    assert {t.get_text() for t in drawn[-1].axes[0].get_yticklabels()} >= {"10⁻²", "10⁰"}


def test_a_prompt_that_reads_as_bad_mathtext_is_drawn_not_failed(tmp_path, monkeypatch):
    drawn = drawn_figures(monkeypatch)
    rows = analysis_job("clip_tokens", tmp_path, prompts=DOLLARS)
    assert rows["prompt"].tolist() == DOLLARS and (tmp_path / "token_counts.png").is_file()
    assert_shown_as_typed(drawn)



def test_the_manifest_of_a_sweep_over_a_prompt_file_at_its_limit_reads_back(tmp_path):
    """The manifest keeps each prompt up to 4 times, JSON-escaped (a control character takes 6 bytes): what the limits
    let in, sdlab reads back, or the sweep could neither be collected nor resumed."""
    size = LIMITS["max_prompt_file_bytes"] // 4
    prompts = [(f"{i}\x01" * size)[:size] for i in range(4)]
    write_manifest(tmp_path, ["prompt=" + ",".join(map(literal, prompts))], [[f"prompt={literal(p)}"] for p in prompts])
    assert read_manifest(tmp_path, strict=True)["values"]["prompt"] == [literal(p) for p in prompts]


def test_a_prompt_with_a_line_break_cannot_print_a_log_line_of_its_own(tmp_path):
    forged = "[10:00:00][INFO] forged"
    done = run_cli("-m", f"prompt='a red circle\n{forged}',a cat", "num_inference_steps=1", "threads=1",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert not [line for line in lines if line.startswith(forged)], done.stdout
    assert sum("prompt=a red circle\\n" + forged in line for line in lines) == 2, done.stdout  # job and image lines
    table = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert f"a red circle\n{forged}" in set(table["prompt"])  # the table keeps the prompt as typed


def test_a_prompt_files_lines_end_at_newlines_only(tmp_path):
    """Python's splitlines also ends a line at U+2028, U+0085 and a form feed: a one-line file was two prompts."""
    (tmp_path / "p.txt").write_text("a red circle\u2028on blue\r\na green\x0csquare\u0085 at the top\n\n",
                                    encoding="utf-8")
    assert read_prompt_lines(tmp_path / "p.txt", "prompt_file=p.txt", LIMITS) == [
        "a red circle\u2028on blue", "a green\x0csquare\u0085 at the top"]


def test_both_readers_of_input_images_refuse_one_of_more_pixels_than_the_limit(tmp_path):
    """`images=` (checked before the job) and `image=` (img2img's input, read in its check) name the file, its size
    and `limits.max_input_pixels`; an image at the limit passes."""
    path = tmp_path / "wide.png"
    Image.new("RGB", (30, 20)).save(path)
    for read in (lambda limit: check_image(path, "image=X", "an image file", limit),
                 lambda limit: analysis.read_image(path, 8, 8, "image=X", limit)):
        with pytest.raises(UserError, match=r"^image=X is 30x20 px = 600 pixels, above limits.max_input_pixels=599; "):
            read(599)
        read(600)
