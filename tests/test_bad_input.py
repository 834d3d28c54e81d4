"""Every bad input: one line naming the bad value and what is allowed, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json

import pytest


def write(path, text):
    path.write_text(text)
    return path


def bad_inputs(tmp):
    """(arguments, fragment the one error line must contain) for each distinct bad input."""
    pickled = tmp / "pickled"
    for component in ("unet", "vae", "text_encoder"):
        (pickled / component).mkdir(parents=True, exist_ok=True)
        (pickled / component / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04")
    (pickled / "model_index.json").write_text("{}")
    no_weights = tmp / "no_weights"
    (no_weights / "unet").mkdir(parents=True, exist_ok=True)
    (no_weights / "model_index.json").write_text("{}")
    ckpt = write(tmp / "sd.ckpt", "x")
    return [
        (["model=sd99"], "unknown model 'sd99'"),
        (["scheduler=eulr"], "unknown scheduler 'eulr'"),
        (["experiment=nope"], "unknown experiment 'nope'"),
        (["guidanse_scale=7"], "unknown config key 'guidanse_scale'"),
        (["scheduler.karras=true"], "unknown config key 'scheduler.karras'"),
        (["model.revision=x"], "unknown config key 'model.revision'"),
        (["num_inference_steps=0"], "num_inference_steps=0 must be >= 1"),
        (["guidance_scale=-1"], "guidance_scale=-1.0 must be >= 0"),
        (["guidance_scale=abc"], "guidance_scale='abc' is not a number"),
        (["width=100"], "width=100 must be a positive multiple of 8"),
        (["height=0"], "height=0 must be a positive multiple of 8"),
        (["eta=1.5"], "eta=1.5 must be in [0, 1]"),
        (["seed=abc"], "seed='abc' is not an integer"),
        (["seeds=[]"], "seeds=[] is empty"),
        (["batch_size=0"], "batch_size=0 must be >= 1"),
        (["threads=0"], "threads=0 must be a positive integer"),
        ([f"params={write(tmp / 'm.json', '{oops')}"], "is not valid JSON"),
        ([f"params={write(tmp / 'u.json', json.dumps({'sampler': 'x'}))}"], "unknown key 'sampler'"),
        ([f"params={write(tmp / 't.json', json.dumps({'num_inference_steps': '20'}))}"], "should be int"),
        ([f"params={tmp / 'absent.json'}"], "does not exist"),
        (["model=sd15", f"model.path={no_weights}"], "no .safetensors weights"),
        (["model=sd15", f"model.path={pickled}"], "refusing pickle weights"),
        (["model=sd15", f"model.path={ckpt}"], "refusing pickle checkpoint"),
        (["model=sd15", f"model.path={tmp / 'nowhere'}"], "does not exist"),
        (["model.device=cuda"], "model.device='cuda' is not available"),
        (["model.dtype=float8"], "unknown model.dtype 'float8'"),
        (["model.attention=flash"], "unknown model.attention 'flash'"),
        (["scheduler.timestep_spacing=sideways"], "scheduler.timestep_spacing='sideways' is not allowed"),
        (["scheduler=ddim", "scheduler.use_karras_sigmas=true"], "has no option 'use_karras_sigmas'"),
        (["job=train_dragons"], "unknown job 'train_dragons'"),
        (["hydra.run.dir=/proc/sdlab_out"], "cannot be written"),
    ]


def test_at_least_twenty_distinct_bad_inputs(tmp_path):
    assert len({tuple(args) for args, _ in bad_inputs(tmp_path)}) >= 20


@pytest.mark.parametrize("case", range(31))
def test_bad_input_is_one_line_and_exit_2(run_sdlab, tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    args, fragment = bad_inputs(tmp_path)[case]
    run_dir = tmp_path / "run"
    extra = [] if any(a.startswith("hydra.run.dir") for a in args) else [f"hydra.run.dir={run_dir}"]
    code = run_sdlab(*args, *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("sdlab: error: ") and fragment in err, err
    assert not run_dir.exists()
    assert not (tmp_path / "outputs").exists()
