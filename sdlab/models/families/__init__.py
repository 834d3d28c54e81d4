"""Model families by name, one module each (<family>.py here, exporting ADAPTER) or a folder's model_index.json."""

from __future__ import annotations

import importlib
from pathlib import Path

from sdlab.config import MODEL_FAMILIES
from sdlab.errors import UserError, choose
from sdlab.models.families.base import ModelAdapter
from sdlab.models.model_files import read_object

FAMILIES: dict[str, type[ModelAdapter]] = {
    name: importlib.import_module(f"sdlab.models.families.{name}").ADAPTER for name in MODEL_FAMILIES}


def family(name: str) -> type[ModelAdapter]:
    """The adapter class of family `name` (sd, sdxl, sd3, flux)."""
    choose("model.family", name, FAMILIES)
    return FAMILIES[name]


def family_of_folder(folder: Path) -> type[ModelAdapter]:
    """The family whose pipeline class model_index.json names."""
    class_name = read_object(folder / "model_index.json").get("_class_name")
    if found := [cls for cls in FAMILIES.values() if cls.pipeline_class == class_name]:
        return found[0]
    raise UserError(f"{folder}/model_index.json names pipeline {class_name!r}, which sdlab does not run; "
                    f"it runs: {', '.join(cls.pipeline_class for cls in FAMILIES.values())}")


__all__ = ["FAMILIES", "ModelAdapter", "family", "family_of_folder"]
