"""Limits a request cannot pass, rows that grow with one seed, damaged images redone, and faults in callbacks."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hydra.core.override_parser.types import FloatRange, Override
from PIL import Image


FAST = ("model=tiny", "num_inference_steps=1", "threads=1")
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # a PNG's last chunk, with its CRC: a file cut short has none


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("args,fragment", [
    (["batch_size=4000"], "batch_size=4000 is above limits.max_batch_size=64"),
    (["threads=100000"], "threads=100000 is above limits.max_threads=256"),
    (["-m", "seed=range(0,20)", "limits.max_cells=10"], "the sweep has 20 cells, more than limits.max_cells=10"),
    (["-m", "seed=1,2", "guidance_scale=1,2,3", "limits.max_cells=5"], "the sweep has 6 cells"),
    (["-m", "seed=range(0,1000000000000)", "guidance_scale=1,2"], "the sweep has 2000000000000 cells"),  # counted, not built
    (["-m", "seed=1,2", "hydra.sweeper.cells_per_task=0"], "hydra.sweeper.cells_per_task=0 must be a positive integer"),
    (["-m", "seed=1,2", "hydra.sweeper.cells_per_task=abc"],  # the sweeper's options are typed, said as sdlab says it
     "hydra.sweeper.cells_per_task='abc' is not an integer"),
    (["-m", "seed=1,2", "--cfg", "job"], "--multirun and --cfg cannot go together"),
    (["--info", "-m", "seed=1,2"], "--multirun and --info cannot go together"),
])
def test_a_request_over_a_limit_is_one_line_and_writes_nothing(run_sdlab, tmp_path, monkeypatch, capsys, args,
                                                             fragment):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab(*args, "model=tiny") == 2
    assert fragment in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sweep,cells", [
    ("seed=range(0,9223372036854775808)", 2**63),  # more than len() can count
    ("seed=range(0,1e9)", 10**9),  # a float range: Hydra steps it one Decimal at a time
    ("guidance_scale=range(0,1e7)", 10**7),
    ("guidance_scale=range(1e7,0,-0.5)", 2 * 10**7),
    ("seed=shuffle(range(0,1000000000000))", 10**12),
    ("guidance_scale=shuffle(range(0,1e9))", 10**9),
])
def test_a_huge_range_is_counted_from_its_arguments_before_it_is_expanded(run_sdlab, tmp_path, monkeypatch, capsys,
                                                                         sweep, cells):
    """The range is counted, not made (Hydra makes a float range one Decimal step at a time: 7 s for 2*10**7 values;
    an integer one would not fit in memory): of its values only the first cell's are made."""
    monkeypatch.chdir(tmp_path)
    made, step, sweep_values = [], FloatRange.__next__, Override.sweep_iterator

    def values(self, *args):
        for value in sweep_values(self, *args):
            made.append(value)
            yield value

    monkeypatch.setattr(FloatRange, "__next__", lambda self: made.append(step(self)) or made[-1])
    monkeypatch.setattr(Override, "sweep_iterator", values)
    assert run_sdlab("-m", sweep, "model=tiny") == 2
    assert len(made) <= 2, made[:10]
    assert one_error_line(capsys) == (f"sdlab: error: the sweep has {cells} cells, more than limits.max_cells=10000; "
                                      "raise it with limits.max_cells=N or sweep fewer values")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    ("seeds=[" + ",".join(map(str, range(10_001))) + "]",),
    ("-m", "seeds=[1,2],[" + ",".join(map(str, range(10_001))) + "]"),  # one list of a sweep of them
])
def test_a_seed_list_over_the_limit_is_counted_before_hydras_parser_reads_it(run_sdlab, tmp_path, monkeypatch,
                                                                             capsys, args):
    """Hydra's override parser takes time in the square of a list's length: a minute for 10,000 seeds."""
    from sdlab.app import arguments

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(arguments, "override_parser", lambda: pytest.fail("the list was parsed"))
    assert run_sdlab(*args) == 2
    assert one_error_line(capsys) == ("sdlab: error: 10001 seeds are more than limits.max_seeds=10000 in one job; "
                                      "raise it with limits.max_seeds=N on a machine that can take it")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sweep,cells", [
    ("guidance_scale=range(0,0.4,0.1)", 5),  # Hydra's Decimal steps reach 0.4 a hair below the stop: 5 values
    ("guidance_scale=range(0,0.3,0.1)", 3),
    ("guidance_scale=range(2,1,-0.25)", 4),
    ("seed=range(10,0,-3)", 4),
])
def test_a_small_range_counts_the_values_hydra_gives_it(run_sdlab, tmp_path, monkeypatch, capsys, sweep, cells):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", sweep, "limits.max_cells=2", "model=tiny") == 2
    assert f"the sweep has {cells} cells, more than limits.max_cells=2" in one_error_line(capsys)


def test_limits_can_be_raised(run_sdlab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seed=1,2,3", "limits.max_cells=3", "hydra.sweep.dir=s", *FAST) == 0
    assert run_sdlab("'seeds=[1,2]'".strip("'"), "batch_size=80", "limits.max_batch_size=80", "hydra.run.dir=r",
                     *FAST) == 0


def test_each_row_png_and_log_line_carries_its_own_seed_not_the_list(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    seeds = list(range(100, 140))
    assert run_sdlab(f"seeds={seeds}".replace(" ", ""), "batch_size=8", "hydra.run.dir=r", *FAST) == 0
    out = capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "r" / "results.csv")
    assert [json.loads(o) for o in rows["overrides"]][:2] == [
        {"batch_size": "8", "model": "tiny", "num_inference_steps": "1", "threads": "1", "seed": "100"},
        {"batch_size": "8", "model": "tiny", "num_inference_steps": "1", "threads": "1", "seed": "101"}]
    assert "139]" not in out and "seeds=" not in out  # no log line repeats the list
    with Image.open(tmp_path / "r" / rows["image_path"][0]) as image:
        record = json.loads(image.text["sdlab"])
    assert "seeds" not in record.get("overrides", "") and len(image.text["sdlab"]) < 4000


def test_a_truncated_png_is_made_again_on_resume(run_sdlab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ("seeds=[1,2]", "hydra.run.dir=r", *FAST)
    assert run_sdlab(*args) == 0
    rows = pd.read_csv(tmp_path / "r" / "results.csv")
    first = tmp_path / "r" / rows["image_path"][0]
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])  # as a copy or a disk cut short would leave it
    assert run_sdlab(*args) == 0
    assert first.read_bytes().endswith(PNG_END)
    with Image.open(first) as image:
        image.load()
    again = pd.read_csv(tmp_path / "r" / "results.csv")
    assert sorted(again["seed"]) == [1, 2] and (again["status"] == "ok").all()


def test_a_truncated_png_made_again_in_another_job_dir_is_set_aside_where_it_was(run_sdlab, tmp_path, monkeypatch):
    """Extending a sweep renumbers its jobs: a cell whose PNG is cut short is made again by the job that now holds it,
    and the job dir that held it keeps the damaged file as `.damaged`, out of the PNGs its table lists."""
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seed=1,2", "hydra.sweep.dir=s", *FAST) == 0
    [held] = (tmp_path / "s").glob("*/images/seed1-*.png")
    data = held.read_bytes()[:300]
    held.write_bytes(data)
    assert run_sdlab("-m", "seed=0,1,2", "hydra.sweep.dir=s", *FAST) == 0
    for job in sorted(p for p in (tmp_path / "s").iterdir() if (p / "results.parquet").is_file()):
        table = pd.read_parquet(job / "results.parquet")
        assert sorted(p.relative_to(job).as_posix() for p in job.glob("images/*.png")) == sorted(table["image_path"])
    assert held.with_name(held.name + ".damaged").read_bytes() == data
    assert sorted(pd.read_csv(tmp_path / "s" / "results.csv")["seed"]) == [0, 1, 2]


def test_a_row_naming_a_file_sdlab_did_not_name_never_sets_that_file_aside(run_sdlab, tmp_path, monkeypatch):
    """A table from elsewhere may name any file of the folder: only a PNG named as sdlab names a row's image (by its
    seed and hash, under images/) is set aside when cut short; the user's own file stays as it is."""
    monkeypatch.chdir(tmp_path)
    args = ("hydra.run.dir=r", *FAST)
    assert run_sdlab(*args) == 0
    mine = tmp_path / "r" / "holiday.png"
    mine.write_bytes(PNG_END[:4] + b"cut short")
    table = pd.read_parquet(tmp_path / "r" / "results.parquet")
    forged = table.iloc[[0]].assign(image_path="holiday.png", status="error", config_hash="x")
    pd.concat([table, forged], ignore_index=True).to_parquet(tmp_path / "r" / "results.parquet")
    assert run_sdlab("seed=1", *args) == 0
    assert mine.read_bytes() == PNG_END[:4] + b"cut short" and not mine.with_name("holiday.png.damaged").exists()


def test_a_fault_in_a_callback_stops_the_run_with_one_line(run_sdlab, tmp_path, monkeypatch, capsys):
    """Hydra turns a callback's exception into a warning and goes on; sdlab stops, exit 1, one line naming it."""
    from sdlab.bench import ownership

    def broken(*_args, **_kwargs):
        raise RuntimeError("the disk went away")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ownership, "claim", broken)
    assert run_sdlab("hydra.run.dir=r", *FAST) == 1
    line = one_error_line(capsys)
    assert line.startswith("sdlab: error: CollectSweep.on_run_start: RuntimeError: the disk went away")
    assert not (tmp_path / "r" / "results.csv").exists()
