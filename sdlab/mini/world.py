"""The shapes world of the embedded model, as a prompt world: its grammar's words, sample images, captions drawn."""

from __future__ import annotations

import numpy as np

from sdlab.bench.worlds import Sample, World
from sdlab.errors import UserError
from sdlab.mini import data


def samples(count: int, side: int, seed: int | None = None) -> list[Sample]:
    """`count` shapes images of the evaluation seed (or `seed`) at side x side px, with their captions."""
    seed = data.EVAL_SEED if seed is None else seed
    return [(f"shapes_{index}", *data.sample(seed, index, size=side)[:2]) for index in range(count)]


def draw(caption: str) -> np.ndarray:
    """The shape a whole caption of the grammar describes, at the dataset's size."""
    attrs = data.parse_caption(caption)
    if attrs is None:
        raise UserError(f"{caption!r} is not a whole caption of the shapes grammar, e.g. "
                        f"'a large red circle in the centre on a blue background'")
    return data.render(attrs)


SHAPES = World(words=frozenset(data.grammar_words() | {"an", "with", "and", "center", "middle"}),
               example="a large yellow triangle at the top on a black background", samples=samples, draw=draw,
               references=data.matching)
