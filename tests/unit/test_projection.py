"""The projection target (shapes.corrected_scene, shapes.projected_targets): the clean scene nearest to what the
detector read that the caption asks for."""

import random

import numpy as np
import pytest

from trainer.worlds import shapes

SHAPES, COLORS, SIZES = shapes.SHAPE_NAMES, shapes.COLOR_NAMES, shapes.SIZE_NAMES


def det(shape, color, size, x, y) -> shapes.Detection:
    return shapes.Detection(shape, color, size, x, y, area=100)


def test_a_render_projects_onto_itself_and_passes_the_judge() -> None:
    rng = random.Random(5)
    scenes = [shapes.sample_scene(rng, category) for category in shapes.CATEGORIES for _ in range(6)]
    pixels = shapes.to_uint8(shapes.render(scenes))
    projected = shapes.projected_targets(pixels, [s.condition for s in scenes])
    assert projected.shape == (len(scenes),) and projected["valid"].all()
    for found, scene in zip(shapes.detect_all(pixels), scenes):
        corrected = shapes.corrected_scene(found, scene.condition)
        asked = sorted((o.shape, o.color, o.size) for o in scene.objects)
        assert sorted((o.shape, o.color, o.size) for o in corrected.objects) == asked
    # the targets are (nearly) the renders themselves, and the judge accepts them as it does the renders
    assert np.abs(projected["target"].astype(int) - pixels.astype(int)).mean() < 2
    assert shapes.verdicts(projected["target"], [s.condition for s in scenes]).mean() > 0.95


def test_a_shapeless_blob_takes_the_asked_shape_and_free_attributes_stay_the_image_s() -> None:
    condition = shapes.Condition("two_objects", (shapes.ObjSpec(SHAPES[0]), shapes.ObjSpec(SHAPES[3])))
    found = [det(SHAPES[0], COLORS[2], SIZES[1], 16, 20), det(None, COLORS[5], SIZES[0], 44, 40)]
    corrected = shapes.corrected_scene(found, condition)
    assert [(o.shape, o.color, o.size, o.x, o.y) for o in corrected.objects] == [
        (SHAPES[0], COLORS[2], SIZES[1], 16, 20),
        (SHAPES[3], COLORS[5], SIZES[0], 44, 40),
    ]
    target = shapes.projected_targets(
        np.zeros((1, 64, 64, 3), np.uint8) + np.array(shapes.BACKGROUND, np.uint8), [condition]
    )  # a blank image: no objects, so no target
    assert not target["valid"][0] and (target["target"][0] == np.array(shapes.BACKGROUND, np.uint8)).all()


def test_named_colours_and_sizes_are_corrected_and_matched_to_the_best_slot() -> None:
    """A red triangle asked for, a blue square drawn where a triangle should be: the detections are matched to the
    slots that agree most (the square to the square), and each gets its slot's named colour and size."""
    condition = shapes.Condition(
        "color_attr", (shapes.ObjSpec(SHAPES[2], COLORS[0], SIZES[2]), shapes.ObjSpec(SHAPES[1], COLORS[4]))
    )
    found = [det(SHAPES[1], COLORS[1], SIZES[1], 10, 10), det(SHAPES[4], COLORS[0], SIZES[0], 50, 50)]
    corrected = shapes.corrected_scene(found, condition)
    by_place = {(o.x, o.y): (o.shape, o.color, o.size) for o in corrected.objects}
    assert by_place[(10, 10)] == (SHAPES[1], COLORS[4], SIZES[1])  # the square stays the square slot, recoloured
    assert by_place[(50, 50)] == (SHAPES[2], COLORS[0], SIZES[2])  # the other blob becomes the large red triangle


def test_a_wrong_count_has_no_target_and_bad_input_is_refused() -> None:
    condition = shapes.Condition("counting", (shapes.ObjSpec(SHAPES[0], count=3),))
    assert shapes.corrected_scene([det(SHAPES[0], COLORS[0], SIZES[0], 10, 10)] * 2, condition) is None
    assert shapes.corrected_scene([], shapes.Condition("single_object", ())) is None
    with pytest.raises(ValueError, match="2 images but 1 conditions"):
        shapes.projected_targets(np.zeros((2, 64, 64, 3), np.uint8), [condition])


def test_rejected_only_leaves_accepted_images_without_a_target() -> None:
    """Renders under their own captions are all accepted: no targets. Under captions asking for other shapes of the
    same count, the judge rejects them and they keep their targets, now the asked shapes in the renders' places."""
    scenes = [shapes.sample_scene(random.Random(i), "single_object") for i in range(6)]
    pixels = shapes.to_uint8(shapes.render(scenes))
    own = [s.condition for s in scenes]
    assert not shapes.projected_targets(pixels, own, rejected_only=True)["valid"].any()
    assert shapes.projected_targets(pixels, own)["valid"].all()
    other = [
        shapes.Condition("single_object", (shapes.ObjSpec(SHAPES[(SHAPES.index(s.objects[0].shape) + 1) % len(SHAPES)]),))
        for s in scenes
    ]
    projected = shapes.projected_targets(pixels, other, rejected_only=True)
    assert projected["valid"].all() and shapes.verdicts(projected["target"], other).all()


def test_rejected_only_needs_the_projection_on() -> None:
    from trainer.config import ConfigError
    from trainer.methods.dmd2 import DMD2Config

    with pytest.raises(ConfigError, match="projection_rejected_only needs the projection on"):
        DMD2Config(projection_rejected_only=True)
    with pytest.raises(ConfigError, match="projection_weight must be a finite number >= 0"):
        DMD2Config(projection_weight=float("nan"))
    assert DMD2Config(projection_weight=4, projection_rejected_only=True).projection_rejected_only
