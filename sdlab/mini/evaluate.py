"""Measure sdlab-mini (or mini_flow) on held-out data: VAE PSNR, CLIP retrieval, generation adherence and speed.

    python -m sdlab.mini.evaluate                      # every part, models/mini, writes outputs/mini/eval
    python -m sdlab.mini.evaluate --parts vae clip     # some parts only
    python -m sdlab.mini.evaluate --model models/mini_flow --guidance 1 5   # the flow twin (no clip/ of its own)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from sdlab.bench.ownership import adopt, checked_folder
from sdlab.bench.records import write_table
from sdlab.config import ModelSpec
from sdlab.errors import UserError
from sdlab.io import atomic_save, atomic_write_text
from sdlab.lazy import pandas as pd, torch
from sdlab.mini import data
from sdlab.mini.architecture import T5_TOKENS
from sdlab.mini.checker import LAYOUT, adherence, agrees, check, layouts_agree, shape_mask
from sdlab.mini.train_clip import held_out_retrieval
from sdlab.mini.train_flow import RepeatedTokenAttention
from sdlab.mini.train_vae import vae_quality
from sdlab.models.families import family_of_folder
from sdlab.models.model_files import SAFE_LOCAL, check_component_folder, check_weights_folder
from sdlab.models.schedulers import make_scheduler

PARTS = ("vae", "clip", "generate", "same_seed", "speed")
GUIDANCE_SCALES = (1.0, 3.0, 5.0, 7.5, 15.0)
SHIPPED_SCHEDULERS = {"sd": "dpmpp_2m", "sd3": "euler"}  # by family: mini's DPM-Solver++ 2M, mini_flow's flow Euler
COMPONENT_PARTS = ("vae", "clip")  # parts that load the component folder of their name; the rest the pipeline


def shipped_pipeline(root: Path):
    """The folder as its family's diffusers pipeline (float32, CPU, shipped scheduler); a zero T5 runs as one state."""
    adapter = family_of_folder(root)
    pipe = adapter.from_folder(root, torch.float32, ModelSpec("mini", path=str(root)))
    pipe.scheduler = make_scheduler(SHIPPED_SCHEDULERS[adapter.family], dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    pipe.call_options = {}
    t5 = getattr(pipe, "text_encoder_3", None)
    if t5 is not None and not t5(torch.arange(8).view(1, -1))[0].any():  # counting for T5_TOKENS: 3x sooner
        pipe.transformer.set_attn_processor(RepeatedTokenAttention(T5_TOKENS))
        pipe.call_options = {"max_sequence_length": 1}
        # the pipeline warns of every prompt longer than that one state: the shortcut, not a prompt cut short
        logging.getLogger(type(pipe).__module__).setLevel(logging.ERROR)
    return pipe


def generate_images(pipe, prompts: list[str], seeds: list[int], guidance_scale: float, steps: int = 25,
                    batch_size: int = 50) -> np.ndarray:
    """uint8 images, one per (prompt, seed), each seed with its own CPU generator."""
    out = []
    for i in range(0, len(prompts), batch_size):
        generators = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch_size]]
        with torch.inference_mode():
            images = pipe(prompts[i : i + batch_size], num_inference_steps=steps, guidance_scale=guidance_scale,
                          generator=generators, output_type="np", **pipe.call_options).images
        out.append(np.rint(images * 255).astype(np.uint8))
    return np.concatenate(out)


def generation_quality(root: Path, out: Path, count: int = 200, split: data.Split = "any",
                       guidance_scales: tuple[float, ...] = GUIDANCE_SCALES) -> tuple[dict, pd.DataFrame]:
    """Adherence rates over `count` evaluation prompt/seed pairs at each guidance scale."""
    pipe = shipped_pipeline(root)
    _, prompts, attributes = data.eval_batch(0, count, split=split)
    seeds = list(range(count))
    metrics, rows = {}, []
    for scale in guidance_scales:
        images = generate_images(pipe, prompts, seeds, scale)
        checks = [adherence(image, attrs) for image, attrs in zip(images, attributes)]
        frame = pd.DataFrame(checks)
        frame["colour_and_shape"] = frame["colour"] & frame["shape"]
        metrics.update({f"g{scale:g}_{split}_{column}": float(rate) for column, rate in frame.mean().items()})
        rows += [{"guidance_scale": scale, "split": split, "seed": s, "prompt": p, **c}
                 for s, p, c in zip(seeds, prompts, checks)]
        grid = images[:32].reshape(4, 8, 64, 64, 3).transpose(0, 2, 1, 3, 4).reshape(256, 512, 3)
        atomic_save(Image.fromarray(grid), out / f"samples_g{scale:g}_{split}.png", format="PNG")
    return metrics, pd.DataFrame(rows)


def mask_iou(first: np.ndarray, second: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = (first | second).sum()
    return float((first & second).sum() / union) if union else 1.0


def same_seed_similarity(root: Path, out: Path, count: int = 64, guidance_scale: float = 7.5) -> dict[str, float]:
    """Does the seed decide what a caption leaves open? Layout and mask IoU kept as "a red circle" changes its shape."""
    pipe = shipped_pipeline(root)
    _, _, attributes = data.eval_batch(0, count)
    changed = [replace(a, shape=data.SHAPES[(data.SHAPES.index(a.shape) + 1) % len(data.SHAPES)]) for a in attributes]
    seeds = list(range(count))
    base, swapped = ([data.partial_caption(a, {"colour"}) for a in items] for items in (attributes, changed))
    runs = [generate_images(pipe, base, seeds, guidance_scale), generate_images(pipe, swapped, seeds, guidance_scale),
            generate_images(pipe, swapped, [s + count for s in seeds], guidance_scale)]
    g = f"g{guidance_scale:g}"
    grid = np.concatenate([np.concatenate(list(images[:8]), axis=1) for images in runs], axis=0)
    atomic_save(Image.fromarray(grid), out / f"same_seed_{g}.png", format="PNG")  # rows: original, same, another seed
    read = [[check(image) for image in images] for images in runs]
    masks = [[shape_mask(image) for image in images] for images in runs]
    kept = {"layout_pairs": count}
    for k, seen in ((1, "same"), (2, "other")):
        readings = list(zip(read[0], read[k]))
        for name in LAYOUT:
            kept[f"{g}_{seen}_seed_{name}_kept"] = float(np.mean([agrees(a, b, name) for a, b in readings]))
        kept[f"{g}_{seen}_seed_layout_kept"] = float(np.mean([layouts_agree(a, b) for a, b in readings]))
        kept[f"{g}_{seen}_seed_mask_iou"] = float(np.mean([mask_iou(b, m) for b, m in zip(masks[0], masks[k])]))
    return kept


def speed(root: Path, repeats: int = 5) -> dict[str, float]:
    """Median seconds per 64x64 image (25 dpmpp_2m steps, CFG), with PyTorch's and with oneDNN convolutions."""
    pipe = shipped_pipeline(root)
    prompt = "a small red circle in the centre on a blue background"
    backends = {"": False, "_mkldnn": True}  # metric suffix: oneDNN on?  (model=mini: off for one image)
    times = {name: [] for name in backends}
    for seed in range(repeats + 1):  # round 0 warms up; the backends take turns
        for name, enabled in backends.items():
            with torch.backends.mkldnn.flags(enabled=enabled):
                began = time.perf_counter()
                generate_images(pipe, [prompt], [seed], 7.5)
                if seed:
                    times[name].append(time.perf_counter() - began)
    return {**{f"seconds_per_image_cfg_25_steps{name}": float(np.median(t)) for name, t in times.items()},
            "threads": torch.get_num_threads()}


def evaluate(root: Path, out: Path, parts: tuple[str, ...] = PARTS,
             guidance_scales: tuple[float, ...] = GUIDANCE_SCALES) -> dict:
    """Run the chosen parts; writes metrics.json (and generation.parquet/csv) into `out`."""
    from diffusers import AutoencoderKL
    from transformers import CLIPModel

    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    if "vae" in parts:
        metrics.update(vae_quality(AutoencoderKL.from_pretrained(str(root / "vae"), **SAFE_LOCAL)))
    if "clip" in parts:
        metrics.update(held_out_retrieval(CLIPModel.from_pretrained(str(root / "clip"), **SAFE_LOCAL)))
    if "generate" in parts:
        frames = []
        for split in ("any", "held_out"):
            found, frame = generation_quality(root, out, split=split, guidance_scales=guidance_scales)
            metrics.update(found)
            frames.append(frame)
        write_table(pd.concat(frames, ignore_index=True), out, "generation")
    if "same_seed" in parts:
        for g in guidance_scales:
            metrics.update(same_seed_similarity(root, out, guidance_scale=g))
    if "speed" in parts:
        metrics.update(speed(root))
    atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def checked_arguments(model: Path, out: Path, threads: int, parts: tuple[str, ...] = PARTS) -> None:
    """One-line errors before any work: a trained model folder, safetensors for `parts`, threads, a writable `out`."""
    if threads < 1:
        raise UserError(f"--threads={threads}: give 1 or more")
    if not (model / "vae" / "config.json").is_file() or not any(
            (model / part / "config.json").is_file() for part in ("unet", "transformer")):
        raise UserError(f"--model={model} is not a trained sdlab-mini or mini_flow folder (it needs vae/ and unet/ or "
                        f"transformer/)")
    for part in (part for part in parts if part in COMPONENT_PARTS):
        check_component_folder(model / part, f"{model / part} (for --parts {part})", part)
    if any(part not in COMPONENT_PARTS for part in parts):
        check_weights_folder(model)
    checked_folder(out, "--out")


def main(argv: list[str] | None = None) -> None:
    """Command line: `python -m sdlab.mini.evaluate [--parts ...] [--model DIR] [--out DIR]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[2] / "models" / "mini")
    parser.add_argument("--out", type=Path, help="default: outputs/<model folder name>/eval")
    parser.add_argument("--parts", nargs="+", choices=PARTS, help="default: every part the folder has (clip/)")
    parser.add_argument("--guidance", nargs="+", type=float, default=list(GUIDANCE_SCALES))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    out = args.out or Path("outputs") / args.model.resolve().name / "eval"
    parts = args.parts or [p for p in PARTS if p != "clip" or (args.model / "clip").is_dir()]
    try:
        checked_arguments(args.model, out, args.threads, tuple(parts))
    except UserError as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    adopt(out)
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging  # after the checks: it imports torch._dynamo (2 s)
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):  # no loading chatter above the metrics printed
        library.set_verbosity_error()
        library.disable_progress_bar()
    print(json.dumps(evaluate(args.model, out, tuple(parts), tuple(args.guidance)), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
