"""Check a diffusers pipeline folder before any weights load: layout, links, configs, safetensors headers, shapes."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

from sdlab.config import SCHEDULER_OPTIONS, VARIANTS, Field, check_fields
from sdlab.errors import UserError
from sdlab.lazy import torch
from sdlab.metrics.schedule import PREDICTION_TYPES, SCHEDULES
from sdlab.models.architectures import Part, build_part
from sdlab.untrusted import open_regular, parse_json

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle")
WEIGHT_COMPONENTS = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")
SCHEDULER_CONFIG = ("scheduler", "scheduler_config.json")
COMPONENTS = (*WEIGHT_COMPONENTS, *TOKENIZERS, "scheduler", "safety_checker", "feature_extractor", "image_encoder")
CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9_]*")  # a library's public class: UNet2DConditionModel, CLIPTokenizer
SAFE_LOCAL = {"use_safetensors": True, "local_files_only": True}  # every from_pretrained: no pickle, no download
MAX_TRAIN_TIMESTEPS = 100_000  # published models train on 1000; 10**8 took a minute and 7.5 GB, 10**10 40 GB at once
BETA = Field("number", math.ulp(0.0), math.nextafter(1.0, 0.0), plain=True, rule="a number in (0, 1)")
# A scheduler config's values as sdlab's scheduler options are checked, and those that size and shape its schedule;
# the strings as the diffusers schedulers sdlab runs accept them (each reads the config of the model's own scheduler)
SCHEDULER_FIELDS = {
    **SCHEDULER_OPTIONS,
    "flow_shift": SCHEDULER_OPTIONS["shift"],  # the multistep solvers' name for it
    "num_train_timesteps": Field("int", 1, MAX_TRAIN_TIMESTEPS, rule=f"an integer in [1, {MAX_TRAIN_TIMESTEPS}]"),
    "beta_start": BETA,
    "beta_end": BETA,
    "beta_schedule": Field("choice", choices=SCHEDULES, plain=True),
    "prediction_type": Field("choice", choices=(*PREDICTION_TYPES, "flow_prediction"), plain=True),
    "algorithm_type": Field("choice", choices=("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++", "deis"),
                            plain=True),
    "solver_type": Field("choice", choices=("midpoint", "heun", "logrho", "bh1", "bh2"), plain=True),
    "time_shift_type": Field("choice", choices=("exponential", "linear"), plain=True),
    "interpolation_type": Field("choice", choices=("linear", "log_linear"), plain=True),
    "timestep_type": Field("choice", choices=("discrete", "continuous"), plain=True),
    "trained_betas": Field("numbers", math.ulp(0.0), math.nextafter(1.0, 0.0), optional=True),
}
# The VAE config's values its latents are scaled and shifted by (SD 0.18215; SD3 and Flux shift too)
VAE_FIELDS = {"scaling_factor": Field("number", 1e-6, 1e3, plain=True),
              "shift_factor": Field("number", -1e3, 1e3, plain=True, optional=True)}
# Classes a component's config is built with when it does not name one (old diffusers/transformers saves)
DEFAULT_CLASSES = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel"}
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on a header
MAX_JSON_BYTES = 64 << 20  # a model folder's configs and tokenizer files (a tokenizer.json: a few MB)
SKIPPED_KEYS = {"T5EncoderModel": ("decoder",)}  # a whole T5 checkpoint: the encoder loads, its decoder is skipped
WEIGHTS_NAMES = r"(diffusion_pytorch_model|model)"  # a component's weights as diffusers and transformers name them
SAMPLED_BYTES = 64  # of each end of each tensor, in a weights fingerprint
FINGERPRINTED = (".safetensors", ".json", ".txt", ".model")  # weights, configs and tokenizer files (merges, spiece)


def check_weights_folder(folder: Path, variant: str | None = None) -> None:
    """Refuse all but a diffusers folder of sound safetensors (of `variant`), links and JSON; no imports, cached."""
    signature = _signature(folder.absolute())
    _check_weights(folder, signature, variant)
    _read_folder(folder.absolute(), signature, variant)


@lru_cache(maxsize=16)
def _check_weights(folder: Path, signature: tuple, variant: str | None) -> None:
    if folder.is_file():
        if folder.suffix in PICKLE_SUFFIXES:
            raise UserError(f"refusing pickle checkpoint {folder}: sdlab loads safetensors only")
        if folder.suffix == ".safetensors":
            raise UserError(
                f"model.path={folder} is a single-file checkpoint; sdlab loads diffusers folders: convert it once with "
                "diffusers' from_single_file(...).save_pretrained(DIR) (e.g. StableDiffusionPipeline.from_single_file("
                "PATH).save_pretrained(DIR, safe_serialization=True)) and give model.path=DIR")
        raise UserError(f"model.path={folder} is a file; give a diffusers folder (with model_index.json)")
    if not folder.is_dir():  # a device, a pipe
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"model.path={folder} {what}; give a diffusers folder (with model_index.json)")
    if not (folder / "model_index.json").is_file():
        raise UserError(f"model.path={folder} has no model_index.json; give a diffusers pipeline folder")
    for component in weight_components(folder):
        check_component_files(folder / component, variant)


def check_component_files(component: Path, variant: str | None = None) -> None:
    """Refuse a component folder without the safetensors diffusers loads (of `variant`) or whose shard index strays."""
    if checked := loaded_weights(component, variant):
        index = re.compile(WEIGHTS_NAMES + r"\.safetensors\.index" + (rf"\.{re.escape(variant)}" if variant else "")
                           + r"\.json")
        for path in sorted(p for p in component.glob("*.json") if index.fullmatch(p.name)):
            check_shard_index(path, {p.name for p in checked})
        return
    files = [p for p in component.glob("*") if p.is_file()]
    if others := [p.name for p in files if p.suffix == ".safetensors"]:
        suffix = f".{variant}.safetensors" if variant else ".safetensors"
        found = re.fullmatch(WEIGHTS_NAMES + r"\.(\w+?)(-\d+-of-\d+)?\.safetensors", others[0])
        other = found[2] if found and found[2] in VARIANTS else None
        hint = f"{'use' if variant else 'add'} model.variant={other}" if other else "give the weights that name"
        raise UserError(f"no diffusion_pytorch_model{suffix} or model{suffix} in {component} (only {others[0]}"
                        f"{'' if variant else ', which diffusers loads only as a variant'}); {hint}")
    if pickles := [p.name for p in files if p.suffix in PICKLE_SUFFIXES]:
        raise UserError(f"refusing pickle weights {component / pickles[0]}: sdlab loads safetensors only "
                        "(convert them with diffusers' save_pretrained(safe_serialization=True))")
    if gone := sorted(p.name for p in component.glob("*.safetensors") if p.is_symlink() and not p.exists()):
        raise UserError(f"{component / gone[0]} links to a file that is gone (a download cut short?); download the "
                        "model again")
    raise UserError(f"no .safetensors weights in {component}")


def check_shard_index(index: Path, checked: set[str]) -> None:
    """Refuse an index mapping a tensor to any file but the `checked` safetensors: loaders follow it to a pickle too."""
    weight_map = read_object(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise UserError(f"{index} has no weight_map object; a shard index maps each tensor to its file")
    for tensor, name in weight_map.items():
        if name not in checked:
            raise UserError(f"{index} maps tensor {tensor} to {name!r}, not one of the safetensors files beside it "
                            f"({', '.join(sorted(checked))}); sdlab loads only the safetensors it checks")


def check_component_folder(folder: Path, label: str, component: str) -> None:
    """Refuse `label` (`key=value`) unless `folder` is a local `component` folder: config.json and its safetensors."""
    allowed = f"give a local {component} folder with config.json and .safetensors weights"
    if folder.is_file():
        if folder.suffix in PICKLE_SUFFIXES:
            raise UserError(f"refusing pickle checkpoint {label}: sdlab loads safetensors only; {allowed}")
        raise UserError(f"{label} is a file; {allowed}")
    if not folder.is_dir():  # never a Hugging Face repo id: nothing is downloaded
        raise UserError(f"{label} does not exist; {allowed}")
    if not (folder / "config.json").is_file():
        raise UserError(f"{label} has no config.json; {allowed}")
    check_component_files(folder)


def loaded_weights(component: Path, variant: str | None = None) -> list[Path]:
    """The safetensors diffusers loads for a component: plain weights or shards, or those of `variant` (`.fp16`)."""
    name = re.compile(WEIGHTS_NAMES + (rf"\.{re.escape(variant)}" if variant else "") + r"(-\d+-of-\d+)?\.safetensors")
    return sorted(p for p in component.glob("*.safetensors") if name.fullmatch(p.name) and p.is_file())


def check_links(folder: Path) -> None:
    """Refuse a component or file that links outside the folder (a Hugging Face snapshot: but into its repo's blobs)."""
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":  # models--org--name/snapshots/<rev>: its files link into that repo's blobs
        roots.append((folder.parent.parent / "blobs").resolve())
    for path in [*folder.iterdir(), *(p for d in folder.iterdir() if d.is_dir() for p in d.iterdir())]:
        try:
            real = path.resolve()
        except (RuntimeError, OSError):  # RuntimeError before Python 3.13
            raise UserError(f"{path} is a link in a loop; remove it or put the file it stands for there") from None
        if not any(real.is_relative_to(root) for root in roots):
            raise UserError(f"{path} is a link to {real}, outside model.path={folder}; copy it into the folder")


def read_object(path: Path) -> dict[str, Any]:
    """A JSON file's object, read within MAX_JSON_BYTES, or a UserError naming the file and what is wrong."""
    if not path.exists():
        raise UserError(f"{path} is missing; a diffusers pipeline folder needs it")
    with open_regular(path, str(path), "a JSON file") as f:
        if (size := os.fstat(f.fileno()).st_size) > MAX_JSON_BYTES:
            raise UserError(f"{path} is {size} bytes; a model folder's JSON files hold at most {MAX_JSON_BYTES}")
        raw = f.read(MAX_JSON_BYTES + 1)
    data = parse_json(raw, str(path))
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def check_scheduler_config(config: dict[str, Any], source: str) -> dict[str, Any]:
    """The scheduler config if its values fit SCHEDULER_FIELDS and its betas rise, else a UserError naming `source`."""
    try:
        check_fields(config, SCHEDULER_FIELDS)
        start, end = config.get("beta_start"), config.get("beta_end")
        if start is not None and end is not None and start > end:
            raise UserError(f"beta_start={start} is more than beta_end={end}; the betas rise from one to the other")
        steps, betas = config.get("num_train_timesteps", 1000), config.get("trained_betas")
        if betas is not None and len(betas) != steps:
            raise UserError(f"trained_betas lists {len(betas)} betas; num_train_timesteps={steps} needs one a step")
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    return config


def scheduler_config(folder: Path) -> dict[str, Any]:
    """The folder's scheduler config as published, its values checked (check_scheduler_config); no library read."""
    path = folder.joinpath(*SCHEDULER_CONFIG)
    return check_scheduler_config(read_object(path), str(path))


def own_library(name: Any) -> bool:
    """Whether library `name` is diffusers, transformers or a diffusers pipeline module (SD 1.5's safety checker)."""
    if name in (None, "diffusers", "transformers"):
        return True
    package = importlib.util.find_spec("diffusers")
    return isinstance(name, str) and name.isidentifier() and package is not None and any(
        (Path(root) / "pipelines" / name / "__init__.py").is_file() for root in package.submodule_search_locations)


def check_index(path: Path) -> dict[str, str]:
    """The class model_index.json names per component (diffusers or transformers only), the one diffusers builds."""
    classes = {}
    for name, value in read_object(path).items():
        if name in COMPONENTS and not (value in ([None, None], (None, None)) or isinstance(value, list) and len(value) == 2
                                       and all(isinstance(v, str) for v in value) and CLASS_NAME.fullmatch(value[1])):
            raise UserError(f"{path}: component {name!r} is {json.dumps(value)}; a component is [library, class], e.g. "
                            f"[\"diffusers\", \"UNet2DConditionModel\"], or [null, null] where it is left out")
        if not (isinstance(value, list) and len(value) == 2):
            continue  # a setting (`_class_name`, `requires_safety_checker`), not a component
        if not own_library(value[0]):
            raise UserError(f"{path}: component {name!r} comes from {value[0]!r}; sdlab loads diffusers and "
                            "transformers components only (no custom code)")
        if value[0] is not None and isinstance(value[1], str):
            classes[name] = value[1]
    return classes


def check_named_components(folder: Path, pipeline: str, needed: Iterable[str], left_out: Iterable[str] = ()) -> None:
    """Every component the `pipeline` class needs or model_index.json names, but those left out, is a folder (diffusers
    would load a missing optional one as None, and its own errors name the wrong one)."""
    named = {name: class_name for name, class_name in check_index(folder / "model_index.json").items()
             if name in (*WEIGHT_COMPONENTS, *TOKENIZERS)}
    for name in dict.fromkeys([*needed, *named]):
        if name not in left_out and not (folder / name).is_dir():
            what = f"model_index.json names it ({named[name]})" if name in named else f"a {pipeline} needs it"
            raise UserError(f"{folder / name} is missing: {what}; copy the model's {name} folder there")


def check_tokenizer(folder: Path, encoder: dict[str, Any] | None = None) -> None:
    """A tokenizer folder's files are there and it pads to no more tokens than `encoder` (its config) has positions."""
    limit, settings = (encoder or {}).get("max_position_embeddings"), folder / "tokenizer_config.json"
    given = read_object(settings) if settings.is_file() else {}
    if "model_max_length" in given:
        length = given["model_max_length"]
        if isinstance(length, bool) or not isinstance(length, (int, float)) or not length >= 1:
            raise UserError(f"{settings}: model_max_length={length!r} is not a number of tokens >= 1; copy the "
                            "model's own tokenizer_config.json")
        if isinstance(limit, int) and length > limit:
            text_encoder = folder.parent / folder.name.replace("tokenizer", "text_encoder") / "config.json"
            raise UserError(f"{settings}: model_max_length={length} is more than the {limit} positions of its text "
                            f"encoder ({text_encoder}: max_position_embeddings); prompts are padded to it")
    if (folder / "tokenizer.json").is_file():
        read_object(folder / "tokenizer.json")
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        read_object(folder / "vocab.json")
    else:
        raise UserError(f"{folder} has no tokenizer.json (nor vocab.json and merges.txt); copy the model's tokenizer")


def safetensors_tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """(dtype, shape) per tensor of a header, laid end to end over the file as safetensors requires; no data read."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        if len(head) == 8 and n > MAX_HEADER_BYTES:
            raise UserError(f"{path} is not a safetensors file (header length {n})")
        if len(head) < 8 or 8 + n > size:
            raise UserError(f"{path} is truncated: {size} bytes, too short for its header")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise UserError(f"{path} is not a safetensors file (its header is not a JSON object)")
    tensors, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = dtype in DTYPE_BYTES and all(isinstance(d, int) and d >= 0 for d in shape) \
                and isinstance(begin, int) and isinstance(end, int) and 0 <= begin \
                and end - begin == math.prod(shape) * DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"{path} is not a safetensors file (tensor {name!r} has a malformed entry)")
        tensors[name] = (dtype, tuple(shape))
        spans.append((begin, end, name))
    data_end = max((end for _, end, _ in spans), default=0)
    if 8 + n + data_end > size:
        raise UserError(f"{path} is truncated: {size} bytes, its header needs {8 + n + data_end}")
    reached = 0
    for begin, end, name in sorted(spans):
        if begin != reached:
            raise UserError(f"{path} is not a safetensors file (tensor {name!r} starts at byte {begin} of its data, "
                            f"not {reached}: its tensors {'overlap' if begin < reached else 'leave a gap'})")
        reached = end
    if 8 + n + data_end < size:
        raise UserError(f"{path} has {size - 8 - n - data_end} bytes past its last tensor; "
                        "it is not a safetensors file as saved")
    return tensors


def weight_components(folder: Path) -> list[str]:
    """The folder's components that hold weights (check_named_components says which must be there)."""
    return [c for c in WEIGHT_COMPONENTS if (folder / c).exists()]


@dataclass(frozen=True)
class ExpectedWeights:
    """What a component's config says its weights files hold."""

    shapes: dict[str, tuple[int, ...]]  # every tensor of its state dict
    floats: frozenset[str] = frozenset()  # those of a floating-point dtype (weights; position ids are integers)
    tied: frozenset[str] = frozenset()  # tensors that are another one (T5's embed_tokens is `shared`): may be left out
    extra: tuple[str, ...] = ()  # keys a file may carry that loading skips: non-persistent buffers, the class's own


class TooManyTensors(Exception):
    """A config builds more tensors than its component's safetensors could hold."""


@contextmanager
def tensor_budget(most: int) -> Iterator[None]:
    """Stop building a module past `most` parameters and buffers: 10**5 layers take hours even on the meta device."""
    module, count = torch.nn.modules.module, itertools.count(1)

    def counted(*_):
        if next(count) > most:
            raise TooManyTensors

    hooks = [module.register_module_parameter_registration_hook(counted),
             module.register_module_buffer_registration_hook(counted)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def expected_weights(component: str, config: dict[str, Any], config_path: Path, tensors_held: int,
                     class_name: str | None = None) -> ExpectedWeights:
    """The tensors the config builds on the meta device as `class_name`, given up far past `tensors_held`."""
    class_name = (class_name or config.get("_class_name") or (config.get("architectures") or [None])[0]
                  or DEFAULT_CLASSES.get(component, ""))  # diffusers', transformers', an old save's
    most = 2 * tensors_held + 64  # tied weights, buffers: a few more
    try:
        with torch.device("meta"), tensor_budget(most):
            model = build_part(Part(class_name, config))
    except TooManyTensors:
        raise UserError(f"{config_path} does not describe a {component}: it builds more than {most} tensors, its "
                        f"safetensors hold {tensors_held}") from None
    except (ValueError, TypeError, KeyError, AttributeError, AssertionError, RuntimeError, OverflowError) as e:
        raise UserError(f"{config_path} does not describe a {component}: {str(e).splitlines()[0]}") from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{config_path} does not describe a {component}: {class_name} is not a model class")
    tensors = model.state_dict(keep_vars=True)
    first: dict[int, str] = {}
    tied = {name for name, tensor in tensors.items() if first.setdefault(id(tensor), name) != name}
    skipped = [name for name, _ in model.named_buffers() if name not in tensors]
    return ExpectedWeights({k: tuple(v.shape) for k, v in tensors.items()},
                           frozenset(k for k, v in tensors.items() if v.is_floating_point()), frozenset(tied),
                           tuple(re.escape(name) + "$" for name in skipped) + SKIPPED_KEYS.get(class_name, ()))


def check_component_weights(folder: Path, component: str, config: dict[str, Any], held: dict[Path, dict[str, tuple]],
                            class_name: str | None = None) -> None:
    """The headers `held` list exactly the tensors (shapes, float dtypes) the config describes: nothing left random."""
    config_path = folder / component / "config.json"
    want = expected_weights(component, config, config_path, sum(map(len, held.values())), class_name)
    have: set[str] = set()
    for weights, tensors in held.items():
        for name, (dtype, shape) in tensors.items():
            if name in want.shapes and want.shapes[name] != shape:
                raise UserError(f"{weights}: tensor {name} has shape {list(shape)}; {config_path} needs "
                                f"{list(want.shapes[name])}")
            if name in want.floats and dtype not in FLOAT_DTYPES:
                raise UserError(f"{weights}: tensor {name} is {dtype}; a {component}'s weights are "
                                f"floating point ({', '.join(FLOAT_DTYPES)})")
            have.add(name)
    missing = sorted(set(want.shapes) - have - want.tied)
    unknown = sorted(n for n in have - set(want.shapes) if not any(re.search(p, n) for p in want.extra))
    if missing or unknown:
        named = next(iter(held)) if len(held) == 1 else folder / component
        found = [f"{len(missing)} of its {len(want.shapes)} tensors are missing (e.g. {missing[0]})"] if missing else []
        found += [f"{len(unknown)} tensors are not a {component}'s (e.g. {unknown[0]})"] if unknown else []
        raise UserError(f"{named} does not hold the weights {config_path} describes: {' and '.join(found)}; "
                        f"put the {component}'s own safetensors there")


def check_pipeline_folder(folder: Path, variant: str | None = None) -> None:
    """Refuse a pipeline folder with a pickle, a link outside it, a bad config or tokenizer, or damaged weights."""
    check_weights_folder(folder, variant)  # a cache hit after pre-flight
    _check_shapes(folder.absolute(), _signature(folder.absolute()), variant)


def _signature(folder: Path) -> tuple:
    """What the checks depend on: every component file's name, size and modification time (none for no folder)."""
    if not folder.is_dir():
        return ()
    files = [p for d in folder.iterdir() if d.is_dir() for p in d.iterdir()] + [folder / "model_index.json"]
    return tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.exists()))


@lru_cache(maxsize=16)
def _read_folder(folder: Path, signature: tuple, variant: str | None) -> dict[str, tuple]:
    """Each weighted component's config, header tensors and class, once links, index and tokenizers pass."""
    check_links(folder)
    classes = check_index(folder / "model_index.json")
    components = weight_components(folder)
    configs = {component: read_object(folder / component / "config.json") for component in components}
    if "vae" in configs:
        check_fields(configs["vae"], VAE_FIELDS, f"{folder / 'vae' / 'config.json'}: ")
    scheduler_config(folder)
    for tokenizer in TOKENIZERS:
        if tokenizer == "tokenizer" or (folder / tokenizer).exists():
            check_tokenizer(folder / tokenizer, configs.get(tokenizer.replace("tokenizer", "text_encoder")))
    return {component: (configs[component], {weights: safetensors_tensors(weights)
                                             for weights in loaded_weights(folder / component, variant)},
                        classes.get(component))
            for component in components}


def component_configs(folder: Path, variant: str | None = None) -> dict[str, dict[str, Any]]:
    """Each weighted component's config, as `check_weights_folder` read it."""
    folder = folder.absolute()
    read = _read_folder(folder, _signature(folder), variant)
    return {component: config for component, (config, _, _) in read.items()}


@lru_cache(maxsize=16)
def _check_shapes(folder: Path, signature: tuple, variant: str | None) -> None:
    for component, (config, held, class_name) in _read_folder(folder, signature, variant).items():
        check_component_weights(folder, component, config, held, class_name)


def weights_fingerprint(folder: Path) -> str | None:
    """A short hash of the folder's safetensors (headers, tensor ends), configs and tokenizers; None if no weights."""
    for _ in range(2):  # a file that went since the folder was listed: listed again
        try:
            files = _weights_files(folder.absolute(), folder.stat().st_mtime_ns)
            stamps = tuple((name, stat.st_size, stat.st_mtime_ns) for name, stat in
                           ((name, (folder / name).stat()) for name in files))
            weighted = any(name.endswith(".safetensors") for name in files)
            return _fingerprint(folder.absolute(), stamps) if weighted else None
        except OSError:
            _weights_files.cache_clear()
    return None


@lru_cache(maxsize=64)
def _weights_files(folder: Path, mtime_ns: int) -> tuple[str, ...]:
    """The FINGERPRINTED files in `folder` and its component folders, relative to it (cached: every cell asks)."""
    found = {path for suffix in FINGERPRINTED for path in (*folder.glob(f"*{suffix}"), *folder.glob(f"*/*{suffix}"))}
    return tuple(sorted(str(path.relative_to(folder)) for path in found))


@lru_cache(maxsize=64)
def _fingerprint(folder: Path, stamps: tuple) -> str:
    digest = hashlib.sha256()
    for name, size, _ in stamps:
        digest.update(f"{name}\0{size}\0".encode())
        try:
            with open_regular(folder / name, str(folder / name), "a model file") as f:  # a FIFO never blocks
                if not name.endswith(".safetensors"):
                    digest.update(f.read(MAX_JSON_BYTES))
                    continue
                n = int.from_bytes(f.read(8), "little")
                header = f.read(min(n, MAX_HEADER_BYTES))
                digest.update(header)
                for begin, end in tensor_spans(header):
                    for start in sorted({begin, max(begin, end - SAMPLED_BYTES)}):
                        f.seek(8 + n + start)
                        digest.update(f.read(min(SAMPLED_BYTES, end - start)))
        except (OSError, UserError):
            digest.update(b"unreadable")  # pre-flight refuses the file with its own line
    return digest.hexdigest()[:16]


def tensor_spans(header: bytes) -> list[tuple[int, int]]:
    """The data offsets of each tensor a safetensors header lists, in file order; none from a header that is not one."""
    try:
        entries = json.loads(header)
        spans = [tuple(info["data_offsets"]) for key, info in entries.items() if key != "__metadata__"]
    except (UnicodeDecodeError, ValueError, RecursionError, AttributeError, TypeError, KeyError):
        return []
    return sorted(span for span in spans if len(span) == 2 and all(isinstance(x, int) and x >= 0 for x in span)
                  and span[0] <= span[1])
