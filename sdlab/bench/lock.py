"""One sdlab process per run or sweep dir: a lock file naming its holder, taken over once the holder is gone.

Only the process that creates the takeover file (`O_EXCL`) may judge a lock stale and replace it, in one rename: the
lock file never goes missing for another process to create in between."""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
from pathlib import Path

from sdlab.errors import UserError
from sdlab.io import atomic_write_text

LOCK_NAME = ".sdlab.lock"
TAKEOVER_NAME = ".sdlab.lock.takeover"
UNWRITTEN_GRACE_S = 60.0  # an empty lock this old belongs to a holder killed before it wrote its pid
TAKEOVER_WAIT_S = 5.0  # how long to wait for another process's takeover before calling its file stale
PID_MAX = 2**22  # Linux's largest pid_max: a pid outside 1..PID_MAX names no process


class DirInUse(UserError):
    """Another live sdlab process works in this dir, or its lock cannot be trusted."""


def _holder(path: Path) -> dict | None:
    """The holder in a lock file; None when gone or empty (starting up); DirInUse when unreadable, never skipped."""
    def untrusted(why: str) -> DirInUse:
        return DirInUse(f"the lock {path} {why}; delete it if no sdlab runs in {path.parent}")

    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise untrusted(f"cannot be read ({type(e).__name__}: {e})") from None
    if not text.strip():
        return None
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    pid = found.get("pid") if isinstance(found, dict) else None
    if not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(found.get("host", ""), str):
        raise untrusted(f"is not an sdlab lock ({text[:60]!r})")
    if not 1 <= pid <= PID_MAX:
        raise untrusted(f"names pid {pid}, which no process can have")
    return found


def _stale(path: Path, holder: dict | None) -> bool:
    """True when the lock's holder is gone: a dead pid on this host, or never written and old."""
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime > UNWRITTEN_GRACE_S
        except FileNotFoundError:
            return True
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def _mine(holder: dict | None) -> bool:
    """True when `holder` is this process."""
    return holder is not None and holder["pid"] == os.getpid() and holder.get("host") == socket.gethostname()


def _in_use(folder: Path, holder: dict | None) -> DirInUse:
    """The one-line error naming a live holder ({} or None: one starting up)."""
    who = f"process {holder['pid']} on {holder.get('host')}" if holder else "a process starting up"
    since = f" since {holder['since']}" if holder and holder.get("since") else ""
    return DirInUse(f"{folder} is in use by sdlab {who}{since}; wait for it or choose another dir "
                    f"(delete {folder / LOCK_NAME} if no sdlab runs there)")


def _take_over(path: Path, mine: dict) -> bool | None:
    """Replace a still stale lock with `mine`, holding the takeover file: True when taken, False when not stale after
    all, None when another process holds the takeover file (the caller waits and looks again)."""
    mutex = path.with_name(TAKEOVER_NAME)
    try:
        os.close(os.open(mutex, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return None
    try:
        if not _stale(path, _holder(path)):  # judged again: another taker may have made it live since
            return False
        atomic_write_text(path, json.dumps(mine))
        return True
    finally:
        mutex.unlink(missing_ok=True)


def live_holder(folder: Path) -> dict | None:
    """The live holder of `folder`'s lock other than this process, else None (a lock it cannot read raises)."""
    path = Path(folder) / LOCK_NAME
    holder = _holder(path)
    if not path.exists() or _mine(holder) or _stale(path, holder):
        return None
    return holder or {}


def refuse_locked_parents(folder: Path) -> None:
    """Raise DirInUse when a folder above `folder` is locked by another live sdlab (e.g. the sweep owning a job dir)."""
    for parent in Path(folder).resolve().parents:
        if os.path.lexists(parent / LOCK_NAME) and (holder := live_holder(parent)) is not None:
            raise _in_use(parent, holder)


def acquire(folder: Path, parents: bool = True) -> None:
    """Lock `folder` for this process (again is fine), else DirInUse; with `parents`, a lock above it refuses too."""
    folder = Path(folder)
    if parents:
        refuse_locked_parents(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    deadline = time.monotonic() + TAKEOVER_WAIT_S
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if _mine(holder):
                return
            if not _stale(path, holder):
                raise _in_use(folder, holder) from None
            taken = _take_over(path, mine)
            if taken:
                break
            if taken is None and time.monotonic() > deadline:
                raise DirInUse(f"{folder}: another sdlab has been taking over its stale lock for "
                               f"{TAKEOVER_WAIT_S:.0f} s; delete {path.with_name(TAKEOVER_NAME)} if no sdlab runs "
                               f"there") from None
            time.sleep(0.01 if taken is None else 0)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(mine))
            f.flush()
            os.fsync(f.fileno())
        break
    if parents:  # looked at again once locked: of a sweep and a run into its job dir, one sees the other
        try:
            refuse_locked_parents(folder)
        except DirInUse:
            release(folder)
            raise


HELD: list[Path] = []  # the folders `hold` locked in this process


def hold(folder: Path) -> None:
    """Lock `folder` until `release` or the end of the process (sys.exit skips Hydra's end-of-run callbacks)."""
    acquire(folder)
    HELD.append(Path(folder))
    atexit.register(release, folder)


def holds(folder: Path) -> bool:
    """Whether this process holds `folder`'s lock by `hold` (a sweep's: another sdlab is refused under it)."""
    return Path(folder).resolve() in {held.resolve() for held in HELD}


def release_held() -> None:
    """Release every lock `hold` took, for an exit that skips atexit."""
    for folder in reversed(HELD):
        release(folder)


def release(folder: Path) -> None:
    """Remove this process's lock on `folder` (a lock someone else holds, or one it cannot read, stays)."""
    path = Path(folder) / LOCK_NAME
    try:
        holder = _holder(path)
    except DirInUse:
        return
    if _mine(holder):
        path.unlink(missing_ok=True)
