"""Architecture records: the published component configs of every family, read from sdlab/models/families/<family>.json.

A record holds, per component, the shape-setting keys of its published config.json (`_class_name` its class), the
scheduler config it ships with, its native `resolution` and, if published, each component's `param_counts` (checked by
tests/test_architectures.py). A string record is another name for the record it names; `_about` says where it is from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from sdlab.lazy import torch

FAMILIES_DIR = Path(__file__).parent / "families"
RECORD_FIELDS = ("resolution", "param_counts", "scheduler")  # a record's other keys (but `_about`) are its components


class Part(NamedTuple):
    """One component as model_index.json lists it: its diffusers or transformers class name and its config."""

    cls: str
    config: dict[str, Any]


def part(config: dict[str, Any]) -> Part:
    """A published config whose `_class_name` names its class, as a Part."""
    return Part(config["_class_name"], {k: v for k, v in config.items() if k != "_class_name"})


@dataclass(frozen=True)
class Architecture:
    """One published pipeline: its components (name -> class and config), the scheduler it ships with, its native size."""

    components: dict[str, Part]
    scheduler: dict[str, Any]
    scheduler_class: str
    family: str  # the adapter that runs it: sd (1.x, 2.x), sdxl, sd3 or flux (sdlab/models/families)
    resolution: int
    param_counts: dict[str, int]  # published parameters per component

    @property
    def published(self) -> bool:
        """A published architecture (its parameter counts are known), built on the meta device for anatomy."""
        return bool(self.param_counts)

    def config(self, name: str) -> dict[str, Any]:
        """The config of component `name` (unet, transformer, vae, text_encoder, text_encoder_2, ...)."""
        return self.components[name].config


def architecture(family: str, record: dict[str, Any]) -> Architecture:
    """One record of `family`'s file as an Architecture."""
    scheduler = part(record["scheduler"])
    components = {k: part(v) for k, v in record.items() if k not in RECORD_FIELDS and k != "_about"}
    return Architecture(components, scheduler.config, scheduler.cls, family, record["resolution"],
                        record.get("param_counts", {}))


def read_architectures(path: Path) -> dict[str, Architecture]:
    """The records of one family's file, by model name."""
    records = json.loads(path.read_text(encoding="utf-8"))
    built = {name: architecture(path.stem, r) for name, r in records.items() if isinstance(r, dict)}
    return {name: built[r] if isinstance(r, str) else built[name] for name, r in records.items()}


ARCHITECTURES = {name: arch for path in sorted(FAMILIES_DIR.glob("*.json")) for name, arch in
                 read_architectures(path).items()}
BUILT_IN = tuple(ARCHITECTURES)  # model names built in code rather than read from a folder
SD15_SCHEDULER = ARCHITECTURES["sd15_arch"].scheduler


def component_class(name: str) -> type:
    """The diffusers or transformers class called `name` (UNet2DConditionModel, T5EncoderModel, ...)."""
    import diffusers
    import transformers

    if found := getattr(diffusers, name, None) or getattr(transformers, name, None):
        return found
    raise AttributeError(f"neither diffusers nor transformers has a class {name!r}")


def build_part(part: Part):
    """One component with fresh weights from its config (diffusers' `from_config`, or a transformers config class)."""
    from transformers import PreTrainedModel

    cls = component_class(part.cls)
    if issubclass(cls, PreTrainedModel):
        return cls(cls.config_class.from_dict(part.config))
    return cls.from_config(part.config)


def build_components(arch: Architecture, seed: int = 0) -> dict[str, Any]:
    """Every component of `arch`, in its listed order, with random weights drawn from a fixed init seed."""
    torch.manual_seed(seed)
    return {name: build_part(part) for name, part in arch.components.items()}


def build_scheduler(arch: Architecture):
    """The scheduler `arch` ships with, built from its published config."""
    return component_class(arch.scheduler_class).from_config(arch.scheduler)


def build_on_meta(arch: Architecture) -> dict[str, Any]:
    """The same components on the meta device: shapes and parameter counts, no memory."""
    with torch.device("meta"):
        return build_components(arch)
