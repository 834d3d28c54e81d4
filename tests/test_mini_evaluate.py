"""The mini model's evaluation measures, checked on stand-in generators whose behaviour is known."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from sdlab.mini import data, evaluate


def seeded_layout(pipe, prompts, seeds, guidance_scale, **_):
    """A stand-in generator: the prompt decides shape and colour, the seed decides size, position and background."""
    images = []
    for prompt, seed in zip(prompts, seeds):
        named = data.parse_partial(prompt)
        rng = np.random.default_rng(seed)
        background = ["white", "black", "gray"][rng.integers(3)]
        attrs = data.Attributes(named["shape"], named.get("colour", "red"), data.SIZES[rng.integers(2)],
                                data.POSITIONS[rng.integers(5)], background)
        images.append(data.render(attrs))
    return np.stack(images)


def test_same_seed_measure_separates_seed_decided_layouts(monkeypatch, tmp_path):
    monkeypatch.setattr(evaluate, "shipped_pipeline", lambda root: None)
    monkeypatch.setattr(evaluate, "generate_images", seeded_layout)
    found = evaluate.same_seed_similarity(tmp_path, tmp_path, count=50, guidance_scale=3)
    assert found["layout_pairs"] == 50
    assert found["g3_same_seed_layout_kept"] > 0.95  # the seed alone sets the layout (a low-contrast pair may not read)
    assert found["g3_other_seed_layout_kept"] < 0.2  # 1 in 30 layouts agree by chance
    assert found["g3_same_seed_mask_iou"] > found["g3_other_seed_mask_iou"]
    assert all(found[f"g3_same_seed_{k}_kept"] > found[f"g3_other_seed_{k}_kept"] for k in ("size", "position", "background"))
    assert (tmp_path / "same_seed_g3.png").is_file()


def test_the_same_seed_measure_runs_at_each_guidance_scale_asked(monkeypatch, tmp_path):
    scales = []
    monkeypatch.setattr(evaluate, "shipped_pipeline", lambda root: None)
    monkeypatch.setattr(evaluate, "generate_images", lambda pipe, prompts, seeds, g: scales.append(g) or
                        seeded_layout(pipe, prompts, seeds, g))
    found = evaluate.evaluate(tmp_path, tmp_path, ("same_seed",), (3.0, 7.5))
    assert sorted(set(scales)) == [3.0, 7.5] and "g3_same_seed_layout_kept" in found and "g7.5_same_seed_mask_iou" in found
    assert sorted(p.name for p in tmp_path.glob("same_seed_*.png")) == ["same_seed_g3.png", "same_seed_g7.5.png"]


def test_same_seed_measure_uses_partial_captions(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(evaluate, "shipped_pipeline", lambda root: None)
    monkeypatch.setattr(evaluate, "generate_images", lambda pipe, prompts, seeds, g: seen.extend(prompts) or
                        seeded_layout(pipe, prompts, seeds, g))
    evaluate.same_seed_similarity(tmp_path, tmp_path, count=4)
    assert all(set(data.parse_partial(p)) == {"shape", "colour"} for p in seen)


def test_the_command_prints_its_metrics_without_the_loaders_chatter(monkeypatch, tmp_path, capsys):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    monkeypatch.setattr(evaluate, "evaluate", lambda root, out, parts, scales: {"parts": list(parts)})
    try:
        evaluate.main(["--parts", "vae", "--out", str(tmp_path), "--threads", "1"])
        assert capsys.readouterr().out.strip().splitlines()[1] == '  "parts": ['
        assert diffusers_logging.get_verbosity() == transformers_logging.get_verbosity() == logging.ERROR
        assert not diffusers_logging.is_progress_bar_enabled() and not transformers_logging.is_progress_bar_enabled()
    finally:
        diffusers_logging.set_verbosity(before[0])
        transformers_logging.set_verbosity(before[1])
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()


@pytest.mark.parametrize("args,says", [
    (["--out", "theirs"], "--out=theirs already holds files sdlab did not write (notes.txt)"),
    (["--model", "nowhere"], "--model=nowhere is not a trained sdlab-mini or mini_flow folder"),
    (["--threads", "0"], "--threads=0: give 1 or more"),
])
def test_a_bad_evaluation_argument_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("evaluate: error: "), lines
    assert says in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.txt", "theirs"]


@pytest.mark.parametrize("args,code", [(["--help"], 0), (["--threads", "0"], 2), (["--model", "nowhere"], 2)])
def test_help_and_a_bad_argument_are_answered_before_torch_diffusers_and_transformers(tmp_path, args, code):
    """`python -m sdlab.mini.evaluate --help` took 8 s here: diffusers' logging module imports torch._dynamo."""
    watched = ("torch", "diffusers", "transformers")
    probe = (f"import sys\nfrom sdlab.mini.evaluate import main\ncode = 0\ntry:\n    main({args!r})\n"
             f"except SystemExit as e:\n    code = e.code\nprint('exit', code, [m for m in {watched!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.stdout.strip().splitlines()[-1] == f"exit {code} []", done.stdout[-500:] + done.stderr[-2000:]


@pytest.mark.parametrize("part, weights", [("vae", "vae/diffusion_pytorch_model.bin"),
                                           ("clip", "clip/pytorch_model.bin")])
def test_pickle_weights_are_refused_unopened_and_nothing_is_written(tmp_path, monkeypatch, capsys, part, weights):
    import pickle

    import torch

    from safetensors.torch import load_file

    from sdlab.mini.architecture import build_clip, initial

    model = tmp_path / "m"
    initial("vae", {"architecture": {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4}}).save_pretrained(
        str(model / "vae"))
    build_clip().save_pretrained(str(model / "clip"))
    for safe, pickled in (("vae/diffusion_pytorch_model",) * 2, ("clip/model", "clip/pytorch_model")):
        torch.save(load_file(str(model / f"{safe}.safetensors")), model / f"{pickled}.bin")  # what an old save holds
        (model / f"{safe}.safetensors").unlink()
    (model / "unet").mkdir()
    (model / "unet" / "config.json").write_text("{}")

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, forbidden)
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--model", str(model), "--parts", part, "--threads", "1", "--out", str(tmp_path / "ev")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"evaluate: error: refusing pickle weights {model / weights}: sdlab loads safetensors "
                               "only"), lines[0]
    assert not (tmp_path / "ev").exists()
