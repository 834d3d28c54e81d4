"""Full-reference image comparison: PSNR and SSIM (via scikit-image) and layout correlation, on images in [0, 1]."""

from __future__ import annotations

import math

import numpy as np

SSIM_DEFAULT_WIN = 7


def to_float01(img) -> np.ndarray:
    """Image as float64 in [0, 1]: uint8 / 255, uint16 / 65535, bool as 0/1, floats as they are (PIL via np.asarray)."""
    arr = np.asarray(img)
    if arr.dtype in (np.uint8, np.uint16):
        return arr.astype(np.float64) / np.iinfo(arr.dtype).max
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float64)
    raise TypeError(f"unsupported image dtype {arr.dtype}; expected uint8, uint16, bool or float")


def _pair(reference, test) -> tuple[np.ndarray, np.ndarray]:
    reference, test = to_float01(reference), to_float01(test)
    if reference.shape != test.shape:
        raise ValueError(f"shape mismatch: {reference.shape} vs {test.shape}")
    return reference, test


def psnr(reference, test, data_range: float = 1.0) -> float:
    """PSNR = 10 log10(data_range² / MSE) on the [0, 1] float images; math.inf when MSE = 0."""
    reference, test = _pair(reference, test)
    mse = float(np.mean((reference - test) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(reference, test, data_range: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004) over a uniform window (largest odd side <= min(7, min side)), HxWxC per channel."""
    from skimage.metrics import structural_similarity  # scikit-image pulls in scipy: only when SSIM is asked for

    reference, test = _pair(reference, test)
    if reference.ndim not in (2, 3):
        raise ValueError(f"expected HxW or HxWxC, got shape {reference.shape}")
    min_side = min(reference.shape[:2])
    win_size = min(SSIM_DEFAULT_WIN, min_side if min_side % 2 else min_side - 1)
    if win_size < 3:
        raise ValueError(f"image too small for SSIM: {reference.shape[:2]} (need both sides >= 3)")
    return float(structural_similarity(reference, test, data_range=data_range, win_size=win_size,
                                       channel_axis=-1 if reference.ndim == 3 else None))


def layout_correlation(first, second, cells: int = 8) -> float:
    """Pearson correlation of two images' brightness (the mean of R, G and B) on a cells x cells grid: how alike their
    compositions are."""
    maps = []
    for image in (first, second):
        grey = to_float01(image)
        grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
        h, w = (grey.shape[0] // cells) * cells, (grey.shape[1] // cells) * cells
        maps.append(grey[:h, :w].reshape(cells, h // cells, cells, w // cells).mean(axis=(1, 3)).ravel())
    if maps[0].std() == 0 or maps[1].std() == 0:
        return float(np.array_equal(maps[0], maps[1]))
    return float(np.corrcoef(maps[0], maps[1])[0, 1])


def border_colour(image: np.ndarray) -> np.ndarray:
    """Per-channel median of an HxWxC image's outermost ring of pixels."""
    return np.median(np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]]), axis=0)


def background_distance(first, second) -> float:
    """Euclidean distance in [0, 1] RGB between the median colours of two images' outermost pixel rings."""
    first, second = (border_colour(np.atleast_3d(to_float01(image))) for image in (first, second))
    return float(np.linalg.norm(first - second))


def cover(image, width: int, height: int) -> np.ndarray:
    """A PIL image resized to cover width x height (bicubic) and centre-cropped to it, as uint8 RGB."""
    from PIL import Image

    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    image = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                         Image.BICUBIC)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)))
