"""Prompt worlds: what a model was trained to draw, its prompts' words and images with their captions.

Installed packages register them under the `sdlab.worlds` entry points (the embedded model registers `shapes`); a model
config's `prompt_grammar:` names the world of its prompts, and `sample_world:` the one whose images stand in where a job
needs images and none are given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from sdlab.bench.plugins import installed
from sdlab.errors import UserError

ENTRY_POINTS = "sdlab.worlds"
Sample = tuple[str, Any, str]  # (name, HxWx3 uint8 image, caption)


@dataclass(frozen=True)
class World:
    """A registered world: the words its prompts use, one prompt it knows, sample images, a caption drawn, and real
    images of what a prompt describes (the reference set of distribution metrics; [] when it describes nothing)."""

    words: frozenset[str]
    example: str
    samples: Callable[[int, int, int | None], list[Sample]]  # (count, side, seed or None for the default)
    draw: Callable[[str], Any]  # a caption of the world -> its image at the world's own size
    references: Callable[[str, int, int, int], list]  # (prompt, count, side, seed) -> real images it describes

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of `prompt` this world's prompts never use, in order."""
        return [w for w in re.findall(r"[a-z]+", prompt.lower()) if w not in self.words]


def world(name: Any, key: str = "sample_world") -> World:
    """The installed world `name` (one error line naming `key` and the worlds otherwise)."""
    known = installed(ENTRY_POINTS)
    if not isinstance(name, str) or name not in known:
        raise UserError(f"{key}={name!r} is not an installed prompt world; worlds are: {', '.join(sorted(known))}")
    return known[name]
