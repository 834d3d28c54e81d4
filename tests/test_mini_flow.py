"""mini_flow: the flow stage trains and resumes, its exact T5 shortcut, and the SD3 folder it exports loads in plain
diffusers and through sdlab's SD3 adapter."""

from __future__ import annotations

import json
import logging.handlers
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli

from sdlab.mini import data

ROOT = Path(__file__).resolve().parents[1]
TINY = {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8, "caption_projection_dim": 16}
BASE = {"lr": 1e-2, "warmup": 1, "checkpoint_every": 2, "batch_size": 8, "uncond_probability": 0.1,
        "caption_noise": 0.2, "partial_captions": 0.5, "architecture": TINY}


def tiny_texts(seed: int = 0) -> tuple[dict, np.ndarray]:
    """Random stand-ins for the SD3 text states and pooled embeddings of every caption kind, and the partial table."""
    from sdlab.mini.train_unet import partial_table

    captions, table = partial_table("train")
    g = torch.Generator().manual_seed(seed)
    sizes = {"train": len(data.combinations("train")) * len(data.CAPTION_TEMPLATES), "empty": 1,
             "partial": len(captions)}
    return {k: {"states": torch.randn(n, 4, 32, generator=g), "pooled": torch.randn(n, 64, generator=g)}
            for k, n in sizes.items()}, table


@pytest.fixture(scope="module")
def attributes():
    return data.batch(data.TRAIN_SEED, 0, 4, "train")[2]


def test_one_zero_t5_state_counted_256_times_is_exactly_the_pipelines_256_zeros():
    from sdlab.mini.architecture import T5_TOKENS, initial
    from sdlab.mini.train_flow import RepeatedTokenAttention

    torch.manual_seed(0)
    model = initial("transformer", {"architecture": {**TINY, "num_layers": 2}}).eval()
    x, clip, pooled, t = torch.randn(2, 4, 8, 8), torch.randn(2, 32, 64), torch.randn(2, 128), torch.tensor([3., 900.])
    with torch.no_grad():
        full = model(x, encoder_hidden_states=torch.cat([clip, torch.zeros(2, T5_TOKENS, 64)], 1),
                     pooled_projections=pooled, timestep=t).sample
        model.set_attn_processor(RepeatedTokenAttention(T5_TOKENS))
        short = model(x, encoder_hidden_states=torch.cat([clip, torch.zeros(2, 1, 64)], 1),
                      pooled_projections=pooled, timestep=t).sample
    assert torch.allclose(full, short, atol=1e-5)


def test_flow_steps_lower_the_loss_and_resume_from_the_checkpoint(attributes, tmp_path):
    from sdlab.mini.loop import run_stage
    from sdlab.mini.train_flow import flow_stage

    texts, table = tiny_texts()
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    settings = {**BASE, "steps": 40, "checkpoint_every": 20}
    frame = run_stage(flow_stage(settings, latents, texts, attributes, seed=0, table=table), settings, tmp_path / "a")
    assert np.isfinite(frame["loss"]).all()
    assert frame["loss"].tail(10).mean() < 0.9 * frame["loss"].head(10).mean()
    short = {**settings, "steps": 2, "checkpoint_every": 2}
    first = run_stage(flow_stage(short, latents, texts, attributes, seed=0, table=table), short, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["step"] == 2
    longer = {**short, "steps": 3}
    resumed = run_stage(flow_stage(longer, latents, texts, attributes, seed=0, table=table), longer, tmp_path / "b")
    assert list(resumed["step"]) == [0, 1, 2] and resumed["loss"].iloc[:2].tolist() == first["loss"].tolist()
    assert frame["loss"].iloc[:2].tolist() == first["loss"].tolist()  # the same steps whatever the run's length
    with pytest.raises(ValueError, match="partial"):
        flow_stage(settings, latents, texts, attributes, seed=0)


def test_every_caption_fits_the_text_tokens_the_folder_pads_to():
    from sdlab.mini.architecture import TEXT_TOKENS
    from sdlab.models.tokenizer import load_tokenizer

    ids = load_tokenizer()(data.all_captions("any"), padding="longest").input_ids
    assert max(len(i) for i in ids) <= TEXT_TOKENS


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An SD3 folder from mini's frozen parts and an untrained tiny transformer, as the flow stage writes it."""
    from sdlab.mini.architecture import initial
    from sdlab.mini.export import save_component, save_sd3_pipeline_files
    from sdlab.mini.train_flow import sd3_text_encoder

    folder = tmp_path_factory.mktemp("mini_flow")
    torch.manual_seed(0)
    save_component(initial("transformer", {"architecture": TINY}), folder / "transformer")
    save_sd3_pipeline_files(folder, ROOT / "models" / "mini" / "vae", sd3_text_encoder(ROOT / "models" / "mini" / "clip"),
                            (-0.5, 0.52), 1.0)
    return folder


def test_the_exported_folder_loads_in_plain_diffusers_and_generates(exported):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(exported))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.config.shift_factor == -0.5 and pipe.tokenizer.model_max_length == 32
    assert not pipe.text_encoder_3(torch.arange(20).view(1, -1))[0].any()  # the T5 slot returns SD3's zeros
    image = pipe("a red circle", num_inference_steps=2, guidance_scale=5.0, output_type="np").images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    sizes = sum(p.stat().st_size for p in exported.rglob("*") if p.is_file())
    assert not list(exported.rglob("*.bin")) and not list(exported.rglob("*.pt"))
    assert sizes < 40e6 - 14e6  # room for a transformer of 3.5 M float32 parameters


def test_the_exported_folder_runs_through_the_sd3_adapter(exported, run_sdlab, tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    assert run_sdlab("model=mini_flow", f"model.path={exported}", "prompt=a red circle", "num_inference_steps=2",
                     "threads=1", "hydra.run.dir=run") == 0
    row = pd.read_csv(tmp_path / "run" / "results.csv").iloc[0]
    assert row["model"] == "mini_flow" and row["scheduler"] == "euler"


def test_the_evaluation_runs_the_zero_t5_shortcut_with_the_same_images(exported):
    from diffusers import StableDiffusion3Pipeline
    from diffusers.utils import logging as diffusers_logging

    from sdlab.mini.evaluate import generate_images, shipped_pipeline

    plain = StableDiffusion3Pipeline.from_pretrained(str(exported))
    plain.set_progress_bar_config(disable=True)
    plain.call_options = {}
    fast = shipped_pipeline(exported)
    assert fast.call_options == {"max_sequence_length": 1}
    prompts, seeds = ["a red circle", "a large blue square on the left"], [0, 1]
    assert np.abs(generate_images(plain, prompts, seeds, 5.0, steps=3).astype(int)
                  - generate_images(fast, prompts, seeds, 5.0, steps=3).astype(int)).max() <= 1
    diffusers_logging.set_verbosity_warning()  # as `python -m sdlab.mini.evaluate` runs
    seen = logging.handlers.BufferingHandler(100)
    diffusers_logging.get_logger("diffusers").addHandler(seen)
    try:
        generate_images(fast, ["a large blue square on the left on a black background"], [0], 5.0, steps=2)
    finally:
        diffusers_logging.get_logger("diffusers").removeHandler(seen)
    # one T5 state is the shortcut, not a prompt cut short: no warning says the prompt was truncated
    assert not [r for r in seen.buffer if "truncated" in r.getMessage()]


@pytest.mark.parametrize("arg,fragments", [
    ("train.flow.shift=0", ("train.flow.shift=0", ">= 0.01")),
    ("train.flow.logit_std=-1", ("train.flow.logit_std=-1", ">= 0.01")),
    ("train.flow.partial_captions=1.5", ("train.flow.partial_captions=1.5", "<= 1")),
    ("train.flow.architecture.patch_size=3", ("train.flow.architecture.patch_size=3", "one of: 1, 2")),
    # the transformer's own options, checked on the meta device against the shapes mini's other parts give it
    ("+train.flow.architecture.num_layers=-2", ("train.flow.architecture.num_layers=-2 must be an integer >= 1",)),
    ("+train.flow.architecture.num_attention_heads=abc", ("num_attention_heads='abc' must be an integer >= 1",)),
    ("+train.flow.architecture.bogus=1", ("train.flow.architecture.bogus is not an option of SD3Transformer2DModel",)),
    ("+train.flow.architecture.joint_attention_dim=48",
     ("train.flow.architecture={'patch_size': 1, 'joint_attention_dim': 48} makes a transformer model that fails on "
      "the shapes mini's other parts give it (RuntimeError: ",)),
    ("train.flow.frozen_from=null", ("train.flow.frozen_from=null", "must be")),
    ("train.flow.frozen_from=nowhere", ("train.flow.frozen_from=nowhere has no vae/ or clip/", "sdlab-mini folder")),
])
def test_bad_flow_settings_are_one_line_and_write_nothing(tmp_path, arg, fragments):
    result = run_cli("experiment=train_mini_flow", arg, "train.out=o", "train.export=e", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdlab: error: ") and "Traceback" not in result.stderr
    assert all(f in lines[0] for f in fragments), lines[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()


def test_flow_stage_without_its_block_and_mini_flow_without_weights_are_one_line(tmp_path, monkeypatch):
    from sdlab.models import loading

    result = run_cli("experiment=train_mini", "train.stage=flow", "train.out=o", "train.export=e", cwd=tmp_path)
    assert result.returncode == 2 and "use experiment=train_mini_flow" in result.stderr
    monkeypatch.setattr(loading, "PROJECT_ROOT", tmp_path)  # a checkout whose models/mini_flow has no weights
    (tmp_path / "models" / "mini_flow").mkdir(parents=True)
    with pytest.raises(loading.UserError, match="model=mini_flow has no weights in .* experiment=train_mini_flow"):
        loading.model_folder(loading.configured_spec("mini_flow"))
