"""Reading prompts back into the shapes world's conditions: the world's own captions, paraphrases, and junk."""

import random

import pytest

from trainer.worlds import shapes as S
from trainer.worlds.parse import canonical, describe, parse


def test_world_captions_parse_to_conditions_their_renders_satisfy():
    scenes = [S.sample_scene(random.Random(i)) for i in range(400)]
    parsed = [parse(scene.caption) for scene in scenes]
    unparsed = [scene.caption for scene, condition in zip(scenes, parsed) if condition is None]
    assert unparsed == []
    # Same meaning as the world's condition (up to "a left of b" = "b right of a", and pair order)...
    differ = [s.caption for s, c in zip(scenes, parsed) if canonical(c) != canonical(s.condition)]
    assert differ == []
    # ...and the judge accepts the world's own render under the parsed condition.
    images = S.to_uint8(S.render(scenes))
    accepted = [S.matches(S.detect(image), condition) for image, condition in zip(images, parsed)]
    assert sum(accepted) / len(accepted) >= 0.99
    assert {c.category for c in parsed} == set(S.CATEGORIES)


def test_held_out_captions_parse_too():
    for scene in S.eval_scenes(70):
        assert canonical(parse(scene.caption)) == canonical(scene.condition), scene.caption


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (
            "a red circle to the left of a blue square",
            S.Condition("position", (S.ObjSpec("circle", "red"), S.ObjSpec("square", "blue")), "left_of"),
        ),
        (
            "Draw a scarlet ball left of an azure box.",
            S.Condition("position", (S.ObjSpec("circle", "red"), S.ObjSpec("square", "blue")), "left_of"),
        ),
        (
            "a crimson dot on the left and a cobalt tile on the right",
            S.Condition("position", (S.ObjSpec("circle", "red"), S.ObjSpec("square", "blue")), "left_of"),
        ),
        (
            "an emerald wedge on the right and a plum disc on the left",
            S.Condition("position", (S.ObjSpec("triangle", "green"), S.ObjSpec("circle", "purple")), "right_of"),
        ),
        (
            "a purple diamond on top of a green ball",
            S.Condition("position", (S.ObjSpec("diamond", "purple"), S.ObjSpec("circle", "green")), "above"),
        ),
        (
            "a yellow cross underneath a white square",
            S.Condition("position", (S.ObjSpec("cross", "yellow"), S.ObjSpec("square", "white")), "below"),
        ),
        ("three yellow triangles", S.Condition("counting", (S.ObjSpec("triangle", "yellow", count=3),))),
        ("there are exactly 4 plus signs, all snow-white", S.Condition("counting", (S.ObjSpec("cross", "white", count=4),))),
        ("a pair of rhombuses", S.Condition("counting", (S.ObjSpec("diamond", count=2),))),
        ("a large white cross", S.Condition("size", (S.ObjSpec("cross", "white", "large"),))),
        ("a tiny plus sign that is grass-green", S.Condition("size", (S.ObjSpec("cross", "green", "small"),))),
        (
            "a medium-sized lozenge in amber on a dark background",
            S.Condition("size", (S.ObjSpec("diamond", "orange", "medium"),)),
        ),
        ("an image of a bubblegum-coloured block", S.Condition("colors", (S.ObjSpec("square", "pink"),))),
        ("a triangle", S.Condition("single_object", (S.ObjSpec("triangle"),))),
        ("a circle next to a square", S.Condition("two_objects", (S.ObjSpec("circle"), S.ObjSpec("square")))),
        ("a red circle, a blue square", S.Condition("color_attr", (S.ObjSpec("circle", "red"), S.ObjSpec("square", "blue")))),
        (
            "two red circles and a blue square",
            S.Condition("counting", (S.ObjSpec("circle", "red", count=2), S.ObjSpec("square", "blue"))),
        ),
    ],
)
def test_paraphrases(prompt, expected):
    assert parse(prompt) == expected


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "   ",
        "asdf qwerty",
        "a cat sitting on a mat",
        "a photorealistic portrait of an astronaut riding a horse",
        "red",
        "circle circle",
        "a red blue circle",  # two colours for one shape
        "a big small square",
        "a red circle in blue",
        "two circle",  # count without a plural
        "circles",  # plural without a count
        "five squares",  # no such number in the world
        "four circles and a square",  # more objects than a scene holds
        "two circles left of a square",  # the judge relates single objects only
        "a red circle left of a blue square above a green triangle",
        "a red circle and a blue square and a green triangle",
        "a red circle; DROP TABLE",
        "🙂🙂",
        "a red circle on the left",
        "a red circle on the left and a blue square on the left",
        "exactly red",
    ],
)
def test_junk_is_outside_the_grammar(junk):
    assert parse(junk) is None


def test_non_text_is_outside_the_grammar():
    assert parse(None) is None  # type: ignore[arg-type]
    assert parse(42) is None  # type: ignore[arg-type]


def test_equivalent_wordings_have_one_canonical_form():
    left = parse("a red circle to the left of a blue square")
    right = parse("a blue square to the right of a red circle")
    assert left != right and canonical(left) == canonical(right)
    assert canonical(parse("a circle and a square")) == canonical(parse("a square and a circle"))


def test_describe_reads_back_to_the_same_condition():
    for i in range(200):
        condition = S.sample_scene(random.Random(i)).condition
        assert parse(describe(condition)) == condition, describe(condition)
