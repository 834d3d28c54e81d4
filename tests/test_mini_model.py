"""The shipped sdlab-mini model: loads offline with plain diffusers, is deterministic and follows prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdlab.mini import data

ROOT = Path(__file__).resolve().parent.parent
MINI = ROOT / "models" / "mini"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "clip")

needs_model = pytest.mark.skipif(not (MINI / "model_index.json").is_file(), reason="models/mini not trained yet")
needs_vae = pytest.mark.skipif(not (MINI / "vae").is_dir(), reason="models/mini/vae not trained yet")
needs_clip = pytest.mark.skipif(not (MINI / "clip").is_dir(), reason="models/mini/clip not trained yet")


@pytest.fixture(scope="module")
def pipe():
    """The shipped pipeline, loaded by diffusers alone (no sdlab code involved), float32 on CPU."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(MINI), local_files_only=True, use_safetensors=True,
                                                       dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance_scale: float = 7.5) -> np.ndarray:
    """uint8 images, one CPU generator per seed."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    with torch.inference_mode():
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators,
                      output_type="np").images
    return np.rint(images * 255).astype(np.uint8)


@needs_model
def test_folder_is_diffusers_layout_in_safetensors_under_budget():
    for component in COMPONENTS:
        assert (MINI / component).is_dir(), component
    files = [p for p in MINI.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert not [p for p in files if p.suffix in (".bin", ".ckpt", ".pt", ".pth", ".pkl")]
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder", "clip"}
    assert sum(p.stat().st_size for p in weights) <= 40 * 2**20


@needs_model
def test_pipeline_loads_offline_with_plain_diffusers(pipe):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and len(pipe.tokenizer) == 49408
    assert pipe.vae.config.latent_channels == 4 and 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.num_train_timesteps == 1000


@needs_model
def test_fixed_seed_gives_fixed_image(pipe):
    prompt = ["a large blue square on the left on a white background"]
    first, again, other = (generate(pipe, prompt, [seed], steps=4) for seed in (3, 3, 4))
    assert first.shape == (1, 64, 64, 3)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


@needs_model
def test_sdlab_loads_mini_by_name():
    from sdlab.config import ModelSpec
    from sdlab.models.loading import load_model

    loaded = load_model(ModelSpec("mini", resolution=64))
    assert loaded.denoiser.config.sample_size == 8


@needs_model
def test_generated_images_pass_the_checker(pipe):
    from sdlab.mini.checker import adherence

    _, prompts, attributes = data.eval_batch(0, 8)
    images = generate(pipe, prompts, list(range(8)), steps=25)
    checks = [adherence(image, attrs) for image, attrs in zip(images, attributes)]
    assert sum(c["colour"] for c in checks) >= 7 and sum(c["background"] for c in checks) >= 7, checks
    assert sum(c["shape"] for c in checks) >= 5, checks


@needs_vae
def test_vae_round_trip_is_sharp():
    from diffusers import AutoencoderKL

    from sdlab.mini.train_vae import psnr_db, round_trip

    images, _, _ = data.eval_batch(0, 8)
    psnr = psnr_db(images, round_trip(AutoencoderKL.from_pretrained(str(MINI / "vae")), images))
    assert psnr.mean() >= 28.0, psnr


@needs_vae
def test_vae_round_trip_keeps_what_the_checker_reads():
    from diffusers import AutoencoderKL

    from sdlab.mini.train_vae import checker_agreement, round_trip

    images, _, attributes = data.eval_batch(0, 32)
    kept = checker_agreement(round_trip(AutoencoderKL.from_pretrained(str(MINI / "vae")), images), attributes)
    assert kept["colour"] >= 0.95 and kept["shape"] >= 0.9 and kept["background"] == 1.0, kept


@needs_clip
def test_clip_finds_each_image_caption():
    from transformers import CLIPModel

    from sdlab.mini.train_clip import retrieval_top1

    images, captions, attributes = data.eval_batch(0, 16)
    assert retrieval_top1(CLIPModel.from_pretrained(str(MINI / "clip")), images, captions, attributes) >= 0.75
