import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sdlab.mini import data
from sdlab.mini.checker import ATTRIBUTE_NAMES, adherence, check
from sdlab.mini.data import Attributes, render

CHECK_SEED = 7
CHECK_COUNT = 500


def degrade(image, rng, noise_sigma=8.0, blur_radius=0.7):
    """Slight gaussian blur followed by gaussian pixel noise, as uint8."""
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(blur_radius)), float)
    noisy = blurred + rng.normal(0.0, noise_sigma, blurred.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def per_attribute_accuracy(images, attributes):
    hits = dict.fromkeys(ATTRIBUTE_NAMES, 0)
    for image, attrs in zip(images, attributes):
        result = check(image)
        for name in ATTRIBUTE_NAMES:
            hits[name] += getattr(result, name) == getattr(attrs, name)
    return {name: count / len(attributes) for name, count in hits.items()}


@pytest.fixture(scope="module")
def dataset_images():
    images, _, attributes = data.batch(CHECK_SEED, 0, CHECK_COUNT)
    return images, attributes


@pytest.fixture(scope="module")
def clean_accuracy(dataset_images):
    return per_attribute_accuracy(*dataset_images)


@pytest.fixture(scope="module")
def degraded_accuracy(dataset_images):
    images, attributes = dataset_images
    rng = np.random.default_rng(0)
    degraded = [degrade(image, rng) for image in images]
    return per_attribute_accuracy(degraded, attributes)


@pytest.mark.parametrize("attribute", ATTRIBUTE_NAMES)
def test_checker_reads_clean_images(clean_accuracy, attribute):
    assert clean_accuracy[attribute] >= 0.98


@pytest.mark.parametrize("attribute", ATTRIBUTE_NAMES)
def test_checker_reads_blurred_noisy_images(degraded_accuracy, attribute):
    assert degraded_accuracy[attribute] >= 0.95


def test_checker_covers_every_combination_at_rest():
    for attrs in data.combinations()[::3]:
        assert check(data.render(attrs)).attributes == attrs


@pytest.mark.parametrize("size", [48, 128])
def test_checker_scales_with_image_size(size):
    rng = np.random.default_rng(size)
    for _ in range(40):
        attrs = data.sample_attributes(rng)
        assert check(data.render(attrs, rng, size=size)).attributes == attrs


def test_adherence_is_all_true_for_a_matching_image():
    image, _, attrs = data.sample(CHECK_SEED, 0)
    assert adherence(image, attrs) == {**dict.fromkeys(ATTRIBUTE_NAMES, True), "all": True}


@pytest.mark.parametrize(
    "attribute, wrong_value",
    [("shape", "cross"), ("colour", "yellow"), ("size", "large"), ("position", "right"), ("background", "black")],
)
def test_adherence_flags_exactly_the_wrong_attribute(attribute, wrong_value):
    truth = Attributes("circle", "red", "small", "left", "white")
    target = dataclasses.replace(truth, **{attribute: wrong_value})
    verdict = adherence(data.render(truth), target)
    assert verdict[attribute] is False and verdict["all"] is False
    assert all(verdict[name] for name in ATTRIBUTE_NAMES if name != attribute)


def test_blank_image_has_no_shape_and_fails_adherence():
    blank = np.full((64, 64, 3), 245, dtype=np.uint8)
    result = check(blank)
    assert (result.shape, result.colour, result.size, result.position) == (None, None, None, None)
    verdict = adherence(blank, Attributes("square", "red", "large", "centre", "black"))
    assert not any(verdict.values())


def test_blank_image_still_reports_its_background():
    blank = np.full((64, 64, 3), 20, dtype=np.uint8)
    verdict = adherence(blank, Attributes("square", "red", "large", "centre", "black"))
    assert verdict["background"] is True
    assert not any(verdict[name] for name in ("shape", "colour", "size", "position", "all"))


def test_pure_noise_has_no_shape():
    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    assert check(noise).shape is None


@pytest.mark.parametrize(
    "image",
    [np.zeros((0, 0, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), np.zeros(5), np.full((64, 64, 3), np.nan)],
)
def test_degenerate_inputs_do_not_crash(image):
    assert check(image).shape is None


def test_checker_accepts_float_and_grey_images():
    attrs = Attributes("triangle", "black", "large", "bottom", "white")
    image = data.render(attrs)
    assert check(image.astype(np.float32) / 255.0).attributes == attrs
    grey_attrs = Attributes("square", "white", "small", "top", "black")
    assert check(data.render(grey_attrs)[..., 0]).attributes == grey_attrs


def test_shape_mask_finds_the_drawn_shape_and_nothing_on_a_blank_image():
    from sdlab.mini.checker import shape_mask
    from sdlab.mini.evaluate import mask_iou

    ious = []
    for index in range(20):
        image, _, attrs = data.sample(CHECK_SEED, index)
        rng = np.random.default_rng([CHECK_SEED, index])  # replays sample(): attributes, caption, geometry
        data.caption(data.sample_attributes(rng), rng)
        drawn = data.coverage(attrs, rng) > 0.5
        ious.append(mask_iou(shape_mask(image), drawn))
    assert min(ious) > 0.8 and np.mean(ious) > 0.95, ious  # a 3 px shift gives 0.61 on average
    assert not shape_mask(np.full((64, 64, 3), 128, np.uint8)).any()
    assert mask_iou(drawn, drawn) == 1.0 and mask_iou(drawn, ~drawn) == 0.0


def test_partial_prompt_is_judged_only_on_what_it_names():
    from sdlab.mini.checker import adherence_columns

    image = render(Attributes("circle", "red", "large", "left", "blue"))
    assert adherence_columns(image, "a red circle") == {"adherence_shape": True, "adherence_colour": True,
                                                         "adherence_all": True}
    wrong = adherence_columns(image, "a small red square at the top")
    assert wrong["adherence_colour"] and not wrong["adherence_shape"] and not wrong["adherence_all"]
    assert set(wrong) == {f"adherence_{k}" for k in ("shape", "colour", "size", "position", "all")}
    assert adherence_columns(image, "a cat on a sofa") == {}


def test_same_layout_compares_size_position_and_background_only():
    from sdlab.mini.checker import layouts_agree

    def same_layout(first, second):
        return layouts_agree(check(first), check(second))

    circle = render(Attributes("circle", "red", "large", "left", "blue"))
    assert same_layout(circle, render(Attributes("square", "yellow", "large", "left", "blue")))
    assert not same_layout(circle, render(Attributes("circle", "red", "large", "right", "blue")))
    assert not same_layout(circle, render(Attributes("circle", "red", "small", "left", "blue")))
    assert not same_layout(circle, render(Attributes("circle", "red", "large", "left", "white")))


def test_two_unreadable_attributes_do_not_count_as_agreeing():
    from sdlab.mini.checker import CheckResult, agrees

    blank = CheckResult(None, None, None, None, "blue")
    read = CheckResult("circle", "red", "large", "left", "blue")
    assert not agrees(blank, blank, "position") and not agrees(blank, read, "position")
    assert agrees(blank, read, "background") and agrees(read, read, "position")


def drawn_blob(inside, half_extent: float) -> np.ndarray:
    """A red shape on blue, antialiased as the dataset draws: where inside(x, y), in half extents from the centre."""
    axis = (np.arange(64 * 4) + 0.5) / 4 - 32
    alpha = inside(axis[None, :] / half_extent, axis[:, None] / half_extent).reshape(64, 4, 64, 4).mean(axis=(1, 3))
    red, blue = np.array(data.COLOURS["red"], float), np.array(data.BACKGROUNDS["blue"], float)
    return np.rint(blue + alpha[..., None] * (red - blue)).astype(np.uint8)


def in_box(x, y):
    return (abs(x) <= 1) & (abs(y) <= 1)


@pytest.mark.parametrize("half_extent", [7.0, 13.0])
@pytest.mark.parametrize("inside, expected", [
    pytest.param(lambda x, y: in_box(x, y) & (abs(x) <= 0.75 + y / 4), None, id="trapezoid-filling-its-box-as-circles"),
    pytest.param(lambda x, y: in_box(x, y) & ~((x > 0.2) & (abs(y) < 0.35)), "square", id="square-bitten-on-one-side"),
    pytest.param(lambda x, y: (x * x + y * y <= 1) & ~((x - 0.9) ** 2 + (y + 0.6) ** 2 < 0.2), "circle",
                 id="circle-bitten-on-its-rim"),
    pytest.param(lambda x, y: in_box(x, y) & ((abs(x) - 1.9) ** 2 + y * y >= 1) & (x * x + (abs(y) - 1.9) ** 2 >= 1),
                 "square", id="square-with-concave-sides"),
])
def test_deformed_shapes_read_as_the_shape_they_resemble_or_none(inside, expected, half_extent):
    assert check(drawn_blob(inside, half_extent)).shape == expected
