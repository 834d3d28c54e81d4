"""report.html holds any string safely, and `sdlab report DIR` reads only regular files inside DIR."""

from __future__ import annotations

import html
import json
import re

import pandas as pd
import pytest
from PIL import Image

from browser import chromium_page, require_chromium
from report_helpers import fake_sweep
from sdlab.report import ASSETS, build_report

HOSTILE = ["<!--<script>", "</script><script>alert(1)</script>", "/*{{js}}*/", "{{data}}", "line\u2028sep\u2029para",
           "{{title}} & <b>bold</b> <!-- x -->", "</SCRIPT ><!--", "\\u003c already escaped"]
HOSTILE_NAME = "<!--<script>{{js}}.png"


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
    assert column("negative_prompt") == list(frame["negative_prompt"])
    assert data["header"]["title"] == "<!--<script>{{data}}: sweep"
    assert data["figures"] == [HOSTILE_NAME] and column("image_path")[0] == f"0/images/{HOSTILE_NAME}"
    block = page.split('id="data">', 1)[1].split("</script>", 1)[0]
    assert not any(c in block for c in "<>&\u2028\u2029")  # each only as a JSON escape
    assert not any(text in page for text in [*HOSTILE, HOSTILE_NAME] if set(text) & set("<>&"))


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
        k = list(frame.columns).index("prompt")
        shown = page.evaluate(f"[...document.querySelectorAll('#rows-table tbody tr')].map(tr => tr.children[{k}].textContent)")
        assert shown == list(frame["prompt"])
        assert page.locator("#rows-table tbody script, #rows-table tbody b").count() == 0
        assert page.evaluate("[...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)")
        hostile_image = f"[...document.querySelectorAll('#grid img')].filter(i => i.naturalWidth > 0 && " \
                        f"decodeURIComponent(i.getAttribute('src')) === {json.dumps('0/images/' + HOSTILE_NAME)})"
        assert page.evaluate(f"{hostile_image}.length") == 1
        assert page.inner_text("#header h1") == "<!--<script>{{data}}: sweep"
    assert errors == [] and dialogs == []
