import math
import warnings

import numpy as np
import pytest
from PIL import Image

from sdlab.metrics.image import psnr, ssim, to_float01


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def image(rng):
    return rng.uniform(0.0, 1.0, size=(64, 48, 3))


def test_identical_images_give_inf_psnr_without_warnings(image):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert psnr(image, image.copy()) == math.inf
        assert ssim(image, image.copy()) == pytest.approx(1.0)


@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.1])
def test_psnr_of_known_gaussian_noise(rng, sigma):
    grey = np.full((256, 256, 3), 0.5)
    noisy = grey + rng.normal(0.0, sigma, size=grey.shape)
    assert noisy.min() > 0.0 and noisy.max() < 1.0
    assert psnr(grey, noisy) == pytest.approx(20 * math.log10(1.0 / sigma), abs=0.1)


def test_psnr_data_range_scales():
    a = np.zeros((8, 8))
    b = np.full((8, 8), 0.1)
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, b, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2.0))


def test_uint8_and_float_agree(rng):
    a8 = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    b8 = np.clip(a8.astype(int) + rng.integers(-20, 21, size=a8.shape), 0, 255).astype(np.uint8)
    af, bf = a8 / 255.0, b8 / 255.0
    assert psnr(a8, b8) == pytest.approx(psnr(af, bf), rel=1e-12)
    assert ssim(a8, b8) == pytest.approx(ssim(af, bf), rel=1e-12)
    assert ssim(a8, b8) < 0.99


def test_to_float01_conversions():
    arr = np.array([[0, 128, 255]], dtype=np.uint8)
    np.testing.assert_allclose(to_float01(arr), [[0.0, 128 / 255, 1.0]])
    np.testing.assert_allclose(to_float01(np.array([0, 65535], dtype=np.uint16)), [0.0, 1.0])
    np.testing.assert_allclose(to_float01(np.array([True, False])), [1.0, 0.0])
    pil = Image.fromarray(np.full((4, 5, 3), 51, dtype=np.uint8))
    out = to_float01(pil)
    assert out.shape == (4, 5, 3) and out.dtype == np.float64
    np.testing.assert_allclose(out, 0.2)
    with pytest.raises(TypeError):
        to_float01(np.array([1, 2], dtype=np.int64))


def test_pil_and_array_agree(rng):
    a8 = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    b8 = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    assert psnr(Image.fromarray(a8), Image.fromarray(b8)) == pytest.approx(psnr(a8, b8))


@pytest.mark.parametrize("side", [3, 4, 5, 6, 8])
def test_ssim_small_images(rng, side):
    a = rng.uniform(0.2, 0.8, size=(side, side + 3, 3))
    b = np.clip(a + rng.normal(0, 0.05, size=a.shape), 0, 1)
    value = ssim(a, b)
    assert -1.0 <= value < 1.0
    assert ssim(a, a) == pytest.approx(1.0)


def test_ssim_rejects_too_small_and_mismatched(rng):
    with pytest.raises(ValueError, match="too small"):
        ssim(np.zeros((2, 8, 3)), np.zeros((2, 8, 3)))
    with pytest.raises(ValueError, match="shape mismatch"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))


def test_ssim_decreases_with_noise(rng):
    a = rng.uniform(0.2, 0.8, size=(32, 32, 3))
    values = [ssim(a, a + rng.normal(0, s, size=a.shape)) for s in (0.01, 0.05, 0.2)]
    assert values[0] > values[1] > values[2]


def test_ssim_greyscale(rng):
    a = rng.uniform(0, 1, size=(16, 16))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, 1.0 - a) < 0.0


def test_layout_correlation_sees_where_masses_sit_not_their_colour():
    from sdlab.metrics.image import layout_correlation

    def blob(x, y, colour):
        image = np.zeros((64, 64, 3), np.uint8)
        image[y : y + 16, x : x + 16] = colour
        return image

    left_red, left_yellow, right_red = blob(4, 24, (220, 30, 30)), blob(4, 24, (240, 230, 40)), blob(44, 24, (220, 30, 30))
    assert layout_correlation(left_red, left_yellow) > 0.99
    assert layout_correlation(left_red, right_red) < 0.0
    flat = np.full((64, 64, 3), 128, np.uint8)
    assert layout_correlation(flat, flat) == 1.0 and layout_correlation(flat, left_red) == 0.0
