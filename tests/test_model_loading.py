"""Real-weights loading paths, exercised with the tiny pipeline saved as a diffusers folder."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sdlab.models import loading as models
from sdlab.config import ModelSpec


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory, tiny):
    """The tiny pipeline written as a safetensors diffusers folder, with the scheduler it was built with (the cached
    pipeline carries whichever scheduler the last job swapped in)."""
    import diffusers

    model, spec = tiny
    folder = tmp_path_factory.mktemp("pipeline")
    swapped, model.scheduler = model.scheduler, diffusers.PNDMScheduler.from_config(model.base_scheduler_config)
    try:  # as models builds tiny
        model.pipe.save_pretrained(folder, safe_serialization=True)
    finally:
        model.scheduler = swapped
    # as a Hub repo publishes it: save_pretrained would write PNDM's defaults (timestep_spacing) out as choices
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(models.published_scheduler_config(spec)[0]))
    return folder


def test_model_path_loads_a_diffusers_folder_and_matches_the_original(run_sdlab, saved_pipeline, tmp_path):
    args = ("seed=3", "num_inference_steps=2", "width=64", "height=64")
    assert run_sdlab("model=tiny", *args, f"hydra.run.dir={tmp_path / 'a'}") == 0
    assert run_sdlab("model=sd15", f"model.path={saved_pipeline}", *args, f"hydra.run.dir={tmp_path / 'b'}") == 0
    a, b = (pd.read_parquet(tmp_path / d / "results.parquet").iloc[0] for d in ("a", "b"))
    assert b["model"] == "sd15" and b["status"] == "ok"
    image_a = np.asarray(Image.open(tmp_path / "a" / a["image_path"]), dtype=int)
    image_b = np.asarray(Image.open(tmp_path / "b" / b["image_path"]), dtype=int)
    assert np.abs(image_a - image_b).max() <= 1


def test_a_folder_of_fp16_variant_weights_loads_with_model_variant_and_names_it_otherwise(run_sdlab, saved_pipeline,
                                                                                          tmp_path, capsys):
    """A Hub download made with variant="fp16" holds only `*.fp16.safetensors`: `model.variant=fp16` loads them, the
    same image as the plain folder's; without it, or with another variant, one line says which to give."""
    import shutil

    variant = tmp_path / "variant"
    shutil.copytree(saved_pipeline, variant)
    for weights in variant.glob("*/*.safetensors"):
        weights.rename(weights.with_suffix(".fp16.safetensors"))
    args = ("seed=3", "num_inference_steps=2", "width=64", "height=64", "threads=1")
    assert run_sdlab("model=sd15", f"model.path={saved_pipeline}", *args, f"hydra.run.dir={tmp_path / 'plain'}") == 0
    assert run_sdlab("model=sd15", f"model.path={variant}", "model.variant=fp16", *args,
                     f"hydra.run.dir={tmp_path / 'fp16'}") == 0
    plain, fp16 = (pd.read_parquet(tmp_path / d / "results.parquet").iloc[0] for d in ("plain", "fp16"))
    assert fp16["status"] == "ok" and fp16["weights"] != plain["weights"]
    assert (np.asarray(Image.open(tmp_path / "plain" / plain["image_path"]))
            == np.asarray(Image.open(tmp_path / "fp16" / fp16["image_path"]))).all()
    capsys.readouterr()
    for given, hint in (((), "add model.variant=fp16"), (("model.variant=bf16",), "use model.variant=fp16")):
        assert run_sdlab("model=sd15", f"model.path={variant}", *given, *args, f"hydra.run.dir={tmp_path / 'no'}") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.endswith(hint) and "diffusion_pytorch_model.fp16.safetensors" in err
    assert not (tmp_path / "no").exists()


def test_repo_id_loads_from_the_local_hf_cache_offline(saved_pipeline, tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--someone--tiny-sd" / "snapshots" / "0123abc"
    snapshot.parent.mkdir(parents=True)
    os.symlink(saved_pipeline, snapshot)
    refs = tmp_path / "hub" / "models--someone--tiny-sd" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0123abc")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert models.cached_snapshot("someone/tiny-sd") == snapshot
    model = models.load_model(ModelSpec("sd15", repo_id="someone/tiny-sd", resolution=64))
    assert model.denoiser.config.cross_attention_dim == 32


def test_a_cache_whose_ref_names_a_missing_snapshot_says_so(run_sdlab, tmp_path, monkeypatch, capsys):
    """refs/main naming a snapshot folder that is gone was told the model is not in the cache at all."""
    from huggingface_hub import constants

    refs = tmp_path / "hub" / "models--stable-diffusion-v1-5--stable-diffusion-v1-5" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("0123abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    before = sorted(tmp_path.rglob("*"))
    assert run_sdlab("model=sd15", "threads=1", f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sdlab: error: stable-diffusion-v1-5/stable-diffusion-v1-5: the local Hugging Face cache's refs/main "
                   f"names snapshot 0123abc, which is missing from {refs.parent / 'snapshots'} (a download that was "
                   "interrupted, or a partly deleted cache); download it again where there is internet "
                   "(`hf download stable-diffusion-v1-5/stable-diffusion-v1-5`) or pass model.path=DIR with a "
                   "diffusers folder"]
    assert sorted(tmp_path.rglob("*")) == before


def test_a_weights_fingerprint_follows_the_bytes_not_the_file_times_and_reads_any_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    from sdlab.models.model_files import weights_fingerprint

    assert weights_fingerprint(tmp_path) is None and weights_fingerprint(tmp_path / "absent") is None
    (tmp_path / "unet").mkdir()
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({"a": torch.zeros(1000), "b": torch.ones(3)}, weights)
    first = weights_fingerprint(tmp_path)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert weights_fingerprint(tmp_path) == first
    for changed in ({"a": torch.zeros(1000), "b": torch.tensor([1.0, 1.0, 2.0])},  # the last bytes of a tensor
                    {"a": torch.cat([torch.ones(1), torch.zeros(999)]), "b": torch.ones(3)}):  # its first bytes
        save_file(changed, weights)
        assert weights_fingerprint(tmp_path) not in (first, None)
    config = tmp_path / "vae" / "config.json"
    config.parent.mkdir()
    config.write_text('{"scaling_factor": 0.18215}')
    with_config = weights_fingerprint(tmp_path)
    config.write_text('{"scaling_factor": 0.5}')  # a config edited in place makes other images from the same tensors
    assert weights_fingerprint(tmp_path) not in (with_config, None)
    for junk in (b"", b"\xff" * 8 + b"not a header", (10**12).to_bytes(8, "little"), b"\x05\0\0\0\0\0\0\0[1,2]"):
        weights.write_bytes(junk)  # data, never trusted: pre-flight refuses it with its own line
        assert isinstance(weights_fingerprint(tmp_path), str)
    weights.unlink()
    os.mkfifo(weights)  # opening it to read would wait for a writer forever
    found = []
    reader = threading.Thread(target=lambda: found.append(weights_fingerprint(tmp_path)), daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert len(found) == 1 and isinstance(found[0], str)


def test_an_image_encoder_sdlab_never_uses_is_left_out_never_loaded(saved_pipeline, tmp_path):
    """A folder made for IP-Adapter also names an image encoder; no sdlab job uses one, so none loads: its files,
    pickle only here, are neither read nor a reason to refuse (a config of 20000 layers took 110 s to build)."""
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(saved_pipeline, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(image_encoder=["transformers", "CLIPVisionModelWithProjection"],
                 feature_extractor=["transformers", "CLIPImageProcessor"])
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "image_encoder").mkdir()
    (folder / "image_encoder" / "config.json").write_text('{"model_type": "clip_vision_model", "num_hidden_layers": '
                                                          '20000}')
    (folder / "image_encoder" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    model = models.load_model(models.configured_spec("sd15", path=str(folder), resolution=64))
    assert model.pipe.image_encoder is None and model.pipe.feature_extractor is None


def test_a_built_in_model_too_big_for_free_memory_is_refused_but_its_anatomy_runs(run_sdlab, tmp_path, monkeypatch,
                                                                                 capsys):
    """An exact-architecture model builds its published parameter count at random in float32 on the CPU: refused in
    one line where that cannot fit (FLUX.1 schnell: 16.9 B, 63 GiB), not killed by the kernel; anatomy builds it on the
    meta device and runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(models, "cpu_free_bytes", lambda: 2 * 2**30)
    assert run_sdlab("model=sd15_arch", "num_inference_steps=1", "threads=1") == 2
    assert capsys.readouterr().err == (
        "sdlab: error: model=sd15_arch builds 1.1 B random parameters, 4.0 GiB in float32, more than the 2.0 GiB free "
        "here; its architecture is for experiment=anatomy, which builds it on the meta device\n")
    assert list(tmp_path.iterdir()) == []
    assert run_sdlab("experiment=anatomy", "model=sd15_arch", "threads=1", "hydra.run.dir=a") == 0
