"""A used run or sweep dir keeps every finished cell, adds the new ones, and its table describes exactly its images."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from sdlab.bench.records import finished, read_csv, read_png_metadata, read_table

FAST = ("model=tiny", "num_inference_steps=2", "threads=1")


def pngs(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("images/*.png")}


def assert_table_is_the_images(folder: Path) -> pd.DataFrame:
    """The table's ok rows are exactly the PNGs on disk, each PNG holding its row's seed and prompt."""
    frame = pd.read_parquet(folder / "results.parquet")
    ok = frame[frame["status"] == "ok"]
    assert sorted(ok["image_path"]) == sorted(pngs(folder))
    assert len(set(ok["config_hash"])) == len(ok)
    for row in ok.itertuples():
        meta = read_png_metadata(folder / row.image_path)
        assert (meta["seed"], meta["prompt"], meta["guidance_scale"]) == (row.seed, row.prompt, row.guidance_scale)
    pd.testing.assert_frame_equal(pd.read_csv(folder / "results.csv")[["seed", "image_path"]],
                                  frame[["seed", "image_path"]])
    return frame


def test_a_run_dir_keeps_its_cells_and_adds_new_ones(run_sdlab, tmp_path):
    assert run_sdlab(*FAST, "seeds=[1,2,3]", "prompt=A", f"hydra.run.dir={tmp_path}") == 0
    first = pd.read_parquet(tmp_path / "results.parquet")
    assert run_sdlab(*FAST, "seeds=[1]", "prompt=B", f"hydra.run.dir={tmp_path}") == 0
    frame = assert_table_is_the_images(tmp_path)
    assert list(zip(frame["prompt"], frame["seed"])) == [("A", 1), ("A", 2), ("A", 3), ("B", 1)]
    assert frame["run_id"][:3].tolist() == first["run_id"].tolist()  # kept, not recomputed
    assert run_sdlab(*FAST, "seeds=[3,1]", "prompt=A", f"hydra.run.dir={tmp_path}") == 0  # nothing new
    assert pd.read_parquet(tmp_path / "results.parquet")["run_id"].tolist() == frame["run_id"].tolist()


def test_a_sweep_into_a_used_sweep_dir_gives_a_root_table_of_exactly_its_images(run_sdlab, tmp_path):
    sweep = f"hydra.sweep.dir={tmp_path}"
    assert run_sdlab("-m", "seed=1,2,3,4", *FAST, sweep) == 0
    left = tmp_path / ".results.parquet.abcd1234.sdlab-tmp.parquet"  # a kill during the root collection
    left.write_text("partial")
    assert run_sdlab("-m", "seed=5,6", *FAST, sweep) == 0
    frame = assert_table_is_the_images(tmp_path)
    assert sorted(frame["seed"]) == [1, 2, 3, 4, 5, 6]
    assert not left.exists()


def test_a_garbage_parquet_is_rebuilt_from_its_csv_twin(run_sdlab, tmp_path):
    args = (*FAST, "seeds=[1,2]", f"hydra.run.dir={tmp_path}")
    assert run_sdlab(*args) == 0
    first = pd.read_parquet(tmp_path / "results.parquet")
    csv = (tmp_path / "results.csv").read_text()
    (tmp_path / "results.parquet").write_bytes(b"garbage")
    assert run_sdlab(*args) == 0
    assert pd.read_parquet(tmp_path / "results.parquet")["run_id"].tolist() == first["run_id"].tolist()
    assert read_csv(tmp_path / "results.csv")["run_id"].tolist() == first["run_id"].tolist()  # ids as text
    assert len(csv.splitlines()) == 3


def test_both_tables_damaged_are_rebuilt_from_the_images_or_kept_aside(run_sdlab, tmp_path):
    args = (*FAST, "seeds=[1,2]", f"hydra.run.dir={tmp_path}")
    assert run_sdlab(*args) == 0
    first = pd.read_parquet(tmp_path / "results.parquet")
    for name in ("results.parquet", "results.csv"):
        (tmp_path / name).write_bytes(b"\x00garbage")
    assert run_sdlab(*args) == 0  # rebuilt from the rows each PNG carries: nothing recomputed
    assert pd.read_parquet(tmp_path / "results.parquet")["run_id"].tolist() == first["run_id"].tolist()
    for name in ("results.parquet", "results.csv"):
        (tmp_path / name).write_bytes(b"\x00garbage")
    for png in (tmp_path / "images").iterdir():
        png.unlink()
    assert run_sdlab(*args) == 0
    assert sorted(p.read_bytes() for p in tmp_path.glob("results.*.damaged")) == [b"\x00garbage"] * 2
    assert_table_is_the_images(tmp_path)


def test_a_job_dir_whose_tables_were_deleted_is_rebuilt_from_its_pngs_not_made_again(run_sdlab, tmp_path):
    sweep = ("-m", "seed=1,2,3", *FAST, f"hydra.sweep.dir={tmp_path}")
    assert run_sdlab(*sweep) == 0
    job = tmp_path / "1"
    first = pd.read_parquet(job / "results.parquet")
    png = job / first["image_path"][0]
    made = png.read_bytes(), png.stat().st_mtime_ns
    for name in ("results.parquet", "results.csv"):
        (job / name).unlink()
    assert run_sdlab(*sweep) == 0
    assert (png.read_bytes(), png.stat().st_mtime_ns) == made  # the cell was not made again
    assert pd.read_parquet(job / "results.parquet")["run_id"].tolist() == first["run_id"].tolist()
    assert_table_is_the_images(job)
    Image.new("RGB", (8, 8)).save(png)  # a PNG that carries no row: not trusted, its cell made again
    for name in ("results.parquet", "results.csv"):
        (job / name).unlink()
    assert run_sdlab(*sweep) == 0
    assert read_png_metadata(png)["row"]["seed"] == 2
    assert_table_is_the_images(job)


def test_images_that_carry_no_row_are_named_in_one_warning(tmp_path, caplog):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    assert read_table(tmp_path) is None and read_table(tmp_path) is None
    warned = [r.getMessage() for r in caplog.records if "a.png" in r.getMessage()]
    assert len(warned) == 1 and "made again" in warned[0]
    assert not list(tmp_path.glob("*.damaged"))


def test_garbage_ending_as_a_png_ends_is_made_again_and_the_other_cells_kept(run_sdlab, tmp_path, capsys):
    sweep = ("-m", "seed=1,2,3", *FAST, f"hydra.sweep.dir={tmp_path}")
    assert run_sdlab(*sweep) == 0
    made = {png: png.read_bytes() for png in tmp_path.glob("*/images/*.png")}
    png = next(tmp_path.glob("1/images/*.png"))
    png.write_bytes(os.urandom(5000) + made[png][-12:])  # ends with a real IEND chunk
    garbage = png.read_bytes()
    assert run_sdlab(*sweep) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert {p: p.read_bytes() for p in made if p != png} == {p: b for p, b in made.items() if p != png}
    assert read_png_metadata(png)["row"]["seed"] == 2
    assert png.with_name(png.name + ".damaged").read_bytes() == garbage
    assert sorted(pd.read_parquet(tmp_path / "results.parquet")["seed"]) == [1, 2, 3]


def flip_image_data(png: Path, count: int = 50) -> None:
    """Invert `count` bytes in the middle of a PNG's first IDAT chunk: its length, signature, IHDR and IEND stay."""
    data = bytearray(png.read_bytes())
    at = data.index(b"IDAT") + 4
    size = int.from_bytes(data[at - 8:at - 4], "big")
    assert size > count
    start = at + (size - count) // 2
    data[start:start + count] = bytes(b ^ 0xFF for b in data[start:start + count])
    png.write_bytes(bytes(data))


def test_an_image_damaged_inside_its_data_is_made_again_and_named_in_one_warning(run_sdlab, tmp_path, capsys,
                                                                                 monkeypatch):
    """Bytes changed in the middle of a finished image's pixel data (its ends whole) fail the chunk's CRC: the rerun
    makes that cell again, keeps the damaged file as `.damaged` and says so once; the other cells are kept."""
    from sdlab.bench import resume

    sweep = ("-m", "seed=1,2,3", *FAST, f"hydra.sweep.dir={tmp_path}")
    assert run_sdlab(*sweep) == 0
    made = {png: png.read_bytes() for png in tmp_path.glob("*/images/*.png")}
    png = next(tmp_path.glob("1/images/*.png"))
    flip_image_data(png)
    damaged = png.read_bytes()
    monkeypatch.setattr(resume, "_FINISHED", {})  # a new process, as a rerun is
    capsys.readouterr()
    assert run_sdlab(*sweep) == 0
    said = capsys.readouterr()
    assert "Traceback" not in said.err
    warned = [line for line in (said.out + said.err).splitlines() if f"{png.name} is not a whole image" in line]
    assert len(warned) == 1, said.out + said.err
    assert png.with_name(png.name + ".damaged").read_bytes() == damaged
    assert read_png_metadata(png)["row"]["seed"] == 2
    Image.open(png).load()
    assert {p: p.read_bytes() for p in made if p != png} == {p: b for p, b in made.items() if p != png}
    assert sorted(pd.read_parquet(tmp_path / "results.parquet")["seed"]) == [1, 2, 3]
    assert run_sdlab(*sweep) == 0  # and the rerun after finds it finished
    assert "; 3 finished before: not run again" in capsys.readouterr().out


def test_an_image_path_outside_the_run_dir_is_never_trusted(run_sdlab, tmp_path):
    run = tmp_path / "run"
    args = (*FAST, "seeds=[1]", f"hydra.run.dir={run}")
    assert run_sdlab(*args) == 0
    frame = pd.read_parquet(run / "results.parquet")
    outside = tmp_path / "outside.png"
    outside.write_bytes((run / frame["image_path"][0]).read_bytes())
    for claimed in ("../outside.png", str(outside)):
        (run / frame["image_path"][0]).unlink(missing_ok=True)
        forged = frame.assign(image_path=claimed, run_id="forged")
        forged.to_parquet(run / "results.parquet")
        forged.to_csv(run / "results.csv", index=False)
        (run / "job.json").unlink(missing_ok=True)
        assert run_sdlab(*args) == 0
        again = assert_table_is_the_images(run)
        assert again["run_id"].tolist() != ["forged"]
    assert outside.is_file()


def test_disk_full_keeps_the_finished_images_in_the_table(run_sdlab, tmp_path, monkeypatch, capsys):
    from sdlab.bench import report
    from sdlab.jobs import generate as job

    save = job.save_png
    saved = []

    def full_after_one(image, target, *a, **k):
        if saved:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(target)
        return save(image, target, *a, **k)

    def no_space(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(job, "save_png", full_after_one)
    monkeypatch.setattr(report, "write_table", no_space)  # the final table cannot be written either
    assert run_sdlab(*FAST, "seeds=[1,2,3]", "batch_size=1", f"hydra.run.dir={tmp_path}") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "rror" in line or "Traceback" in line]
    assert len(err) == 1 and err[0].startswith("sdlab: error: ") and "No space left on device" in err[0]
    frame = assert_table_is_the_images(tmp_path)
    assert frame["seed"].tolist() == [1] and len(pngs(tmp_path)) == 1


def test_extending_a_sweep_recomputes_only_the_new_cells(run_sdlab, tmp_path):
    sweep = f"hydra.sweep.dir={tmp_path}"
    assert run_sdlab("-m", "seed=1,2", "guidance_scale=1,7.5,15", *FAST, sweep) == 0
    first = set(pd.read_parquet(tmp_path / "results.parquet")["run_id"])
    assert run_sdlab("-m", "seed=2,1", "guidance_scale=1,5,7.5,15", *FAST, sweep) == 0  # inserted, reordered
    frame = assert_table_is_the_images(tmp_path)
    assert len(frame) == 8 and (frame["status"] == "ok").all()
    new = frame[~frame["run_id"].isin(first)]
    assert sorted(zip(new["guidance_scale"], new["seed"])) == [(5.0, 1), (5.0, 2)]
    assert len(pngs(tmp_path)) == 8
    # rows (so the grid's columns, the summary and the report) follow the command, not the job dirs the cells sit in
    assert list(zip(frame["seed"], frame["guidance_scale"])) == [(s, g) for s in (2, 1) for g in (1, 5, 7.5, 15)]


def job_dir_cells(sweep_dir: Path) -> dict[str, tuple[list[tuple], bytes]]:
    """Each job dir's (seed, guidance_scale, run_id) rows and its finished mark."""
    return {job.name: ([(row.seed, row.guidance_scale, row.run_id) for row in read_table(job).itertuples()],
                       (job / "job.json").read_bytes())
            for job in sorted(sweep_dir.iterdir()) if job.is_dir() and not job.name.startswith(".")}


@pytest.mark.parametrize("before, after", [
    (("seed=1,2",), ("seed=2,1,3",)),  # reordered and extended
    (("seed=1,2",), ("seed=1,2", "guidance_scale=1,7.5")),  # a new axis: the finished cells are its 7.5 column
    (("seed=1,2", "guidance_scale=1,7.5"), ("seed=2,1", "guidance_scale=7.5,3,1")),  # both reordered, a value new
])
def test_a_sweep_extended_with_its_values_moved_keeps_each_job_dir_to_its_own_cell(run_sdlab, tmp_path, capsys, before,
                                                                                   after):
    """Reordered values or a new axis gave a finished cell a new job number: it ran again into a new job dir (an empty
    table there, its cell left elsewhere), a new cell's job wrote into a job dir holding another's, and the count of
    finished cells missed them. Each finished cell keeps its job dir, is counted, and a new cell gets a job dir of its
    own."""
    sweep = ("-m", "model=tiny", "num_inference_steps=1", "threads=1", f"hydra.sweep.dir={tmp_path}")
    assert run_sdlab(*sweep, *before) == 0
    first = job_dir_cells(tmp_path)
    capsys.readouterr()
    assert run_sdlab(*sweep, *after) == 0
    said = capsys.readouterr().out
    assert f"; {len(first)} finished before: not run again" in said
    now = job_dir_cells(tmp_path)
    assert {name: now[name] for name in first} == first  # not run again: rows, run ids and marks as they were
    assert all(len(cells) == 1 for cells, _ in now.values())  # no empty table, no job dir holding two cells
    frame = assert_table_is_the_images(tmp_path)
    cells = [(row.seed, row.guidance_scale) for row in frame.itertuples()]
    assert sorted(cells) == sorted(cell[:2] for cells, _ in now.values() for cell in cells)
    assert len(set(cells)) == len(now)
    seeds = [int(v) for v in after[0].partition("=")[2].split(",")]
    guidance = [float(v) for v in after[1].partition("=")[2].split(",")] if len(after) > 1 else [7.5]
    assert cells == [(s, g) for s in seeds for g in guidance]  # in the command's order
    assert run_sdlab(*sweep, *after) == 0  # and a rerun finds every cell where it is
    assert f"; {len(now)} finished before: not run again" in capsys.readouterr().out
    assert job_dir_cells(tmp_path) == now


def test_a_failed_cell_of_an_extended_sweep_is_one_row_wherever_its_job_dir_is(run_sdlab, tmp_path, monkeypatch):
    """A new cell whose job dir is not its number's (the folder of that number holds a finished cell) and that fails is
    one failed row naming its error, not also a cell that did not run."""
    from sdlab.jobs import generate as generate_job

    real = generate_job.generate_batch

    def fails_at_guidance_1(model, params, seeds, **options):
        if params.guidance_scale == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(model, params, seeds, **options)

    sweep = ("-m", "model=tiny", "num_inference_steps=1", "threads=1", f"hydra.sweep.dir={tmp_path}")
    assert run_sdlab(*sweep, "seed=1,2") == 0
    monkeypatch.setattr(generate_job, "generate_batch", fails_at_guidance_1)
    assert run_sdlab(*sweep, "seed=1,2", "guidance_scale=1,7.5") == 1
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert list(zip(frame["seed"], frame["guidance_scale"], frame["status"])) == [
        (1, 1, "error"), (1, 7.5, "ok"), (2, 1, "error"), (2, 7.5, "ok")]
    assert frame["error"].dropna().str.contains("simulated").all()


def test_a_sweep_extended_past_ten_cells_keeps_its_job_dirs_names(run_sdlab, tmp_path, capsys):
    """From 9 cells to 11 the job dirs were numbered anew, 00 to 10 beside 0 to 8: every job ran again and left an empty
    table, and the line that counts the finished ones was gone. The folder's own numbering stays; 9 and 10 follow."""
    sweep = ("-m", *FAST, f"hydra.sweep.dir={tmp_path}")
    assert run_sdlab("seed=range(1,10)", *sweep) == 0
    capsys.readouterr()
    assert run_sdlab("seed=range(1,12)", *sweep) == 0
    assert "; 9 finished before: not run again" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(
        map(str, range(11)))
    frame = assert_table_is_the_images(tmp_path)
    assert sorted(frame["seed"]) == list(range(1, 12))


def test_a_damaged_image_an_extended_sweep_found_in_another_job_dir_is_made_again(run_sdlab, tmp_path, monkeypatch):
    """Extending shifts job numbers: job 2's cell (seed 1, guidance 7.5) stays in job dir 1, and job dir 2's table
    holds another cell. Cut short there, that image is made again on the rerun and the root table keeps all six."""
    from sdlab.bench import resume

    sweep = ("-m", "seed=1,2", "model=tiny", "num_inference_steps=1", "threads=1", f"hydra.sweep.dir={tmp_path}")
    assert run_sdlab(*sweep, "guidance_scale=1,7.5") == 0
    assert run_sdlab(*sweep, "guidance_scale=1,3,7.5") == 0
    frame = pd.read_parquet(tmp_path / "results.parquet")
    moved = frame[(frame["seed"] == 1) & (frame["guidance_scale"] == 7.5)]["image_path"].item()
    assert Path(moved).parts[0] != "2"  # the case at hand: the cell is not in its job's own dir
    damaged = tmp_path / moved
    damaged.write_bytes(damaged.read_bytes()[:300])
    monkeypatch.setattr(resume, "_FINISHED", {})  # a new process, as a rerun is: truncating in place keeps file times
    for _ in range(2):  # and the rerun after it finds the sweep complete
        assert run_sdlab(*sweep, "guidance_scale=1,3,7.5") == 0
        frame = pd.read_parquet(tmp_path / "results.parquet")
        assert (frame["status"] == "ok").all() and len(frame) == 6
        assert sorted(zip(frame["seed"], frame["guidance_scale"])) == [(s, g) for s in (1, 2) for g in (1, 3, 7.5)]
        assert all(finished(row, tmp_path) for row in frame.to_dict("records"))


def test_a_finished_jobs_lost_or_cut_table_is_written_whole_again_and_no_cell_made_again(run_sdlab, tmp_path, capsys):
    """A finished job dir whose results.parquet went (deleted), or was cut short with or without its CSV twin, is read
    from what is left (the twin, the rows its PNGs carry) and written whole by the next rerun: not left damaged for
    every later rerun to warn about and read around."""
    sweep = ("-m", "seed=1,2,3", *FAST, f"hydra.sweep.dir={tmp_path}")
    assert run_sdlab(*sweep) == 0
    first = pd.read_parquet(tmp_path / "results.parquet")
    (tmp_path / "0" / "results.parquet").unlink()
    for name in ("1/results.parquet", "2/results.parquet", "2/results.csv"):
        (tmp_path / name).write_bytes((tmp_path / name).read_bytes()[:200])
    assert run_sdlab(*sweep) == 0
    for job in ("0", "1", "2"):
        pd.testing.assert_frame_equal(read_csv(tmp_path / job / "results.csv")[["run_id", "time_total_s"]],
                                      pd.read_parquet(tmp_path / job / "results.parquet")[["run_id", "time_total_s"]])
    again = pd.read_parquet(tmp_path / "results.parquet")
    pd.testing.assert_frame_equal(again[["run_id", "time_total_s", "batch_size"]],
                                  first[["run_id", "time_total_s", "batch_size"]])  # nothing made again
    assert "damaged" in "".join(capsys.readouterr())  # sdlab's log lines reach the console, not pytest's caplog
    assert run_sdlab(*sweep) == 0
    said = "".join(capsys.readouterr())
    assert "damaged" not in said and "rebuilt" not in said


def test_a_csv_twin_cut_between_rows_is_not_taken_for_the_whole_table(run_sdlab, tmp_path):
    """The finished mark counts the job's rows: a twin that lost some (cut at a line's end) gets them made again,
    instead of a table that no longer lists images on disk."""
    args = (*FAST, "seeds=[1,2,3]", f"hydra.run.dir={tmp_path}")
    assert run_sdlab(*args) == 0
    (tmp_path / "results.parquet").write_bytes(b"garbage")
    csv = tmp_path / "results.csv"
    csv.write_text("".join(csv.read_text().splitlines(keepends=True)[:2]))
    assert run_sdlab(*args) == 0
    assert sorted(assert_table_is_the_images(tmp_path)["seed"]) == [1, 2, 3]


def test_ids_and_prompts_that_look_like_numbers_read_back_from_the_csv_twin_as_text(tmp_path):
    """Hex ids are digits at times (`062414779754`, `12e4567890123456`): read back as numbers from the CSV, a run id
    lost its 0 and a config hash no longer matched its cell, which was made again beside its old row."""
    from sdlab.bench.records import read_table, write_table

    text = {"run_id": "062414779754", "config_hash": "12e4567890123456", "call_id": "1", "weights": "7",
            "prompt": "1e3", "status": "ok"}
    write_table(pd.DataFrame([{**text, "seed": 1}]), tmp_path)
    (tmp_path / "results.parquet").write_bytes(b"garbage")
    row = read_table(tmp_path).iloc[0]
    assert {k: row[k] for k in text} == text and row["seed"] == 1


def test_the_folders_of_moved_jobs_reach_a_launchers_workers_however_many_moved(tmp_path, monkeypatch):
    """The sweeper tells workers (joblib, SLURM tasks) which job takes which folder through one environment variable;
    one string of the environment holds at most 128 KiB on Linux, so it names the sweep's manifest, not the moves."""
    from sdlab.app import compose
    from sdlab.bench.resume import write_manifest

    moved = {num: num + 1 for num in range(20_000)}  # a 20,000-cell sweep whose values moved by one
    write_manifest(tmp_path, ["seed=range(0,20000)"], [[f"seed={n}"] for n in range(20_000)], folders=moved)
    monkeypatch.setenv(compose.JOB_FOLDER_WIDTH, "5")
    monkeypatch.setenv(compose.JOB_FOLDERS, str(tmp_path))
    assert [compose.job_folder(n) for n in (0, 19_999)] == ["00001", "20000"]
    assert len(os.environ[compose.JOB_FOLDERS]) < 4096


def test_a_disk_that_fills_while_a_sweep_makes_its_job_dirs_ends_in_one_line(run_sdlab, tmp_path, monkeypatch, capsys):
    """The launcher's write of a job dir's Hydra files hit a full disk: a traceback and no word of which file."""
    from hydra_plugins.sdlab_hydra import lean_launcher

    write, calls = lean_launcher.atomic_write_text, []

    def full_after_a_job(target, *a, **k):
        calls.append(target)
        if "1" in Path(target).parent.parent.name:  # the second job's .hydra/ files
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return write(target, *a, **k)

    monkeypatch.setattr(lean_launcher, "atomic_write_text", full_after_a_job)
    assert run_sdlab("-m", "seed=1,2", *FAST, f"hydra.sweep.dir={tmp_path / 's'}") == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("sdlab: error: No space left on device: ") and f"{tmp_path / 's' / '1'}" in lines[0], err
