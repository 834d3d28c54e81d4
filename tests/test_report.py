"""report.html: self-contained, built from any run or sweep dir, and `sdlab report DIR` with its bad input."""

from __future__ import annotations

import json
import re
import shlex

import pandas as pd
import pytest

from report_helpers import fake_sweep
from sdlab.bench.report import build_report, report_data, run_manifest


def embedded(page: str) -> dict:
    """The JSON the page carries."""
    return json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1))


def test_the_page_is_self_contained_with_relative_images(tmp_path):
    root = fake_sweep(tmp_path / "sweep")
    page = build_report(root).read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page) and "https://" not in page and "http://" not in page
    data = embedded(page)
    assert data["axes"] == ["seed", "guidance_scale", "scheduler"]
    assert all(p is None or not p.startswith("/") for p in data["rows"][0] if isinstance(p, str) and p.endswith(".png"))
    paths = [r[data["columns"].index("image_path")] for r in data["rows"]]
    assert all((root / p).is_file() for p in paths if p) and sum(p is None for p in paths) == 1
    assert data["png"][0].startswith("a red circle\nSteps: 8, Sampler: ") and "Seed: 1, Size: 16x16" in data["png"][0]
    assert data["main_metric"] == "clip_score"


def test_a_sweep_extended_by_several_commands_is_reproduced_by_each_in_the_order_they_ran(tmp_path):
    """`-m seed=1,2,3` then `-m seed=1` into one folder: its report of three images gave the second command alone,
    which makes one. Each command that ran there is a line, in the order they last ran (a rerun of one is one line)."""
    from sdlab.bench.resume import write_manifest

    root = tmp_path / "s"
    root.mkdir()
    for typed in (["seed=1,2,3", "model=tiny"], ["seed=1", "model=tiny"], ["seed=1", "model=tiny"]):
        jobs = [[f"seed={seed}", "model=tiny"] for seed in typed[0].removeprefix("seed=").split(",")]
        write_manifest(root, typed, jobs, ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={root}"])
    assert run_manifest(root, pd.DataFrame())["command"] == (f"sdlab -m seed=1,2,3 model=tiny hydra.sweep.dir={root}\n"
                                                             f"sdlab -m seed=1 model=tiny hydra.sweep.dir={root}")


def test_the_header_says_how_to_reproduce_and_what_was_constant(tmp_path):
    root = fake_sweep(tmp_path / "sweep")
    header = report_data(pd.read_parquet(root / "results.parquet"), root)["header"]
    assert header["command"] == f"sdlab -m seed=1,2,3 guidance_scale=1,3,7.5 scheduler=ddim,euler threads=1 hydra.sweep.dir={root}"
    assert header["ok"] == 17 and header["failed"] == 1 and header["model"] == "mini" and header["device"] == "cpu"
    assert header["constants"]["threads"] == "1" and header["constants"]["num_inference_steps"] == "8"
    assert "seed" not in header["constants"] and header["versions"] == {"sdlab": "0.1.0"}
    moved = root.rename(tmp_path / "moved")  # the manifest's command, run where the sweep is now
    assert run_manifest(moved, pd.read_parquet(moved / "results.parquet"))["command"] == \
        f"sdlab -m seed=1,2,3 guidance_scale=1,3,7.5 scheduler=ddim,euler threads=1 hydra.sweep.dir={moved}"


def test_sdlab_report_rebuilds_an_older_sweep(run_sdlab, tmp_path, capsys):
    root = fake_sweep(tmp_path / "sweep")
    (root / "results.parquet").unlink()  # collected from the job folders when the sweep table is missing
    (root / "results.csv").unlink()
    assert run_sdlab("report", str(root)) == 0
    assert capsys.readouterr().out.strip() == f"sdlab: {root / 'report.html'}"
    for name in ("report.html", "summary.csv", "summary.parquet", "summary.png", "ranking.csv"):
        assert (root / name).is_file(), name
    summary = pd.read_csv(root / "summary.csv")
    assert {"n", "mean", "lo", "hi"} <= set(summary.columns) and set(summary["parameter"]) >= {"guidance_scale", "scheduler"}
    assert run_sdlab("report", str(root)) == 0  # its own page is rebuilt in place


@pytest.mark.parametrize("args,fragment", [
    ((), "sdlab report takes one run or sweep dir, got nothing"),
    (("a", "b"), "takes one run or sweep dir, got a b"),
    (("{missing}",), "missing does not exist; give an sdlab run or sweep dir"),
    (("{afile}",), "afile is not a folder; give an sdlab run or sweep dir"),
    (("{empty}",), "has no results.parquet"),
    (("{foreign}",), "report.html exists and was not written by sdlab"),
    (("{unmarked}",), "unmarked is not sdlab's (no .sdlab mark): sdlab report writes only into folders sdlab made"),
])
def test_bad_report_dirs_are_one_line_exit_2_and_nothing_written(run_sdlab, tmp_path, capsys, args, fragment):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("mine")
    foreign = fake_sweep(tmp_path / "foreign", seeds=(1,), guidance=(1.0,), failed=None)
    (foreign / "report.html").write_text("<html>mine</html>")
    unmarked = fake_sweep(tmp_path / "unmarked", seeds=(1,), guidance=(1.0,), failed=None)
    (unmarked / ".sdlab").unlink()  # a folder of someone's, with a table of sdlab's and their own summary beside it
    (unmarked / "summary.csv").write_text("mine\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = [a.format(missing=tmp_path / "missing", afile=tmp_path / "afile", empty=tmp_path / "empty", foreign=foreign,
                     unmarked=unmarked) for a in args]
    assert run_sdlab("report", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdlab: error: ") and fragment in err[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (foreign / "report.html").read_text() == "<html>mine</html>"
    assert (unmarked / "summary.csv").read_text() == "mine\n"


def test_a_sweep_ends_with_summary_report_and_its_ranking_line_once(run_sdlab, tmp_path, capsys, monkeypatch, one_thread):
    from sdlab.jobs import generate as generate_job

    real = generate_job.generate_batch

    def ddim_runs_out_of_memory(model, params, seeds, **options):
        if type(model.scheduler).__name__ == "DDIMScheduler":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(model, params, seeds, **options)

    monkeypatch.setattr(generate_job, "generate_batch", ddim_runs_out_of_memory)
    code = run_sdlab("-m", "seed=1,2,3", "scheduler=ddim,euler", "model=tiny", "num_inference_steps=2", "threads=1",
                     f"hydra.sweep.dir={tmp_path}")
    out = capsys.readouterr().out
    assert code == 1 and "3 ok, 3 failed" in out
    # one line per swept parameter, printed once; with ddim failed, one value is left: nothing to rank it against
    assert out.count("3 ok, 3 failed") == 1 and out.count("scheduler: not ranked") == 1 and "best" not in out.split("3 ok, 3 failed")[1]
    for name in ("summary.csv", "summary.parquet", "summary.png", "report.html", "grid.png", "ranking.csv"):
        assert (tmp_path / name).is_file(), name
    data = embedded((tmp_path / "report.html").read_text())
    status = [r[data["columns"].index("status")] for r in data["rows"]]
    assert status.count("error") == 3 and data["values"]["scheduler"] == ["ddim", "euler"]
    summary = pd.read_parquet(tmp_path / "summary.parquet")
    assert (summary.loc[summary["parameter"] == "scheduler", "value"] == "euler").all()  # failed cells have no metrics


def test_sdlab_report_on_a_single_run_dir(run_sdlab, tmp_path):
    run = fake_sweep(tmp_path / "sweep", failed=None) / "4"
    assert run_sdlab("report", str(run)) == 0
    data = embedded((run / "report.html").read_text())
    assert data["header"]["command"] == f"sdlab seed=1 guidance_scale=7.5 scheduler=ddim threads=1 hydra.run.dir={run}"
    assert data["axes"] == [] and data["header"]["ok"] == 1 and data["summary"] is None
    assert (run / "summary.csv").is_file() and not (run / "summary.png").exists()


def test_a_single_runs_command_reruns_its_prompt_as_typed(run_sdlab, tmp_path, one_thread):
    prompt = "a red circle, blurry's ${edge}"  # a comma, a quote and an interpolation, each special to Hydra
    first, again = tmp_path / "first", tmp_path / "again"
    assert run_sdlab(f"prompt={prompt}", "model=tiny", "num_inference_steps=1", "threads=1",
                     f"hydra.run.dir={first}") == 0
    assert run_sdlab("report", str(first)) == 0
    command = shlex.split(embedded((first / "report.html").read_text())["header"]["command"])
    assert command[0] == "sdlab" and command[-1] == f"hydra.run.dir={first}"
    assert run_sdlab(*command[1:-1], f"hydra.run.dir={again}") == 0
    assert pd.read_csv(again / "results.csv")["prompt"].tolist() == [prompt]


def test_the_page_carries_the_sweeps_ranking(tmp_path):
    root = fake_sweep(tmp_path / "sweep")  # ddim scores 5 more than euler on every pair below the cap of 100
    data = embedded(build_report(root).read_text())
    rows = [r for r in data["ranking"] if r["parameter"] == "scheduler" and r["metric"] == "clip_score"]
    assert [(r["rank"], r["value"], r["group"]) for r in rows] == [(1, "ddim", "best"), (2, "euler", "behind")]
    assert rows[1]["n_paired"] == 8 and rows[1]["delta_hi"] < 0  # the failed cell has no pair
    assert data["ranking_lines"] == {
        "guidance_scale": "guidance_scale by clip_score: best 7.5 100; tied: none (1 of 3)",
        "scheduler": "scheduler by clip_score: best ddim 64.7; tied: none (1 of 2)"}


def test_the_wall_time_counts_a_shared_call_made_before_its_first_job(tmp_path):
    """Cells of a shared call write their job dirs after it: the header said 68 s of wall time for a sweep whose images
    took 101 s, counting from the first job's config, written after the first call."""
    import os

    from sdlab.bench.report import wall_seconds
    from sdlab.bench.resume import CONFIG, MARKER, mark_finished

    for number, (start, end) in enumerate([(100.0, 101.0), (101.0, 101.5)]):  # two cells of one call of 10 s
        job = tmp_path / str(number)
        job.mkdir()
        mark_finished(job, "h", {"rows": 1, "gen_s": 5.0, "calls": {"a": [2, 10.0, 1]}})
        for name, when in ((CONFIG, start), ("results.parquet", end), (MARKER, end)):
            (job / name).touch()
            os.utime(job / name, (when, when))
    assert wall_seconds(tmp_path) == 10.5
    (tmp_path / "0" / MARKER).unlink()  # the call is still the second cell's: it ended 10 s after the call began
    assert wall_seconds(tmp_path) == 10.0
    (tmp_path / "1" / MARKER).unlink()  # no mark names a call: from the first config
    assert wall_seconds(tmp_path) == 1.5


def test_the_command_quotes_a_prompt_list_as_a_person_types_it():
    """`'prompt='"'"'a red circle'"'"',...'` was the header of every sweep over quoted prompts: right for a shell,
    unreadable for a person. Double quotes where nothing in the word is special inside them, else single quotes."""
    from sdlab.bench.report import shell_line

    words = ["sdlab", "-m", "prompt='a red circle','a blue square'", "seed=1,2", "hydra.sweep.dir=out dir"]
    assert shell_line(words) == "sdlab -m \"prompt='a red circle','a blue square'\" seed=1,2 'hydra.sweep.dir=out dir'"
    nasty = ["prompt='it''s $HOME'", 'say "hi"', "a`b`", "back\\slash'", "wow!'", "", "x'y", "tab\there"]
    assert shlex.split(shell_line(nasty)) == nasty


def test_the_rows_table_leads_with_what_varies_and_its_scores(tmp_path):
    """The table began with run_id, experiment, job, model, scheduler and its config, the same on every row of a sweep:
    its swept values and scores sat a page-width to the right."""
    root = fake_sweep(tmp_path / "sweep")
    data = report_data(pd.read_parquet(root / "results.parquet"), root)
    scores = [m for m in data["metrics"] if m in ("clip_score", "adherence_all")]
    lead = ["seed", "guidance_scale", "scheduler", *scores, "status", "error",
            *(m for m in data["metrics"] if m not in scores)]  # the README's order: scores and status, then costs
    assert data["columns"][:len(lead)] == lead and "run_id" in data["columns"][len(lead):]
    assert sorted(data["columns"]) == sorted(pd.read_parquet(root / "results.parquet").columns)
    row = dict(zip(data["columns"], data["rows"][0]))
    assert row["seed"] == 1 and row["image_path"] == data["images"][0]


def test_a_sweeps_warnings_stay_in_its_manifest_and_report(run_sdlab, tmp_path, capsys, one_thread):
    args = ("-m", "prompt=a cat on a sofa", "seed=1,2", "num_inference_steps=1", "threads=1",
            f"hydra.sweep.dir={tmp_path}")
    warning = "prompt='a cat on a sofa' is outside model=mini's shapes grammar (it does not know: cat, sofa)"
    assert run_sdlab(*args) == 0 and warning in capsys.readouterr().out
    for rerun in (False, True):  # a rerun finds every cell finished and checks none again: the warning stays
        assert json.loads((tmp_path / "sweep.json").read_text())["warnings"][0].startswith(warning), rerun
        assert embedded((tmp_path / "report.html").read_text())["header"]["warnings"][0].startswith(warning)
        assert run_sdlab(*args) == 0


def test_the_sweeps_line_counts_the_cells_that_did_not_run_and_lists_at_most_a_page_of_failures(tmp_path):
    from sdlab.bench.report import MAX_LISTED, summarize
    from sdlab.bench.resume import NOT_RUN

    rows = [{"run_id": f"r{i}", "seed": i, "status": "error", "error": f"ValueError: boom {i}",
             "overrides": json.dumps({"seed": str(i)})} for i in range(MAX_LISTED + 5)]
    rows += [{"run_id": f"n{i}", "seed": 100 + i, "status": "error", "error": NOT_RUN,
              "overrides": json.dumps({"seed": str(100 + i)})} for i in range(40)]
    lines = summarize(pd.DataFrame(rows), tmp_path, grid=False).splitlines()
    assert lines[0] == f"0 ok, {MAX_LISTED + 45} failed"
    assert lines[1:MAX_LISTED + 1] == [f'  failed: {{"seed": "{i}"}} seed={i}: ValueError: boom {i}'
                                       for i in range(MAX_LISTED)]
    assert lines[MAX_LISTED + 1:] == [
        f"  and 5 more failed: their errors are in {tmp_path / 'results.csv'}",
        "  40 did not run: their jobs ended before writing a row (killed, cancelled, preempted, out of time or "
        "memory?); rerun the same command to run them"]
    assert report_data(pd.DataFrame(rows), tmp_path)["header"]["not_run"] == 40  # the page's header says it too


def test_a_seeds_list_swept_by_its_rows_is_no_constant_of_the_header(tmp_path):
    """`seeds=[1,2,3]` is one value on the command line, but each row has its own seed: the header says seed is swept,
    and lists no seeds among what stayed constant."""
    root = fake_sweep(tmp_path / "sweep", failed=None)
    manifest = json.loads((root / "sweep.json").read_text())
    for job in manifest["jobs"]:
        job.pop("seed")
    manifest["values"]["seeds"] = ["[1,2,3]"]
    (root / "sweep.json").write_text(json.dumps(manifest))
    data = report_data(pd.read_parquet(root / "results.parquet"), root)
    assert "seed" in data["axes"] and "seeds" not in data["header"]["constants"], data["header"]["constants"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_sdlab_report_help_says_what_it_does_and_exits_0(run_sdlab, capsys, flag):
    assert run_sdlab("report", flag) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sdlab report DIR\n") and "report.html" in out and "sdlab's .sdlab mark" in out


def test_the_wall_time_is_the_commands_that_made_the_sweep_not_the_gap_between_them(tmp_path):
    """The header's wall time ran from the first job's config to the last table: 1.0 s for a sweep its command took
    8.5 s to make (start-up, model and pre-flight left out), and a sweep extended a day later took a day."""
    import os
    import time

    from cli_helpers import run_cli

    def sweep(seeds: str) -> float:
        began = time.time()
        done = run_cli("-m", f"seed={seeds}", "model=tiny", "num_inference_steps=1", "threads=1",
                       "hydra.sweep.dir=sweep", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return time.time() - began

    first = sweep("1,2")
    header = embedded((tmp_path / "sweep" / "report.html").read_text())["header"]
    assert 0.6 * first < header["wall_s"] <= first and header["runs"] == 1, (header, first)
    day_ago = time.time() - 86400
    for path in (tmp_path / "sweep").rglob("*"):
        os.utime(path, (day_ago, day_ago))
    second = sweep("1,2,3")
    header = embedded((tmp_path / "sweep" / "report.html").read_text())["header"]
    assert 0.6 * (first + second) < header["wall_s"] <= first + second and header["runs"] == 2, (header, first, second)
    rerun = sweep("1,2,3")  # makes nothing: it adds no run
    header = embedded((tmp_path / "sweep" / "report.html").read_text())["header"]
    assert header["wall_s"] <= first + second and header["runs"] == 2, (header, rerun)


def test_a_runs_own_images_are_not_listed_as_figures(tmp_path):
    """`sdlab report` on a run of 4 seeds listed each image of images/ under Figures, one by one."""
    from PIL import Image

    from sdlab.bench.report import figures

    (tmp_path / "images").mkdir()
    for seed in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"seed{seed}.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "guidance_grid.png")
    assert figures(tmp_path) == ["guidance_grid.png"]


def test_a_runs_report_gives_the_command_that_made_it(tmp_path):
    """A run of `seeds=[1,2]` was reported as made by `sdlab ... seed=1`: the command came from its first row, whose
    overrides are that image's own."""
    from cli_helpers import run_cli

    done = run_cli("seeds=[1,2]", "model=tiny", "num_inference_steps=1", "threads=1", "hydra.run.dir=r", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert run_cli("report", "r", cwd=tmp_path).returncode == 0
    header = embedded((tmp_path / "r" / "report.html").read_text())["header"]
    assert header["command"] == "sdlab 'seeds=[1,2]' model=tiny num_inference_steps=1 threads=1 hydra.run.dir=r"


def test_the_rows_table_leads_with_what_varies_then_scores_then_status():
    """The README's order (swept values, seed, scores and status first): costs came between the seed and the scores,
    and the status after every score column."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        root = fake_sweep(Path(folder) / "sweep")
        columns = report_data(pd.read_parquet(root / "results.parquet"), root)["columns"]
    assert columns[:7] == ["seed", "guidance_scale", "scheduler", "clip_score", "adherence_all", "status", "error"]
    assert columns.index("time_total_s") > columns.index("error") and columns.index("nfe") > columns.index("error")


def test_sdlab_report_rebuilds_a_sweeps_missing_table_from_its_jobs(tmp_path):
    """`sdlab report --help` says it rebuilds the table; a sweep whose results.* went was reported from its jobs' rows
    but left without them."""
    from sdlab.bench.report import rebuild

    root = fake_sweep(tmp_path / "sweep")
    made = pd.read_parquet(root / "results.parquet")
    for name in ("results.parquet", "results.csv"):
        (root / name).unlink()
    rebuild(root)
    rebuilt = pd.read_parquet(root / "results.parquet")
    assert sorted(rebuilt["run_id"]) == sorted(made["run_id"]) and (root / "results.csv").is_file()


def test_a_commands_time_is_counted_once_however_often_its_end_is_recorded(tmp_path):
    """Ctrl-C while a sweep was being collected recorded its command's seconds twice (`spent: [9.96, 9.965]`): the
    report's wall time read 19.9 s over 2 runs of one command that took 10."""
    import time

    from sdlab.bench.resume import SPENT, read_manifest, record_spent, write_manifest

    write_manifest(tmp_path, ["seed=1"], [["seed=1"]])
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.parquet").write_bytes(b"made by this command")
    began = time.time() - 10
    record_spent(tmp_path, began, began)  # the sweep's end
    record_spent(tmp_path, began, began)  # the interrupt's, in the same command
    record_spent(tmp_path, began + 1, began + 1)  # another command's
    assert [round(s) for s in read_manifest(tmp_path)[SPENT]] == [10, 9]


def test_the_headers_constants_are_the_values_that_ran_not_hydras_quoting(run_sdlab, tmp_path, one_thread):
    """`"prompt=it's red" negative_prompt=blurry` showed as prompt='it\\'s red', negative_prompt='blurry'."""
    sweep = tmp_path / "s"
    assert run_sdlab("-m", "seed=1,2", "prompt=it's red", "negative_prompt=blurry", "model=tiny",
                     "num_inference_steps=1", "threads=1", f"hydra.sweep.dir={sweep}") == 0
    constants = embedded((sweep / "report.html").read_text())["header"]["constants"]
    assert constants["prompt"] == "it's red" and constants["negative_prompt"] == "blurry", constants


def test_a_sweep_over_recipes_is_neither_ranked_nor_summarised_by_the_report(tmp_path):
    """Over recipes the report ranked `prompt` (each recipe's own), and `sdlab report` wrote a summary.csv averaging
    unrelated recipes: the sweep itself writes neither, as a summary across recipes means nothing."""
    from sdlab.bench.records import write_table
    from sdlab.bench.report import rebuild

    root = fake_sweep(tmp_path / "sweep", failed=None)
    frame = pd.read_parquet(root / "results.parquet")
    half = frame.index < len(frame) // 2
    frame.loc[half, "experiment"], frame.loc[~half, "experiment"] = "article_a3_schedule", "article_b7_guidance"
    frame.loc[half, "prompt"] = "a blue square"
    write_table(frame, root)
    data = report_data(frame, root)
    assert data["ranking"] == [] and data["ranking_lines"] == {} and data["grid"] is False
    rebuild(root)
    assert not (root / "summary.csv").exists() and not (root / "ranking.csv").exists()
    assert (root / "report.html").is_file()
