"""sdlab writes only into folders it owns: refused folders and paths cost one line, exit 2, and not one byte."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sdlab.bench import lock
from sdlab.bench.ownership import MARK

FAST = ("model=tiny", "num_inference_steps=2", "threads=1")


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under `folder`: file bytes, link targets, folders (links are not followed)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            found[name] = ("link", os.readlink(path))
        elif path.is_dir():
            found[name] = "dir"
        else:
            found[name] = path.read_bytes()
    return found


def refused(run_sdlab, capsys, *args: str) -> str:
    """Run sdlab, assert exit code 2 and exactly one `sdlab: error:` line on stderr; return that line."""
    capsys.readouterr()  # what earlier runs printed
    assert run_sdlab(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdlab: error: "), err
    return err[0]


def pngs(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("images/*.png")}


USER_FOLDERS = {
    "a results table": {"results.csv": b"name,score,status\nexp1,0.9,done\n"},
    "sdlab's own file names": {"job.json": b'{"mine": 1}', "summary.csv": b"a\n1\n", "grid.png": b"not a png",
                               ".hydra/config.yaml": b"mine: true\n", "cli.log": b"my log\n"},
    "one hidden file": {".env": b"SECRET=1\n"},
    "an empty subfolder": {"data/": b""},
}


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
@pytest.mark.parametrize("contents", list(USER_FOLDERS), ids=list(USER_FOLDERS))
def test_a_folder_sdlab_did_not_make_is_refused_byte_for_byte(run_sdlab, tmp_path, monkeypatch, capsys, sweep, contents):
    monkeypatch.chdir(tmp_path)
    for name, data in USER_FOLDERS[contents].items():
        path = tmp_path / "u" / name
        if name.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    before = snapshot(tmp_path)
    args = ("-m", "seed=1,2", "hydra.sweep.dir=u") if sweep else ("seeds=[1,2]", "hydra.run.dir=u")
    line = refused(run_sdlab, capsys, *args, *FAST)
    assert "=u already holds files sdlab did not write" in line and f"touch u/{MARK}" in line
    assert snapshot(tmp_path) == before


def test_a_marked_folder_is_sdlabs_and_a_made_one_is_resumed(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "notes.txt").write_text("mine")
    refused(run_sdlab, capsys, "seeds=[1]", "hydra.run.dir=u", *FAST)
    (tmp_path / "u" / MARK).touch()  # what the error line says to do
    assert run_sdlab("seeds=[1]", "hydra.run.dir=u", *FAST) == 0
    assert (tmp_path / "u" / "notes.txt").read_text() == "mine"
    assert run_sdlab("-m", "seed=1,2", "hydra.sweep.dir=s", *FAST) == 0  # made by sdlab: its own from now on
    assert (tmp_path / "s" / MARK).is_file() and (tmp_path / "s" / "0" / MARK).is_file()
    assert run_sdlab("-m", "seed=1,2,3", "hydra.sweep.dir=s", *FAST) == 0  # the README's rerun to extend
    assert sorted(pd.read_parquet(tmp_path / "s" / "results.parquet")["seed"]) == [1, 2, 3]
    assert run_sdlab("seed=1", "hydra.run.dir=s/0", *FAST) == 0  # a sweep's job dir is sdlab's too: its cell again


def test_a_file_in_place_of_the_folder_is_refused(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "u").write_text("a file")
    before = snapshot(tmp_path)
    for args in (("hydra.run.dir=u",), ("-m", "seed=1,2", "hydra.sweep.dir=u")):
        assert "is a file, not a folder" in refused(run_sdlab, capsys, *args, *FAST)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("job_dir,says", [
    ({"0/results.csv": b"mine\n", "0/notes.txt": b"mine\n"}, "s/0 already holds files sdlab did not write"),
    ({"1/.env": b"SECRET=1\n"}, "s/1 already holds files sdlab did not write"),
    ({"0": b"mine\n"}, "s/0 is a file, not a folder"),
], ids=["the user's files", "one hidden file", "a file in its place"])
def test_a_job_dir_sdlab_did_not_make_is_refused_byte_for_byte(run_sdlab, tmp_path, monkeypatch, capsys, job_dir, says):
    """A job dir is taken as the sweep dir is: new, empty or marked; a marked sweep dir does not make its
    subfolders sdlab's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / MARK).touch()
    for name, data in job_dir.items():
        (tmp_path / "s" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "s" / name).write_bytes(data)
    before = snapshot(tmp_path)
    line = refused(run_sdlab, capsys, "-m", "seed=1,2", "hydra.sweep.dir=s", *FAST)
    assert says in line, line
    assert snapshot(tmp_path) == before


LAUNCH_REMAINS = {".hydra/config.yaml": b"seed: 1\n", ".hydra/hydra.yaml": b"hydra: {}\n",
                  ".hydra/overrides.yaml": b"- seed=1\n", "cli.log": b""}


def test_a_job_dir_holding_only_what_hydra_writes_before_a_job_starts_is_taken_again(run_sdlab, tmp_path,
                                                                                      monkeypatch):
    """Hydra's own launchers (joblib, submitit) write a job dir's `.hydra/` files and log before sdlab's job marks it:
    a sweep killed in that window left a folder the rerun refused, asking to `touch` a mark by hand. Such a folder
    holds nothing but the launch's own files, so the rerun takes it and runs its job there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / MARK).touch()
    for name, data in LAUNCH_REMAINS.items():
        (tmp_path / "s" / "0" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "s" / "0" / name).write_bytes(data)
    assert run_sdlab("-m", "seed=1,2", "hydra.sweep.dir=s", *FAST) == 0
    frame = pd.read_parquet(tmp_path / "s" / "results.parquet")
    assert sorted(frame["seed"]) == [1, 2] and (frame["status"] == "ok").all()
    assert (tmp_path / "s" / "0" / MARK).is_file() and (tmp_path / "s" / "0" / "results.parquet").is_file()


@pytest.mark.parametrize("where", ["job dir", "sweep dir"])
def test_a_folder_holding_only_the_temp_file_of_its_mark_is_taken_again(run_sdlab, tmp_path, monkeypatch, where):
    """A kill while a folder's mark is written leaves `..sdlab.<8 random>.sdlab-tmp` and no mark: the rerun the README
    promises refused the folder as holding files sdlab did not write."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "s" / "1" if where == "job dir" else tmp_path / "s"
    if where == "job dir":
        assert run_sdlab("-m", "seed=1,2", "hydra.sweep.dir=s", *FAST) == 0
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / f".{MARK}.p6wj8pt8.sdlab-tmp").touch()
    assert run_sdlab("-m", "seed=1,2", "hydra.sweep.dir=s", *FAST) == 0
    frame = pd.read_parquet(tmp_path / "s" / "results.parquet")
    assert sorted(frame["seed"]) == [1, 2] and (frame["status"] == "ok").all()
    assert (folder / MARK).is_file()


def test_a_submitit_folder_outside_the_sweep_dir_is_refused(run_sdlab, tmp_path, monkeypatch, capsys):
    """`hydra.launcher.submitit_folder=theirs` wrote submitit's pickles and logs into a folder sdlab does not own."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep\n")
    line = refused(run_sdlab, capsys, "-m", "seed=1,2", "hydra/launcher=submitit_local",
                   f"hydra.launcher.submitit_folder={tmp_path / 'theirs'}", "hydra.sweep.dir=s", *FAST)
    assert line == (f"sdlab: error: hydra.launcher.submitit_folder={tmp_path / 'theirs'} leads to {tmp_path / 'theirs'}, "
                    f"outside {tmp_path / 's'}; sdlab writes only inside its output folder"), line
    assert [p.name for p in (tmp_path / "theirs").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("extra", [{"notes.txt": b"mine\n"}, {".hydra/mine.yaml": b"a: 1\n"}, {"other.log": b"x\n"},
                                   {"images/x.png": b"\x89PNG"}], ids=["a file", "a file in .hydra", "another log",
                                                                       "an image"])
def test_a_job_dir_with_anything_besides_the_launch_files_is_still_refused(run_sdlab, tmp_path, monkeypatch, capsys,
                                                                          extra):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / MARK).touch()
    for name, data in {**LAUNCH_REMAINS, **extra}.items():
        (tmp_path / "s" / "0" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "s" / "0" / name).write_bytes(data)
    before = snapshot(tmp_path)
    assert "s/0 already holds files sdlab did not write" in refused(run_sdlab, capsys, "-m", "seed=1,2",
                                                                    "hydra.sweep.dir=s", *FAST)
    assert snapshot(tmp_path) == before


IN_THE_WAY = {".hydra": "file", "run_config.json": "folder", "images": "file", "results.parquet": "folder",
              "results.csv": "folder", "job.json": "folder", "cli.log": "folder", ".hydra/config.yaml": "folder"}


def test_a_job_dir_is_marked_before_anything_is_written_into_it(run_sdlab, tmp_path, monkeypatch):
    """A sweep killed after a job dir's log and `.hydra/` files but before its job started left a folder with files
    and no mark, which the rerun refused as not sdlab's: the launcher marks it as it makes it."""
    from hydra_plugins.sdlab_hydra import lean_launcher

    marked_first, write = [], lean_launcher.atomic_write_text

    def recording(path, text, **options):
        marked_first.append((Path(path).parent.parent / MARK).is_file())
        return write(path, text, **options)

    monkeypatch.setattr(lean_launcher, "atomic_write_text", recording)
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seed=1,2", "hydra.sweep.dir=s", *FAST) == 0
    assert len(marked_first) == 6 and all(marked_first)  # three .hydra files a job


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
@pytest.mark.parametrize("name", list(IN_THE_WAY))
def test_a_path_of_the_wrong_kind_in_a_marked_folder_is_refused(run_sdlab, tmp_path, monkeypatch, capsys, sweep, name):
    """A file where sdlab writes a folder, or a folder where it writes a file, in a folder that is sdlab's: one line
    naming it, before anything is written."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / ("s/0" if sweep else "r")
    folder.mkdir(parents=True)
    for marked in (folder, tmp_path / "s"):
        if marked.is_dir():
            (marked / MARK).touch()
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if IN_THE_WAY[name] == "folder":
        path.mkdir()
    else:
        path.write_text("mine\n")
    before = snapshot(tmp_path)
    args = ("-m", "seed=1,2", "hydra.sweep.dir=s") if sweep else ("hydra.run.dir=r",)
    line = refused(run_sdlab, capsys, *args, *FAST)
    assert f"{Path(folder.name if not sweep else 's/0') / name} is a {IN_THE_WAY[name]}" in line, line
    if not sweep:  # known only once composed: the run's pre-flight
        monkeypatch.setenv("TARGET", "r")
        assert f"r/{name} is a" in refused(run_sdlab, capsys, "hydra.run.dir=${oc.env:TARGET}", *FAST)
    assert snapshot(tmp_path) == before


def test_a_folder_where_a_sweep_writes_its_own_file_is_refused(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / MARK).touch()
    for name in ("multirun.yaml", "sweep.json", "results.parquet"):
        (tmp_path / "s" / name).mkdir()
        before = snapshot(tmp_path)
        line = refused(run_sdlab, capsys, "-m", "seed=1,2", "hydra.sweep.dir=s", *FAST)
        assert f"s/{name} is a folder" in line or "holds a run's results" in line, line
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args,says", [
    (("hydra.run.dir=",), "hydra.run.dir= is empty"),
    (("hydra.run.dir=''",), "hydra.run.dir= is empty"),
    (("-m", "seed=1,2", "hydra.sweep.dir="), "hydra.sweep.dir= is empty"),
    (("hydra.run.dir=/",), "is the filesystem root"),
    (("-m", "seed=1,2", "hydra.sweep.dir=/"), "is the filesystem root"),
    (("hydra.run.dir=HOME",), "is the home folder"),  # as the shell expands `~`
    (("-m", "seed=1,2", "hydra.sweep.dir=HOME/"), "is the home folder"),
])
def test_an_empty_path_the_root_or_home_is_refused(run_sdlab, tmp_path, monkeypatch, capsys, args, says):
    home = tmp_path / "home"
    (home / "mine").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    assert says in refused(run_sdlab, capsys, *(a.replace("HOME", str(home)) for a in args), *FAST)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args,says", [
    (("hydra.run.dir=${oc.env:NOPE}",), "hydra.run.dir='${oc.env:NOPE}' cannot be resolved: environment variable "
                                        "'NOPE' not found"),
    (("hydra.run.dir=runs/${now:}",), "hydra.run.dir='runs/${now:}' cannot be resolved: its resolver is missing 1 "
                                      "required positional argument: 'pattern'"),
    (("hydra.run.dir=${nope}",), "hydra.run.dir='${nope}' cannot be resolved: interpolation key 'nope' not found"),
    (("-m", "seed=1,2", "hydra.sweep.dir=${oc.env:NOPE}"),
     "hydra.sweep.dir='${oc.env:NOPE}' cannot be resolved: environment variable 'NOPE' not found"),
    (("-m", "seed=1,2", "hydra.sweep.dir=s", "hydra.sweep.subdir=${oc.env:NOPE}"),
     "hydra.sweep.subdir='${oc.env:NOPE}' cannot be resolved: environment variable 'NOPE' not found"),
])
def test_an_output_dir_that_cannot_be_resolved_is_one_line_naming_it(run_sdlab, tmp_path, monkeypatch, capsys, args,
                                                                     says):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NOPE", raising=False)
    assert refused(run_sdlab, capsys, *args, *FAST) == f"sdlab: error: {says}"
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize("args,says", [
    (("hydra.job.name=../victim", "hydra.run.dir=run"), "hydra.job.name=../victim is not a plain name"),
    (("hydra.job.name=/tmp/victim", "hydra.run.dir=run"), "is not a plain name"),
    (("hydra.job.name=..", "hydra.run.dir=run"), "is not a plain name"),
    (("-m", "seed=1,2", "hydra.job.name=../victim", "hydra.sweep.dir=s"), "is not a plain name"),
    (("hydra.job.name=", "hydra.run.dir=run"), "is not a plain name"),
    (("-m", "seed=1,2", "hydra.sweep.dir=s", "hydra.sweep.subdir="), "is not a path inside"),
    (("-m", "seed=1,2", "hydra.sweep.dir=s", "hydra.sweep.subdir=../x"), "outside"),
    (("-m", "seed=1,2", "hydra.sweep.dir=s", "hydra.sweep.subdir=."), "itself"),
    (("-m", "seed=1,2", "hydra.sweep.dir=s", "hydra.sweep.subdir=0/.."), "itself"),
    (("-m", "seed=1,2", "hydra.sweep.dir=s", "hydra.sweep.subdir=${hydra.job.num}/../.."), "outside"),
    (("-m", "seed=1,2", "hydra.sweep.dir=s", "hydra.sweep.subdir=${hydra.job.num}/../../x"), "outside"),
    (("-m", "seed=1,2", "hydra.sweep.subdir=../x"), "outside"),  # the default sweep dir, resolved by Hydra
    (("hydra.run.dir=run", "hydra.output_subdir=../hydra_out"), "outside"),
])
def test_a_job_name_sweep_subdir_or_output_subdir_leading_out_is_refused(run_sdlab, tmp_path, monkeypatch, capsys,
                                                                          args, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "victim.log").write_text("the user's log\n")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "results.csv").write_text("a sibling's table\n")
    before = snapshot(tmp_path)
    assert says in refused(run_sdlab, capsys, *args, *FAST)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("subdir,says", [("../x", "=../x leads to {root}/x, outside {root}/multirun_"),
                                         ("/x", "=/x leads to /x, outside {root}/multirun_"),
                                         ("", "='' is not a path inside {root}/multirun_")])
def test_a_sweep_subdir_leading_out_of_the_default_sweep_dir_is_refused_before_torch_is_imported(tmp_path, subdir,
                                                                                                 says):
    """Hydra names the default sweep dir when it starts; a typed subdir leading out of it is refused before that, as
    fast as any bad value, and nothing is written."""
    from test_cli import entry_in_a_new_process

    result = entry_in_a_new_process(["-m", "seed=1,2", f"hydra.sweep.subdir={subdir}"], tmp_path, ("torch",))
    assert result.stdout.strip().splitlines()[-1] == "exit 2 []", result.stdout + result.stderr
    root = tmp_path / "outputs" / "generate"
    assert result.stderr.startswith("sdlab: error: hydra.sweep.subdir" + says.format(root=root)), result.stderr
    assert result.stderr.count("\n") == 1 and snapshot(tmp_path) == {}


@pytest.mark.parametrize("args,subdir,folder", [
    (("seed=1,2",), "x", "x"),  # a constant: every job in one folder
    (("seed=1,2", "guidance_scale=1,2"), "${seed}", "1"),  # a value that not every axis varies
    (("seed=1,2",), "x/${hydra.job.num}/..", "x"),  # the same folder once resolved
])
def test_a_sweep_subdir_giving_two_jobs_one_folder_is_refused(run_sdlab, tmp_path, monkeypatch, capsys, args, subdir,
                                                             folder):
    monkeypatch.chdir(tmp_path)
    line = refused(run_sdlab, capsys, "-m", *args, "hydra.sweep.dir=s", f"hydra.sweep.subdir={subdir}", *FAST)
    assert line == (f"sdlab: error: hydra.sweep.subdir={subdir} gives jobs 0 and 1 the same folder "
                    f"{tmp_path / 's' / folder}; each job needs its own folder: use "
                    "${hydra.job.num} (the default) or the swept values in it")
    assert snapshot(tmp_path) == {}
    refused(run_sdlab, capsys, "-m", *args, "hydra.sweep.subdir=x", *FAST)  # the default sweep dir
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize("link", ["images", ".hydra", ".hydra/config.yaml", "cli.log", MARK])
def test_a_symlink_inside_a_run_dir_leading_out_is_refused(run_sdlab, tmp_path, monkeypatch, capsys, link):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert run_sdlab("seeds=[1]", f"hydra.run.dir={run}", *FAST) == 0  # sdlab's own folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    target = elsewhere if link in ("images", ".hydra") else elsewhere / "keep.txt"
    if os.path.lexists(run / link):
        if (run / link).is_dir():
            shutil.rmtree(run / link)
        else:
            (run / link).unlink()
    (run / link).symlink_to(target)
    before = snapshot(tmp_path)
    line = refused(run_sdlab, capsys, "seeds=[2]", f"hydra.run.dir={run}", *FAST)
    assert any(why in line for why in ("outside", "symlink", "did not write")), line
    assert snapshot(tmp_path) == before


def live_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def write_lock(folder: Path, pid) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / lock.LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))


def test_a_run_into_a_job_dir_of_a_running_sweep_is_refused(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seed=1,2", "hydra.sweep.dir=s", *FAST) == 0
    holder = live_process()  # stands for the sdlab process running the sweep
    try:
        write_lock(tmp_path / "s", holder.pid)
        before = snapshot(tmp_path)
        for job_dir in ("s/0", "s/7"):  # a job dir that exists, and one the sweep may still make
            line = refused(run_sdlab, capsys, "seed=1", f"hydra.run.dir={job_dir}", *FAST)  # cell 0's own settings
            assert f"s is in use by sdlab process {holder.pid}" in line
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_sweep_is_refused_while_a_run_holds_one_of_its_job_dirs(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seed=1,2", "hydra.sweep.dir=s", *FAST) == 0
    holder = live_process()
    try:
        write_lock(tmp_path / "s" / "1", holder.pid)
        before = snapshot(tmp_path)
        line = refused(run_sdlab, capsys, "-m", "seed=1,2", "hydra.sweep.dir=s", *FAST)
        assert f"is in use by sdlab process {holder.pid}" in line
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()


def test_every_job_dir_of_a_running_sweep_is_refused_to_another_sdlab(run_sdlab, tmp_path, monkeypatch):
    """In the sweep's own process its lock on the sweep dir keeps every other sdlab out of each job dir (a launcher
    that runs jobs in other processes locks each job dir as well)."""
    from sdlab.jobs import generate as job

    save, seen, me = job.save_png, [], os.getpid()

    def try_as_another_process(image, target, *a, **k):
        job_dir = Path(target).parent.parent
        with monkeypatch.context() as patch:
            patch.setattr(os, "getpid", lambda: me + 1)
            try:
                lock.acquire(job_dir)
                seen.append("taken")
                lock.release(job_dir)
            except lock.DirInUse as e:
                seen.append(str(e))
        return save(image, target, *a, **k)

    monkeypatch.setattr(job, "save_png", try_as_another_process)
    assert run_sdlab("-m", "seed=1,2,3", f"hydra.sweep.dir={tmp_path}", *FAST) == 0
    assert len(seen) == 3 and all(f"is in use by sdlab process {me}" in line for line in seen), seen
    assert not list(tmp_path.rglob(lock.LOCK_NAME))  # all released at the end


@pytest.mark.parametrize("content,says", [
    ('{"pid": -1, "host": "h"}', "names pid -1"),
    ('{"pid": 0, "host": "h"}', "names pid 0"),
    ('{"pid": 1099511627776, "host": "h"}', "names pid 1099511627776"),
    ('{"pid": "12", "host": "h"}', "is not an sdlab lock"),
    ('{"pid": true, "host": "h"}', "is not an sdlab lock"),
    ("garbage", "is not an sdlab lock"),
    (None, "cannot be read"),  # a folder where the lock file should be
])
def test_a_lock_sdlab_cannot_trust_is_an_error_line_never_skipped(run_sdlab, tmp_path, capsys, content, says):
    folder = tmp_path / "run"
    folder.mkdir()
    if content is None:
        (folder / lock.LOCK_NAME).mkdir()
    else:
        (folder / lock.LOCK_NAME).write_text(content)
    with pytest.raises(lock.DirInUse, match=says):
        lock.acquire(folder)
    before = snapshot(tmp_path)
    assert says in refused(run_sdlab, capsys, "seeds=[1]", f"hydra.run.dir={folder}", *FAST)
    assert says in refused(run_sdlab, capsys, "-m", "seed=1,2", f"hydra.sweep.dir={folder}", *FAST)
    assert snapshot(tmp_path) == before


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("stale", ["dead pid", "empty and old"])
def test_a_stale_lock_raced_by_many_processes_has_exactly_one_winner(tmp_path, stale):
    contenders, rounds = 8, 40  # the old unlink-and-retry takeover let 2+ win in ~1 round of 8
    folders = [tmp_path / str(i) for i in range(rounds)]
    for folder in folders:
        folder.mkdir()
        if stale == "dead pid":
            write_lock(folder, dead_pid())
        else:
            (folder / lock.LOCK_NAME).write_text("")
            os.utime(folder / lock.LOCK_NAME, (0, 0))
    race = [sys.executable, str(Path(__file__).with_name("lock_race.py")), str(contenders), *map(str, folders)]
    outcomes = json.loads(subprocess.run(race, check=True, capture_output=True, text=True, timeout=600).stdout)
    assert len(outcomes) == rounds
    for i, (folder, outcome) in enumerate(zip(folders, outcomes)):
        winners = [pid for pid in outcome if pid is not None]
        assert len(outcome) == contenders and len(winners) == 1, (i, outcome)
        assert json.loads((folder / lock.LOCK_NAME).read_text())["pid"] == winners[0]
        assert not (folder / lock.TAKEOVER_NAME).exists()


def assert_rows_are_the_pngs(folder: Path) -> pd.DataFrame:
    frame = pd.read_parquet(folder / "results.parquet")
    ok = frame[frame["status"] == "ok"]
    assert sorted(ok["image_path"]) == sorted(pngs(folder))
    assert len(pd.read_csv(folder / "results.csv")) == len(frame)
    return frame


def test_resume_false_into_a_used_run_dir_keeps_rows_and_pngs_in_step(run_sdlab, tmp_path):
    args = (*FAST, f"hydra.run.dir={tmp_path}")
    assert run_sdlab("seeds=[1,2]", *args) == 0
    first = assert_rows_are_the_pngs(tmp_path)
    assert run_sdlab("seeds=[2,3]", "resume=false", *args) == 0
    frame = assert_rows_are_the_pngs(tmp_path)
    assert frame["seed"].tolist() == [1, 2, 3]
    kept = dict(zip(first["seed"], first["run_id"]))
    assert frame["run_id"][0] == kept[1] and frame["run_id"][1] != kept[2]  # 2 recomputed, 1 kept


def test_resume_false_into_a_used_sweep_dir_keeps_rows_and_pngs_in_step(run_sdlab, tmp_path):
    sweep = f"hydra.sweep.dir={tmp_path}"
    assert run_sdlab("-m", "seed=1,2", "guidance_scale=1,7.5", *FAST, sweep) == 0  # 4 jobs, one cell each
    assert run_sdlab("-m", "seeds=[1,2,3]", "guidance_scale=1", "resume=false", *FAST, sweep) == 0  # job 0: 3 cells
    frame = assert_rows_are_the_pngs(tmp_path)
    # the job of three seeds takes a job dir of its own: job 0's holds another job's cell, left as it was
    assert len(frame) == len(pngs(tmp_path)) == 7
    assert pd.read_parquet(tmp_path / "0" / "results.parquet")["seed"].tolist() == [1]
    for job in tmp_path.iterdir():
        if job.is_dir() and (job / "results.parquet").is_file():
            assert_rows_are_the_pngs(job)


@pytest.mark.parametrize("key", ["train.export", "train.out"])
def test_training_into_a_folder_sdlab_did_not_make_is_refused_byte_for_byte(run_sdlab, tmp_path, monkeypatch, capsys,
                                                                          key):
    monkeypatch.chdir(tmp_path)
    theirs = tmp_path / "sd3-medium"  # a user's model folder: exporting would replace its transformer/
    (theirs / "transformer").mkdir(parents=True)
    (theirs / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"their weights")
    (theirs / "model_index.json").write_text("{}")
    before = snapshot(tmp_path)
    other = "train.out=o" if key == "train.export" else "train.export=e"
    line = refused(run_sdlab, capsys, "experiment=train_mini_flow", f"{key}=sd3-medium", other)
    assert f"{key}=sd3-medium already holds files sdlab did not write (model_index.json, transformer)" in line, line
    assert snapshot(tmp_path) == before


def test_the_shipped_model_folders_are_sdlabs_to_train_into():
    root = Path(__file__).resolve().parents[1]
    for name in ("mini", "mini_flow"):
        assert (root / "models" / name / MARK).is_file(), f"models/{name} lacks sdlab's mark: training would refuse it"


ONE_STEP = ("model=tiny", "num_inference_steps=1", "threads=1")


def test_a_job_dir_of_a_sweep_is_refused_as_a_sweep_dir(run_sdlab, tmp_path, monkeypatch, capsys):
    """A job dir's table and a sweep root's share the name results.*: a sweep run into one would replace it."""
    monkeypatch.chdir(tmp_path)
    sweep = ("-m", "seed=1,2,3", *ONE_STEP, "hydra.sweep.dir=r")
    assert run_sdlab(*sweep) == 0
    before = snapshot(tmp_path)
    for job_dir in ("r/0", "r/7"):  # a job dir that exists, and one a sweep there may make
        line = refused(run_sdlab, capsys, "-m", "seed=7,8", *ONE_STEP, f"hydra.sweep.dir={job_dir}")
        assert f"hydra.sweep.dir={job_dir} is a job dir of the sweep in r" in line, line
        assert snapshot(tmp_path) == before
    monkeypatch.setenv("INNER", "r/0")  # known only once composed: the sweeper's check
    line = refused(run_sdlab, capsys, "-m", "seed=7,8", *ONE_STEP, "hydra.sweep.dir=${oc.env:INNER}")
    assert "hydra.sweep.dir=r/0 is a job dir of the sweep in r" in line, line
    assert snapshot(tmp_path) == before
    assert run_sdlab(*sweep) == 0
    assert sorted(pd.read_parquet(tmp_path / "r" / "results.parquet")["seed"]) == [1, 2, 3]


def test_a_folder_holds_either_one_run_or_one_sweep(run_sdlab, tmp_path, monkeypatch, capsys):
    """A sweep into a single run's folder would replace its table with the sweep's; a run into a sweep's folder
    would mix its rows into the sweep's table, which the sweep's next collection replaces."""
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("seeds=[1,2]", *ONE_STEP, "hydra.run.dir=one") == 0
    assert run_sdlab("-m", "seed=3,4", *ONE_STEP, "hydra.sweep.dir=many") == 0
    before = snapshot(tmp_path)
    line = refused(run_sdlab, capsys, "-m", "seed=3,4", *ONE_STEP, "hydra.sweep.dir=one")
    assert "hydra.sweep.dir=one holds a run's results (" in line, line
    line = refused(run_sdlab, capsys, "seeds=[5]", *ONE_STEP, "hydra.run.dir=many")
    assert "hydra.run.dir=many holds a sweep (" in line, line
    for key, value in (("hydra.sweep.dir", "one"), ("hydra.run.dir", "many")):  # checked again once composed
        monkeypatch.setenv("TARGET", value)
        args = ("-m", "seed=3,4") if key == "hydra.sweep.dir" else ("seeds=[5]",)
        assert f"{key}={value} holds a" in refused(run_sdlab, capsys, *args, *ONE_STEP, f"{key}=${{oc.env:TARGET}}")
    assert snapshot(tmp_path) == before
    assert run_sdlab("seeds=[1,2]", *ONE_STEP, "hydra.run.dir=one") == 0  # each rerun as itself, as before
    assert run_sdlab("-m", "seed=3,4", *ONE_STEP, "hydra.sweep.dir=many") == 0
    assert run_sdlab("seed=3", *ONE_STEP, "hydra.run.dir=many/0") == 0  # a job dir takes its own cell's run


def test_a_run_of_other_settings_into_a_sweeps_job_dir_is_refused_and_the_sweep_stays_whole(run_sdlab, tmp_path,
                                                                                           monkeypatch, capsys):
    """`seed=9 hydra.run.dir=S/0` ran there and took the job dir's mark: the sweep's rerun made cell 0 again in a new
    job dir, its table gained the run's rows (seed 9) and its grid was deleted."""
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seed=1,2", *ONE_STEP, "hydra.sweep.dir=s") == 0
    before = snapshot(tmp_path)
    line = refused(run_sdlab, capsys, "seed=9", *ONE_STEP, "hydra.run.dir=s/0")
    assert line == ("sdlab: error: hydra.run.dir=s/0 is the job dir of a cell of the sweep in s; a run of other "
                    "settings there would join the sweep's table: give the run a folder of its own"), line
    assert snapshot(tmp_path) == before
    assert run_sdlab("-m", "seed=1,2", *ONE_STEP, "hydra.sweep.dir=s") == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir()) == ["0", "1"]
    assert sorted(pd.read_parquet(tmp_path / "s" / "results.parquet")["seed"]) == [1, 2]


@pytest.mark.parametrize("dir_key", ["hydra.run.dir", "hydra.sweep.dir"])
@pytest.mark.parametrize("target", ["gone/away", "new"])
def test_an_output_dir_that_is_a_link_to_nothing_is_one_line_naming_where_it_leads(run_sdlab, tmp_path, monkeypatch,
                                                                                 capsys, dir_key, target):
    """A link whose target does not exist could be neither made nor locked: `File exists: lnk`, exit 1 for a sweep."""
    monkeypatch.chdir(tmp_path)
    Path("lnk").symlink_to(tmp_path / target)
    line = refused(run_sdlab, capsys, *(["-m", "seed=1,2"] if dir_key == "hydra.sweep.dir" else []), f"{dir_key}=lnk",
                   *FAST)
    assert line == (f"sdlab: error: {dir_key}=lnk is a link to {tmp_path / target}, which does not exist; give a "
                    f"folder, or make {tmp_path / target} first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lnk"]
