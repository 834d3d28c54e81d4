"""The shared training loop: AdamW with warmup + cosine LR, EMA, tqdm, loss table and figure, resumable."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from sdlab.bench.figures import STYLE, save_figure
from sdlab.bench.records import write_table
from sdlab.mini.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)
LOSS_TABLE = "losses"


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


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for target, source in zip(ema.parameters(), model.parameters()):
        target.lerp_(source, 1.0 - decay)


def loss_figure(frame: pd.DataFrame, target: Path, title: str) -> None:
    """Loss curves (log scale, raw and smoothed) against the step."""
    import matplotlib.pyplot as plt


    columns = [c for c in frame.columns if c.startswith("loss")]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for column in columns:
            line, = ax.plot(frame["step"], frame[column], alpha=0.25, lw=0.8)
            smooth = frame[column].rolling(max(1, len(frame) // 50), min_periods=1).mean()
            ax.plot(frame["step"], smooth, color=line.get_color(), label=column)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend()
        save_figure(fig, target)


def previous_rows(folder: Path, step: int) -> list[dict[str, Any]]:
    """Loss rows of earlier runs of this stage, up to (not including) `step`."""
    table = Path(folder) / f"{LOSS_TABLE}.parquet"
    if step == 0 or not table.is_file():
        return []
    frame = pd.read_parquet(table)
    return frame[frame["step"] < step].to_dict("records")


def run_stage(stage: Stage, settings: dict[str, Any], folder: Path) -> pd.DataFrame:
    """Train `stage` for settings['steps'] steps, resuming from `folder/checkpoint`; returns the loss table."""
    folder = Path(folder)
    steps, lr, warmup = int(settings["steps"]), float(settings["lr"]), int(settings.get("warmup", 100))
    every = int(settings.get("checkpoint_every", 200))
    max_seconds = float(settings.get("max_minutes") or 0) * 60  # also anneals the LR by elapsed time
    # 1. Optimizer and EMA copy.
    trained = [p for module in (stage.model, *stage.extra.values()) for p in module.parameters()]
    optimizer = torch.optim.AdamW(trained, lr=lr, betas=(0.9, 0.99), weight_decay=float(settings.get("weight_decay", 0.0)))
    if stage.ema_decay > 0 and stage.ema is None:
        stage.ema = copy.deepcopy(stage.model).requires_grad_(False)
    modules = {"model": stage.model, **({"ema": stage.ema} if stage.ema is not None else {}), **stage.extra}
    # 2. Resume.
    state = load_checkpoint(folder / "checkpoint", modules, optimizer) or {"step": 0}
    start, spent = int(state["step"]), float(state.get("elapsed_s", 0.0))
    if start:
        log.info("%s: resumed at step %d from %s", stage.name, start, folder / "checkpoint")
    rows = previous_rows(folder, start)

    def checkpoint(step: int) -> None:
        elapsed = spent + time.monotonic() - began
        save_checkpoint(folder / "checkpoint", modules, optimizer, {"step": step, "stage": stage.name,
                                                                    "elapsed_s": elapsed, "settings": settings})
        frame = pd.DataFrame(rows)
        if len(frame):
            write_table(frame, folder, LOSS_TABLE)
            loss_figure(frame, folder / "losses.png", f"sdlab-mini {stage.name}")

    # 3. Steps.
    began = time.monotonic()
    stage.model.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"train {stage.name}", mininterval=5)
    step = start
    for step in bar:
        used = (spent + time.monotonic() - began) / max_seconds if max_seconds else 0.0
        rate = lr_at(step, steps, lr, warmup, time_fraction=used)
        for group in optimizer.param_groups:
            group["lr"] = rate
        losses = stage.loss(step)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trained, float(settings.get("clip", 1.0)))
        optimizer.step()
        if stage.ema is not None:
            ema_update(stage.ema, stage.model, min(stage.ema_decay, (1 + step) / (10 + step)))
        row = {"step": step, "lr": rate, "grad_norm": float(grad_norm), "time_s": spent + time.monotonic() - began,
               **{k: float(v.detach()) for k, v in losses.items()}}
        rows.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
        if (step + 1) % every == 0:
            checkpoint(step + 1)
            log.info("%s step %d: loss %.5g (%.0f s)", stage.name, step + 1, row["loss"], row["time_s"])
        if max_seconds and spent + time.monotonic() - began > max_seconds:
            log.info("%s: time limit reached at step %d", stage.name, step + 1)
            break
    # 4. Final checkpoint and table.
    done = step + 1 if rows and rows[-1]["step"] == step else start
    if done != start and done % every:
        checkpoint(done)
    stage.model.eval()
    return pd.DataFrame(rows)
