"""Seeded captioned 64x64 images of one flat shape on a plain background (models/mini/README.md, "Data"): image (seed,
index) is drawn from np.random.default_rng([seed, index]); training uses TRAIN_SEED, evaluation any other seed."""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import asdict, astuple, dataclass
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import Literal

import numpy as np

from sdlab.io import atomic_path, atomic_write_text

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "orange": (245, 135, 25), "yellow": (245, 230, 40), "green": (40, 170, 60),
    "blue": (40, 80, 225), "purple": (145, 60, 190), "white": (245, 245, 245), "black": (20, 20, 20)}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128), "blue": (40, 80, 225),
    "green": (40, 170, 60)}
SIZES = ("small", "large")
POSITIONS = ("centre", "left", "right", "top", "bottom")

MIN_CONTRAST = 120.0  # RGB distance below which a shape colour is never drawn on a background (nor on its own)
IMAGE_SIZE = 64
SUPERSAMPLING = 4

# Geometry in pixels of a 64 px image; other sizes scale proportionally.
HALF_EXTENT_RANGE = {"small": (6.0, 8.0), "large": (12.0, 14.0)}
POSITION_OFFSET = 15.0  # of the shape's bounding-box centre from the image centre, jittered on each axis
POSITION_JITTER = 2.0
CROSS_ARM_FRACTION = 1.0 / 3.0  # a cross is a plus sign whose arms are a third of its extent wide

POSITION_UNIT_OFFSETS = {"centre": (0, 0), "left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}
POSITION_PHRASES = {"centre": "in the centre", "left": "on the left", "right": "on the right", "top": "at the top",
                    "bottom": "at the bottom"}
CAPTION_TEMPLATES = ("a {size} {colour} {shape} {position} on a {background} background",
                     "{size} {colour} {shape} {position}, {background} background",
                     "a {background} background with a {size} {colour} {shape} {position}")

OPTIONAL_ATTRIBUTES = ("size", "colour", "position", "background")  # the shape is always named

TRAIN_SEED = 0
EVAL_SEED = 1
HELD_OUT_MODULUS = 20  # combinations whose CRC32 is divisible by this are held out of training (about 5%)

Split = Literal["any", "train", "held_out"]


@dataclass(frozen=True)
class Attributes:
    """The five attributes that fully describe one dataset image."""

    shape: str
    colour: str
    size: str
    position: str
    background: str


def rgb_distance(first: tuple[int, int, int], second: tuple[int, int, int]) -> float:
    """Euclidean distance between two RGB colours."""
    return float(np.linalg.norm(np.subtract(first, second, dtype=float)))


def is_held_out(attrs: Attributes) -> bool:
    """Whether an attribute combination is reserved for evaluation."""
    return zlib.crc32("|".join(astuple(attrs)).encode()) % HELD_OUT_MODULUS == 0


@lru_cache(maxsize=None)
def combinations(split: Split = "any") -> tuple[Attributes, ...]:
    """All valid attribute combinations of a split, in a fixed order."""
    if split not in ("any", "train", "held_out"):
        raise ValueError(f"unknown split {split!r}")
    drawable = (Attributes(*values) for values in product(SHAPES, COLOURS, SIZES, POSITIONS, BACKGROUNDS))
    contrasting = (a for a in drawable if rgb_distance(COLOURS[a.colour], BACKGROUNDS[a.background]) >= MIN_CONTRAST)
    return tuple(a for a in contrasting if split == "any" or is_held_out(a) == (split == "held_out"))


def sample_attributes(rng: np.random.Generator, split: Split = "any") -> Attributes:
    """Draw one combination uniformly from the valid combinations of a split."""
    options = combinations(split)
    return options[int(rng.integers(len(options)))]


def caption(attrs: Attributes, rng: np.random.Generator | int | None = None) -> str:
    """Caption for the attributes, from template 0, a random template (`rng`) or the template numbered `rng`."""
    template = rng if isinstance(rng, int) else 0 if rng is None else int(rng.integers(len(CAPTION_TEMPLATES)))
    return CAPTION_TEMPLATES[template].format(**{**asdict(attrs), "position": POSITION_PHRASES[attrs.position]})


def partial_caption(attrs: Attributes, keep) -> str:
    """Template 0 naming only the optional attributes in `keep` (the shape always): "a red circle", "a circle"."""
    words = ["a"] + [getattr(attrs, name) for name in ("size", "colour") if name in keep] + [attrs.shape]
    if "position" in keep:
        words.append(POSITION_PHRASES[attrs.position])
    if "background" in keep:
        words += ["on a", attrs.background, "background"]
    return " ".join(words)


def keep_sets() -> tuple[frozenset[str], ...]:
    """Every subset of OPTIONAL_ATTRIBUTES, the full set last (so index 15 is the full caption)."""
    n = len(OPTIONAL_ATTRIBUTES)
    return tuple(frozenset(a for bit, a in enumerate(OPTIONAL_ATTRIBUTES) if mask >> bit & 1) for mask in range(2**n))


def _alternation(words) -> str:
    return "|".join(re.escape(word) for word in words)


_OBJECT_PATTERN = re.compile(rf"\b({_alternation(SIZES)}) ({_alternation(COLOURS)}) ({_alternation(SHAPES)}) "
                             rf"({_alternation(POSITION_PHRASES.values())})\b")
_BACKGROUND_PATTERN = re.compile(rf"\b({_alternation(BACKGROUNDS)}) background\b")
_POSITION_BY_PHRASE = {phrase: position for position, phrase in POSITION_PHRASES.items()}


def parse_caption(text: str) -> Attributes | None:
    """Recover the attributes from a caption of the grammar, or None."""
    object_match = _OBJECT_PATTERN.search(text)
    background_match = _BACKGROUND_PATTERN.search(text)
    if object_match is None or background_match is None:
        return None
    size, colour, shape, phrase = object_match.groups()
    return Attributes(shape, colour, size, _POSITION_BY_PHRASE[phrase], background_match.group(1))


_PARTIAL_PATTERN = re.compile(rf"\b(?:({_alternation(SIZES)}) )?(?:({_alternation(COLOURS)}) )?"
                              rf"({_alternation(SHAPES)})\b(?: ({_alternation(POSITION_PHRASES.values())}))?")


def parse_partial(text: str) -> dict[str, str] | None:
    """The attributes a full or partial caption names (shape always), or None when it names no shape."""
    full = parse_caption(text)
    if full is not None:
        return asdict(full)
    match = _PARTIAL_PATTERN.search(text)
    if match is None:
        return None
    size, colour, shape, phrase = match.groups()
    background = _BACKGROUND_PATTERN.search(text)
    named = {"shape": shape, "size": size, "colour": colour, "position": _POSITION_BY_PHRASE.get(phrase),
             "background": background.group(1) if background else None}
    return {k: v for k, v in named.items() if v is not None}


def shape_region(shape: str, x: np.ndarray, y: np.ndarray, half_extent: float) -> np.ndarray:
    """Boolean mask of a shape centred at the origin, on coordinate grids x, y."""
    if shape == "circle":
        return x * x + y * y <= half_extent * half_extent
    if shape == "triangle":
        # Apex at (0, -h), base from (-h, h) to (h, h).
        return (y <= half_extent) & (np.abs(x) <= (y + half_extent) / 2)
    box = (np.abs(x) <= half_extent) & (np.abs(y) <= half_extent)
    if shape == "square":
        return box
    if shape == "cross":
        arm = half_extent * CROSS_ARM_FRACTION
        return box & ((np.abs(x) <= arm) | (np.abs(y) <= arm))
    raise ValueError(f"unknown shape {shape!r}")


def coverage(attrs: Attributes, rng: np.random.Generator | None = None, size: int = IMAGE_SIZE) -> np.ndarray:
    """Antialiased shape coverage in [0, 1], float32 of shape (size, size); rng draws extent and jitter."""
    scale = size / IMAGE_SIZE
    low, high = HALF_EXTENT_RANGE[attrs.size]
    unit_x, unit_y = POSITION_UNIT_OFFSETS[attrs.position]
    if rng is None:
        half_extent, jitter_x, jitter_y = (low + high) / 2, 0.0, 0.0
    else:
        half_extent = rng.uniform(low, high)
        jitter_x, jitter_y = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
    # Coordinates of the supersample centres, in output pixel units.
    axis = (np.arange(size * SUPERSAMPLING, dtype=np.float32) + 0.5) / SUPERSAMPLING
    x = (axis - (size / 2 + scale * (unit_x * POSITION_OFFSET + jitter_x)))[None, :]
    y = (axis - (size / 2 + scale * (unit_y * POSITION_OFFSET + jitter_y)))[:, None]
    mask = shape_region(attrs.shape, x, y, scale * half_extent)
    return mask.reshape(size, SUPERSAMPLING, size, SUPERSAMPLING).mean(axis=(1, 3), dtype=np.float32)


def render(attrs: Attributes, rng: np.random.Generator | None = None, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render the attributes as a uint8 (size, size, 3) image; rng adds jitter."""
    alpha = coverage(attrs, rng, size)[..., None]
    foreground = np.asarray(COLOURS[attrs.colour], dtype=np.float32)
    background = np.asarray(BACKGROUNDS[attrs.background], dtype=np.float32)
    return np.rint(background + alpha * (foreground - background)).astype(np.uint8)


def sample(seed: int, index: int, split: Split = "any", size: int = IMAGE_SIZE) -> tuple[np.ndarray, str, Attributes]:
    """Image (size x size px), caption and attributes of item (seed, index) of a split."""
    rng = np.random.default_rng([seed, index])
    attrs = sample_attributes(rng, split)
    text = caption(attrs, rng)
    return render(attrs, rng, size), text, attrs


def matching(text: str, count: int, size: int, seed: int) -> list[np.ndarray]:
    """`count` real size x size px images of what a caption names, the rest drawn by `seed`; [] if it names no shape."""
    named = parse_partial(text)
    if named is None:
        return []
    options = [a for a in combinations() if all(getattr(a, k) == v for k, v in named.items())]
    rngs = [np.random.default_rng([seed, index]) for index in range(count)]
    return [render(options[int(rng.integers(len(options)))], rng, size) for rng in rngs] if options else []


def batch(seed: int, start: int, count: int, split: Split = "any") -> tuple[np.ndarray, list[str], list[Attributes]]:
    """Items start..start+count-1 of (seed, split), images stacked as (N, 64, 64, 3)."""
    items = [sample(seed, start + offset, split) for offset in range(count)]
    images = np.array([image for image, _, _ in items], dtype=np.uint8).reshape(count, IMAGE_SIZE, IMAGE_SIZE, 3)
    return images, [text for _, text, _ in items], [attrs for _, _, attrs in items]


def eval_batch(start: int, count: int, seed: int = EVAL_SEED, split: Split = "any"
               ) -> tuple[np.ndarray, list[str], list[Attributes]]:
    """Evaluation items start..start+count-1 from a non-training seed; split='held_out' for unseen combinations."""
    if seed == TRAIN_SEED:
        raise ValueError(f"evaluation must not use the training seed {TRAIN_SEED}")
    return batch(seed, start, count, split)


def cached_set(folder: Path, seed: int, count: int, split: Split = "train"):
    """Items 0..count-1 of (seed, split) as batch draws them, kept in `folder` so every stage renders them once."""
    stem = folder / f"images_seed{seed}_{split}_{count}"
    npy, meta = stem.with_suffix(".npy"), stem.with_suffix(".json")
    if npy.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        return np.load(npy), info["captions"], [Attributes(*a) for a in info["attributes"]]
    images, captions, attributes = batch(seed, 0, count, split)
    with atomic_path(npy) as tmp, open(tmp, "wb") as f:
        np.save(f, images, allow_pickle=False)
    atomic_write_text(meta, json.dumps({"captions": captions, "attributes": [astuple(a) for a in attributes]}))
    return images, captions, attributes


def all_captions(split: Split = "train") -> list[str]:
    """Every caption of the grammar for the combinations of a split: each combination in every template."""
    return [caption(attrs, template) for attrs in combinations(split)
            for template in range(len(CAPTION_TEMPLATES))]


def grammar_words() -> set[str]:
    """Every word the captions of the shapes grammar use."""
    words = {w for template in CAPTION_TEMPLATES for w in re.findall(r"[a-z]+", template)}
    words |= {*SHAPES, *COLOURS, *BACKGROUNDS, *SIZES, *POSITIONS}
    return words | {w for phrase in POSITION_PHRASES.values() for w in phrase.split()}
