"""One sdlab process per run or sweep dir: a lock file naming its holder, taken over once the holder is gone."""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
from pathlib import Path

from sdlab.errors import UserError

LOCK_NAME = ".sdlab.lock"
UNWRITTEN_GRACE_S = 60.0  # an empty lock this old belongs to a holder killed before it wrote its pid


class DirInUse(UserError):
    """Another live sdlab process works in this dir."""


def _holder(path: Path) -> dict | None:
    """The holder recorded in a lock file, or None while it is empty or unreadable."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and isinstance(found.get("pid"), int) else None


def _alive(pid: int) -> bool:
    """True when a process with this pid runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _stale(path: Path, holder: dict | None) -> bool:
    """True when the lock's holder is gone: a dead pid on this host, or never written and old."""
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime > UNWRITTEN_GRACE_S
        except FileNotFoundError:
            return True
    return holder.get("host") == socket.gethostname() and not _alive(holder["pid"])


def acquire(folder: Path) -> None:
    """Lock `folder` for this process (again is fine), or raise DirInUse naming the live holder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and holder["pid"] == mine["pid"] and holder.get("host") == mine["host"]:
                return
            if not _stale(path, holder):
                who = f"process {holder['pid']} on {holder.get('host')}" if holder else "a process starting up"
                since = f" since {holder['since']}" if holder and holder.get("since") else ""
                raise DirInUse(f"{folder} is in use by sdlab {who}{since}; wait for it or choose another dir "
                               f"(delete {path} if no sdlab runs there)") from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(mine))
        return
    raise DirInUse(f"{folder} is in use: its lock {path} keeps reappearing")


def hold(folder: Path) -> None:
    """Lock `folder` until `release` or the end of the process (sys.exit skips Hydra's end-of-run callbacks)."""
    acquire(folder)
    atexit.register(release, folder)


def release(folder: Path) -> None:
    """Remove this process's lock on `folder` (a lock someone else holds stays)."""
    path = Path(folder) / LOCK_NAME
    holder = _holder(path)
    if holder is not None and holder["pid"] == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
