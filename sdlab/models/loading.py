"""Load models by name into their family adapter: offline-first, safetensors only, cached once per process."""

from __future__ import annotations

import gc
import logging
import os
import re
import sys
from pathlib import Path

import yaml

from sdlab.conf_files import CONF_DIR
from sdlab.config import MODEL_NAMES, GenerationParams, ModelSpec, SchedulerChoice, check_sides, model_spec
from sdlab.errors import UserError, choose
from sdlab.lazy import torch
from sdlab.models.architectures import ARCHITECTURES, Architecture
from sdlab.models.device import resolve_device, resolve_dtype, use_process_options
from sdlab.models.families import ModelAdapter, family, family_of_folder
from sdlab.models.memory import cpu_free_bytes, free_bytes
from sdlab.models.model_files import (SCHEDULER_CONFIG, WEIGHT_COMPONENTS, check_named_components,
                                      check_pipeline_folder, check_weights_folder, component_configs, loaded_weights,
                                      scheduler_config, weights_fingerprint)
from sdlab.models.schedulers import check_steps
from sdlab.untrusted import open_regular

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
MAX_REF_BYTES = 128  # a commit hash is 40 hex digits
SHIPPED = ("mini", "mini_flow")  # models trained in this repository, each in models/<name>


def cached_snapshot(repo_id: str, instead: str = "model.path=DIR with a diffusers folder") -> Path:
    """The local Hugging Face cache folder of `repo_id`, never downloading (refused before huggingface_hub loads)."""
    fix = f"where there is internet (`hf download {repo_id}`) or pass {instead}"
    missing = UserError(f"{repo_id} is not in the local Hugging Face cache; download it {fix}")
    # the cache folder as huggingface_hub's environment variables choose it
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    cache = Path(os.path.expanduser(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
                                    or os.path.join(home, "hub")))
    if "huggingface_hub" not in sys.modules and not repo_folder(cache, repo_id).is_dir():
        raise missing  # once imported, its own settings decide where the cache is
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        if gone := missing_snapshot(repo_id):
            raise UserError(f"{repo_id}: the local Hugging Face cache's refs/main names snapshot {gone.name}, which is "
                            f"missing from {gone.parent} (a download that was interrupted, or a partly deleted cache); "
                            f"download it again {fix}") from None
        raise missing from None


def repo_folder(cache: Path, repo_id: str) -> Path:
    """The folder of model repository `repo_id` in the Hugging Face cache folder `cache`."""
    return cache / f"models--{repo_id.replace('/', '--')}"


def missing_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder the cache's refs/main of `repo_id` names when that folder is not there, else None."""
    from huggingface_hub import constants

    repo = repo_folder(Path(constants.HF_HUB_CACHE), repo_id)
    try:
        with open_regular(repo / "refs" / "main", "refs/main", "a commit hash") as f:
            ref = f.read(MAX_REF_BYTES).decode("ascii").strip()
    except (UserError, OSError, UnicodeDecodeError):
        return None
    snapshot = repo / "snapshots" / ref
    return snapshot if re.fullmatch(r"[0-9a-f]+", ref) and not snapshot.is_dir() else None


def model_folder(spec: ModelSpec) -> Path:
    """Where a folder-backed model's weights are: `model.path`, a model shipped in models/, or the HF cache."""
    if spec.path:
        path = Path(os.path.expanduser(spec.path))
        return path if path.is_absolute() else Path.cwd() / path
    if spec.name in SHIPPED:
        folder = PROJECT_ROOT / "models" / spec.name
        if not (folder / "model_index.json").is_file():
            raise UserError(f"model={spec.name} has no weights in {folder} yet: train them with "
                            f"`sdlab experiment=train_{spec.name}` (see {folder / 'README.md'}) or pass model.path=DIR")
        return folder
    if not spec.repo_id:
        raise UserError(f"model={spec.name} is built in code and has no weights folder here; "
                        "pass model.path=DIR with a diffusers folder")
    return cached_snapshot(spec.repo_id)


def weights_identity(spec: ModelSpec) -> str | None:
    """A folder-backed model's `weights_fingerprint`; None for a model built in code or a missing folder."""
    if built_in(spec):
        return None
    try:
        return weights_fingerprint(model_folder(spec))
    except UserError:
        return None


def built_in(spec: ModelSpec) -> Architecture | None:
    """The architecture record of a model built in code; None for one read from a folder."""
    return None if spec.path else ARCHITECTURES.get(spec.name)


def check_fits_memory(spec: ModelSpec) -> None:
    """Refuse a built-in model whose published parameter count, in float32, exceeds the CPU memory free here."""
    arch, free = built_in(spec), cpu_free_bytes()
    need = 4 * sum(arch.param_counts.values()) if arch else 0
    if free is not None and need > free:
        raise UserError(f"model={spec.name} builds {sum(arch.param_counts.values()) / 1e9:.1f} B random parameters, "
                        f"{need / 2**30:.1f} GiB in float32, more than the {free / 2**30:.1f} GiB free here; its "
                        "architecture is for experiment=anatomy, which builds it on the meta device")


def adapter_class(spec: ModelSpec) -> type[ModelAdapter]:
    """The family adapter that runs `spec`, unloaded: a built-in model's record, or the folder's model_index.json."""
    if built_in(spec):
        cls = family(built_in(spec).family)
        check_t5_settings(spec, cls, f"model={spec.name} is built in code as {cls.family}")
        return cls
    folder = model_folder(spec)
    check_weights_folder(folder, spec.variant)
    cls = family_of_folder(folder)
    weights = f"model.path={spec.path}" if spec.path else f"model={spec.name}"
    check_t5_settings(spec, cls, f"{weights} holds a pipeline of family {cls.family}")
    check_named_components(folder, cls.pipeline_class, cls.components(),
                           left_out=[name for name, value in cls.load_options(spec).items() if value is None])
    return cls


def check_t5_settings(spec: ModelSpec, cls: type[ModelAdapter], which: str) -> None:
    """Refuse the T5 settings a family does not read (`which` says what the model is): T5 left out where it is not
    optional (SD3's is), T5 tokens where there is no T5."""
    if not spec.t5 and cls.family != "sd3":
        raise UserError(f"model.t5=false is not read: only SD3 can leave its T5 out, and {which}")
    if spec.max_sequence_length and cls.default_sequence_length is None:
        raise UserError(f"model.max_sequence_length={spec.max_sequence_length} is not read: only SD3 and Flux have a "
                        f"T5 encoder to take it, and {which}")


def configured_spec(name: str, **overrides) -> ModelSpec:
    """The ModelSpec that conf/model/<name>.yaml sets up, with `overrides` (benchmarks and hand-written loops)."""
    values = yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text()) or {}
    return model_spec({**values, **overrides})


class ModelCache:
    """The loaded models of this process, one adapter per ModelSpec key and its weights, reused by every later job."""

    def __init__(self):
        self.models: dict[tuple, ModelAdapter] = {}  # by spec key and weights: new weights in a folder load again
        self.load_count = 0

    def loaded(self, spec: ModelSpec) -> ModelAdapter | None:
        """The model loaded for `spec` from the weights its folder holds now, if any (now the most recently used)."""
        key = (spec.key, weights_identity(spec))
        if key in self.models:
            self.models[key] = self.models.pop(key)
        return self.models.get(key)

    def make_room(self, spec: ModelSpec, folder: Path, device) -> None:
        """Unload the least recently used models while `spec`'s weights in `folder` exceed what `device` has free."""
        need = sum(p.stat().st_size for part in WEIGHT_COMPONENTS for p in loaded_weights(folder / part, spec.variant))
        while self.models and (free := free_bytes(device)) is not None and free < need:
            key = next(iter(self.models))
            name = self.models.pop(key).spec.name
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            log.info("unloaded model %s to make room for %s (%.2f GiB of weights, %.2f GiB free)", name, spec.name,
                     need / 2**30, free / 2**30)

    def load(self, spec: ModelSpec) -> ModelAdapter:
        """The adapter for `spec`: the one loaded for its current weights, else built or read from its folder."""
        use_process_options(spec)
        if (model := self.loaded(spec)) is not None:
            return model
        choose("model", spec.name, MODEL_NAMES)
        device = resolve_device(spec.device)
        dtype = resolve_dtype(spec.dtype, device)
        cls = adapter_class(spec)
        if built_in(spec):
            pipe = cls.build(spec.name, spec)
            pipe = pipe if dtype == torch.float32 else pipe.to(dtype=dtype)  # a cast logs a line per module
        else:
            from diffusers.utils import logging as diffusers_logging

            diffusers_logging.disable_progress_bar()  # "Loading pipeline components"; sdlab logs one line per load
            folder = model_folder(spec)
            self.make_room(spec, folder, device)
            check_folder(cls, spec)
            try:
                pipe = cls.from_folder(folder, dtype, spec)
            except UserError:
                raise
            except Exception as e:  # what the checks could not foresee (tokenizers raises a bare Exception): one line
                raise UserError(f"model.path={folder} cannot be loaded: {str(e).strip().splitlines()[0]}") from None
        model = cls(pipe.to(device), spec)
        model.apply_speed_options()
        pipe.set_progress_bar_config(leave=False, desc="denoising", disable=None)  # None: no bar where no terminal
        self.load_count += 1
        log.info("loaded model %s (%s) on %s (%s)", spec.name, cls.pipeline_class, device, dtype)
        self.models = {key: kept for key, kept in self.models.items() if key[0] != spec.key}  # weights replaced since
        self.models[spec.key, weights_identity(spec)] = model
        return model


CACHE = ModelCache()


def load_model(spec: ModelSpec) -> ModelAdapter:
    """The model adapter for `spec`, loaded once per process and reused by every later job."""
    return CACHE.load(spec)


def shipped_scheduler_config(spec: ModelSpec) -> tuple[dict, str]:
    """The model's own scheduler config (as its pipeline fixed it, once loaded) and where it comes from."""
    if (model := CACHE.loaded(spec)) is not None:
        return model.base_scheduler_config, f"model {spec.name}"
    return published_scheduler_config(spec)


def published_scheduler_config(spec: ModelSpec) -> tuple[dict, str]:
    """The model's scheduler config as published and where it comes from, read without weights or diffusers."""
    if built_in(spec):
        return {"_class_name": built_in(spec).scheduler_class, **built_in(spec).scheduler}, f"model {spec.name}"
    folder = model_folder(spec)
    check_weights_folder(folder, spec.variant)
    return scheduler_config(folder), str(folder.joinpath(*SCHEDULER_CONFIG))


def check_folder(cls: type[ModelAdapter], spec: ModelSpec) -> None:
    """A model folder's files (`check_pipeline_folder`), then whether its components are of one model (`check_fit`)."""
    folder = model_folder(spec)
    check_pipeline_folder(folder, spec.variant)
    cls.check_fit(folder, component_configs(folder, spec.variant))


def check_model(spec: ModelSpec, choice: SchedulerChoice, params: GenerationParams) -> None:
    """The model's device, files, family sizes and scheduler steps, checked without loading any weights."""
    resolve_device(spec.device)
    cls = adapter_class(spec)  # a folder's components are all there before their files are read
    if not built_in(spec):
        check_folder(cls, spec)
    check_sides(spec, cls.family, params.width, params.height)
    base, source = shipped_scheduler_config(spec)
    check_steps(choice.name, base, choice.options, params.num_inference_steps, source)


def clear_cache() -> None:
    """Forget every loaded model (tests and memory-bound sweeps)."""
    CACHE.models.clear()
