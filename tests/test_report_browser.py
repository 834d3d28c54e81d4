"""report.html in a real browser: headless Chromium from the system, driven by Playwright, from file://."""

from __future__ import annotations

import pytest

from browser import chromium_page, require_chromium
from report_helpers import fake_sweep
from sdlab.bench.report import build_report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A built report of a 3 seeds x 3 guidance x 2 schedulers sweep with one failed cell."""
    require_chromium()
    root = fake_sweep(tmp_path_factory.mktemp("sweep"))
    return build_report(root)


@pytest.fixture(scope="module")
def browser_page(report):
    """One headless Chromium for the module, with every console message, page error and request recorded."""
    with chromium_page() as page:
        page.log = {"errors": [], "requests": []}
        page.on("console", lambda m: m.type == "error" and page.log["errors"].append(m.text))
        page.on("pageerror", lambda e: page.log["errors"].append(str(e)))
        page.on("request", lambda r: page.log["requests"].append(r.url))
        yield page


@pytest.fixture
def page(browser_page, report):
    """The report freshly opened."""
    browser_page.log["errors"].clear()
    browser_page.log["requests"].clear()
    browser_page.goto(report.as_uri())
    browser_page.wait_for_load_state("load")
    return browser_page


def headers(page) -> list[str]:
    """The grid's column labels."""
    return page.locator("#grid thead th").all_inner_texts()[1:]


def test_opens_from_file_with_no_console_errors_and_no_network(page):
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_timeout(300)
    loaded = page.evaluate("[...document.querySelectorAll('#grid img')].map(i => i.complete && i.naturalWidth > 0)")
    assert loaded and all(loaded)
    assert page.log["errors"] == []
    assert page.log["requests"] and all(url.startswith("file://") for url in page.log["requests"])
    # rows, not cells: a recipe's one job writes a row per timestep, a seeds list a row per image
    assert page.locator("#header dt:text-is('rows') + dd").inner_text() == "17 ok, 1 failed"
    assert "sdlab -m seed=1,2,3 guidance_scale=1,3,7.5" in page.inner_text("#command")


def test_switching_the_x_axis_changes_the_grid(page):
    assert headers(page) == ["guidance_scale=1", "guidance_scale=3", "guidance_scale=7.5"]
    first = page.get_attribute("#grid .cell img >> nth=0", "src")
    page.select_option("#x-axis", "seed")
    assert headers(page) == ["seed=1", "seed=2", "seed=3"]
    assert page.locator("#selectors select[data-axis=guidance_scale]").count() == 1
    assert page.locator("#grid tbody tr").count() == 2 and page.locator("#grid .cell").count() == 6
    assert page.get_attribute("#grid .cell img >> nth=1", "src") != first


def test_clicking_a_cell_shows_its_parameters(page):
    assert page.is_hidden("#detail")
    page.click("#grid .cell:not(.failed) >> nth=2")
    assert page.is_visible("#detail")
    title = page.inner_text("#detail-title")
    assert title == "seed=1, guidance_scale=7.5, scheduler=ddim"
    png = page.inner_text("#detail-png")  # the PNG's own A1111 parameters text, read when the report was built
    assert "CFG scale: 7.5" in png and "Seed: 1" in png and "Sampler: DDIM" in png
    assert "clip_score" in page.inner_text("#detail-row") and page.is_visible("#detail .detail-image img")
    page.keyboard.press("Escape")
    assert page.is_hidden("#detail")


def test_sorting_the_table_reorders_it(page):
    column = "clip_score"
    index = page.locator("#rows-table thead tr:first-child th").all_inner_texts().index(column)
    def values():
        texts = page.locator(f"#rows-table tbody tr td:nth-child({index + 1})").all_inner_texts()
        return [float(t) for t in texts if t]
    before = values()
    page.click(f"#rows-table th[data-col={column}]")
    ascending = values()
    assert ascending == sorted(before) and ascending != before
    page.click(f"#rows-table th[data-col={column}]")
    assert values() == sorted(before, reverse=True)
    page.fill("#rows-table input[data-col=scheduler]", "euler")
    assert page.locator("#rows-table tbody tr").count() == 9 and page.inner_text("#row-count") == "9 of 18"


def test_a_failed_cell_shows_its_error(page):
    assert page.locator("#grid .cell.failed").count() == 0  # seed 1 is shown first; seed 2 has the failure
    page.select_option("#selectors select[data-axis=seed]", "2")
    failed = page.locator("#grid .cell.failed")
    assert failed.count() == 1 and "ValueError: boom in this cell" in failed.inner_text()
    failed.click()
    assert page.is_visible("#detail-error") and "boom in this cell" in page.inner_text("#detail-error")


def test_a_big_sweep_shows_its_first_rows_until_asked(browser_page, tmp_path):
    root = fake_sweep(tmp_path / "big", seeds=range(10), guidance=[1.0 + i for i in range(10)], schedulers=("a", "b", "c"),
                      failed=None, side=8, job_tables=False)
    browser_page.goto(build_report(root).as_uri())
    assert browser_page.locator("#rows-table tbody tr").count() == 200 and browser_page.inner_text("#row-count") == "300 of 300"
    browser_page.click("#rows-more")
    assert browser_page.locator("#rows-table tbody tr").count() == 300 and browser_page.is_hidden("#rows-more")
    assert browser_page.locator("#grid .cell").count() == 30  # 10 guidance x 3 schedulers, seeds as a selector


def test_the_ranking_is_a_table_at_the_top(page):
    assert page.locator("section").first.get_attribute("id") == "ranking-section"
    block = page.locator("#ranking .ranking-block").nth(0)
    assert block.locator("h3 select").input_value() == "clip_score"
    assert block.locator(".ranking-line").inner_text().startswith("guidance_scale by clip_score: best 7.5")
    assert block.locator("tbody tr td.value").all_inner_texts() == ["7.5", "3", "1"]
    assert block.locator("tbody tr.best td.value").all_inner_texts() == ["7.5"]
    assert page.log["errors"] == []


def test_ranked_values_are_shown_as_text_and_any_score_can_be_picked(browser_page, tmp_path):
    root = fake_sweep(tmp_path / "hostile", schedulers=("ddim", "<b>eu</b>"), failed=None)
    browser_page.goto(build_report(root).as_uri())
    cells = browser_page.locator("#ranking td.value")
    assert "<b>eu</b>" in cells.all_inner_texts() and browser_page.locator("#ranking b").count() == 0
    block = browser_page.locator("#ranking .ranking-block").nth(0)
    block.locator("h3 select").select_option("adherence_all")  # 3 and 7.5 both always adhere: tied
    assert block.locator("tbody tr.best td.value, tbody tr.tied td.value").all_inner_texts() == ["3", "7.5"]


def test_a_sweep_of_seeds_alone_shows_each_score_over_them_and_no_dead_links(browser_page, tmp_path):
    """A sweep of 3 seeds of one setting said 'no parameter was swept' under a header saying 'swept: seed', showed no
    number of its own, and linked a distribution section it did not have."""
    from sdlab.bench.report import rebuild

    root = fake_sweep(tmp_path / "seeds", guidance=(7.5,), schedulers=("ddim",), failed=None)
    browser_page.goto(rebuild(root).as_uri())
    assert "only seed was swept" in browser_page.inner_text("#ranking")
    overall = browser_page.locator("#summary table tbody tr")
    texts = {row[0]: row[1:] for row in (r.split("\t") for r in overall.all_inner_texts())}
    assert texts["clip_score"][:2] == ["3", "100"], texts  # n, mean: min(100, 150 + seed + 5) for seeds 1, 2, 3
    assert browser_page.is_hidden("nav a[href='#sets-section']")
    fake_sweep(tmp_path / "grid")
    browser_page.goto(rebuild(tmp_path / "grid").as_uri())
    assert "only seed" not in browser_page.inner_text("#ranking") and browser_page.locator("#summary table").count() == 0


def test_a_sweep_over_recipes_has_no_grid_and_says_only_the_recipe_was_swept(browser_page, tmp_path):
    """Its report drew an experiment x scheduler grid of 'no cell' boxes, listed each recipe's own settings as swept
    and took the first recipe's name for its title."""
    import pandas as pd

    from sdlab.bench.report import build_report

    root = fake_sweep(tmp_path / "recipes", seeds=(1,), guidance=(1.0, 7.5), schedulers=("ddim",), failed=None)
    frame = pd.read_parquet(root / "results.parquet")
    frame["experiment"] = ["article_a3_schedule", "article_b6_ddim_steps"]
    frame["scheduler"] = ["ddim", "dpmpp_2m"]
    browser_page.goto(build_report(root, frame).as_uri())
    assert browser_page.inner_text("h1") == "experiments: recipes"
    assert browser_page.locator("#header dt:text-is('swept') + dd").inner_text() == "experiment"
    assert browser_page.is_hidden("#grid-section") and browser_page.is_hidden("nav a[href='#grid-section']")


def test_a_sweep_from_before_manifests_shows_no_command_rather_than_null(browser_page, tmp_path):
    root = fake_sweep(tmp_path / "old", failed=None)
    (root / "sweep.json").unlink()
    browser_page.goto(build_report(root).as_uri())
    assert browser_page.locator("#command").count() == 0 and "null" not in browser_page.inner_text("#header")
