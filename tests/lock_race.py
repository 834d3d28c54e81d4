"""Contenders for one stale lock, forked from a small interpreter (forking the test process, torch and all loaded,
costs about 50 ms a contender): `python tests/lock_race.py CONTENDERS FOLDER...` races on each folder in turn and
prints, per folder, the pid of each contender that took its lock or null, as one JSON list of lists."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from pathlib import Path

from sdlab.bench import lock


def contend(folder: str, start, done, results) -> None:
    """One contender: wait for all, try to take the lock, report, and stay alive until every contender has tried."""
    start.wait()
    try:
        lock.acquire(Path(folder), parents=False)
        results.put(os.getpid())
    except lock.DirInUse:
        results.put(None)
    done.wait()


def race(folder: str, contenders: int) -> list[int | None]:
    """Start `contenders` processes at once on `folder`'s lock; what each got."""
    context = multiprocessing.get_context("fork")
    start, done, results = context.Barrier(contenders), context.Barrier(contenders), context.Queue()
    processes = [context.Process(target=contend, args=(folder, start, done, results)) for _ in range(contenders)]
    for process in processes:
        process.start()
    outcome = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    return outcome


if __name__ == "__main__":
    print(json.dumps([race(folder, int(sys.argv[1])) for folder in sys.argv[2:]]))
