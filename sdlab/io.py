"""Atomic file writes (a temp file in the same folder, fsync for what resume trusts, then rename over the target), and
the reader of sdlab's own JSON records."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)
TEMP_MARK = ".sdlab-tmp"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}" + re.escape(TEMP_MARK) + r"(\.[^.]+)?$")


def is_temp_file(path: str | Path) -> bool:
    """True for the temp files `atomic_path` makes (`.<name>.<8 random>.sdlab-tmp<suffix>`), and only those."""
    return bool(_TEMP_NAME.match(Path(path).name))


@contextmanager
def atomic_path(target: str | Path, sync: bool = True) -> Iterator[Path]:
    """A temp path beside `target`, renamed onto it on success (fsynced unless `sync` is false), else removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_MARK + target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if sync:
            with open(tmp_path, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # as a plain write; mkstemp (or a writer's own temp file) left 0600
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_save(image, target: str | Path, **options) -> Path:
    """Save a PIL image to `target` atomically, `options` as `Image.save` takes them (format=..., pnginfo=...)."""
    with atomic_path(target) as tmp:
        image.save(tmp, **options)
    return Path(target)


def atomic_write_text(target: str | Path, text: str, sync: bool = True) -> None:
    """Write UTF-8 `text` to `target` atomically (see `atomic_path` for `sync`)."""
    with atomic_path(target, sync) as tmp:
        tmp.write_bytes(text.encode("utf-8"))


def read_json_object(path: str | Path) -> dict:
    """The JSON object in the file at `path`; {} when there is none, it cannot be read, or it holds no object."""
    try:
        found = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def open_regular(path: str | Path) -> BinaryIO:
    """Open a regular file for reading, never a pipe, device, folder (unblocked) nor last symlink; OSError else."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")
