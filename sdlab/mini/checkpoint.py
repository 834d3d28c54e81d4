"""Resumable checkpoints without pickle: module weights and AdamW state as safetensors, counters as JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat `<index>.<key>` tensors."""
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            out[f"{index}.{key}"] = tensor.detach().contiguous().clone()
    return out


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Load flat `<index>.<key>` tensors back into the optimizer's per-parameter state."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def save_checkpoint(folder: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any]) -> None:
    """Write modules, optimizer and JSON state into `folder`, replacing any previous checkpoint whole."""
    folder = Path(folder)
    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, module in modules.items():
        weights = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
        save_file(weights, str(staging / f"{name}.safetensors"))
    if optimizer is not None:
        save_file(optimizer_tensors(optimizer), str(staging / "optimizer.safetensors"))
    (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
    previous = folder.with_name(folder.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if folder.exists():
        folder.rename(previous)
    staging.rename(folder)
    shutil.rmtree(previous, ignore_errors=True)


def load_checkpoint(folder: Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None) -> dict[str, Any] | None:
    """Restore modules (and optimizer) from `folder`; the JSON state, or None when there is no checkpoint."""
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file():
        previous = folder.with_name(folder.name + ".previous")
        if not (previous / STATE_FILE).is_file():
            return None
        folder = previous
    for name, module in modules.items():
        module.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
    if optimizer is not None and (folder / "optimizer.safetensors").is_file():
        restore_optimizer(optimizer, load_file(str(folder / "optimizer.safetensors")))
    return json.loads((folder / STATE_FILE).read_text())
