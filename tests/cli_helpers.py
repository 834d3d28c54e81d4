"""`sdlab` as a user starts it: a fresh interpreter, offline, with the environment each test gives it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SDLAB = (sys.executable, "-m", "sdlab.app.cli")  # the command line of `sdlab`, for tests that start it themselves


def bare_env(**extra: str) -> dict[str, str]:
    """Only PATH, HOME and HF_HUB_OFFLINE=1, with `extra`: no thread or cache settings of this process leak in."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "HF_HUB_OFFLINE": "1", **extra}


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300,
            command: tuple[str, ...] = SDLAB, **extra: str) -> subprocess.CompletedProcess:
    """`sdlab ARGS` (started as `command`) run to its end, offline, with `env` and `extra`; output as text. Without
    `env` it has this process's environment, and with a `cwd` a Hugging Face home of its own there, so no cached model
    leaks in."""
    if env is None:
        env = {**os.environ, **({"HF_HOME": str(Path(cwd) / "hf_home")} if cwd is not None else {})}
    env = {**env, "HF_HUB_OFFLINE": "1", **extra}
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
