"""Folders sdlab owns: it writes only into a folder it made or marked (its `.sdlab` file), and only below it.

A run or sweep dir is sdlab's when it does not exist yet, is empty (sdlab's own lock aside), or holds the mark.
Every path written below it (job dirs, the log, `images/`, `.hydra/`) must resolve inside it, symlinks followed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sdlab.bench import lock
from sdlab.bench.lock import LOCK_NAME, TAKEOVER_NAME
from sdlab.bench.records import TABLE_NAME
from sdlab.bench.resume import CONFIG, MANIFEST, MARKER
from sdlab.errors import UserError
from sdlab.io import atomic_write_text, is_temp_file

MARK = ".sdlab"
MARK_TEXT = "This folder was made by sdlab (or given to it): sdlab runs and sweeps may write and resume here.\n"
OWN_NAMES = frozenset({MARK, LOCK_NAME, TAKEOVER_NAME})  # sdlab's files that may sit in a folder it has not marked
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes into its output_subdir
SWEEP_FILES = (MANIFEST, "multirun.yaml")  # what a sweep writes in its root folder
TABLE_FILES = (f"{TABLE_NAME}.parquet", f"{TABLE_NAME}.csv")  # a run's table, or a sweep's in its root folder
RUN_FILES = (*TABLE_FILES, MARKER)  # what a run, or a sweep's job, writes in its folder


class NotOwned(UserError):
    """A folder sdlab did not make, or a path that would leave the run dir."""


def checked_root(target: str | os.PathLike, key: str) -> Path:
    """The absolute, resolved folder `target` names; an empty path, the filesystem root or the home folder is refused."""
    text = str(target).strip()
    if not text:
        raise NotOwned(f"{key}= is empty; give a folder for sdlab's output (e.g. {key}=outputs/mine)")
    folder = Path(text).expanduser().resolve()
    if Path(text).expanduser().is_symlink() and not os.path.lexists(folder):  # neither made nor locked through it
        raise NotOwned(f"{key}={text} is a link to {folder}, which does not exist; give a folder, or make {folder} first")
    if folder in (Path(folder.anchor), Path.home().resolve()):
        what = "the filesystem root" if folder == Path(folder.anchor) else "the home folder"
        raise NotOwned(f"{key}={text} is {what}; give a folder of its own for sdlab's output")
    return folder


def checked_folder(value: str | os.PathLike, key: str) -> Path:
    """The folder `key=value` names (see `checked_root`), refused unless sdlab may write there (see `check_owned`)."""
    folder = checked_root(value, key)
    check_owned(folder, key, shown=str(value))
    return folder


def is_owned(folder: Path) -> bool:
    """True when `folder` carries sdlab's mark (a plain file, not a link)."""
    mark = Path(folder) / MARK
    return mark.is_file() and not mark.is_symlink()


def launch_paths(job_name: str | None, output_subdir: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(folders, files) a launcher writes into a run or job dir before the job starts: Hydra's output_subdir and its
    files, and the log (when `job_name` is known)."""
    folders = () if output_subdir is None else (output_subdir,)
    log = () if job_name is None else (f"{job_name}.log",)
    return folders, (*log, *(f"{subdir}/{name}" for subdir in folders for name in HYDRA_FILES))


def launch_files(job_name: str, output_subdir: str | None) -> frozenset[str]:
    """What a launcher writes into a job dir before the job starts (and marks it), as relative paths."""
    return frozenset(Path(name).as_posix() for names in launch_paths(job_name, output_subdir) for name in names)


def holds_only(folder: Path, names: frozenset[str]) -> bool:
    """True when every path below `folder` is one of `names` (relative), none of them a link."""
    return all(p.relative_to(folder).as_posix() in names and not p.is_symlink() for p in Path(folder).rglob("*"))


def check_owned(folder: Path, key: str, shown: str | None = None, launched: frozenset[str] = frozenset()) -> None:
    """Refuse an existing `folder` that is no folder or holds files and no `.sdlab` mark, or is of another kind; a
    folder holding only `launched` files is a job dir whose launch was cut short before its job marked it."""
    shown = shown or str(folder)
    if os.path.lexists(folder) and not folder.is_dir():
        raise NotOwned(f"{key}={shown} is a file, not a folder; give a new or empty folder")
    if os.path.lexists(folder) and not is_owned(folder) and not (launched and holds_only(folder, launched)):
        try:
            others = sorted(p.name for p in Path(folder).iterdir() if p.name not in OWN_NAMES
                            and not (is_temp_file(p.name) and p.name.startswith(f".{MARK}.")))  # its mark's, cut short
        except OSError as e:
            raise NotOwned(f"{key}={shown} cannot be listed ({type(e).__name__}: {e})") from None
        if others:
            listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise NotOwned(f"{key}={shown} already holds files sdlab did not write ({listed}); choose a new or empty "
                           f"folder, or mark it as sdlab's with `touch {Path(shown) / MARK}`")
    check_kind(folder, key, shown)


def check_kind(folder: Path, key: str, shown: str) -> None:
    """A folder holds one run or one sweep (their tables share a name); a sweep's job dir takes runs, not sweeps."""
    held = lambda names, where=folder: [n for n in names if os.path.lexists(Path(where, n))]  # noqa: E731
    if key == "hydra.sweep.dir" and held(SWEEP_FILES, Path(folder).resolve().parent):
        raise NotOwned(f"{key}={shown} is a job dir of the sweep in {Path(shown).parent}; a sweep there would "
                       f"replace its job's table: give the sweep a folder of its own")
    if key == "hydra.sweep.dir" and held(RUN_FILES) and not held(SWEEP_FILES):
        raise NotOwned(f"{key}={shown} holds a run's results ({', '.join(held(RUN_FILES))}); a folder holds one run "
                       f"or one sweep: give the sweep a folder of its own")
    if key == "hydra.run.dir" and held(SWEEP_FILES):
        raise NotOwned(f"{key}={shown} holds a sweep ({', '.join(held(SWEEP_FILES))}); a folder holds one run or one "
                       f"sweep: give the run a folder of its own, or rerun the sweep with -m hydra.sweep.dir={shown}")


def confined(base: Path, relative: str, key: str, allow_base: bool = False) -> Path:
    """`base/relative` resolved (symlinks followed); a NotOwned error unless it stays inside `base`."""
    text = str(relative)
    if not text.strip() or "\x00" in text:
        raise NotOwned(f"{key}={text!r} is not a path inside {base}")
    path = (base / text).resolve()
    if path == base and not allow_base:
        raise NotOwned(f"{key}={text} is {base} itself; give a folder inside it (e.g. {key}=" + "${hydra.job.num})")
    if not path.is_relative_to(base):
        raise NotOwned(f"{key}={text} leads to {path}, outside {base}; sdlab writes only inside its output folder")
    return path


def check_job_name(name: str) -> None:
    """Refuse a `hydra.job.name` that is not a plain file name: it names the log file in the run dir."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\x00"):
        raise NotOwned(f"hydra.job.name={name} is not a plain name; it names the log file <run dir>/<name>.log")


def check_writes_inside(folder: Path, key: str, job_name: str | None, output_subdir: str | None,
                        shown: str | None = None) -> None:
    """The log (if `job_name` is known), `images/` and `output_subdir` of a run in `folder` resolve inside it, and
    nothing there is in the way of what sdlab writes (see `check_kinds`)."""
    if job_name is not None:
        check_job_name(job_name)
        confined(folder, f"{job_name}.log", "hydra.job.name")
    confined(folder, "images", f"{key} (its images/)")
    if output_subdir is not None:
        confined(folder, output_subdir, "hydra.output_subdir", allow_base=True)
        for name in HYDRA_FILES:  # Hydra opens these for writing: a link among them would be followed
            confined(folder, f"{output_subdir}/{name}", f"{key} (its {output_subdir}/{name})")
    for name in (MARK, "multirun.yaml"):  # written in place (not replaced): a link here would be followed
        if (folder / name).is_symlink():
            raise NotOwned(f"{key}={shown or folder}: {name} is a symlink; sdlab does not write through links")
    if key == "hydra.sweep.dir":  # the sweep's root: its own files; each job dir is checked as a run's
        check_kinds(folder, shown, folders=(), files=(MARK, *TABLE_FILES, *SWEEP_FILES))
        return
    folders, files = launch_paths(job_name, output_subdir)
    check_kinds(folder, shown, folders=("images", *folders), files=(MARK, *RUN_FILES, CONFIG, *files))


def check_kinds(folder: Path, shown: str | None, folders: tuple[str, ...], files: tuple[str, ...]) -> None:
    """Refuse a file where sdlab writes one of `folders`, or a folder where it writes one of `files`, in `folder`:
    the run would fail half way, after writing some of its files."""
    for names, wanted, found in ((folders, "folder", "file"), (files, "file", "folder")):
        for name in names:
            path = Path(folder, name)
            if os.path.lexists(path) and path.is_dir() != (wanted == "folder"):
                raise NotOwned(f"{Path(shown or folder) / name} is a {found} where sdlab writes a {wanted}; move it "
                               f"out of the way or choose another folder")


def check_run_dir(folder: Path, key: str, job_name: str | None, output_subdir: str | None, shown: str | None = None) -> None:
    """Everything a run writes in `folder` stays in it: the folder is sdlab's and its writes resolve inside it."""
    check_owned(folder, key, shown)
    check_writes_inside(folder, key, job_name, output_subdir, shown)


def adopt(folder: Path) -> None:
    """Mark `folder` (made if missing) as sdlab's, so later runs may write and resume there."""
    if not is_owned(folder):
        atomic_write_text(Path(folder) / MARK, MARK_TEXT)


def claim(folder: Path, key: str) -> None:
    """Lock `folder` for this process, check again that it is sdlab's, and mark it (its lock released on refusal)."""
    lock.hold(folder)
    try:
        check_owned(Path(folder), key)
    except NotOwned:
        lock.release(folder)
        raise
    adopt(folder)


def next_free(folder: Path) -> Path:
    """`folder` when nothing is there, else the first free `<name>_2`, `<name>_3`... beside it (listed after it)."""
    folder, n, free = Path(folder), 1, Path(folder)
    while os.path.lexists(free):
        n += 1
        free = folder.with_name(f"{folder.name}_{n}")
    return free


def claim_new(folder: Path, key: str) -> Path:
    """Make and claim `folder` or the next free name beside it, by one `os.mkdir` each: of two processes that pick one
    name, one makes it and the other goes on, so neither writes into a folder it did not make."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    while True:
        free = next_free(folder)
        try:
            os.mkdir(free)
        except FileExistsError:
            continue
        try:
            claim(free, key)
        except BaseException:
            lock.release(free)
            with contextlib.suppress(OSError):  # as it was made, empty: nothing of it is left on a refusal
                free.rmdir()
            raise
        return free


def abandoned_sweeps(root: Path) -> list[Path]:
    """The `multirun_*` folders under `root` of sweeps killed as they started (a dead lock, a mark or temp files and
    nothing else), newest first; not an empty one, which may be another sweep's between its mkdir and its lock."""
    found = []
    for folder in Path(root).glob("multirun_*"):
        try:  # read lazily: a finished sweep's folder (perhaps of 10,000 jobs) is passed at its first other name
            if (folder.is_dir() and not folder.is_symlink() and (folder / LOCK_NAME).is_file()
                    and lock.live_holder(folder) is None):
                with os.scandir(folder) as entries:
                    if all(entry.name in OWN_NAMES or is_temp_file(entry.name) for entry in entries):
                        found.append(folder)
        except (OSError, lock.DirInUse):  # a folder it cannot list, a lock it cannot read: not taken
            continue
    return sorted(found, key=lambda folder: folder.stat().st_mtime, reverse=True)
