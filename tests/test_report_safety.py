"""report.html holds any string safely, and `sdlab report DIR` reads only regular files inside DIR."""

from __future__ import annotations

import html
import json
import os
import re
import threading
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from browser import chromium_page, require_chromium
from cli_helpers import run_cli
from report_helpers import fake_sweep
from sdlab.errors import UserError
from sdlab.bench.figure_index import THUMB, index_rows, write_index
from sdlab.bench.records import job_dirs, write_table
from sdlab.bench.report import ASSETS, PNG_TEXT_MAX, build_report, figures, report_data

HOSTILE = ["<!--<script>", "</script><script>alert(1)</script>", "/*{{js}}*/", "{{data}}", "line\u2028sep\u2029para",
           "{{title}} & <b>bold</b> <!-- x -->", "</SCRIPT ><!--", "\\u003c already escaped"]
HOSTILE_NAME = "<!--<script>{{js}}.png"
FAILED_ERROR = "ValueError: </script><!--<script>{{css}}"


def embedded(page: str) -> dict:
    """The JSON the page carries."""
    return json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1))


def assert_script_intact(page: str) -> None:
    """Exactly the two script elements of the template: the data, and the whole of report.js untouched."""
    assert len(re.findall(r"<script", page, re.I)) == 2 and len(re.findall(r"</script", page, re.I)) == 2
    assert "<script>\n" + (ASSETS / "report.js").read_text() + "\n</script>\n</body>" in page
    assert "<!--" not in page.split('id="data">', 1)[1]


@pytest.fixture
def hostile(tmp_path):
    """A sweep whose prompts, experiment name, one image and one figure carry strings that try to break the page."""
    root = fake_sweep(tmp_path / "sweep", seeds=(1, 2), guidance=(1.0, 7.5), schedulers=("ddim", "euler"), failed=None)
    frame = pd.read_parquet(root / "results.parquet")
    frame["prompt"] = [HOSTILE[i % len(HOSTILE)] for i in range(len(frame))]
    frame["negative_prompt"] = [HOSTILE[-1 - i % len(HOSTILE)] for i in range(len(frame))]
    frame["experiment"] = "<!--<script>{{data}}"
    frame.loc[3, ["status", "error", "clip_score"]] = ["error", FAILED_ERROR, None]  # a failed cell says why
    (root / "0" / "images" / "seed1.png").rename(root / "0" / "images" / HOSTILE_NAME)
    frame.loc[0, "image_path"] = f"0/images/{HOSTILE_NAME}"
    Image.new("RGB", (8, 8)).save(root / HOSTILE_NAME)  # a figure with a hostile name
    return root, frame


def test_hostile_strings_come_back_exactly_and_the_script_is_intact(hostile):
    root, frame = hostile
    page = build_report(root, frame).read_text()
    assert_script_intact(page)
    data = embedded(page)
    column = lambda name: [row[data["columns"].index(name)] for row in data["rows"]]  # noqa: E731
    assert column("prompt") == list(frame["prompt"]) and set(HOSTILE) <= set(column("prompt"))
    assert column("negative_prompt") == list(frame["negative_prompt"]) and column("error")[3] == FAILED_ERROR
    assert data["header"]["title"] == "<!--<script>{{data}}: sweep"
    assert data["figures"] == [HOSTILE_NAME] and column("image_path")[0] == f"0/images/{HOSTILE_NAME}"
    block = page.split('id="data">', 1)[1].split("</script>", 1)[0]
    assert not any(c in block for c in "<>&\u2028\u2029")  # each only as a JSON escape
    assert not any(text in page for text in [*HOSTILE, HOSTILE_NAME, FAILED_ERROR] if set(text) & set("<>&"))


def test_the_title_is_escaped_and_no_inlined_text_is_read_for_placeholders(hostile):
    root, frame = hostile
    page = build_report(root, frame).read_text()
    assert f"<title>{html.escape('<!--<script>{{data}}: sweep')}</title>" in page  # its {{data}} stays as typed
    assert page.count("function renderRows()") == 1 and page.count('"use strict";') == 1  # /*{{js}}*/ prompts stay text
    assert page.count("<style>") == 1 and "/*{{css}}*/" not in page.split("<style>", 1)[1].split("</style>", 1)[0]


def test_a_browser_shows_every_hostile_string_as_text(hostile):
    require_chromium()
    root, frame = hostile
    report = build_report(root, frame)
    with chromium_page() as page:
        errors, dialogs = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_timeout(300)
        k = page.locator("#rows-table thead tr:first-child th").all_inner_texts().index("prompt")
        shown = page.evaluate(f"[...document.querySelectorAll('#rows-table tbody tr')].map(tr => tr.children[{k}].textContent)")
        assert shown == list(frame["prompt"])
        assert page.locator("#rows-table tbody script, #rows-table tbody b").count() == 0
        assert page.evaluate("[...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)")
        hostile_image = f"[...document.querySelectorAll('#grid img')].filter(i => i.naturalWidth > 0 && " \
                        f"decodeURIComponent(i.getAttribute('src')) === {json.dumps('0/images/' + HOSTILE_NAME)})"
        assert page.evaluate(f"{hostile_image}.length") == 1
        assert page.inner_text("#header h1") == "<!--<script>{{data}}: sweep"
        for axis in ("prompt", "negative_prompt"):  # the failed row's strings, picked as the grid's selectors
            page.select_option(f"#selectors select[data-axis={axis}]", frame.loc[3, axis])
        assert page.locator("#grid .cell.failed .error").text_content() == FAILED_ERROR
    assert errors == [] and dialogs == []


@pytest.fixture
def outside(tmp_path):
    """A sweep, and beside it a PNG whose parameters say SECRET."""
    root = fake_sweep(tmp_path / "sweep", seeds=(1, 2), guidance=(1.0,), schedulers=("ddim", "euler"), failed=None)
    (tmp_path / "outside").mkdir()
    info = PngInfo()
    info.add_text("parameters", "SECRET parameters")
    Image.new("RGB", (4, 4)).save(tmp_path / "outside" / "secret.png", pnginfo=info)
    return root, tmp_path / "outside" / "secret.png"


def test_images_and_figures_outside_the_folder_are_neither_shown_nor_read(outside):
    root, secret = outside
    (root / "0" / "images" / "link.png").symlink_to(secret)
    (root / "leak.png").symlink_to(secret)  # a figure leading out
    (root / "1" / "leak.gif").symlink_to(secret)
    frame = pd.read_parquet(root / "results.parquet")
    frame["image_path"] = [str(secret), "../outside/secret.png", "0/images/link.png", "1/images/seed1.png"]
    page = build_report(root, frame).read_text()
    data = embedded(page)
    assert data["images"] == [None, None, None, "1/images/seed1.png"] and data["png"][:3] == [None] * 3
    assert data["png"][3].startswith("a red circle") and data["figures"] == []
    assert "SECRET" not in page
    (root / "escape").symlink_to(secret.parent, target_is_directory=True)  # a job dir leading out
    (secret.parent / "f.png").write_bytes(secret.read_bytes())
    assert figures(root) == [] and "escape" not in [p.name for p in job_dirs(root)]


def test_the_index_of_a_recipe_sweep_neither_lists_nor_draws_a_figure_leading_out(outside):
    """The index took every *.png of a job folder, links too: the contact sheet drew the image a link led out to."""
    root, secret = outside
    (root / "1" / "own.png").write_bytes(secret.read_bytes())
    (root / "1" / "leak.png").symlink_to(secret)
    write_index(root)
    assert [row["figure"] for row in index_rows(root) if row["folder"] in ("0", "1")] == ["", "1/own.png"]
    assert "leak" not in (root / "index.md").read_text()
    with Image.open(root / "contact_sheet.png") as sheet:
        assert sheet.height < 2 * THUMB  # one thumbnail in a row: the link's is not drawn


def in_time(work, seconds: float = 30):
    """`work()`'s result, failing the test if it has not returned within `seconds` (a blocked read of a pipe)."""
    result = {}
    worker = threading.Thread(target=lambda: result.update(value=work()), daemon=True)
    worker.start()
    worker.join(timeout=seconds)
    assert not worker.is_alive(), "blocked, e.g. on a pipe"
    return result["value"]


def test_a_pipe_named_as_an_image_figure_table_or_report_never_hangs(outside):
    root, _ = outside
    frame = pd.read_parquet(root / "results.parquet")
    for name in ("0/images/seed1.png", "pipe.png", "1/pipe.gif", "results.parquet", "0/results.parquet"):
        (root / name).unlink(missing_ok=True)
        os.mkfifo(root / name)
    data = embedded(in_time(lambda: build_report(root, frame).read_text()))
    assert data["images"][0] is None and data["png"][0] is None and data["figures"] == [] and data["png"][1]
    data = embedded(in_time(lambda: build_report(root).read_text()))  # the rows of the jobs' tables (job 0's CSV)
    assert len(data["rows"]) == 3 and None not in data["images"]  # job 0's cell has no image file: not finished
    (root / "report.html").unlink()
    os.mkfifo(root / "report.html")
    error = in_time(lambda: pytest.raises(UserError, build_report, root))
    assert "was not written by sdlab" in str(error.value)


def test_png_text_is_read_with_a_limit(outside):
    root, _ = outside
    info = PngInfo()
    info.add_text("parameters", "x" * (PNG_TEXT_MAX + 100))
    Image.new("RGB", (4, 4)).save(root / "0" / "images" / "seed1.png", pnginfo=info)
    (root / "1" / "images" / "seed1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # truncated
    data = report_data(pd.read_parquet(root / "results.parquet"), root)
    assert data["png"][0] == "x" * PNG_TEXT_MAX and data["png"][1] is None


def corrupt(root: Path, case: str) -> str:
    """Damage the sweep at `root` one way; return the file the error line must name."""
    table = root / "results.parquet"
    frame = pd.read_parquet(table)
    if case == "truncated parquet":
        table.write_bytes(table.read_bytes()[:200])
        return "results.parquet cannot be read"
    if case.endswith("cell"):
        column, value = {"overrides cell": ("overrides", "{seed: 1"), "overrides list cell": ("overrides", "[1, 2]"),
                         "versions cell": ("versions", "torch 2")}[case]
        frame.loc[2, column] = value
        write_table(frame, root)
        return f"results.parquet: the {column} cell of row 2 is not"
    manifest = {"malformed sweep.json": '{"key": "k", "axes": [', "sweep.json a list": '["a", "b"]',
                "sweep.json axes not a list": '{"key": "k", "axes": "seed"}',
                "sweep.json not UTF-8": b"\xff\xfe {}", "sweep.json values not lists": '{"key": "k", "values": {"seed": 1}}',
                "sweep.json a job not a mapping": '{"key": "k", "jobs": [1, 2]}',
                "sweep.json command of numbers": '{"key": "k", "command": [1, 2]}',
                "sweep.json hashes of numbers": '{"key": "k", "hashes": [1, 2]}',
                "sweep.json spent of text": '{"key": "k", "spent": ["8 s"]}', "sweep.json spent a number": '{"key": "k", "spent": 8}'}
    if case == "damaged summary.parquet":
        (root / "summary.parquet").write_bytes(b"PAR1 not a table")
        return "sweep/summary.parquet cannot be read"
    text = manifest[case]
    (root / "sweep.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    return "sweep/sweep.json cannot be read"


DAMAGED = ["truncated parquet", "overrides cell", "overrides list cell", "versions cell", "malformed sweep.json",
           "sweep.json a list", "sweep.json axes not a list", "sweep.json not UTF-8", "sweep.json values not lists",
           "sweep.json a job not a mapping", "sweep.json command of numbers", "sweep.json hashes of numbers",
           "sweep.json spent of text", "sweep.json spent a number", "damaged summary.parquet"]


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_input_is_one_line_naming_the_file_and_exit_2(run_sdlab, outside, capsys, case):
    root, _ = outside
    fragment = corrupt(root, case)
    assert run_sdlab("report", str(root)) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdlab: error: ") and fragment in err[0], captured.err
    assert not (root / "report.html").exists() and not (root / "summary.csv").exists()  # nothing written


@pytest.mark.parametrize("case", ["truncated parquet", "malformed sweep.json"])
def test_sdlab_report_on_damaged_input_prints_no_traceback(outside, case):
    root, _ = outside
    fragment = corrupt(root, case)
    done = run_cli("report", str(root))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("sdlab: error: ") and fragment in done.stderr
