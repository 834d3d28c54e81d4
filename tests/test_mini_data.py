import time

import numpy as np
import pytest

from sdlab.mini import checker, data
from sdlab.mini.data import Attributes
from sdlab.mini.world import SHAPES


def test_sample_is_deterministic_per_seed_and_index():
    image, text, attrs = data.sample(3, 17)
    image_again, text_again, attrs_again = data.sample(3, 17)
    assert np.array_equal(image, image_again)
    assert (text, attrs) == (text_again, attrs_again)


def test_sample_changes_with_seed_and_index():
    reference = data.sample(3, 17)[0]
    assert not np.array_equal(reference, data.sample(3, 18)[0])
    assert not np.array_equal(reference, data.sample(4, 17)[0])


def test_batch_stacks_the_individual_samples():
    images, captions, attributes = data.batch(2, 10, 5)
    assert images.shape == (5, 64, 64, 3) and images.dtype == np.uint8
    for offset in range(5):
        image, text, attrs = data.sample(2, 10 + offset)
        assert np.array_equal(images[offset], image)
        assert captions[offset] == text and attributes[offset] == attrs


@pytest.mark.parametrize("size", [64, 32, 128])
def test_render_returns_uint8_rgb_of_requested_size(size):
    attrs = Attributes("square", "red", "large", "centre", "blue")
    image = data.render(attrs, size=size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == data.BACKGROUNDS["blue"]
    assert tuple(image[size // 2, size // 2]) == data.COLOURS["red"]


def test_render_antialiases_edges():
    image = data.render(Attributes("circle", "white", "large", "centre", "black"))
    grey_levels = np.unique(image[..., 0])
    assert len(grey_levels) > 5


def test_caption_contains_every_attribute_word_and_parses_back():
    for index in range(300):
        _, text, attrs = data.sample(5, index)
        assert f"{attrs.size} {attrs.colour} {attrs.shape}" in text
        assert data.POSITION_PHRASES[attrs.position] in text
        assert f"{attrs.background} background" in text
        assert data.parse_caption(text) == attrs


def test_caption_without_rng_uses_the_first_template():
    attrs = Attributes("circle", "red", "small", "left", "blue")
    assert data.caption(attrs) == "a small red circle on the left on a blue background"


def test_caption_templates_are_all_used():
    attrs = Attributes("cross", "green", "large", "centre", "white")
    rng = np.random.default_rng(0)
    captions = {data.caption(attrs, rng) for _ in range(100)}
    assert len(captions) == len(data.CAPTION_TEMPLATES)


def test_parse_caption_rejects_text_outside_the_grammar():
    assert data.parse_caption("a photograph of a cat") is None


def test_shape_colour_always_contrasts_with_background():
    for attrs in data.combinations():
        distance = data.rgb_distance(data.COLOURS[attrs.colour], data.BACKGROUNDS[attrs.background])
        assert distance >= data.MIN_CONTRAST
        assert attrs.colour != attrs.background


def test_every_attribute_value_occurs_in_some_combination():
    combinations = data.combinations()
    assert {attrs.shape for attrs in combinations} == set(data.SHAPES)
    assert {attrs.colour for attrs in combinations} == set(data.COLOURS)
    assert {attrs.size for attrs in combinations} == set(data.SIZES)
    assert {attrs.position for attrs in combinations} == set(data.POSITIONS)
    assert {attrs.background for attrs in combinations} == set(data.BACKGROUNDS)


def test_held_out_split_is_small_and_disjoint_from_training():
    every = set(data.combinations())
    train = set(data.combinations("train"))
    held_out = set(data.combinations("held_out"))
    assert train.isdisjoint(held_out)
    assert train | held_out == every
    assert 0.03 <= len(held_out) / len(every) <= 0.07
    assert all(data.is_held_out(attrs) for attrs in held_out)


def test_training_samples_never_show_held_out_combinations():
    _, _, attributes = data.batch(data.TRAIN_SEED, 0, 400, "train")
    assert not any(data.is_held_out(attrs) for attrs in attributes)
    # An unrestricted draw of the same size would almost surely contain some.
    _, _, unrestricted = data.batch(data.TRAIN_SEED, 0, 400)
    assert any(data.is_held_out(attrs) for attrs in unrestricted)


def test_evaluation_can_draw_only_held_out_combinations():
    for text, attrs in zip(*data.eval_batch(0, 20, split="held_out")[1:]):
        assert data.is_held_out(attrs)
        assert data.parse_caption(text) == attrs


def test_evaluation_refuses_the_training_seed():
    with pytest.raises(ValueError):
        data.eval_batch(0, 1, seed=data.TRAIN_SEED, split="held_out")
    with pytest.raises(ValueError):
        data.eval_batch(0, 4, seed=data.TRAIN_SEED)


def test_evaluation_images_differ_from_training_images():
    train_images = data.batch(data.TRAIN_SEED, 0, 50, "train")[0]
    eval_images = data.eval_batch(0, 50)[0]
    assert not np.array_equal(train_images, eval_images)


def _bounding_box(alpha):
    rows = np.flatnonzero(alpha.max(axis=1) > 0)
    columns = np.flatnonzero(alpha.max(axis=0) > 0)
    return rows[0], rows[-1], columns[0], columns[-1]


def test_jitter_keeps_shapes_inside_and_positions_unambiguous():
    rng = np.random.default_rng(11)
    for attrs in data.combinations()[::7]:
        alpha = data.coverage(attrs, rng)
        top, bottom, left, right = _bounding_box(alpha)
        assert top > 0 and left > 0 and bottom < 63 and right < 63
        unit_x, unit_y = data.POSITION_UNIT_OFFSETS[attrs.position]
        centre_x = (left + right + 1) / 2 - 32
        centre_y = (top + bottom + 1) / 2 - 32
        tolerance = data.POSITION_JITTER + 1.0
        assert abs(centre_x - unit_x * data.POSITION_OFFSET) <= tolerance
        assert abs(centre_y - unit_y * data.POSITION_OFFSET) <= tolerance


def test_small_and_large_extents_do_not_overlap():
    rng = np.random.default_rng(12)
    extents = {"small": [], "large": []}
    for _ in range(40):
        for size in data.SIZES:
            alpha = data.coverage(Attributes("square", "red", size, "centre", "white"), rng)
            extents[size].append(float(alpha.sum()) ** 0.5)
    assert max(extents["small"]) + 4 < min(extents["large"])


def test_rendering_is_fast():
    started = time.perf_counter()
    data.batch(9, 0, 200)
    assert time.perf_counter() - started < 2.0


def test_reference_images_draw_what_the_prompt_names_and_let_the_seed_choose_the_rest():
    images = SHAPES.references("a red circle", 24, 64, 3)
    named = [checker.agreement(checker.check(image), {"colour": "red", "shape": "circle"}) for image in images]
    assert all(all(row.values()) for row in named)
    backgrounds = {checker.check(image).background for image in images}
    assert len(backgrounds) >= 3  # left open by the prompt: drawn, not fixed
    again = SHAPES.references("a red circle", 24, 64, 3)
    assert all(np.array_equal(a, b) for a, b in zip(images, again))
    assert not np.array_equal(images[0], SHAPES.references("a red circle", 1, 64, 4)[0])
    assert SHAPES.references("a dog on a sofa", 4, 64, 0) == []
    assert SHAPES.references("a small blue square on the left on a white background", 2, 32, 0)[0].shape == (32, 32, 3)
