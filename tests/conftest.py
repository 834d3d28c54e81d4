"""Shared fixtures: offline Hugging Face, the tiny pipeline, and an in-process `sdlab` runner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share the cores: one torch thread each, not two that spin
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny():
    """The tiny model's adapter and its ModelSpec, loaded once for the session."""
    from sdlab.config import ModelSpec
    from sdlab.models.loading import load_model

    spec = ModelSpec("tiny", resolution=64)
    model = load_model(spec)
    model.pipe.set_progress_bar_config(disable=True)
    return model, spec


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on 2 shared cores, two threads oversubscribe and the tiny UNet gets ~30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_sdlab(monkeypatch):
    """Run the `sdlab` command in this process; returns the exit code (0 when it returns normally)."""
    from hydra.core.plugins import Plugins

    from sdlab.app import cli

    Plugins.instance()  # Hydra's first plugin scan runs each plugin module again: a test's patch to one comes after it

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["sdlab", *args])
        try:
            cli.entry()
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    return run
