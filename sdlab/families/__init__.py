"""Model families by name; a diffusers folder's family is read from its model_index.json."""

from __future__ import annotations

from pathlib import Path

from sdlab.errors import UserError, choose
from sdlab.families.base import EPSILON, FLOW, V_PREDICTION, ModelAdapter
from sdlab.families.flux import Flux
from sdlab.families.sd import StableDiffusion
from sdlab.families.sd3 import StableDiffusion3
from sdlab.families.sdxl import StableDiffusionXL

FAMILIES: dict[str, type[ModelAdapter]] = {cls.family: cls for cls in (StableDiffusion, StableDiffusionXL,
                                                                        StableDiffusion3, Flux)}
KINDS = (EPSILON, V_PREDICTION, FLOW)


def family(name: str) -> type[ModelAdapter]:
    """The adapter class of family `name` (sd, sdxl, sd3, flux)."""
    choose("model.family", name, FAMILIES)
    return FAMILIES[name]


def family_of_folder(folder: Path) -> type[ModelAdapter]:
    """The family whose pipeline class model_index.json names."""
    from sdlab.model_files import read_object

    class_name = read_object(folder / "model_index.json").get("_class_name")
    for cls in FAMILIES.values():
        if class_name in cls.detects:
            return cls
    known = ", ".join(name for cls in FAMILIES.values() for name in cls.detects)
    raise UserError(f"{folder}/model_index.json names pipeline {class_name!r}, which sdlab does not run; "
                    f"it runs: {known}")


__all__ = ["FAMILIES", "KINDS", "ModelAdapter", "family", "family_of_folder"]
