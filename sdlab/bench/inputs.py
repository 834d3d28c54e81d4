"""Files a user names as inputs, found and checked before any work."""

from __future__ import annotations

import os
from pathlib import Path

from sdlab.config import Field
from sdlab.errors import UserError
from sdlab.untrusted import check_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGES = Field("strs", plain=False, optional=True)  # the `images` key: a folder or files, one or a list


def image_files(source: str | os.PathLike | list, max_pixels: int) -> list[Path]:
    """Image files named by a folder (its images, sorted), a file or a list; a UserError if missing, not images or of
    more than `max_pixels`."""
    items = source if isinstance(source, (list, tuple)) else [source]
    files: list[Path] = []
    for item in items:
        path = Path(os.path.expanduser(str(item)))
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"images={path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
            files += found
        else:
            files.append(path)
    for path in files:
        check_image(path, f"images: {path}", f"an image file ({', '.join(IMAGE_SUFFIXES)}) or a folder of them",
                    max_pixels)
    return files


def input_image_files(value: object, max_pixels: int) -> list[Path]:
    """The image files an `images` value names (none when unset), the value and the files checked."""
    images = IMAGES.check("images", value)
    return image_files(images, max_pixels) if images else []
