"""Every bad input: one line naming the bad value and what is allowed, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
    big = tmp / "big.json"
    big.write_text('{"prompt": "x"}' + " " * (2 << 20))
    deep = write(tmp / "deep.json", '{"seeds": ' + "[" * 100_000 + "]" * 100_000 + "}")
    nan = write(tmp / "nan.json", '{"guidance_scale": NaN}')
    huge = write(tmp / "huge.json", '{"seed": ' + "9" * 5000 + "}")
    fake_folder = tmp / "images"
    fake_folder.mkdir(exist_ok=True)
    write(fake_folder / "fake.png", "not a PNG")
    return [
        (["model=sd99"], "unknown model 'sd99'"),
        (["scheduler=eulr"], "unknown scheduler 'eulr'"),
        (["experiment=nope"], "unknown experiment 'nope'"),
        (["guidanse_scale=7"], "unknown config key 'guidanse_scale'"),
        (["scheduler.karras=true"], "unknown config key 'scheduler.karras'"),
        (["model.revision=x"], "unknown config key 'model.revision'"),
        (["num_inference_steps=0"], "num_inference_steps=0 must be >= 1"),
        (["guidance_scale=-1"], "guidance_scale=-1.0 must be in [0, 1000]"),
        (["guidance_scale=1e308"], "guidance_scale=1e+308 must be in [0, 1000]"),  # NaN latents at the first step
        (["guidance_scale=abc"], "guidance_scale='abc' is not a number"),
        (["width=100"], "width=100 must be a positive multiple of 8"),
        (["height=0"], "height=0 must be a positive multiple of 8"),
        (["eta=1.5"], "eta=1.5 must be in [0, 1]"),
        (["seed=abc"], "seed='abc' is not an integer"),
        (["seeds=[]"], "seeds=[] is empty"),
        (["seeds=[1,abc]"], "seeds[1]='abc' is not an integer"),
        (["model=sd15", "model.path=/dev/zero"], "model.path=/dev/zero is not a folder; give a diffusers folder"),
        (["clip=mini", "clip.path=/dev/zero"], "clip=mini: /dev/zero is not a folder; give a CLIP model folder"),  # it said seed='abc', a key the user did not give
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
        (["model.variant=f16"], "unknown model.variant 'f16'; choose one of: fp16, bf16, fp32, non_ema, ema"),
        (["scheduler.timestep_spacing=sideways"],
         "unknown scheduler.timestep_spacing 'sideways'; choose one of: leading, linspace, trailing"),
        # the options listed are those a run sets (scheduler.beta_end is no config key)
        (["scheduler=ddim", "scheduler.use_karras_sigmas=true"],
         "has no option 'use_karras_sigmas'; its options are: rescale_betas_zero_snr, steps_offset, timestep_spacing"),
        (["job=train_dragons"], "unknown job 'train_dragons'"),
        (["hydra.run.dir=/proc/sdlab_out"], "cannot be written"),
        # numbers out of range
        (["guidance_scale=nan"], "guidance_scale=nan is not a finite number"),
        (["guidance_scale=inf"], "guidance_scale=inf is not a finite number"),
        (["guidance_scale=-inf"], "guidance_scale=-inf is not a finite number"),
        (["eta=nan"], "eta=nan is not a finite number"),
        (["seed=18446744073709551616"], "seed=18446744073709551616 must be in [0, 2**63-1]"),
        (["seed=9223372036854775808"], "seed=9223372036854775808 must be in [0, 2**63-1]"),
        (["seed=-1"], "seed=-1 must be in [0, 2**63-1]"),
        (["seeds=[3,-2]"], "seeds[1]=-2 must be in [0, 2**63-1]"),
        (["seeds=[1,1,2]"], "seeds=[1, 1, 2] repeats seed 1"),
        (["num_inference_steps=1001"], "num_inference_steps=1001 is above limits.max_steps=1000"),
        (["limits.max_steps=5000", "num_inference_steps=1001"],
         "num_inference_steps=1001 is more than the 1000 timesteps the scheduler of model tiny"),
        (["num_inference_steps=2.5"], "num_inference_steps=2.5 is not an integer"),
        (["num_inference_steps=1000", "scheduler=ddim"], "reaches timestep 1000, past the 1000"),
        (["num_inference_steps=999", "scheduler=dpmpp_2m", "scheduler.timestep_spacing=leading"],
         "reaches timestep 1000, past the 1000"),
        # sizes and limits
        (["width=100000"], "width=100000 is above limits.max_side=4096"),
        (["width=4096", "height=4096"], "width x height = 4096 x 4096 is above limits.max_pixels"),
        (["model.resolution=8192"], "model.resolution=8192 is above limits.max_side=4096"),
        (["num_inference_steps=100000000"], "num_inference_steps=100000000 is above limits.max_steps"),
        (["limits.max_seeds=3", "seeds=[1,2,3,4]"], "4 seeds are more than limits.max_seeds=3"),
        (["params=/dev/zero"], "params=/dev/zero is not a regular file"),
        ([f"params={tmp}"], "is not a regular file"),
        ([f"params={big}"], "is larger than limits.max_params_bytes=1048576"),
        ([f"params={deep}"], "nests too deeply"),
        ([f"params={nan}"], "guidance_scale=nan is not a finite"),
        ([f"params={write(tmp / 's.json', json.dumps({'seeds': [1, 'x']}))}"],
         "seeds should be a list of int, not one holding 'x'"),
        ([f"params={huge}"], "cannot be read"),
        (["limits.max_side=abc"], "limits.max_side='abc' must be a positive integer"),
        (["limits.max_pixels=0"], "limits.max_pixels=0 must be a positive integer"),
        (["limits.max_steps=-1"], "limits.max_steps=-1 must be a positive integer"),  # as typed, a number
        (["+limits.max_gpus=1"], "unknown limit 'max_gpus'"),
        # wrong types
        (["model.compile=maybe"], "model.compile='maybe' must be true or false"),
        (["model.channels_last=yes"], "model.channels_last='yes' must be true or false"),
        (["model.mkldnn=sometimes"], "unknown model.mkldnn 'sometimes'; choose one of: true, false, auto"),
        (["model.resolution=abc"], "model.resolution='abc' is not an integer"),
        (["model.resolution=100"], "model.resolution=100 must be a positive multiple of 8"),
        (["model.device=gpu"], "model.device='gpu' is not a device"),
        (["model.name=7"], "model.name=7"),
        (["model.path=[1,2]"], "model.path=[1, 2] must be a string or null"),
        (["model=mini", "model.repo_id=nope/nope"], "model.repo_id=nope/nope is not read: model=mini loads its own "
                                                    "weights from models/mini; pass model.path=DIR for a folder"),
        (["model.repo_id=nope/nope"], "model.repo_id=nope/nope is not read: model=tiny is built in code"),
        (["scorers=[clip,clip]"], "scorers=['clip', 'clip'] lists clip twice; list each scorer once"),
        (["model.variant=fp16"], "model.variant=fp16 is not read: model=tiny is built in code, with no weights files"),
        (["model.family=sd3"], "model.family=sd3 is not read: model=tiny is built in code as sd"),
        (["model.t5=false"], "model.t5=false is not read: only SD3 can leave its T5 out, and model=tiny is built in "
                             "code as sd"),
        (["model=sd15", f"model.path={ROOT / 'models/mini'}", "model.t5=false"],  # another family's folder: it ran
         f"model.t5=false is not read: only SD3 can leave its T5 out, and model.path={ROOT / 'models/mini'} holds a "
         "pipeline of family sd"),
        (["model.max_sequence_length=100"], "model.max_sequence_length=100 is not read: only SD3 and Flux have a T5 "
                                            "encoder to take it, and model=tiny is built in code as sd"),
        (["model=sd15", f"model.path={ROOT / 'models/mini'}", "model.max_sequence_length=100"],
         "model.max_sequence_length=100 is not read: only SD3 and Flux have a T5 encoder to take it, and "
         f"model.path={ROOT / 'models/mini'} holds a pipeline of family sd"),
        (["model=sd15", "model.path=models/mini", "model.repo_id=nope/nope"],
         "model.repo_id=nope/nope is not read: model.path=models/mini is loaded instead; drop one of them"),
        (["scheduler.use_karras_sigmas=maybe"], "scheduler.use_karras_sigmas='maybe' must be true or false"),
        (["scheduler.steps_offset=abc"], "scheduler.steps_offset='abc' is not an integer"),
        (["scheduler.rescale_betas_zero_snr=1"], "scheduler.rescale_betas_zero_snr=1 must be true or false"),
        (["scheduler.steps_offset=-5"], "scheduler.steps_offset=-5 must be in [0, 1000]"),
        (["scheduler=ddim", "scheduler.steps_offset=1000"],  # it said to use fewer steps
         "reaches timestep 1960, past the 1000 the model was trained on; scheduler.steps_offset=1000 adds 1000 to each "
         "timestep; use a smaller one"),
        (["threads=abc"], "threads='abc' must be a positive integer"),
        (["threads=true"], "threads=true must be a positive integer"),
        (["resume=maybe"], "resume='maybe' must be true or false"),
        (["resume=null"], "resume=null must be true or false"),
        (["seed=true"], "seed=true is not an integer"),
        (["batch_size=true"], "batch_size=true is not an integer"),
        # null is no value here: it ran with the default in silence (only width and height mean something by null)
        (["guidance_scale=null"], "guidance_scale=null is not a number"),
        (["num_inference_steps=null"], "num_inference_steps=null is not an integer"),
        (["eta=null"], "eta=null is not a number"),
        (["batch_size=null"], "batch_size=null must be a positive integer or auto"),
        (["limits.max_cells=null"], "limits.max_cells='null' must be a positive integer"),
        ([f"params={write(tmp / 'null.json', json.dumps({'num_inference_steps': None}))}"],
         "num_inference_steps=null should be int"),
        (["clip.name=5"], "clip.name=5 must be a string"),
        (["model.prompt_grammar=[a]"], "model.prompt_grammar=['a'] is not an installed prompt world"),
        (["experiment=article_a8_same_seed", "made_for=5"], "made_for=5 must be a mapping of what, models, here"),
        (["model=sd3_tiny", "experiment=compare_schedulers_quick", "world.flow=5"],
         "world.flow=5 must be a mapping of recipe keys to their values on such a model"),
        (["model=mini", "scorers=[fd]", "reference_count=100000000"],
         "reference_count=100000000 must be in [1, 100000]"),
        ([f"params={write(tmp / 'p.json', json.dumps({'prompt': ['a', 'b']}))}"], "prompt=['a', 'b'] should be str"),
        (["params=5"], "params=5 must be a file path or null"),
        # input images that are not images
        (["experiment=forward_process", f"images={write(tmp / 'prompts.txt', 'a red circle')}"],
         f"images: {tmp / 'prompts.txt'} is not an image"),
        (["experiment=forward_process", f"images={fake_folder}"],
         f"images: {fake_folder / 'fake.png'} is not an image"),
        (["experiment=forward_process", "images=/dev/zero"], "images: /dev/zero is not a regular file (a device)"),
        # a CLIP model not in the cache: the key that fixes it is the CLIP model's own
        (["num_inference_steps=1", "clip=openai_l14", "clip.repo_id=someone/no-such-clip"],
         "someone/no-such-clip is not in the local Hugging Face cache; download it where there is internet "
         "(`hf download someone/no-such-clip`) or pass clip.path=DIR with a CLIP model folder"),
        # sizes the family's pipeline cannot make: SD3 and Flux pack 2x2 patches of the 8x smaller latents
        (["model=sd3_tiny", "num_inference_steps=1", "width=72", "height=64"],
         "width=72 must be a positive multiple of 16 on model=sd3_tiny (family sd3)"),
        (["model=flux_tiny", "num_inference_steps=1", "height=40"],
         "height=40 must be a positive multiple of 16 on model=flux_tiny (family flux)"),
        # the first refusal already names the family's multiple, and the key the user set
        (["model=sd3_tiny", "width=100"], "width=100 must be a positive multiple of 16 on model=sd3_tiny (family sd3)"),
        (["model=sd3_tiny", "model.resolution=72"],
         "model.resolution=72 must be a positive multiple of 16 on model=sd3_tiny (family sd3)"),
    ]


N_CASES = 116


def test_case_count_matches_the_list(tmp_path):
    cases = bad_inputs(tmp_path)
    assert len(cases) == N_CASES
    assert len({tuple(args) for args, _ in cases}) == N_CASES


def assert_refused(run_sdlab, capsys, tmp_path, args, fragment) -> float:
    """Run sdlab with `args`; it must print one `sdlab: error:` line with `fragment`, exit 2, write nothing."""
    run_dir = tmp_path / "run"
    extra = [] if any(a.startswith("hydra.run.dir") for a in args) else [f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    code = run_sdlab("model=tiny", *args, *extra) if not any(a.startswith("model=") for a in args) \
        else run_sdlab(*args, *extra)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("sdlab: error: ") and fragment in err, err
    assert not run_dir.exists()
    assert not (tmp_path / "outputs").exists()
    assert elapsed < 30, f"{args} took {elapsed:.1f} s to refuse"
    return elapsed


@pytest.mark.parametrize("case", range(N_CASES))
def test_bad_input_is_one_line_and_exit_2(run_sdlab, tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    args, fragment = bad_inputs(tmp_path)[case]
    assert_refused(run_sdlab, capsys, tmp_path, args, fragment)


# Bad model folders: the tiny pipeline saved as a diffusers folder, then damaged one way each.

@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, tiny):
    """The tiny pipeline written as a safetensors diffusers folder."""
    folder = tmp_path_factory.mktemp("tiny_folder")
    tiny[0].pipe.save_pretrained(folder, safe_serialization=True)
    return folder


UNET = "unet/diffusion_pytorch_model.safetensors"
VAE = "vae/diffusion_pytorch_model.safetensors"
TEXT = "text_encoder/model.safetensors"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_header(path: Path, change, tail: bytes = b"") -> None:
    """Rewrite a safetensors header with `change(header, names in file order)`, the tensor data kept (then `tail`)."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    change(header, sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"]))
    text = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:] + tail)


def reshape_first_tensor(path: Path) -> None:
    """Rewrite the safetensors header so its first tensor claims a transposed shape (same byte count)."""
    def change(header, names):
        name = next(k for k in names if len(header[k]["shape"]) == 2 and header[k]["shape"][0] != header[k]["shape"][1])
        header[name]["shape"] = header[name]["shape"][::-1]
    edit_header(path, change)


def point_second_tensor_at_the_first(header, names) -> None:
    """Two tensors of one size and dtype share their bytes: the file's data no longer lines up with its header."""
    sizes = {}
    for name in names:
        sizes.setdefault((tuple(header[name]["shape"]), header[name]["dtype"]), []).append(name)
    first, second = next(group for group in sizes.values() if len(group) > 1)[:2]
    header[second]["data_offsets"] = header[first]["data_offsets"]


def as_integers(header, names) -> None:
    """The first float tensor's bytes claimed as 32-bit integers: same size and shape, meaningless values."""
    header[next(k for k in names if header[k]["dtype"] == "F32")]["dtype"] = "I32"


def link_outside(folder: Path, outside: Path, component: str) -> None:
    shutil.copytree(folder / component, outside / component)
    shutil.rmtree(folder / component)
    os.symlink(outside / component, folder / component)


def link_file_outside(folder: Path, outside: Path, relative: str) -> None:
    outside.mkdir(parents=True, exist_ok=True)
    target = outside / Path(relative).name
    shutil.move(folder / relative, target)
    os.symlink(target, folder / relative)


def drop_last_tensor(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    tensors.pop(sorted(tensors)[-1])
    save_file(tensors, path)


def set_json(path: Path, **values) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def index_of(path: Path, target: str) -> None:
    """A shard index beside `path` that maps each of its tensors to `target` (a pickle there, if it names one)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        names = list(f.keys())
    (path.parent / f"{path.name}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(
        names, target)}))
    if target.endswith(".bin"):
        (path.parent / target).write_bytes(b"\x80\x04not really a pickle")


DAMAGES = {
    "unet shard index of a pickle": (lambda f, o: index_of(f / UNET, "other.bin"),
                                     "unet/diffusion_pytorch_model.safetensors.index.json maps tensor"),
    "unet shard index of the vae's weights": (lambda f, o: index_of(f / UNET, f"../{VAE}"),
                                              "unet/diffusion_pytorch_model.safetensors.index.json maps tensor"),
    "text encoder shard index of a pickle": (lambda f, o: index_of(f / TEXT, "pytorch_model.bin"),
                                             "text_encoder/model.safetensors.index.json maps tensor"),
    "unet weights truncated": (lambda f, o: truncate(f / UNET), f"{UNET} is truncated"),
    "vae weights empty": (lambda f, o: (f / VAE).write_bytes(b""), f"{VAE} is truncated"),
    "unet weights only as a variant": (lambda f, o: (f / UNET).rename(f / UNET.replace("model.", "model.fp16.")),
                                       "no diffusion_pytorch_model.safetensors or model.safetensors in"),
    "unet weights a FIFO": (lambda f, o: ((f / UNET).unlink(), os.mkfifo(f / UNET)), "no .safetensors weights in"),
    # a cache snapshot whose blob went (a download cut short): it said there were no weights, beside the link
    "unet weights a link to nothing": (lambda f, o: ((f / UNET).unlink(), (f / UNET).symlink_to(f / "gone.bin")),
                                       f"{UNET} links to a file that is gone (a download cut short?); download "
                                       "the model again"),
    "text encoder weights are noise": (lambda f, o: (f / TEXT).write_bytes(os.urandom(4096)),
                                       f"{TEXT} is not a safetensors file"),
    "weights header not JSON": (lambda f, o: (f / UNET).write_bytes(struct.pack("<Q", 5) + b"{oops" + b"\0" * 64),
                                f"{UNET} is not a safetensors file"),
    "unet tensor reshaped": (lambda f, o: reshape_first_tensor(f / UNET), f"{UNET}: tensor"),
    "unet tensors share their bytes": (lambda f, o: edit_header(f / UNET, point_second_tensor_at_the_first),
                                       f"{UNET} is not a safetensors file (tensor"),
    "unet weights with bytes past the last tensor": (lambda f, o: edit_header(f / UNET, lambda h, n: None, b"\0" * 64),
                                                     f"{UNET} has 64 bytes past its last tensor"),
    "unet tensor of integers": (lambda f, o: edit_header(f / UNET, as_integers),
                                "is I32; a unet's weights are floating point"),
    "text encoder config disagrees": (lambda f, o: set_json(f / "text_encoder/config.json", hidden_size=48),
                                      f"{TEXT}: tensor"),
    "model_index.json not JSON": (lambda f, o: (f / "model_index.json").write_text("{oops"),
                                  "model_index.json is not valid JSON"),
    "model_index.json huge": (lambda f, o: os.truncate(f / "model_index.json", 1 << 30),  # sparse: no disk used
                               "model_index.json is 1073741824 bytes"),
    "model_index.json a list": (lambda f, o: (f / "model_index.json").write_text("[]"),
                                "model_index.json must hold a JSON object"),
    "model_index.json claims SDXL for an SD folder": (  # loaded with no second text encoder, it failed at the prompt
        lambda f, o: set_json(f / "model_index.json", _class_name="StableDiffusionXLPipeline"),
        "text_encoder_2 is missing: a StableDiffusionXLPipeline needs it"),
    "custom component code": (lambda f, o: set_json(f / "model_index.json", unet=["my_unet", "MyUNet"]),
                              "component 'unet' comes from 'my_unet'"),
    "unet config missing": (lambda f, o: (f / "unet/config.json").unlink(), "unet/config.json is missing"),
    "model_index.json calls the unet a scheduler": (
        lambda f, o: set_json(f / "model_index.json", unet=["diffusers", "DDIMScheduler"]),
        "unet/config.json does not describe a unet: DDIMScheduler is not a model class"),
    "model_index.json names an unknown unet class": (
        lambda f, o: set_json(f / "model_index.json", unet=["diffusers", "EvilUNet"]),
        "unet/config.json does not describe a unet: neither diffusers nor transformers has a class 'EvilUNet'"),
    "unet config of absurd channels": (lambda f, o: set_json(f / "unet/config.json", block_out_channels=[10**9] * 2),
                                       "unet/config.json does not describe a unet"),
    "unet config of endless layers": (lambda f, o: set_json(f / "unet/config.json", layers_per_block=10**5),
                                      "unet/config.json does not describe"),
    "vae config not JSON": (lambda f, o: (f / "vae/config.json").write_text("{"), "vae/config.json is not valid JSON"),
    "tokenizer missing": (lambda f, o: shutil.rmtree(f / "tokenizer"), "tokenizer has no tokenizer.json"),
    "tokenizer file missing": (lambda f, o: (f / "tokenizer/tokenizer.json").unlink(),
                               "tokenizer has no tokenizer.json"),
    "tokenizer longer than its text encoder": (
        lambda f, o: set_json(f / "tokenizer/tokenizer_config.json", model_max_length=10**8),
        "tokenizer/tokenizer_config.json: model_max_length=100000000 is more than the 77 positions of its text "
        "encoder"),
    # each gave a traceback or torch's message from the first prompt padded to it, exit 1
    **{f"tokenizer model_max_length {value}": (
        lambda f, o, value=value: set_json(f / "tokenizer/tokenizer_config.json", model_max_length=value),
        f"tokenizer/tokenizer_config.json: model_max_length={value!r} is not a number of tokens >= 1")
       for value in (-1, 0, "abc", None)},
    "tokenizer not JSON": (lambda f, o: (f / "tokenizer/tokenizer.json").write_text("{"),
                           "tokenizer/tokenizer.json is not valid JSON"),
    "scheduler config missing": (lambda f, o: (f / "scheduler/scheduler_config.json").unlink(),
                                 "scheduler/scheduler_config.json is missing"),
    "component symlinked outside": (lambda f, o: link_outside(f, o, "vae"), "vae is a link to"),
    "weights symlinked outside": (lambda f, o: link_file_outside(f, o, UNET), f"{UNET} is a link to"),
    "link in a loop": (lambda f, o: os.symlink("loop", f / "unet/loop"), "unet/loop is a link in a loop"),
    "unet holds the vae's weights": (lambda f, o: shutil.copy(f / VAE, f / UNET),
                                     f"{UNET} does not hold the weights"),
    "vae holds the unet's weights": (lambda f, o: shutil.copy(f / UNET, f / VAE), "tensors are not a vae's"),
    "text encoder tensor left out": (lambda f, o: drop_last_tensor(f / TEXT), "1 of its"),
    "scheduler trained timesteps not a number": (
        lambda f, o: set_json(f / "scheduler/scheduler_config.json", num_train_timesteps="many"),
        "num_train_timesteps='many'"),
    # scheduler config values: were a 40 GB allocation, a minute and 7.5 GB to a NaN, a TypeError, a line not naming it
    "scheduler trained timesteps past any allocation": (
        lambda f, o: set_json(f / "scheduler/scheduler_config.json", num_train_timesteps=10**10),
        "scheduler/scheduler_config.json: num_train_timesteps=10000000000 must be an integer in [1, 100000]"),
    "scheduler trained timesteps a minute's worth": (
        lambda f, o: set_json(f / "scheduler/scheduler_config.json", num_train_timesteps=10**8),
        "scheduler/scheduler_config.json: num_train_timesteps=100000000 must be an integer in [1, 100000]"),
    "scheduler beta_start not a number": (
        lambda f, o: set_json(f / "scheduler/scheduler_config.json", beta_start="x"),
        "scheduler/scheduler_config.json: beta_start='x' is not a number"),
    "scheduler beta_end not below 1": (
        lambda f, o: set_json(f / "scheduler/scheduler_config.json", beta_end=1.5),
        "scheduler/scheduler_config.json: beta_end=1.5 must be a number in (0, 1)"),
    "scheduler betas falling": (
        lambda f, o: set_json(f / "scheduler/scheduler_config.json", beta_start=0.02, beta_end=0.001),
        "scheduler/scheduler_config.json: beta_start=0.02 is more than beta_end=0.001"),
    "scheduler beta_schedule unknown": (
        lambda f, o: set_json(f / "scheduler/scheduler_config.json", beta_schedule="evil"),
        "scheduler/scheduler_config.json: unknown beta_schedule 'evil'; choose one of: linear, scaled_linear, "
        "squaredcos_cap_v2"),
    "scheduler prediction_type unknown": (
        lambda f, o: set_json(f / "scheduler/scheduler_config.json", prediction_type="noise"),
        "scheduler/scheduler_config.json: unknown prediction_type 'noise'; choose one of:"),
    "scheduler trained betas not numbers": (
        lambda f, o: set_json(f / "scheduler/scheduler_config.json", trained_betas=["x"]),
        "scheduler/scheduler_config.json: trained_betas=['x'] must be a non-empty list of numbers, each"),
    "scheduler trained betas too few": (
        lambda f, o: set_json(f / "scheduler/scheduler_config.json", trained_betas=[0.001] * 3),
        "scheduler/scheduler_config.json: trained_betas lists 3 betas; num_train_timesteps=1000 needs one a step"),
    "vae scaling factor zero": (lambda f, o: set_json(f / "vae/config.json", scaling_factor=0),
                                "vae/config.json: scaling_factor=0.0 must be in [1e-06, 1000]"),
    "vae shift factor not finite": (lambda f, o: (f / "vae/config.json").write_text(
        (f / "vae/config.json").read_text().replace('"shift_factor": null', '"shift_factor": NaN')),
        "vae/config.json: shift_factor=nan is not a finite number"),
    "scheduler timestep_spacing unknown": (
        lambda f, o: set_json(f / "scheduler/scheduler_config.json", timestep_spacing="evenly"),
        "scheduler/scheduler_config.json: unknown timestep_spacing 'evenly'; choose one of: leading, linspace, "
        "trailing"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_model_folder_is_one_line_naming_the_file(run_sdlab, saved_tiny, tmp_path, capsys, monkeypatch,
                                                          damage):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "model"
    shutil.copytree(saved_tiny, folder)
    harm, fragment = DAMAGES[damage]
    harm(folder, tmp_path / "elsewhere")
    args = ["model=sd15", f"model.path={folder}", "num_inference_steps=2", "threads=1"]
    assert_refused(run_sdlab, capsys, tmp_path, args, fragment)


def replaced_by_a_consistent(folder: Path, component: str, **config) -> None:
    """`component` replaced by one of another model: its config changed by `config`, its weights made to match."""
    import diffusers

    cls = getattr(diffusers, json.loads((folder / component / "config.json").read_text())["_class_name"])
    made = cls.from_config({**cls.load_config(folder / component), **config})
    shutil.rmtree(folder / component)
    made.save_pretrained(folder / component, safe_serialization=True)


@pytest.mark.parametrize("component, config, fragment", [
    ("vae", {"latent_channels": 8}, "unet/config.json: in_channels=4 does not take the 8 latent channels of its vae"),
    ("unet", {"cross_attention_dim": 64},
     "unet/config.json: cross_attention_dim=64, but its text encoders give 32 (text_encoder: 32)"),
])
def test_components_of_different_models_are_refused_before_the_first_call(run_sdlab, saved_tiny, tmp_path, capsys,
                                                                          monkeypatch, component, config, fragment):
    """Each component sound and true to its own config, but not to the others': the first denoiser call failed with
    torch's shape message, exit 1, in a failed row."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "model"
    shutil.copytree(saved_tiny, folder)
    replaced_by_a_consistent(folder, component, **config)
    args = ["model=sd15", f"model.path={folder}", "num_inference_steps=2", "threads=1"]
    assert_refused(run_sdlab, capsys, tmp_path, args, fragment)


BEFORE_TORCH = ["model_index.json not JSON", "component symlinked outside", "unet weights truncated",
                "tokenizer not JSON", "scheduler config missing", "scheduler trained timesteps past any allocation",
                "scheduler beta_schedule unknown"]


@pytest.mark.parametrize("damage", BEFORE_TORCH)
def test_a_folder_damaged_in_its_files_is_refused_before_torch_or_diffusers_is_imported(saved_tiny, tmp_path, damage):
    """Links, JSON files and safetensors headers need no library to read: such a folder is refused about as fast as
    a missing one (seconds sooner than after the scheduler checks import diffusers and torch)."""
    from test_cli import entry_in_a_new_process

    folder = tmp_path / "model"
    shutil.copytree(saved_tiny, folder)
    harm, fragment = DAMAGES[damage]
    harm(folder, tmp_path / "elsewhere")
    result = entry_in_a_new_process(["model=sd15", f"model.path={folder}", "hydra.run.dir=run"], tmp_path,
                                    ("torch", "diffusers"))
    assert result.stdout.strip().splitlines()[-1] == "exit 2 []", result.stdout + result.stderr
    assert result.stderr.count("sdlab: error:") == 1 and fragment in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_an_intact_folder_passes_the_checks_and_a_cache_snapshot_may_link_into_its_blobs(saved_tiny, tmp_path):
    from sdlab.models.model_files import check_pipeline_folder

    check_pipeline_folder(saved_tiny)
    repo = tmp_path / "models--someone--tiny"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "abc"
    shutil.copytree(saved_tiny, snapshot)
    link_file_outside(snapshot, blobs, UNET)
    check_pipeline_folder(snapshot)


@pytest.mark.parametrize("target", ["beside its snapshots", "snapshots/other", "blobs_old"])
def test_a_snapshots_folder_may_link_only_into_its_own_repo_blobs(saved_tiny, tmp_path, target):
    """A folder whose parent is named `snapshots` is trusted to link into `../../blobs` (the Hugging Face cache
    layout), not anywhere else: a link beside it is as much outside model.path as one from any other folder."""
    from sdlab.errors import UserError
    from sdlab.models.model_files import check_weights_folder

    repo = tmp_path / "lk"
    snapshot = repo / "snapshots" / "m"
    shutil.copytree(saved_tiny, snapshot)
    (repo / "blobs").mkdir()
    elsewhere = repo if target == "beside its snapshots" else repo / target
    link_file_outside(snapshot, elsewhere, "tokenizer/tokenizer.json")
    with pytest.raises(UserError, match=r"tokenizer/tokenizer\.json is a link to .*, outside model\.path="):
        check_weights_folder(snapshot)


def test_every_scheduler_config_sdlab_ships_passes_the_folder_check():
    """The scheduler config bounds refuse none that sdlab ships: each family record's (built in code) and each model
    folder in models/, read as model.path reads a folder."""
    from sdlab.models.architectures import ARCHITECTURES
    from sdlab.models.model_files import check_scheduler_config, scheduler_config

    for name, arch in ARCHITECTURES.items():
        check_scheduler_config({"_class_name": arch.scheduler_class, **arch.scheduler}, f"model {name}")
    shipped = [folder for folder in sorted((ROOT / "models").iterdir()) if (folder / "model_index.json").is_file()]
    assert shipped
    for folder in shipped:
        assert scheduler_config(folder)["num_train_timesteps"] == 1000


def test_the_class_model_index_json_names_is_checked_as_diffusers_loads_it_not_the_configs(saved_tiny, tmp_path):
    """diffusers builds each component with the class model_index.json names; a config's own `_class_name` is a label
    it does not follow, so the check builds the same class and a config naming a scheduler is no reason to refuse."""
    from sdlab.models.model_files import check_pipeline_folder

    folder = tmp_path / "model"
    shutil.copytree(saved_tiny, folder)
    set_json(folder / "unet/config.json", _class_name="DDIMScheduler")
    set_json(folder / "text_encoder/config.json", architectures=["EvilModel"])
    check_pipeline_folder(folder)


def test_a_safety_checker_from_diffusers_own_pipelines_is_no_custom_code(saved_tiny, tmp_path):
    from sdlab.errors import UserError
    from sdlab.models.model_files import check_pipeline_folder

    folder = tmp_path / "model"  # stable-diffusion-v1-5's model_index.json names its checker this way
    shutil.copytree(saved_tiny, folder)
    set_json(folder / "model_index.json", safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
             feature_extractor=["transformers", "CLIPImageProcessor"])
    check_pipeline_folder(folder)
    for library in ("stable_diffusion_mine", "../stable_diffusion", "os"):
        set_json(folder / "model_index.json", safety_checker=[library, "StableDiffusionSafetyChecker"])
        with pytest.raises(UserError, match="no custom code"):
            check_pipeline_folder(folder)


@pytest.mark.parametrize("entry", ["UNet2DConditionModel", ["diffusers", None], ["diffusers", "UNet2DConditionModel", "x"],
                                   [None, "UNet2DConditionModel"], ["diffusers", "utils"], ["diffusers", "__init__"]])
def test_a_component_entry_of_model_index_json_is_a_library_and_a_class_name(saved_tiny, tmp_path, entry):
    """Refused from the file, by the entry's own name, before diffusers reads it (its errors were a traceback or a
    message naming neither the entry nor what it must be)."""
    from sdlab.errors import UserError
    from sdlab.models.model_files import check_pipeline_folder

    folder = tmp_path / "model"
    shutil.copytree(saved_tiny, folder)
    set_json(folder / "model_index.json", unet=entry)
    with pytest.raises(UserError, match=r"model_index.json: component 'unet' is .*; a component is \[library, class\]"):
        check_pipeline_folder(folder)


# The pure check over a composed config, as a sweep's pre-flight calls it for every job.

def composed(*overrides) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return OmegaConf.to_container(compose("config", list(overrides)), resolve=True)


def test_checked_run_names_the_bad_value_without_loading_anything():
    from sdlab.models import loading as models
    from sdlab.config import checked_run
    from sdlab.errors import UserError

    before = models.CACHE.load_count
    checked_run(composed())  # every recipe passes it on its way through the cli (tests/test_experiments.py)
    for overrides, fragment in [(["guidance_scale=nan"], "guidance_scale=nan"),
                                (["model.compile=maybe"], "model.compile='maybe'"),
                                (["seeds=[1,1]"], "repeats seed 1"),
                                (["width=8192"], "limits.max_side")]:
        with pytest.raises(UserError, match=fragment.replace("[", r"\[")):
            checked_run(composed(*overrides))
    assert models.CACHE.load_count == before


def test_sides_are_checked_against_the_family_the_config_names_unless_a_folder_names_it():
    from sdlab.config import checked_run
    from sdlab.errors import UserError

    for overrides, fragment in [(["model=sd3_tiny", "width=104"], "width=104 must be a positive multiple of 16"),
                                (["model=flux_tiny", "model.resolution=72"], "model.resolution=72 must be a positive "
                                                                             "multiple of 16 on model=flux_tiny")]:
        with pytest.raises(UserError, match=fragment):
            checked_run(composed(*overrides))
    checked_run(composed("model=sd3", "model.path=/nowhere", "width=520"))  # its model_index.json decides (pre-flight)


def test_a_folder_of_another_family_than_the_model_is_set_up_for_is_named_before_it_runs(saved_tiny):
    """model.path decides the family, but the model= file still sets the size: an SD folder under model=sdxl made
    1024 px images, 47 s a step pair on the tiny UNet, with no word of why."""
    from sdlab.app.preflight import check_job
    from sdlab.config import checked_run

    warnings = check_job(checked_run(composed("model=sdxl", f"model.path={saved_tiny}", "num_inference_steps=2")))
    assert [w for w in warnings if "family" in w] == [
        f"model.path={saved_tiny} holds a sd pipeline (StableDiffusionPipeline), not the sdxl one model=sdxl is set up "
        "for: its 1024 px and defaults apply; give a model= of family sd, or model.resolution="]
    assert not [w for w in check_job(checked_run(composed("model=sd15", f"model.path={saved_tiny}"))) if "family" in w]


def test_limits_can_be_raised_for_big_machines(tmp_path):
    from sdlab.config import LIMITS, checked_run
    from sdlab.bench.run import load_params

    checked_run(composed("width=8192", "height=8192", "limits.max_side=8192", "limits.max_pixels=67108864"))
    checked_run(composed("num_inference_steps=2000", "limits.max_steps=2000"))
    big = tmp_path / "big.json"
    big.write_text('{"seed": 3}' + " " * (2 << 20))
    assert load_params(big, {**LIMITS, "max_params_bytes": 4 << 20}) == {"seed": 3}


def test_steps_up_to_the_trained_timesteps_pass_when_the_spacing_stays_inside():
    from sdlab.models.architectures import SD15_SCHEDULER
    from sdlab.models.schedulers import check_steps

    check_steps("ddim", SD15_SCHEDULER, {"timestep_spacing": "trailing"}, 1000, "model tiny")
    check_steps("dpmpp_2m", SD15_SCHEDULER, {}, 500, "model tiny")


def test_a_step_check_that_passed_is_not_repeated_and_one_that_failed_always_is(monkeypatch):
    from sdlab.errors import UserError
    from sdlab.models import schedulers
    from sdlab.models.architectures import SD15_SCHEDULER

    built = []
    make = schedulers.make_scheduler
    monkeypatch.setattr(schedulers, "make_scheduler", lambda *a, **k: built.append(a[0]) or make(*a, **k))
    monkeypatch.setattr(schedulers, "PASSED_STEP_CHECKS", set())  # whatever other tests checked in this process
    options = {"timestep_spacing": "leading", "steps_offset": 7}
    for _ in range(3):  # a sweep checks its model, scheduler and steps once for each cell
        schedulers.check_steps("ddim", SD15_SCHEDULER, options, 30, "model tiny")
    assert built == ["ddim"]
    for _ in range(2):  # from the configuration's own words, every time
        with pytest.raises(UserError, match="reaches timestep 1006, past the 1000"):
            schedulers.check_steps("ddim", SD15_SCHEDULER, options, 1000, "model tiny")
    assert built == ["ddim"] * 3
    schedulers.check_steps("ddim", {**SD15_SCHEDULER, "beta_end": 0.02}, options, 30, "model tiny")  # another model
    assert built == ["ddim"] * 4


def test_a_sweep_with_one_bad_job_stops_before_any_job_runs(run_sdlab, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    code = run_sdlab("-m", "model=tiny", "num_inference_steps=2", "guidance_scale=1,nan", f"hydra.sweep.dir={sweep}")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("sdlab: error: ") and "guidance_scale=nan is not a finite number" in err, err
    assert not sweep.exists() and not (tmp_path / "outputs").exists()


def test_a_sweep_cell_of_a_size_its_family_cannot_make_stops_the_sweep_before_any_job_runs(run_sdlab, tmp_path, capsys,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    code = run_sdlab("-m", "model=sd3_tiny", "num_inference_steps=1", "threads=1", "width=64,72",
                     f"hydra.sweep.dir={sweep}")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "width=72 must be a positive multiple of 16 on model=sd3_tiny" in err, err
    assert not sweep.exists() and not (tmp_path / "outputs").exists()


def test_an_interval_sweep_is_one_line(run_sdlab, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    code = run_sdlab("-m", "model=tiny", "guidance_scale=interval(1,2)", f"hydra.sweep.dir={sweep}")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (
        "sdlab: error: guidance_scale=interval(1,2): a sweep takes a list, range() or glob(), not an interval()"), err
    assert not sweep.exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("sweep_arg,says", [
    ("seed=range(0,3,0)", "range() arg 3 must not be zero"),
    ("guidance_scale=range(0,1,0.0)", "range() takes finite numbers and a step other than zero"),
    ("guidance_scale=range(0,inf)", "range() takes finite numbers and a step other than zero"),  # never ended
    # a value listed twice is one cell: the second ran as a job that found the first's image and made nothing
    ("seed=1,2,1", "lists 1 twice; list each value once"),
    ("num_inference_steps=1,1.0", "lists 1 twice; list each value once"),
    ("prompt='a','b','a'", "lists 'a' twice; list each value once"),
])
def test_a_sweep_that_cannot_be_run_as_typed_is_one_line(run_sdlab, tmp_path, capsys, monkeypatch, sweep_arg, says):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    code = run_sdlab("-m", "model=tiny", sweep_arg, f"hydra.sweep.dir={sweep}")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"sdlab: error: {sweep_arg}: {says}", err
    assert not sweep.exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("name,multiple", [("tiny", 8), ("sd3_tiny", 16), ("flux_tiny", 16)])
def test_the_family_check_of_a_side_names_the_multiple_the_family_needs(name, multiple):
    """Pre-flight refuses a side the model's family cannot make, zero and negative sides too, with the model named."""
    from types import SimpleNamespace

    from sdlab.config import SchedulerChoice
    from sdlab.errors import UserError
    from sdlab.models.loading import check_model, configured_spec

    spec = configured_spec(name)
    for width in (100, multiple + 8 if multiple > 8 else 100, 0, -multiple):
        params = SimpleNamespace(width=width, height=64, num_inference_steps=1)
        with pytest.raises(UserError) as by_family:
            check_model(spec, SchedulerChoice("euler"), params)
        assert str(by_family.value) == (f"width={width} must be a positive multiple of {multiple} "
                                        f"on model={name} (family {spec.family})")


@pytest.mark.parametrize("recipe", ["vae_roundtrip", "forward_process"])
def test_input_images_are_checked_before_torch_or_diffusers_is_imported(tmp_path, recipe):
    """`images=` names files that need no library to check: a missing folder or an image cut short is refused before
    the scheduler checks import the libraries, and no run dir is made."""
    from PIL import Image
    from test_cli import entry_in_a_new_process

    cut = tmp_path / "cut"
    cut.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(cut / "red.png")
    data = (cut / "red.png").read_bytes()
    (cut / "red.png").write_bytes(data[:int(len(data) * 0.6)])
    for images, fragment in ((tmp_path / "missing", "missing"), (cut, "red.png")):
        result = entry_in_a_new_process([f"experiment={recipe}", f"images={images}", "hydra.run.dir=run"], tmp_path,
                                        ("torch", "diffusers"))
        assert result.stdout.strip().splitlines()[-1] == "exit 2 []", result.stdout + result.stderr
        assert result.stderr.count("sdlab: error:") == 1 and fragment in result.stderr, result.stderr
        assert not (tmp_path / "run").exists()


def test_an_input_image_of_more_pixels_than_the_limit_is_refused_before_it_is_decoded(tmp_path):
    """`images=` with a picture larger than `limits.max_input_pixels` is one line naming it, its size and the limit,
    read from its header before torch is imported: a 9500 x 9500 PNG of a few KB used to take 1.2 GB to decode."""
    from PIL import Image
    from test_cli import entry_in_a_new_process

    Image.new("RGB", (300, 200), (200, 30, 30)).save(tmp_path / "wide.png")
    result = entry_in_a_new_process(["experiment=vae_roundtrip", f"images={tmp_path / 'wide.png'}",
                                     "limits.max_input_pixels=50000", "hydra.run.dir=run"], tmp_path,
                                    ("torch", "diffusers"))
    assert result.stdout.strip().splitlines()[-1] == "exit 2 []", result.stdout + result.stderr
    assert result.stderr.strip() == (f"sdlab: error: images: {tmp_path / 'wide.png'} is 300x200 px = 60000 pixels, "
                                     "above limits.max_input_pixels=50000; raise it with limits.max_input_pixels=N "
                                     "on a machine that can take it"), result.stderr
    assert not (tmp_path / "run").exists()


def test_a_reference_set_is_checked_before_torch_or_diffusers_is_imported(tmp_path):
    """`reference=` names files that need no library to check: a reference image cut short is refused before the
    scheduler checks import the libraries, and no run dir is made."""
    from PIL import Image
    from test_cli import entry_in_a_new_process

    ref = tmp_path / "ref"
    ref.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 64), (60 * i, 30, 30)).save(ref / f"{i}.png")
    data = (ref / "1.png").read_bytes()
    (ref / "1.png").write_bytes(data[:int(len(data) * 0.6)])
    result = entry_in_a_new_process(["scorers=[fd]", f"reference={ref}", "reference_count=4", "hydra.run.dir=run"],
                                    tmp_path, ("torch", "diffusers"))
    assert result.stdout.strip().splitlines()[-1] == "exit 2 []", result.stdout + result.stderr
    assert result.stderr.count("sdlab: error:") == 1 and "1.png" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,fragment", [
    (["scheduler.shift=-1"], "scheduler.shift=-1 must be a positive finite number"),
    (["clip.path=nowhere"], "nowhere (config.json missing)"),
])
def test_a_value_no_library_can_tell_better_is_refused_before_torch_or_diffusers_is_imported(tmp_path, args, fragment):
    """A scheduler option's value and a CLIP folder need no library to check: refused as fast as a bad seed, not
    after seconds of importing the libraries."""
    from test_cli import entry_in_a_new_process

    result = entry_in_a_new_process([*args, "hydra.run.dir=run"], tmp_path, ("torch", "diffusers"))
    assert result.stdout.strip().splitlines()[-1] == "exit 2 []", result.stdout + result.stderr
    assert result.stderr.count("sdlab: error:") == 1 and fragment in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_a_device_this_machine_has_not_is_refused_before_diffusers_is_imported(tmp_path):
    """Only torch knows which devices there are: the refusal waited for the scheduler checks' import of diffusers."""
    from test_cli import entry_in_a_new_process

    result = entry_in_a_new_process(["model.device=cuda", "hydra.run.dir=run"], tmp_path, ("diffusers",))
    assert result.stdout.strip().splitlines()[-1] == "exit 2 []", result.stdout + result.stderr
    assert "model.device='cuda' is not available here; use auto or cpu" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_bad_file_found_once_the_job_runs_leaves_no_config_behind(tmp_path):
    """A PNG whose header reads but whose data does not is found as the job reads it: the refusal took back Hydra's
    files and the log, but left the run's run_config.json in a new folder."""
    import struct
    import zlib

    from cli_helpers import run_cli

    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
                                             + chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 100) + chunk(b"IEND", b""))
    done = run_cli("experiment=vae_roundtrip", "model=tiny", "images=bad", "threads=1", cwd=tmp_path)
    assert done.returncode == 2 and "bad/a.png is not an image" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hf_home") == ["bad"]
