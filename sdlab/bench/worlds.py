"""Prompt worlds, registered under `sdlab.worlds` entry points: what a model draws, its prompts' words, sample images;
a model config's `prompt_grammar:` names its prompts' world, `sample_world:` the one whose images stand in if none."""

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
    """A registered world: its prompts' words, an example prompt, samples, a caption drawn, real images ([] if none)."""

    words: frozenset[str]
    example: str
    samples: Callable[[int, int, int | None], list[Sample]]  # (count, side, seed or None for the default)
    draw: Callable[[str], Any]  # a caption of the world -> its image at the world's own size
    references: Callable[[str, int, int, int], list]  # (prompt, count, side, seed) -> real images it describes

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of `prompt` this world's prompts never use, in order."""
        return [w for w in re.findall(r"""[^\s,.;:!?()\[\]{}"']+""", prompt.lower()) if w not in self.words]


def world(name: Any, key: str = "sample_world") -> World:
    """The installed world `name` (one error line naming `key` and the worlds otherwise)."""
    known = installed(ENTRY_POINTS)
    if not isinstance(name, str) or name not in known:
        raise UserError(f"{key}={name!r} is not an installed prompt world; worlds are: {', '.join(sorted(known))}")
    return known[name]
