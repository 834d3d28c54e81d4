"""Training loop: AdamW, warmup + cosine LR, EMA, loss table and figure, checkpoints as safetensors and JSON."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from sdlab.bench.figures import log_scale, save_figure, styled
from sdlab.bench.records import write_table
from sdlab.lazy import pandas as pd, safetensors_torch, torch
from sdlab.mini.export import replace_folder

log = logging.getLogger(__name__)
LOSS_TABLE = "losses"
STATE_FILE = "state.json"


@dataclass
class Stage:
    """One trainable stage: the model, a loss for a step number, and extra modules trained and checkpointed with it."""

    name: str
    model: torch.nn.Module
    loss: Callable[[int], dict[str, torch.Tensor]]
    ema_decay: float = 0.0
    extra: dict[str, torch.nn.Module] = field(default_factory=dict)
    ema: torch.nn.Module | None = None


def lr_at(step: int, steps: int, lr: float, warmup: int, final_fraction: float = 0.05,
          time_fraction: float = 0.0) -> float:
    """Linear warmup to `lr`, then cosine decay to `final_fraction * lr` at `steps` (or when time runs out)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, steps - warmup), time_fraction))
    return lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def loss_figure(frame: pd.DataFrame, target: Path, title: str) -> None:
    """Loss curves (log scale, raw and smoothed) against the step."""
    with styled() as plt:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for column in [c for c in frame.columns if c.startswith("loss")]:
            line, = ax.plot(frame["step"], frame[column], alpha=0.25, lw=0.8)
            smooth = frame[column].rolling(max(1, len(frame) // 50), min_periods=1).mean()
            ax.plot(frame["step"], smooth, color=line.get_color(), label=column)
        log_scale(ax, "y")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend()
        save_figure(fig, target)


def save_checkpoint(folder: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any]) -> None:
    """Write modules, optimizer and JSON state into `folder`, replacing any previous checkpoint whole."""

    def fill(staging: Path) -> None:
        staging.mkdir(parents=True)
        for name, module in modules.items():
            weights = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
            safetensors_torch.save_file(weights, str(staging / f"{name}.safetensors"))
        if optimizer is not None:  # per-parameter state as flat `<index>.<key>` tensors
            states = optimizer.state_dict()["state"].items()
            safetensors_torch.save_file({f"{index}.{key}": torch.as_tensor(value).detach().contiguous().clone()
                                         for index, state in states for key, value in state.items()},
                                        str(staging / "optimizer.safetensors"))
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2))

    replace_folder(folder, fill, staging=folder.with_name(f"{folder.name}.staging"),
                   old=folder.with_name(f"{folder.name}.previous"))


def load_checkpoint(folder: Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None) -> dict[str, Any] | None:
    """Restore modules (and optimizer) from `folder`; the JSON state, or None when there is no checkpoint."""
    if not (folder / STATE_FILE).is_file():  # a crash between the two renames leaves only the previous copy
        folder = folder.with_name(folder.name + ".previous")
        if not (folder / STATE_FILE).is_file():
            return None
    for name, module in modules.items():
        module.load_state_dict(safetensors_torch.load_file(str(folder / f"{name}.safetensors")))
    if optimizer is not None and (folder / "optimizer.safetensors").is_file():
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, tensor in safetensors_torch.load_file(str(folder / "optimizer.safetensors")).items():
            index, key = name.split(".", 1)
            state.setdefault(int(index), {})[key] = tensor
        optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    return json.loads((folder / STATE_FILE).read_text())


def run_stage(stage: Stage, settings: dict[str, Any], folder: Path) -> pd.DataFrame:
    """Train `stage` for settings['steps'] steps, resuming from `folder/checkpoint`; returns the loss table."""
    steps, lr, warmup = int(settings["steps"]), float(settings["lr"]), int(settings.get("warmup", 100))
    every = int(settings.get("checkpoint_every", 200))
    max_seconds = float(settings.get("max_minutes") or 0) * 60  # also anneals the LR by elapsed time
    trained = [p for module in (stage.model, *stage.extra.values()) for p in module.parameters()]
    optimizer = torch.optim.AdamW(trained, lr=lr, betas=(0.9, 0.99),
                                  weight_decay=float(settings.get("weight_decay", 0.0)))
    if stage.ema_decay > 0 and stage.ema is None:
        stage.ema = copy.deepcopy(stage.model).requires_grad_(False)
    modules = {"model": stage.model, **({"ema": stage.ema} if stage.ema is not None else {}), **stage.extra}
    state = load_checkpoint(folder / "checkpoint", modules, optimizer) or {"step": 0}
    start = int(state["step"])
    if start:
        log.info("%s: resumed at step %d from %s", stage.name, start, folder / "checkpoint")
    table = folder / f"{LOSS_TABLE}.parquet"  # loss rows of earlier runs, up to the resumed step
    rows = pd.read_parquet(table).query("step < @start").to_dict("records") if start and table.is_file() else []

    def checkpoint(step: int) -> None:
        save_checkpoint(folder / "checkpoint", modules, optimizer, {
            "step": step, "stage": stage.name, "elapsed_s": time.monotonic() - began, "settings": settings})
        frame = pd.DataFrame(rows)
        if len(frame):
            write_table(frame, folder, LOSS_TABLE)
            loss_figure(frame, folder / "losses.png", f"sdlab-mini {stage.name}")

    began = time.monotonic() - float(state.get("elapsed_s", 0.0))  # as if the earlier runs' time ran on into this one
    stage.model.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"train {stage.name}", mininterval=5)
    done = start
    for step in bar:
        used = (time.monotonic() - began) / max_seconds if max_seconds else 0.0
        rate = lr_at(step, steps, lr, warmup, time_fraction=used)
        for group in optimizer.param_groups:
            group["lr"] = rate
        losses = stage.loss(step)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trained, float(settings.get("clip", 1.0)))
        optimizer.step()
        if stage.ema is not None:  # ema <- decay * ema + (1 - decay) * model
            with torch.no_grad():
                for target, source in zip(stage.ema.parameters(), stage.model.parameters()):
                    target.lerp_(source, 1.0 - min(stage.ema_decay, (1 + step) / (10 + step)))
        row = {"step": step, "lr": rate, "grad_norm": float(grad_norm), "time_s": time.monotonic() - began,
               **{k: float(v.detach()) for k, v in losses.items()}}
        rows.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
        done = step + 1
        if done % every == 0:
            checkpoint(done)
            log.info("%s step %d: loss %.5g (%.0f s)", stage.name, done, row["loss"], row["time_s"])
        if max_seconds and time.monotonic() - began > max_seconds:
            log.info("%s: time limit reached at step %d", stage.name, done)
            break
    if done != start and done % every:
        checkpoint(done)
    stage.model.eval()
    return pd.DataFrame(rows)


def summary(stage: Stage, frame: pd.DataFrame) -> dict[str, Any]:
    """The summary row's start for a trained stage: its name, steps done and final loss."""
    return {"stage": stage.name, "steps": int(frame["step"].max() + 1) if len(frame) else 0,
            "final_loss": float(frame["loss"].iloc[-1]) if len(frame) else None}
