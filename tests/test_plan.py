"""`plan=true`: a sweep's plan (cells, done, batches, NFE, estimate, output) printed before any work, writing nothing;
and the progress line of a sweep that runs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest

from sdlab.app.callbacks import Progress
from sdlab.bench.plan import Cell, estimate, record_cost, step_costs, usable
from sdlab.bench.resume import MANIFEST, mark_finished

FAST = ("model=tiny", "num_inference_steps=2", "threads=1")


def files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_plan_says_cells_batches_nfe_and_where_it_goes_and_writes_nothing(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seed=1,2,3", "guidance_scale=1,7.5", "scheduler=ddim,heun", "batch_size=2", "plan=true",
                     *FAST) == 0
    out = capsys.readouterr().out
    assert "sdlab plan: 12 cells, 0 already done, 12 to run (12 images)" in out
    # the launcher shares a call between cells with guidance and between cells without: 3 images a group, 2 calls each
    assert "batches: 8 (cells sharing model, scheduler, steps, size and guidance group: 4 groups; batch_size=2)" in out
    assert run_sdlab("-m", "seed=1,2,3", "guidance_scale=3,7.5", "scheduler=ddim,heun", "plan=true", *FAST) == 0
    assert "batches: 2 (cells sharing model, scheduler, steps, size and guidance group: 2 groups;" in capsys.readouterr().out
    assert "total NFE: 30 " in out  # ddim 2 calls an image, heun 3 (second-order steps but the last), as run
    assert ("estimate: unknown (no sweep in or beside this folder measured tiny@64x64 on this machine), peak memory "
            "unknown") in out
    assert re.search(r"output: outputs/generate/multirun_\S+ \(new\)", out)
    assert run_sdlab("plan=true", "hydra.run.dir=r", *FAST) == 0  # a single run is a plan of one cell
    assert "sdlab plan: 1 cell, 0 already done, 1 to run (1 image)" in capsys.readouterr().out
    assert files(tmp_path) == []


def test_a_plan_of_analyses_counts_the_images_their_jobs_say_they_make_and_names_a_job_that_cannot_say(
        run_sdlab, tmp_path, monkeypatch, capsys):
    """Each job says where it is registered what a run of its recipe denoises: a sweep of grids is not 0 images, NFE 0."""
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "experiment=article_b7_guidance,article_b8_schedulers,article_b5_cfg_toy", "plan=true") == 0
    out = capsys.readouterr().out
    # B7: 6 seeds x 7 scales at 25 dpmpp_2m steps; B8: 6 seeds x 3 samplers at 4 steps and their 100-step solves with
    # the reference's (heun: 199 calls); B5: toy math, no model
    assert "3 to run (84 images, 3 analyses)" in out and f"total NFE: {42 * 25 + 18 * 4 + 6 * (3 * 100 + 199)} (" in out
    assert run_sdlab("-m", "experiment=train_mini,article_b5_cfg_toy", "plan=true") == 0
    out = capsys.readouterr().out
    assert "(0 images, 2 analyses; not counted: the images of job train_mini)" in out
    assert "total NFE: 0 + unknown for job train_mini (" in out and "estimate: unknown" in out
    assert files(tmp_path) == []


def test_the_plan_counts_the_calls_the_sweep_then_makes(run_sdlab, tmp_path, capsys):
    sweep = ("-m", "seed=1,2", "prompt='a red circle','a blue square'", "guidance_scale=1,7.5,12", "batch_size=8", *FAST,
             f"hydra.sweep.dir={tmp_path / 's'}")
    assert run_sdlab(*sweep, "plan=true") == 0
    planned = int(re.search(r"batches: (\d+) ", capsys.readouterr().out).group(1))
    assert run_sdlab(*sweep) == 0
    rows = pd.read_parquet(tmp_path / "s" / "results.parquet")
    assert (rows["status"] == "ok").all() and len(rows) == 12
    made = (1 / rows["batch_size"]).sum()  # each row is its call's 1/batch_size
    assert planned == round(made) == 2  # g=1 without CFG, 7.5 and 12 with it


def test_a_plan_after_a_partial_sweep_counts_what_is_done_and_estimates_from_it(run_sdlab, tmp_path, capsys):
    sweep = ("-m", "guidance_scale=1,7.5", f"hydra.sweep.dir={tmp_path / 's'}", *FAST)
    assert run_sdlab(*sweep, "seed=1") == 0
    out = capsys.readouterr().out
    assert re.search(r"sdlab: 1 of 2 cells done \(0\), \d+\.\d\d images/s, about \d+ s left", out)
    assert re.search(r"sdlab: 2 of 2 cells done \(1\), \d+\.\d\d images/s, nothing left", out)
    cost = json.loads((tmp_path / "s" / "sweep.json").read_text())["cost"]["sizes"]["tiny@64x64"]
    assert cost["sample_step_s"] > 0 and cost["step_s"] >= 0 and cost["peak_mem_bytes"] > 0
    before = files(tmp_path)
    assert run_sdlab(*sweep, "seed=1,2", "plan=true") == 0
    out = capsys.readouterr().out
    assert "sdlab plan: 4 cells, 2 already done, 2 to run (2 images)" in out and "total NFE: 4 " in out
    assert re.search(r"estimate: \d+ s, peak memory \d+\.\d\d GiB", out) and f"output: {tmp_path / 's'} (exists)" in out
    assert files(tmp_path) == before
    assert run_sdlab(*sweep, "seed=1,2") == 0  # the plan's done cells are the ones the sweep takes over
    out = capsys.readouterr().out
    assert f"sdlab: 4 jobs, 4 images -> {tmp_path / 's'}; 2 finished before: not run again" in out
    # the progress line counts them done from the start: seeds vary slowest, so jobs 2 and 3 are seed 2's
    assert re.search(r"sdlab: 3 of 4 cells done \(2\), \d+\.\d\d images/s, about \d+ s left", out)
    assert re.search(r"sdlab: 4 of 4 cells done \(3\), \d+\.\d\d images/s, nothing left", out)


def test_a_plan_counts_no_cell_done_whose_image_is_gone_or_cut_short(run_sdlab, tmp_path, capsys):
    """With one image deleted and one cut short, the plan said `3 already done, 0 to run` and the sweep made two."""
    sweep = ("-m", "seed=1,2,3", f"hydra.sweep.dir={tmp_path / 's'}", *FAST)
    assert run_sdlab(*sweep) == 0
    gone, cut = (next((tmp_path / "s" / job / "images").glob("*.png")) for job in ("0", "1"))
    gone.unlink()
    cut.write_bytes(cut.read_bytes()[:300])
    capsys.readouterr()
    assert run_sdlab(*sweep, "plan=true") == 0
    assert "sdlab plan: 3 cells, 1 already done, 2 to run (2 images)" in capsys.readouterr().out
    assert run_sdlab(*sweep) == 0
    assert "3 jobs, 3 images" in (out := capsys.readouterr().out) and "1 finished before: not run again" in out, out


def test_a_rerun_that_makes_nothing_keeps_what_the_sweep_measured_for_later_plans(run_sdlab, tmp_path, capsys):
    sweep = ("-m", "seed=1,2", f"hydra.sweep.dir={tmp_path / 's'}", *FAST)
    assert run_sdlab(*sweep) == 0
    measured = json.loads((tmp_path / "s" / "sweep.json").read_text())["cost"]
    assert run_sdlab(*sweep) == 0  # every cell finished before: nothing made, nothing measured
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["cost"] == measured
    capsys.readouterr()
    assert run_sdlab("-m", "seed=3,4", f"hydra.sweep.dir={tmp_path / 'next'}", *FAST, "plan=true") == 0
    assert re.search(r"estimate: \d+ s, peak memory \d+\.\d\d GiB", capsys.readouterr().out)


def test_plan_takes_true_or_false(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for args in (("-m", "seed=1,2"), ()):
        assert run_sdlab(*args, "plan=maybe", *FAST) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert err == ["sdlab: error: plan='maybe' must be true or false"]
    assert files(tmp_path) == []


@pytest.mark.parametrize("args, line", [
    (["hydra.sweep.subdir=same"], "hydra.sweep.subdir=same gives jobs 0 and 1 the same folder"),
    (["hydra.sweep.subdir=${seed}", "guidance_scale=1,2"], "hydra.sweep.subdir=${seed} gives jobs 0 and 1 the same"),
    (["hydra.output_subdir=../../out"], "hydra.output_subdir=../../out leads to"),
])
def test_a_plan_refuses_the_folders_the_sweep_refuses(run_sdlab, tmp_path, monkeypatch, capsys, args, line):
    """`plan=true` said 'drop plan=true to run it' of folders the sweep then refused with exit 2."""
    monkeypatch.chdir(tmp_path)
    for plan in ("plan=false", "plan=true"):
        assert run_sdlab("-m", "seed=1,2", "hydra.sweep.dir=sw", *args, plan, *FAST) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and line in err[0], (plan, err)
    assert files(tmp_path) == []


def test_a_plan_over_max_cells_is_the_limits_line(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seed=range(0,30)", "guidance_scale=1,2", "limits.max_cells=50", "plan=true", *FAST) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["sdlab: error: the sweep has 60 cells, more than limits.max_cells=50; raise it with "
                   "limits.max_cells=N or sweep fewer values"]
    assert files(tmp_path) == []


def test_a_plan_reads_each_swept_value_from_the_command_lines_parse_not_parsing_every_cell_again(
        run_sdlab, tmp_path, monkeypatch, capsys):
    """Hydra's override parser takes about 0.25 ms an item: a 10,000-seed plan parsing every cell's `seed=N` again spent
    2.5 s there. Cells of a swept value take it from the sweep as the command line parsed it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    monkeypatch.chdir(tmp_path)
    parsed = []
    parse = OverridesParser.parse_override
    monkeypatch.setattr(OverridesParser, "parse_override", lambda self, line: parsed.append(line) or parse(self, line))
    assert run_sdlab("-m", "seed=range(0,400)", "guidance_scale=1,7.5", "plan=true", *FAST) == 0
    assert "sdlab plan: 800 cells, 0 already done, 800 to run (800 images)" in capsys.readouterr().out
    seeds = [line for line in parsed if line.startswith("seed=")]
    assert len(seeds) < 10, seeds[:20]
    assert files(tmp_path) == []


def test_the_cost_record_keeps_the_per_cell_overhead_of_cells_whose_images_were_made_ahead(tmp_path):
    """Cells that shared a call take their images ready-made: each job's time is all overhead, though its share of
    the call (gen_s) is larger than the time between two jobs' ends. A 10,000-cell plan pays that overhead per cell."""
    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / MANIFEST).write_text(json.dumps({"key": "k", "cells": 8}))
    began = 1_000_000.0
    ends = [began + 5 + 1.6 + 0.06 * i for i in range(8)]  # 5 s start-up, one call of 1.6 s, then 60 ms a job
    for i, end in enumerate(ends):
        job = sweep / str(i)
        job.mkdir()
        mark_finished(job, f"h{i}", {"rows": 1, "gen_s": 0.2})  # a share of 1/8 of the call
        os.utime(job / "job.json", (end, end))
    frame = pd.DataFrame({"status": "ok", "nfe": 20, "model": "tiny", "width": 64, "height": 64, "batch_size": 8,
                          "guidance_scale": 7.5, "time_total_s": [0.2] * 8, "peak_mem_bytes": 1})
    with mock.patch("time.time", return_value=ends[-1] + 1):
        record_cost(sweep, frame, began, began)
    cost = json.loads((sweep / MANIFEST).read_text())["cost"]["sizes"]["tiny@64x64"]
    assert cost["overhead_s"] == pytest.approx(0.06, abs=0.005)
    assert cost["fixed_s"] == pytest.approx(5 + 1.6 + 0.06 * 7 + 1 - 8 * (0.06 + 0.2), abs=0.05)
    assert cost["step_s"] == 0 and cost["sample_step_s"] == pytest.approx(0.2 * 8 / 20 / 16)  # one call size: per sample


def two_finished_jobs(tmp_path):
    """A 2-cell sweep dir whose jobs finished 2 and 3 s after a start at 1e6 s, each having spent 0.2 s on images."""
    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / MANIFEST).write_text(json.dumps({"key": "k", "cells": 2}))
    for i in range(2):
        job = sweep / str(i)
        job.mkdir()
        mark_finished(job, f"h{i}", {"rows": 1, "gen_s": 0.2})
        os.utime(job / "job.json", (1_000_002.0 + i, 1_000_002.0 + i))
    return sweep


def test_the_cost_record_of_a_sweep_of_recipes_reads_only_rows_of_timed_calls(tmp_path):
    """A sweep over recipes (the article sweep) mixes generate rows with rows that count denoiser steps but time no
    call of their own (a trajectory's steps, a distance study's summary rows): the record reads the timed ones."""
    sweep, began = two_finished_jobs(tmp_path), 1_000_000.0
    timed = pd.DataFrame({"status": "ok", "nfe": 20, "model": "tiny", "width": 64, "height": 64, "batch_size": 4,
                          "guidance_scale": 7.5, "time_total_s": [0.2] * 4, "peak_mem_bytes": 1})
    untimed = pd.DataFrame({"status": "ok", "nfe": [25.0] * 3, "model": "tiny", "guidance_scale": 7.5, "width": 64,
                            "height": 64})
    summary = pd.DataFrame({"status": "ok", "nfe": [8.0], "model": "tiny"})  # no size of its own
    with mock.patch("time.time", return_value=began + 4):
        record_cost(sweep, pd.concat([timed, untimed, summary], ignore_index=True), began, began)
    sizes = json.loads((sweep / MANIFEST).read_text())["cost"]["sizes"]
    assert list(sizes) == ["tiny@64x64"] and sizes["tiny@64x64"]["sample_step_s"] == pytest.approx(0.2 * 4 / 20 / 8)


def test_rows_without_a_measured_peak_still_price_later_plans_with_the_memory_unknown(tmp_path):
    """Where a device cannot tell one call's peak memory from an earlier call's, rows carry none: the record keeps the
    times (a plan still estimates the wall) and says nothing of memory, and the plan says the peak is unknown."""
    sweep, began = two_finished_jobs(tmp_path), 1_000_000.0
    frame = pd.DataFrame({"status": "ok", "nfe": 20, "model": "tiny", "width": 64, "height": 64, "batch_size": 1,
                          "guidance_scale": 7.5, "time_total_s": [0.2] * 2, "peak_mem_bytes": [None] * 2})
    with mock.patch("time.time", return_value=began + 4):
        record_cost(sweep, frame, began, began)
    cost = json.loads((sweep / MANIFEST).read_text())["cost"]["sizes"]["tiny@64x64"]
    assert cost["peak_mem_bytes"] is None and cost["sample_step_s"] > 0 and usable(cost)
    seconds, memory = estimate([Cell("h", ("call",), "tiny@64x64", 1, 1, 20, guided=True)], {"tiny@64x64": cost})
    assert seconds.endswith(" s") and not seconds.startswith("unknown") and memory == "unknown"
    assert not usable({**cost, "peak_mem_bytes": -1}) and not usable({**cost, "step_s": None})


def test_a_step_costs_a_fixed_part_and_a_part_per_sample_so_larger_calls_are_estimated_cheaper_per_image():
    """A sweep's calls of 4 images without guidance (4 samples a step) and with it (8) give the two parts of a step's
    time; a plan of calls of 32 images is then estimated from them, not from the cost per image of calls of 4."""
    fixed, per_sample = 0.012, 0.003
    step_s, sample_step_s = step_costs([(4, fixed + 4 * per_sample)] * 4 + [(8, fixed + 8 * per_sample)] * 4)
    assert (step_s, sample_step_s) == (pytest.approx(fixed), pytest.approx(per_sample))
    assert step_costs([(4, 0.04), (8, 0.03)]) == (0.0, pytest.approx((0.01 + 0.00375) / 2))  # a falling fit: per sample
    cells = [Cell(f"h{i}", ("call", i < 32), "mini@64x64", 1, 32, 25, guided=i < 32) for i in range(64)]
    cost = {"mini@64x64": {"step_s": fixed, "sample_step_s": per_sample, "overhead_s": 0.05, "fixed_s": 8.0,
                           "peak_mem_bytes": 2**30}}
    calls = 25 * (fixed + 64 * per_sample) + 25 * (fixed + 32 * per_sample)  # one guided call of 32, one plain
    seconds, memory = estimate(cells, cost)
    assert seconds == f"{8.0 + 64 * 0.05 + calls:.0f} s" and memory.startswith("at least 1.00 GiB")


def test_a_sweep_over_a_generate_and_a_trajectory_recipe_ends_well_and_records_its_cost(run_sdlab, tmp_path, monkeypatch,
                                                                                       capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "experiment=generate,trajectory", "hydra.sweep.dir=s", *FAST) == 0
    assert "error" not in capsys.readouterr().err
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert manifest["complete"] and list(manifest["cost"]["sizes"]) == ["tiny@64x64"]


def test_the_progress_line_of_a_rerun_that_finds_every_cell_done_says_nothing_is_left(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"key": "k", "cells": 2}))
    progress = Progress(tmp_path, started=0.0)
    lines = [progress.line(tmp_path / str(i)) for i in range(2)]  # taken over: no images made, no time counted
    assert lines[0].endswith("time left unknown") and lines[1].endswith("0.00 images/s, nothing left"), lines


def test_a_plan_prices_a_size_by_the_median_of_this_hosts_newest_records_not_the_newest_alone(tmp_path):
    """One sweep run while the machine was busy (its steps 10x slower) priced every later plan 10x over: the plan
    takes the median of the newest records of a size, so one outlier moves it no more than the others allow."""
    import socket

    from sdlab.bench.plan import measured_costs

    base = {"step_s": 0.01, "sample_step_s": 0.002, "overhead_s": 0.02, "fixed_s": 5.0, "peak_mem_bytes": 2**30}
    for n, slow in enumerate((1, 1.2, 0.9, 10)):  # the newest, written last, is the busy machine's
        sweep = tmp_path / f"sweep{n}"
        sweep.mkdir()
        entry = {**base, "step_s": base["step_s"] * slow, "sample_step_s": base["sample_step_s"] * slow}
        cost = {"host": socket.gethostname(), "sizes": {"mini@64x64": entry}}
        (sweep / MANIFEST).write_text(json.dumps({"key": f"k{n}", "cost": cost}))
        os.utime(sweep / MANIFEST, (1_000_000 + n, 1_000_000 + n))
    cost = measured_costs(tmp_path / "new")["mini@64x64"]
    assert cost["step_s"] == pytest.approx(0.011) and cost["sample_step_s"] == pytest.approx(0.0022)
    assert cost["fixed_s"] == 5.0 and cost["peak_mem_bytes"] == 2**30 and usable(cost)


def test_the_progress_line_counts_the_images_shared_calls_made_for_the_jobs_still_to_come(tmp_path):
    """A 64-cell sweep of two shared calls said `2 of 64 cells done, 0.63 images/s, about 99 s left` once both calls
    were over and a second of writing was left: it counted only the cells whose jobs had ended, from a clock started
    after the first call. A job's mark names its call (images, seconds, its rows), so jobs a launcher runs in other
    processes count alike."""
    (tmp_path / MANIFEST).write_text(json.dumps({"key": "k", "cells": 64}))

    def job_ends(number: int, call: str) -> Path:  # its one image from a 2 s call of 32
        mark_finished(tmp_path / f"{number:02d}", "h", {"rows": 1, "gen_s": 2.0 / 32, "calls": {call: [32, 2.0, 1]}})
        return tmp_path / f"{number:02d}"

    progress = Progress(tmp_path, started=100.0)  # the first job starts once the first call is over
    assert progress.line(job_ends(0, "a"), ended=100.0).endswith("16.00 images/s, about 2 s left")
    assert progress.started == 98.0
    assert progress.line(job_ends(1, "b"), ended=102.0).endswith("16.00 images/s, about 0 s left")
    assert progress.started == 98.0  # the second call ran on the clock
    for n in range(2, 64):
        line = progress.line(job_ends(n, "a" if n < 33 else "b"), ended=102.5)
    assert line == "sdlab: 64 of 64 cells done (63), 14.22 images/s, nothing left"


def test_time_left_weighs_each_cell_by_its_work_not_its_count(tmp_path):
    """A sweep at guidance 1 and 7.5 makes its unguided cells first, in calls that cost half a guided one: once they
    were done, half the cells in half the time said `about 2 s left` of 6. Each cell weighs its denoiser's latents
    (the manifest's `work`: NFE, twice under guidance), so the unguided half of the work says 4 s are left."""
    (tmp_path / MANIFEST).write_text(json.dumps({"key": "k", "cells": 4, "hashes": ["u1", "u2", "g1", "g2"],
                                                 "work": [25, 25, 50, 50]}))
    progress = Progress(tmp_path, started=0.0)
    for n, job_hash in enumerate(("u1", "u2")):  # one 2 s call of both unguided cells
        mark_finished(tmp_path / str(n), job_hash, {"rows": 1, "gen_s": 1.0, "calls": {"a": [2, 2.0, 1]}})
        line = progress.line(tmp_path / str(n), ended=2.0)
    assert line.endswith("1.00 images/s, about 4 s left"), line
    mark_finished(tmp_path / "2", "g1", {"rows": 1, "gen_s": 2.0, "calls": {"b": [2, 4.0, 1]}})
    assert progress.line(tmp_path / "2", ended=6.0).endswith("0.67 images/s, about 0 s left")  # g2 made with g1


def test_a_marks_calls_that_are_not_numbers_count_as_none(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"key": "k", "cells": 2}))
    mark_finished(tmp_path / "0", "h", {"rows": 1, "gen_s": 0.5, "calls": {"a": ["x", None], "b": "y", "c": [1e400]}})
    assert Progress(tmp_path, started=0.0).line(tmp_path / "0", ended=1.0).endswith("1.00 images/s, about 1 s left")


def test_a_jobs_calls_come_from_its_rows_that_name_one(tmp_path):
    from sdlab.bench.resume import calls_made

    frame = pd.DataFrame({"call_id": ["a", "a", None, "b", "c"], "batch_size": [4, 4, 4, None, 2],
                          "time_total_s": [0.5, 0.5, 0.5, 1.0, float("nan")]})
    assert calls_made(frame) == {"a": [4, 2.0, 2]}
    assert calls_made(frame.drop(columns="batch_size")) == {}  # a study's rows time their calls without a batch size



def test_a_plan_with_resume_false_counts_no_cell_done(run_sdlab, tmp_path, capsys):
    """resume=false makes every cell again: a plan that counted the finished ones done said `0 to run, 0 s`."""
    sweep = ("-m", "seed=1,2", f"hydra.sweep.dir={tmp_path / 's'}", *FAST)
    assert run_sdlab(*sweep) == 0
    capsys.readouterr()
    assert run_sdlab(*sweep, "plan=true") == 0
    assert "sdlab plan: 2 cells, 2 already done, 0 to run" in capsys.readouterr().out
    assert run_sdlab(*sweep, "resume=false", "plan=true") == 0
    out = capsys.readouterr().out
    assert "sdlab plan: 2 cells, 0 already done, 2 to run (2 images)" in out
    assert "peak memory -" not in out  # not the empty plan's



@pytest.mark.parametrize("models,schedulers,cannot", [
    ("tiny,sd3_tiny", "euler,lms", "model=sd3_tiny scheduler=lms"),
    # Flux shifts its sigmas by the image size; FlowMatchHeun cannot: the plan counted that cell, the sweep skipped it
    ("tiny,flux_tiny", "euler,heun", "model=flux_tiny scheduler=heun")])
def test_a_plan_skips_the_cells_their_model_cannot_run_as_the_sweep_does(run_sdlab, tmp_path, capsys, models,
                                                                         schedulers, cannot):
    sweep = ("-m", f"model={models}", f"scheduler={schedulers}", "num_inference_steps=2", "threads=1",
             f"hydra.sweep.dir={tmp_path / 's'}")
    assert run_sdlab(*sweep, "plan=true") == 0
    planned = capsys.readouterr().out
    assert run_sdlab(*sweep) == 0
    ran = capsys.readouterr()
    skipped = re.search(r"sdlab: skipping \d+ of 4 cells their model cannot run: .*", ran.out + ran.err).group(0)
    assert f"skipping 1 of 4 cells their model cannot run: {cannot} (" in skipped
    assert skipped in planned
    made = len(pd.read_parquet(tmp_path / "s" / "results.parquet"))
    assert f"sdlab plan: {made} cells, 0 already done, {made} to run ({made} images)" in planned
    assert run_sdlab(*sweep, "plan=true") == 0
    assert f"sdlab plan: {made} cells, {made} already done, 0 to run" in capsys.readouterr().out



def planned_calls_of(out: str) -> int:
    return int(re.search(r"batches: (\d+) ", out).group(1))



@pytest.mark.parametrize("args", [("seed=1,2,3", "guidance_scale=3,7.5", "batch_size=4", "hydra.launcher.ahead=false"),
                                  ("seeds=[1,2,3]", "guidance_scale=3,5,7.5", "batch_size=5")])
def test_the_plan_packs_cells_into_calls_as_the_launcher_does(run_sdlab, tmp_path, capsys, args):
    """Without working ahead every job makes its own calls; working ahead, a call takes whole cells only."""
    sweep = ("-m", *args, *FAST, f"hydra.sweep.dir={tmp_path / 's'}")
    assert run_sdlab(*sweep, "plan=true") == 0
    planned = planned_calls_of(capsys.readouterr().out)
    assert run_sdlab(*sweep) == 0
    rows = pd.read_parquet(tmp_path / "s" / "results.parquet")
    assert (rows["status"] == "ok").all()
    assert planned == rows["call_id"].nunique()



def test_the_estimate_prices_the_calls_it_is_given():
    cells = [Cell(f"h{i}", ("call",), "mini@64x64", 3, 5, 3 * 25, guided=True) for i in range(3)]
    cost = {"mini@64x64": {"step_s": 0.1, "sample_step_s": 0.02, "overhead_s": 0.05, "fixed_s": 8.0,
                           "peak_mem_bytes": 2**30}}
    whole = estimate(cells, cost, [(c, 3) for c in cells])[0]  # a call takes whole cells: 3 calls of 3
    assert whole == f"{8.0 + 3 * 0.05 + 3 * 25 * (0.1 + 6 * 0.02):.0f} s"
    assert estimate(cells, cost, [(cells[0], 5), (cells[0], 4)])[0] != whole



def test_a_plan_counts_done_the_images_a_job_with_more_seeds_finds_made(run_sdlab, tmp_path, capsys):
    run = (f"hydra.run.dir={tmp_path / 'r'}", *FAST)
    assert run_sdlab("seeds=[1,2,3]", *run) == 0
    capsys.readouterr()
    assert run_sdlab("seeds=[1,2,3,4]", *run, "plan=true") == 0
    out = capsys.readouterr().out
    assert run_sdlab("seeds=[1,2,3,4]", *run) == 0
    rows = pd.read_parquet(tmp_path / "r" / "results.parquet")
    made = rows[rows["seed"] == 4]
    assert len(rows) == 4 and len(made) == 1
    assert f"1 to run ({len(made)} image)" in out and f"total NFE: {int(made['nfe'].sum())} " in out



def test_the_peak_memory_scales_with_the_calls_samples_from_the_record(tmp_path):
    """A record at batch 1 priced a plan of calls of 16 guided images at batch 1's peak: memory grows with a call."""
    sweep, began = two_finished_jobs(tmp_path), 1_000_000.0
    fixed, per_sample = 300 * 2**20, 20 * 2**20
    sizes = [1, 1, 4, 4]  # guided: 2 and 8 samples a call
    frame = pd.DataFrame({"status": "ok", "nfe": 20, "model": "tiny", "width": 64, "height": 64, "batch_size": sizes,
                          "guidance_scale": 7.5, "time_total_s": 0.2,
                          "peak_mem_bytes": [fixed + 2 * b * per_sample for b in sizes]})
    with mock.patch("time.time", return_value=began + 4):
        record_cost(sweep, frame, began, began)
    cost = json.loads((sweep / MANIFEST).read_text())["cost"]["sizes"]["tiny@64x64"]
    cells = [Cell(f"h{i}", ("call",), "tiny@64x64", 1, 16, 20, guided=True) for i in range(16)]
    memory = estimate(cells, {"tiny@64x64": cost})[1]
    assert memory.startswith(f"{(fixed + 32 * per_sample) / 2**30:.2f} GiB")
    one_size = {**cost, **{k: None for k in cost if k.startswith("peak_") and k != "peak_mem_bytes"}}
    assert estimate(cells, {"tiny@64x64": one_size})[1].startswith(f"at least {(fixed + 8 * per_sample) / 2**30:.2f}")
    assert estimate(cells[:1], {"tiny@64x64": cost})[1].startswith(f"{(fixed + 2 * per_sample) / 2**30:.2f} GiB")


@pytest.mark.parametrize("swept", ["plan=false,true", "plan=true,false"])
def test_plan_is_one_value_for_the_whole_command(run_sdlab, tmp_path, capsys, swept):
    """plan=true plans the sweep and false runs it: swept, it ran jobs labelled plan=True, or planned a sweep of plans."""
    assert run_sdlab("-m", "seed=1,2", swept, "model=tiny", "threads=1", f"hydra.sweep.dir={tmp_path / 's'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sdlab: error: {swept} sweeps plan, which takes one value: true plans the sweep, false runs it"]
    assert not (tmp_path / "s").exists()


def test_time_left_leaves_out_the_start_up_before_the_first_image(tmp_path):
    """A 3-cell sweep of local tasks said `1 of 3 cells done, about 34 s left` and ended 2 s later: the workers' start
    and model load (10 s here) were priced as if every cell paid them. The first cell is priced by its calls' own time,
    the next ones by the pace since the first ended."""
    (tmp_path / MANIFEST).write_text(json.dumps({"key": "k", "cells": 8}))
    progress = Progress(tmp_path, started=0.0)
    for n, ended in enumerate((10.0, 10.5)):  # each cell one image of a 0.2 s call, and 0.3 s of writing after the first
        mark_finished(tmp_path / str(n), "h", {"rows": 1, "gen_s": 0.2, "calls": {str(n): [1, 0.2, 1]}})
        line = progress.line(tmp_path / str(n), ended=ended)
        assert line.endswith(("about 1 s left", "about 3 s left")[n]), line


@pytest.mark.parametrize("first,then,made", [((), ("scheduler.timestep_spacing=trailing",), 2),
                                             (("scheduler.timestep_spacing=trailing",), (), 2),
                                             ((), ("scheduler.timestep_spacing=leading",), 1)])
def test_a_plan_counts_images_of_other_scheduler_options_as_still_to_make(run_sdlab, tmp_path, capsys, first, then,
                                                                             made):
    sweep = (f"hydra.sweep.dir={tmp_path / 's'}", "-m", "seed=1", "scheduler=ddim,euler", *FAST)
    assert run_sdlab(*sweep, *first) == 0
    capsys.readouterr()
    assert run_sdlab(*sweep, *then, "plan=true") == 0
    out = capsys.readouterr().out
    before = len(pd.read_parquet(tmp_path / "s" / "results.parquet"))
    assert run_sdlab(*sweep, *then) == 0
    assert len(pd.read_parquet(tmp_path / "s" / "results.parquet")) - before == made  # leading is ddim's own on tiny
    assert f"2 to run ({made} image" in out and f"total NFE: {2 * made} " in out, out
