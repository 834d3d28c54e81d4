"""The naive approach: a plain Hydra app that loads the pipeline inside every job."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path=None)
def main(cfg: DictConfig) -> None:
    """Load the pipeline, swap the scheduler, generate one image."""
    from hand_loop import load

    from sdlab.models.schedulers import make_scheduler

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    pipe = load(cfg.model)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(cfg.scheduler, dict(pipe.scheduler.config))
    image = pipe(cfg.prompt, num_inference_steps=int(cfg.steps), guidance_scale=float(cfg.guidance_scale),
                 generator=torch.Generator("cpu").manual_seed(int(cfg.seed))).images[0]
    image.save(Path(HydraConfig.get().runtime.output_dir) / "image.png")
    print("loads: 1")


if __name__ == "__main__":
    main()
