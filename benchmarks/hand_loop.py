"""The baseline: a minimal hand-written diffusers loop that loads the pipeline once and generates a sweep."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch


def load(model: str):
    """The same pipeline sdlab loads, without sdlab's machinery where diffusers can do it alone."""
    from diffusers import StableDiffusionPipeline

    from sdlab.models.families import family
    from sdlab.models.device import use_process_options
    from sdlab.models.loading import configured_spec

    # the CPU convolution backend, memory format and attention the model's config file chooses, as sdlab does
    spec = configured_spec(model)
    use_process_options(spec)
    adapter = family(spec.family)
    if model == "mini":
        pipe = StableDiffusionPipeline.from_pretrained("models/mini", safety_checker=None, use_safetensors=True)
    else:
        pipe = adapter.build(model, spec)
    adapter(pipe, spec).apply_speed_options()
    return pipe


def image_name(scheduler: str, guidance: float, seed: int, prompt_index: int, prompts: int) -> str:
    """The PNG of one image: `{scheduler}_{guidance}_{seed}.png`, after `p{index}_` when there are several prompts."""
    return f"{f'p{prompt_index}_' if prompts > 1 else ''}{scheduler}_{guidance}_{seed}.png"


def main() -> None:
    """Generate prompts x seeds x guidance scales x schedulers and save one PNG per image, `--batch` seeds of one
    prompt and guidance scale per pipeline call (1: one image at a time; 8: an expert's batched loop)."""
    from sdlab.models.schedulers import make_scheduler

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--prompt", default="a small red circle in the centre on a blue background",
                        help="one prompt, or several separated by |")
    parser.add_argument("--seeds", default="1,2,3,4")
    parser.add_argument("--batch", type=int, default=1, help="images per pipeline call")
    parser.add_argument("--guidance", default="1,7.5")
    parser.add_argument("--schedulers", default="ddim,dpmpp_2m")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="width and height (default: the model's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load(args.model)
    pipe.set_progress_bar_config(disable=True)
    base = dict(pipe.scheduler.config)
    args.out.mkdir(parents=True, exist_ok=True)
    prompts, seeds = args.prompt.split("|"), [int(s) for s in args.seeds.split(",")]
    batches = [seeds[i:i + args.batch] for i in range(0, len(seeds), args.batch)]
    grid = itertools.product(args.schedulers.split(","), map(float, args.guidance.split(",")), enumerate(prompts),
                             batches)
    for scheduler, guidance, (p, prompt), batch in grid:
        pipe.scheduler = make_scheduler(scheduler, base)
        images = pipe([prompt] * len(batch), num_inference_steps=args.steps, guidance_scale=guidance,
                      height=args.size, width=args.size,
                      generator=[torch.Generator("cpu").manual_seed(seed) for seed in batch]).images
        for seed, image in zip(batch, images):
            image.save(args.out / image_name(scheduler, guidance, seed, p, len(prompts)))
    print("loads: 1")


if __name__ == "__main__":
    main()
