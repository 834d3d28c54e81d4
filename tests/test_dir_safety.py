"""A run or sweep dir holds user files and other processes too: sdlab cleans only its own temp files, one at a time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sdlab.bench import lock
from sdlab.io import atomic_path, is_temp_file
from sdlab.bench.ownership import MARK

FAST = ("model=tiny", "num_inference_steps=2", "threads=1")
ROOT = Path(__file__).resolve().parent.parent
SAME_SECOND = """
import datetime, sys
import hydra.core.utils
from sdlab.app import cli


class SameSecond(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2026, 12, 5, 3, 47, 32)


hydra.core.utils.datetime = SameSecond  # Hydra's `${now:}`: every start lands in one second
cli.main()
"""  # `sdlab ARGS` with its clock stopped, as `python -c SAME_SECOND ARGS`


def test_atomic_temp_files_are_recognisably_sdlabs(tmp_path):
    with atomic_path(tmp_path / "results.parquet") as tmp:
        assert tmp.suffix == ".parquet" and is_temp_file(tmp)  # libraries that pick a format by suffix still can
    for name in (".todo.tmp.md", ".env.tmpl", ".results.parquet.tmp", "sdlab-tmp", ".a.sdlab-tmp.b"):
        assert not is_temp_file(tmp_path / name), name


def test_what_resume_trusts_reaches_the_disk_and_the_copies_for_people_do_not_wait_for_it(run_sdlab, tmp_path,
                                                                                          monkeypatch):
    synced, real = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    assert run_sdlab("-m", "seed=1,2", *FAST, f"hydra.sweep.dir={tmp_path / 'run'}") == 0
    names = {Path(path).name.split(".sdlab-tmp")[0].lstrip(".").rsplit(".", 1)[0] for path in synced}
    assert {"results.parquet", "job.json"} <= names and any(n.startswith("seed1-") for n in names)
    assert not names & {"results.csv", "run_config.json", "config.yaml", "hydra.yaml", "overrides.yaml"}
    for name in ("results.csv", "run_config.json", ".hydra/config.yaml"):
        assert (tmp_path / "run" / "0" / name).stat().st_size > 0


def test_an_atomic_file_gets_the_mode_a_plain_write_would_even_when_its_writer_recreates_it(tmp_path):
    """safetensors (and others) replace the temp file with one of their own, mode 0600: the result is still 0666 & ~umask."""
    import torch
    from safetensors.torch import save_file

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with atomic_path(tmp_path / "weights.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    with atomic_path(tmp_path / "recreated.bin") as tmp:
        tmp.unlink()
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
    for name in ("weights.safetensors", "recreated.bin"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777)


def test_start_up_cleans_only_sdlab_temp_files_in_folders_sdlab_writes(run_sdlab, tmp_path, monkeypatch):
    user = {"notes/.todo.tmp.md": "x", ".env.tmpl": "y", "images/.mine.tmp.png": "z",
            "notes/.results.csv.abcd1234.sdlab-tmp.csv": "not in a folder sdlab writes"}
    for name, text in user.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    left = [tmp_path / ".results.csv.k2j4h5g6.sdlab-tmp.csv", tmp_path / "images" / ".seed1.png.a1b2c3d4.sdlab-tmp.png"]
    for path in left:
        path.write_text("killed mid-write")
    (tmp_path / MARK).write_text("")  # a folder sdlab took earlier (and was killed in); the user's files stayed
    monkeypatch.chdir(tmp_path)
    assert run_sdlab(*FAST, "hydra.run.dir=.") == 0
    assert {name: (tmp_path / name).read_text() for name in user} == user
    assert not any(path.exists() for path in left)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_dir_locked_by_a_live_process_is_refused_in_one_line(run_sdlab, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for mode, dir_key in (((), "hydra.run.dir"), (("-m", "seed=1,2"), "hydra.sweep.dir")):
            folder = tmp_path / dir_key
            folder.mkdir()
            (folder / lock.LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
            assert run_sdlab(*mode, *FAST, f"{dir_key}={folder}") == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("sdlab: error: ") and f"process {holder.pid}" in err[0]
            assert sorted(p.name for p in folder.iterdir()) == [lock.LOCK_NAME]  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_released(run_sdlab, tmp_path):
    (tmp_path / lock.LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    assert run_sdlab(*FAST, f"hydra.run.dir={tmp_path}") == 0
    assert not (tmp_path / lock.LOCK_NAME).exists()
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == 1


def test_a_lock_from_another_host_or_unreadable_and_fresh_is_in_use(tmp_path):
    (tmp_path / lock.LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": "elsewhere"}))
    with pytest.raises(lock.DirInUse, match="on elsewhere"):
        lock.acquire(tmp_path)
    (tmp_path / lock.LOCK_NAME).write_text("")  # a holder that has not written its pid yet
    with pytest.raises(lock.DirInUse):
        lock.acquire(tmp_path)
    old = os.stat(tmp_path / lock.LOCK_NAME).st_mtime - 3600
    os.utime(tmp_path / lock.LOCK_NAME, (old, old))
    lock.acquire(tmp_path)  # an empty lock an hour old is a holder killed at once
    assert json.loads((tmp_path / lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release(tmp_path)
    assert not (tmp_path / lock.LOCK_NAME).exists()


@pytest.mark.slow  # a real second process (13 s on a quiet machine); the lock tests above cover the logic
def test_two_processes_on_one_sweep_dir_the_second_refuses(run_sdlab, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # steps enough that the first still holds the folder when the second, started in this process, reaches it
    args = ["-m", "guidance_scale=1,7.5,15", "seeds=[1,2,3,4]", "model=tiny", "num_inference_steps=200", "threads=1",
            f"hydra.sweep.dir={sweep}"]
    first = subprocess.Popen([sys.executable, "-m", "sdlab.app.cli", *args], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.monotonic() + 120
    while not (sweep / lock.LOCK_NAME).exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert run_sdlab(*args) == 2
    assert "is in use by sdlab process" in capsys.readouterr().err
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    frame = pd.read_parquet(sweep / "results.parquet")
    assert len(frame) == 12 and (frame["status"] == "ok").all()
    assert not (sweep / lock.LOCK_NAME).exists()


@pytest.mark.slow  # four real processes, two at a time (about 30 s); the in-process tests cover the naming
def test_runs_and_sweeps_started_together_on_the_default_dir_get_a_folder_each(tmp_path):
    """Two commands started in the same second named the same default folder: one ran, the other was refused (or,
    started a moment later, went into the first one's folder). The user chose no folder: each gets its own, the
    second the first's name with `_2`, and says so where it says where its results are."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    root = tmp_path / "outputs" / "generate"
    for mode, values, name in (((), ("seed=1", "seed=2"), "2026-12-05_03-47-32"),
                               (("-m",), ("seed=1,2", "seed=3,4"), "multirun_2026-12-05_03-47-32")):
        started = [subprocess.Popen([sys.executable, "-c", SAME_SECOND, *mode, value, *FAST], cwd=tmp_path, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for value in values]
        said = ["".join(process.communicate(timeout=300)) for process in started]
        assert [process.returncode for process in started] == [0, 0], said
        folders = sorted(root.glob(f"{name}*"))
        assert [folder.name for folder in folders] == [name, f"{name}_2"]
        seeds = {tuple(sorted(pd.read_csv(folder / "results.csv")["seed"])): folder for folder in folders}
        assert sorted(seeds) == ([(1,), (2,)] if not mode else [(1, 2), (3, 4)])
        for value, text in zip(values, said):  # each names the folder its own rows are in, and only that one
            own = seeds[tuple(int(seed) for seed in value.partition("=")[2].split(","))]
            named = {folder.name for folder in folders if f"generate/{folder.name}/results.csv" in text}
            assert named == {own.name}, text
