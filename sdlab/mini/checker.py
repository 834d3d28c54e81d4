"""Analytic checker reading a dataset image's attributes from its pixels: background from the border, shape colour from
the pixels farthest from it, coverage by projection between the two, size, position and shape from box and moments."""

from __future__ import annotations

from dataclasses import asdict, astuple, dataclass, fields

import numpy as np

from sdlab.bench.scorers import Score, ScorerKind
from sdlab.metrics.image import border_colour
from sdlab.mini.data import (BACKGROUNDS, COLOURS, HALF_EXTENT_RANGE, IMAGE_SIZE, POSITION_OFFSET,
                             POSITION_UNIT_OFFSETS, Attributes, parse_partial, shape_region)

ATTRIBUTE_NAMES = tuple(field.name for field in fields(Attributes))

# RGB distance from the background beyond which a pixel may be foreground;
# well above sensor-like noise, well below the dataset's minimum contrast.
FOREGROUND_DISTANCE = 48.0
MIN_FOREGROUND_PIXELS = 8
COVERAGE_THRESHOLD = 0.5

# An apex-up triangle's rows are skewed (heavy base, thin apex: skewness about -0.57, 0 for the symmetric
# shapes); a cross fills its bounding box least (5/9, circle pi/4, square 1).
TRIANGLE_MIN_ASYMMETRY = 0.25
BOX_PADDING = 2
CIRCLE_MIN_FILL = 0.69
# Circle or square: the one whose drawing in the shape's box overlaps it more (intersection over union of coverage,
# SAMPLES^2 points a pixel, faint noise under NOISE_COVERAGE ignored), read only if that overlap is at least
# MIN_SHAPE_IOU and beats the other's by MIN_SHAPE_MARGIN. A clean circle overlaps the square drawn in its box by
# pi/4; blurred, noisy dataset circles and squares keep 0.86 and a margin of 0.065; a blob between the two (a rounded
# trapezoid: circle 0.85, square 0.82) is neither, where its fill ratio alone made it a circle.
SAMPLES = 2
NOISE_COVERAGE = 0.2
MIN_SHAPE_IOU = 0.7
MIN_SHAPE_MARGIN = 0.05

SIZE_BOUNDARY = HALF_EXTENT_RANGE["small"][1] + HALF_EXTENT_RANGE["large"][0]  # small | large, px of a 64 px image

LAYOUT = ("size", "position", "background")  # what a partial caption may leave to the seed, besides colour


@dataclass(frozen=True)
class CheckResult:
    """Attributes read from an image (None when unreadable)."""

    shape: str | None
    colour: str | None
    size: str | None
    position: str | None
    background: str | None

    @property
    def attributes(self) -> Attributes | None:
        """The attributes as a dataset Attributes, or None if any is unreadable."""
        values = astuple(self)
        return None if None in values else Attributes(*values)


def as_rgb_float(image: np.ndarray) -> np.ndarray:
    """Image as float HxWx3 in 0..255 (accepts grey, RGBA, uint8 or floats in [0, 1])."""
    array = np.nan_to_num(np.asarray(image, dtype=np.float64))
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    if np.issubdtype(np.asarray(image).dtype, np.floating) and array.size and array.max() <= 1.0:
        return array * 255.0
    return array


def nearest_name(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    """Name of the palette colour nearest to rgb."""
    names = list(palette)
    return names[int(np.argmin(np.linalg.norm(np.asarray([palette[name] for name in names], float) - rgb, axis=1)))]


def foreground_colour(image: np.ndarray, background: np.ndarray) -> np.ndarray | None:
    """Median colour of the pixels farthest from the background, or None if too few differ."""
    distance = np.linalg.norm(image - background, axis=-1)
    candidates = distance > FOREGROUND_DISTANCE
    if candidates.sum() < MIN_FOREGROUND_PIXELS:
        return None
    core = candidates & (distance >= np.median(distance[candidates]))
    colour = np.median(image[core], axis=0)
    # Scattered outliers of many hues (noise, texture) have a median near the background.
    return colour if np.linalg.norm(colour - background) > FOREGROUND_DISTANCE else None


def coverage_map(image: np.ndarray, background: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Per-pixel fraction of foreground, by projection on the background-foreground line."""
    direction = foreground - background
    return (image - background) @ direction / float(direction @ direction)


def shape_pixels(coverage: np.ndarray) -> np.ndarray:
    """Pixels mostly covered by the shape, without isolated specks (fewer than two such among their 8 neighbours)."""
    mask = coverage > COVERAGE_THRESHOLD
    padded = np.pad(mask, 1).astype(np.int8)
    height, width = mask.shape
    neighbours = sum(padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
    return mask & (neighbours >= 2)


def shape_mask(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the shape's pixels (all False when no shape stands out from the background)."""
    pixels = as_rgb_float(image)
    background = border_colour(pixels)
    foreground = foreground_colour(pixels, background)
    if foreground is None:
        return np.zeros(pixels.shape[:2], dtype=bool)
    return shape_pixels(coverage_map(pixels, background, foreground))


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive (top, bottom, left, right) of the mask, or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(columns[0]), int(columns[-1])


def occupancy_profile(window: np.ndarray, axis: int) -> np.ndarray:
    """Per-line peak coverage along an axis, after a 3-pixel mean that damps noise."""
    lines = np.moveaxis(window, axis, -1)
    return np.clip(((lines[..., :-2] + lines[..., 1:-1] + lines[..., 2:]) / 3.0).max(axis=-1), 0.0, 1.0)


def weighted_moments(weights: np.ndarray, coordinates: np.ndarray) -> tuple[float, float, float]:
    """Total, mean and skewness of a 1-D weight distribution."""
    total = float(weights.sum())
    if total <= 0:
        return 0.0, float("nan"), 0.0
    mean = float((weights * coordinates).sum() / total)
    deviations = coordinates - mean
    variance = float((weights * deviations**2).sum() / total)
    third_moment = float((weights * deviations**3).sum() / total)
    return total, mean, third_moment / max(variance, 1e-6) ** 1.5


def _shape_measurements(coverage: np.ndarray, box: tuple[int, int, int, int]):
    """Fill ratio, top-heaviness, extent and centre of the shape inside its padded box."""
    top, bottom, left, right = box
    height, width = coverage.shape
    top, left = max(top - BOX_PADDING, 0), max(left - BOX_PADDING, 0)
    bottom, right = min(bottom + BOX_PADDING, height - 1), min(right + BOX_PADDING, width - 1)
    window = coverage[top : bottom + 1, left : right + 1]
    rows, columns = np.arange(top, bottom + 1) + 0.5, np.arange(left, right + 1) + 0.5
    box_height, centre_y, _ = weighted_moments(occupancy_profile(window, axis=1), rows)
    box_width, centre_x, _ = weighted_moments(occupancy_profile(window, axis=0), columns)
    _, _, row_skewness = weighted_moments(np.clip(window, 0.0, 1.0).sum(axis=1), rows)
    fill_ratio = float(window.sum()) / max(box_height * box_width, 1e-6)
    # An apex-up triangle has its mass at the bottom and a thin tail at the top: asymmetry is -row_skewness.
    return fill_ratio, -row_skewness, max(box_height, box_width), (centre_x, centre_y)


def shape_overlaps(coverage: np.ndarray, box: tuple[int, int, int, int], shapes) -> dict[str, float]:
    """Overlap (coverage IoU) of the shape with each of `shapes` as the dataset draws it into the box, by name."""
    top, bottom, left, right = box
    window = np.pad(np.clip(coverage, 0.0, 1.0), 1)[top : bottom + 3, left : right + 3]  # the box and a line around
    window = np.where(window > NOISE_COVERAGE, window, 0.0)
    rows, columns = window.max(axis=1), window.max(axis=0)
    # Sub-pixel sides: the first and last lines of the box, moved out by the coverage of the two lines across each.
    y0, y1 = top + 1 - rows[0] - rows[1], bottom + rows[-2] + rows[-1]
    x0, x1 = left + 1 - columns[0] - columns[1], right + columns[-2] + columns[-1]
    y = (top - 1 + (np.arange(window.shape[0] * SAMPLES, dtype=np.float32) + 0.5) / SAMPLES - (y0 + y1) / 2) / max(
        (y1 - y0) / 2, 0.5)
    x = (left - 1 + (np.arange(window.shape[1] * SAMPLES, dtype=np.float32) + 0.5) / SAMPLES - (x0 + x1) / 2) / max(
        (x1 - x0) / 2, 0.5)
    overlaps = {}
    for shape in shapes:
        drawn = shape_region(shape, x[None, :], y[:, None], 1.0)
        drawn = drawn.reshape(window.shape[0], SAMPLES, window.shape[1], SAMPLES).mean(axis=(1, 3))
        overlaps[shape] = float(np.minimum(window, drawn).sum() / max(np.maximum(window, drawn).sum(), 1e-6))
    return overlaps


def classify_shape(fill_ratio: float, asymmetry: float, coverage: np.ndarray, box: tuple[int, int, int, int]
                   ) -> str | None:
    """Shape name from top-heaviness (negated row skewness), fill ratio and overlaps; None for a circle-square blend."""
    if asymmetry > TRIANGLE_MIN_ASYMMETRY:
        return "triangle"
    if fill_ratio < CIRCLE_MIN_FILL:
        return "cross"
    overlaps = shape_overlaps(coverage, box, ("circle", "square"))
    runner_up, best = sorted(overlaps, key=overlaps.get)
    return best if overlaps[best] >= max(MIN_SHAPE_IOU, overlaps[runner_up] + MIN_SHAPE_MARGIN) else None


def check(image: np.ndarray) -> CheckResult:
    """Read shape, colour, size, position and background from an image."""
    pixels = as_rgb_float(image)
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or min(pixels.shape[:2]) < 3:
        return CheckResult(None, None, None, None, None)
    background_rgb = border_colour(pixels)
    background = nearest_name(background_rgb, BACKGROUNDS)
    foreground_rgb = foreground_colour(pixels, background_rgb)
    coverage = None if foreground_rgb is None else coverage_map(pixels, background_rgb, foreground_rgb)
    box = None if coverage is None else bounding_box(shape_pixels(coverage))
    if box is None:
        return CheckResult(None, None, None, None, background)
    fill_ratio, asymmetry, extent, centre = _shape_measurements(coverage, box)
    height, width = coverage.shape
    # Size: the larger side against the boundary; position: the anchor nearest to the box centre.
    offset_x, offset_y = (centre[0] - width / 2) * IMAGE_SIZE / width, (centre[1] - height / 2) * IMAGE_SIZE / height
    position = min(POSITION_UNIT_OFFSETS, key=lambda name: (offset_x - POSITION_UNIT_OFFSETS[name][0] * POSITION_OFFSET)
                   ** 2 + (offset_y - POSITION_UNIT_OFFSETS[name][1] * POSITION_OFFSET) ** 2)
    return CheckResult(shape=classify_shape(fill_ratio, asymmetry, coverage, box),
                       colour=nearest_name(foreground_rgb, {k: v for k, v in COLOURS.items() if k != background}),
                       size="large" if extent > SIZE_BOUNDARY * width / IMAGE_SIZE else "small", position=position,
                       background=background)


def agreement(result: CheckResult, named: dict[str, str]) -> dict[str, bool]:
    """Per-attribute agreement of a reading with the `named` attribute values, plus 'all'."""
    agree = {name: getattr(result, name) == value for name, value in named.items()}
    return {**agree, "all": all(agree.values())}


def adherence(image: np.ndarray, attrs: Attributes) -> dict[str, bool]:
    """Per-attribute agreement between an image and target attributes, plus 'all'."""
    return agreement(check(image), asdict(attrs))


def agrees(a: CheckResult, b: CheckResult, attribute: str) -> bool:
    """Whether two readings have the same value of `attribute`, both readable (two unreadable ones do not agree)."""
    return getattr(a, attribute) is not None and getattr(a, attribute) == getattr(b, attribute)


def layouts_agree(a: CheckResult, b: CheckResult) -> bool:
    """Whether two readings have the same size, position and background (all readable)."""
    return all(agrees(a, b, k) for k in LAYOUT)


def adherence_columns(image, prompt: str) -> dict[str, bool]:
    """`adherence_<attribute>` columns and `adherence_all` for what a shapes-grammar prompt names; {} for others."""
    named = parse_partial(prompt)
    if named is None:
        return {}
    return {f"adherence_{k}": v for k, v in agreement(check(np.asarray(image)), named).items()}


def adherence_score(cfg: dict, device: str) -> Score:
    """`adherence_*` columns of each image against its prompt (none for prompts outside the shapes grammar)."""
    return lambda images, prompts: [adherence_columns(image, prompt) for image, prompt in zip(images, prompts)]


SHAPES_ADHERENCE = ScorerKind(adherence_score, ("adherence_",))  # the `shapes_adherence` scorer (entry point)
