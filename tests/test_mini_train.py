"""sdlab-mini training: one or two steps of each stage on tiny sizes, loss finite, checkpoint/resume exact."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdlab.mini import data
from sdlab.mini.loop import load_checkpoint, lr_at, run_stage, save_checkpoint

TINY_VAE = {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4}
BASE = {"lr": 1e-3, "warmup": 1, "checkpoint_every": 2}


@pytest.fixture(scope="module")
def items():
    """Eight training images with their attributes."""
    images, _, attributes = data.batch(data.TRAIN_SEED, 0, 8, "train")
    return images, attributes


def test_vae_steps_are_finite_and_resume_restores_the_step(items, tmp_path):
    from sdlab.mini.train_vae import vae_stage

    settings = {**BASE, "steps": 2, "batch_size": 2, "l1_weight": 0.5, "kl_weight": 1e-6, "architecture": TINY_VAE,
                "foreground_weight": 4.0, "latent_rgb_weight": 1.0}
    stage = vae_stage(settings, items[0], seed=0)
    untrained = stage.extra["latent_rgb"].weight.detach().clone()
    first = run_stage(stage, settings, tmp_path)
    assert list(first["step"]) == [0, 1] and np.isfinite(first[["loss", "loss_latent_rgb"]]).all().all()
    assert not torch.equal(stage.extra["latent_rgb"].weight, untrained)  # the linear colour read-out trains too
    assert (tmp_path / "checkpoint" / "latent_rgb.safetensors").is_file()
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 2
    resumed_stage = vae_stage({**settings, "steps": 3}, items[0], seed=0)
    resumed = run_stage(resumed_stage, {**settings, "steps": 3}, tmp_path)
    assert list(resumed["step"]) == [0, 1, 2]
    assert resumed["loss"].iloc[:2].tolist() == first["loss"].tolist()
    assert (tmp_path / "losses.parquet").is_file() and (tmp_path / "losses.png").is_file()


def test_the_same_seed_trains_the_same_weights_bit_for_bit(items, tmp_path):
    from safetensors.torch import load_file

    from sdlab.mini.train_vae import vae_stage

    settings = {**BASE, "steps": 2, "batch_size": 2, "l1_weight": 0.5, "kl_weight": 1e-6, "architecture": TINY_VAE,
                "foreground_weight": 4.0, "latent_rgb_weight": 1.0}
    for run in ("first", "second"):
        run_stage(vae_stage(settings, items[0], seed=0), settings, tmp_path / run)
    first, second = (load_file(str(tmp_path / run / "checkpoint" / "model.safetensors")) for run in ("first", "second"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_checkpoint_round_trips_weights_and_adam_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "ck", {"model": model}, optimizer, {"step": 7})
    other = torch.nn.Linear(3, 2)
    other_optimizer = torch.optim.AdamW(other.parameters(), lr=0.1)
    assert load_checkpoint(tmp_path / "ck", {"model": other}, other_optimizer) == {"step": 7}
    assert torch.equal(other.weight, model.weight)
    saved, loaded = optimizer.state_dict()["state"], other_optimizer.state_dict()["state"]
    assert torch.equal(saved[0]["exp_avg_sq"], loaded[0]["exp_avg_sq"])
    assert not list(tmp_path.glob("*.pt")) and not list((tmp_path / "ck").glob("*.p*"))


def test_a_checkpoint_interrupted_between_its_renames_is_read_from_the_previous_copy(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / "ck", {"model": model}, None, {"step": 3})
    (tmp_path / "ck").rename(tmp_path / "ck.previous")  # the old copy moved aside, the new one not yet in place
    other = torch.nn.Linear(3, 2)
    assert load_checkpoint(tmp_path / "ck", {"model": other}, None) == {"step": 3}
    assert torch.equal(other.weight, model.weight)
    assert load_checkpoint(tmp_path / "none", {"model": other}, None) is None


def test_clip_step_is_finite(items, tmp_path):
    from sdlab.mini.train_clip import clip_stage

    tiny = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    settings = {**BASE, "steps": 1, "batch_size": 4, "text": tiny, "vision": tiny}
    frame = run_stage(clip_stage(settings, items[0], items[1], seed=0), settings, tmp_path)
    assert np.isfinite(frame["loss"]).all()


def test_unet_step_is_finite(items, tmp_path):
    from sdlab.mini.train_unet import unet_stage

    arch = {"block_out_channels": [16, 16, 16], "norm_num_groups": 8, "cross_attention_dim": 8,
            "attention_head_dim": 4}
    settings = {**BASE, "steps": 2, "batch_size": 4, "uncond_probability": 0.5, "snr_gamma": 5.0,
                "ema_decay": 0.9, "architecture": arch}
    states = torch.randn(len(data.combinations("train")) * len(data.CAPTION_TEMPLATES), 77, 8)
    stage = unet_stage(settings, torch.randn(8, 4, 8, 8), states, torch.zeros(1, 77, 8), items[1], seed=0)
    frame = run_stage(stage, settings, tmp_path)
    assert np.isfinite(frame["loss"]).all() and stage.ema is not None


def test_caption_noise_mislabels_about_that_fraction_and_no_more():
    from sdlab.mini.train_unet import caption_rows

    combos, templates = np.arange(4000) % 100, 3
    clean = caption_rows(np.random.default_rng(0), combos, templates, 300, noise=0.0)
    assert (clean // templates == combos).all()
    noisy = caption_rows(np.random.default_rng(0), combos, templates, 300, noise=0.2)
    wrong = (noisy // templates != combos).mean()
    assert 0.17 < wrong < 0.21  # 20% drawn at random, 1% of those land on their own combination again
    assert noisy.min() >= 0 and noisy.max() < 300


def test_learning_rate_warms_up_then_decays():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.05)
    assert all(lr_at(s, 100, 1.0, 10) >= lr_at(s + 1, 100, 1.0, 10) for s in range(10, 99))
    assert not math.isnan(lr_at(5, 5, 1.0, 0))


class _Passthrough:
    """A stand-in VAE whose round trip returns its input, optionally pulled towards gray."""

    def __init__(self, fade: float):
        self.fade = fade

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

    def decode(self, z):
        return SimpleNamespace(sample=z * (1 - self.fade))


def test_checker_agreement_reads_what_survives_the_vae_round_trip(items):
    from sdlab.mini.train_vae import checker_agreement, round_trip

    images, _, attributes = data.eval_batch(0, 24)
    assert checker_agreement(round_trip(_Passthrough(0.0), images, batch_size=10), attributes)["colour"] >= 0.95
    faded = checker_agreement(round_trip(_Passthrough(0.9), images, batch_size=10), attributes)
    assert faded["colour"] < 0.5 and set(faded) >= {"colour", "shape", "background", "all"}


def test_partial_captions_name_a_subset_and_parse_back():
    from sdlab.mini.train_unet import partial_table

    captions, table = partial_table("train")
    combos = data.combinations("train")
    assert table.shape == (len(combos), 16) and len(set(captions)) == len(captions)
    assert "a red circle" in captions and "a circle" in captions
    for i in (0, 7, len(combos) - 1):
        assert captions[table[i, -1]] == data.caption(combos[i])  # the full keep set is template 0
        for j, keep in enumerate(data.keep_sets()):
            named = data.parse_partial(captions[table[i, j]])
            assert set(named) == {"shape", *keep}
            assert all(named[a] == getattr(combos[i], a) for a in named)


def test_unet_step_uses_partial_captions_at_their_rate(items, tmp_path):
    from sdlab.mini.train_unet import partial_table, unet_stage

    arch = {"block_out_channels": [16, 16, 16], "norm_num_groups": 8, "cross_attention_dim": 8,
            "attention_head_dim": 4}
    settings = {**BASE, "steps": 1, "batch_size": 400, "uncond_probability": 0.0, "partial_captions": 0.5,
                "architecture": arch}
    states = torch.zeros(len(data.combinations("train")) * len(data.CAPTION_TEMPLATES), 77, 8)
    captions, table = partial_table("train")
    partial = torch.ones(len(captions), 77, 8)
    seen = []
    stage = unet_stage(settings, torch.randn(8, 4, 8, 8), states, torch.zeros(1, 77, 8), items[1], seed=0,
                       partial=(partial, table))
    stage.model.register_forward_hook(lambda m, args, kwargs, out: seen.append(args[2][:, 0, 0].clone()),
                                      with_kwargs=True)
    stage.loss(0)
    assert 0.4 < float(seen[0].mean()) < 0.6
    with pytest.raises(ValueError, match="partial"):
        unet_stage(settings, torch.randn(8, 4, 8, 8), states, torch.zeros(1, 77, 8), items[1], seed=0)


def test_a_fine_tuned_part_is_saved_without_the_folder_it_came_from(tmp_path):
    from diffusers import UNet2DConditionModel

    from sdlab.mini.architecture import initial
    from sdlab.mini.export import save_component

    arch = {"block_out_channels": [16, 16, 16], "norm_num_groups": 8, "cross_attention_dim": 8,
            "attention_head_dim": 4}
    initial("unet", {"architecture": arch}).save_pretrained(str(tmp_path / "first"), safe_serialization=True)
    loaded = UNet2DConditionModel.from_pretrained(str(tmp_path / "first"))
    assert "_name_or_path" in loaded.config  # what from_pretrained records, and save_pretrained would write
    save_component(loaded, tmp_path / "second")
    config = (tmp_path / "second" / "config.json").read_text()
    assert "_name_or_path" not in config and str(tmp_path) not in config


def test_pipeline_files_export_the_scheduler_and_model_index(tmp_path):
    from sdlab.mini.export import save_pipeline_files

    save_pipeline_files(tmp_path)
    assert json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    assert json.loads((tmp_path / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DConditionModel"]


SMALL = ["experiment=train_mini", "train.stage=vae", "train.export=null", "train.num_images=16", "train.threads=1",
         "train.out=o", "train.vae.steps=1", "train.vae.eval_images=4", "train.clip.steps=1", "train.unet.steps=1"]


@pytest.mark.parametrize("args, message", [
    (["train.vae.batch_size=0"], "train.vae.batch_size=0 must be an integer >= 1"),
    (["train.vae.lr=nan"], "train.vae.lr=nan must be a number in (0, 1]"),
    (["train.vae.steps=abc"], "train.vae.steps='abc' must be an integer >= 1"),
    (["train.vae.warmup=-1"], "train.vae.warmup=-1 must be an integer >= 0"),
    (["train.vae.kl_weight=-1"], "train.vae.kl_weight=-1 must be a number >= 0"),
    (["train.vae.eval_images=0"], "train.vae.eval_images=0 must be an integer >= 1"),
    (["train.vae.ema_decay=1"], "train.vae.ema_decay=1 must be a number in [0, 1)"),
    (["+train.vae.decoder_only=maybe"], "train.vae.decoder_only='maybe' must be true or false"),
    (["+train.vae.lr_warmup=10"], "train.vae.lr_warmup is not a key of train.vae (did you mean warmup?); its keys are: "),
    (["train.vae.lr_warmup=10"], "unknown config key 'train.vae.lr_warmup' (did you mean warmup?); train.vae.* keys "
                                 "are: "),
    (["train.stage=clip", "+train.clip.architecture={}"], "train.clip.architecture is not a key of train.clip"),
    (["+train.vae.text={}"], "train.vae.text is not a key of train.vae; its keys are: "),
    (["train.threads=0"], "train.threads=0 must be a positive integer"),
    (["train.num_images=0"], "train.num_images=0 must be an integer >= 1"),
    (["train.seed=-1"], "train.seed=-1 must be an integer in [0, 2**63-1]"),
    (["train.stage=unet"], "train.stage=unet needs train.export: the unet stage reads the trained vae/"),
    (["train.stage=all"], "train.stage=all needs train.export: the unet stage reads the trained vae/"),
    (["train.stage=unet", "train.export=e", "train.unet.uncond_probability=2"],
     "train.unet.uncond_probability=2 must be a number >= 0 and <= 1"),
    (["train.stage=clip", "train.clip.batch_size=1.5"], "train.clip.batch_size=1.5 must be an integer >= 1"),
    (["~train.seed"], "train.seed is missing: the train block sets stage, seed, out, num_images"),
    (["~train.stage"], "train.stage is missing"),
    (["~train.out"], "train.out is missing"),
    (["~train.num_images"], "train.num_images is missing"),
    (["~train.vae.lr"], "train.vae.lr is missing"),
    (["train.threads=300"], "train.threads=300 is above limits.max_threads=256"),
    (["train.threads=3", "limits.max_threads=2"], "train.threads=3 is above limits.max_threads=2"),
    (["train.stage=unet", "train.export=e"], "train.export=e has no vae/ or text_encoder/ (the unet stage reads"),
    (["train.stage=vae_decoder", "train.vae_decoder.init_from=/nonexistent"],
     "train.vae_decoder.init_from=/nonexistent does not exist; give a local vae folder with config.json and "
     ".safetensors weights"),
    (["train.stage=all", "train.export=e", "train.unet.init_from=someone/sd-unet"],
     "train.unet.init_from=someone/sd-unet does not exist; give a local unet folder"),
    # architecture overrides build the model on the meta device and run it on the shapes mini's other parts give it
    (["+train.vae.architecture.layers_per_block=-1"], "train.vae.architecture.layers_per_block=-1 must be an integer >= 1"),
    (["+train.vae.architecture.bogus=1"], "train.vae.architecture.bogus is not an option of AutoencoderKL"),
    (["+train.vae.architecture.block_out_channels=[16,32,64]"],
     "train.vae.architecture={'block_out_channels': [16, 32, 64]} does not build a model (AutoencoderKL: IndexError: "),
    (["+train.vae.architecture.latent_channels=8"],
     "train.vae.architecture={'latent_channels': 8} makes a vae model giving shapes ((1, 8, 8, 8), (1, 3, 64, 64)) "
     "where mini's other parts need ((1, 4, 8, 8), (1, 3, 64, 64))"),
    (["train.stage=all", "train.export=e", "+train.unet.architecture.cross_attention_dim=48"],
     "train.unet.architecture={'cross_attention_dim': 48} makes a unet model that fails on the shapes mini's other "
     "parts give it (RuntimeError: "),
    (["train.stage=clip", "+train.clip.text.hidden_size=48"],
     "train.clip.text={'hidden_size': 48} makes a text model giving shapes ((1, 77, 48), (1, 64), (1, 64)) where "),
    (["train.stage=clip", "+train.clip.vision.bogus=1"], "train.clip.vision.bogus is not an option of CLIPVisionConfig"),
    (["train.stage=clip", "+train.clip.ema_decay=0.5"], "train.clip.ema_decay is not a key of train.clip"),
    (["train.stage=vae_decoder", "train.vae_decoder.init_from=${project:models/mini/vae}",
      "+train.vae_decoder.architecture.layers_per_block=2"],
     "train.vae_decoder.architecture is not used with train.vae_decoder.init_from (a model read from a folder keeps "
     "its own config); give one of them"),
])
def test_bad_training_settings_are_one_line_and_write_nothing(run_sdlab, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    deleted = {arg[1:] for arg in args if arg.startswith("~")}
    assert run_sdlab(*(arg for arg in SMALL if arg.split("=")[0] not in deleted), *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"sdlab: error: {message}"), err
    assert list(tmp_path.iterdir()) == []


def forbid_unpickling(monkeypatch) -> None:
    """Any torch.load or pickle load fails the test: a refused file is never opened as a pickle."""
    import pickle

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, forbidden)


@pytest.mark.parametrize("stage, component", [("vae_decoder", "vae"), ("unet", "unet")])
def test_init_from_pickle_weights_is_one_line_naming_the_file_and_writes_nothing(run_sdlab, tmp_path, capsys,
                                                                                 monkeypatch, stage, component):
    from sdlab.mini.architecture import initial

    arch = TINY_VAE if component == "vae" else {"block_out_channels": [16, 16, 16], "norm_num_groups": 8,
                                                "cross_attention_dim": 8, "attention_head_dim": 4}
    pickled = tmp_path / "pickled"
    initial(component, {"architecture": arch}).save_pretrained(str(pickled), safe_serialization=False)
    assert (pickled / "diffusion_pytorch_model.bin").is_file() and not list(pickled.glob("*.safetensors"))
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    forbid_unpickling(monkeypatch)
    stage_args = ["train.stage=vae_decoder"] if stage == "vae_decoder" else ["train.stage=all", "train.export=e"]
    assert run_sdlab(*SMALL, *stage_args, f"train.{stage}.init_from={pickled}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"sdlab: error: refusing pickle weights {pickled / 'diffusion_pytorch_model.bin'}: "
                          "sdlab loads safetensors only"), err
    assert list(run.iterdir()) == []


def test_an_init_from_folder_without_config_is_one_line(run_sdlab, tmp_path, capsys, monkeypatch):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert run_sdlab(*SMALL, "train.stage=vae_decoder", "train.vae_decoder.init_from=weights") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("sdlab: error: train.vae_decoder.init_from=weights has no config.json; give a local vae folder "
                   "with config.json and .safetensors weights"), err
    assert [p.name for p in tmp_path.iterdir()] == ["weights"]
