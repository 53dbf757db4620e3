"""Request validation: every bad field gets a specific, actionable message."""

import pytest

from engines.errors import InvalidRequest
from engines.requests import MAX_BATCH, ImageRequest


def test_valid_request_keeps_its_values():
    r = ImageRequest("  a red circle ", seed=3, steps=4, guidance=2.5, batch=2)
    assert (r.prompt, r.seed, r.steps, r.guidance, r.batch) == ("a red circle", 3, 4, 2.5, 2)


def test_defaults_are_left_to_the_engine():
    r = ImageRequest("a red circle")
    assert r.seed is None and r.steps is None and r.guidance is None and r.batch == 1


@pytest.mark.parametrize("prompt", ["ein roter Kreis", "一个红色的圆", "🔴 circle 🟦", "a \u00e9l\u00e8ve"])
def test_non_ascii_and_emoji_prompts_are_accepted(prompt):
    assert ImageRequest(prompt).prompt == prompt


def test_integral_floats_from_number_boxes_are_accepted():
    assert ImageRequest("x", steps=4.0, seed=7.0, batch=2.0).steps == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 10_000}, "10000 characters long; the limit is 1000"),
        ({"prompt": None}, "prompt must be text"),
        ({"steps": 0}, "steps must be from 1 to 1000, got 0"),
        ({"steps": 10_000}, "steps must be from 1 to 1000, got 10000"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"steps": True}, "steps must be a whole number"),
        ({"seed": -1}, "seed must be from 0"),
        ({"seed": 2**70}, "seed must be from 0"),
        ({"batch": 0}, f"batch must be from 1 to {MAX_BATCH}, got 0"),
        ({"batch": 1000}, f"batch must be from 1 to {MAX_BATCH}, got 1000"),
        ({"guidance": -1.0}, "guidance must be from 0.0 to 30.0"),
        ({"guidance": float("nan")}, "guidance must be a number"),
        ({"guidance": "high"}, "guidance must be a number"),
    ],
)
def test_bad_fields_raise_invalid_request_with_a_specific_message(kwargs, message):
    fields = {"prompt": "a red circle"} | kwargs
    with pytest.raises(InvalidRequest) as err:
        ImageRequest(**fields)
    assert message in str(err.value)


def test_requests_are_frozen():
    r = ImageRequest("a red circle")
    with pytest.raises(AttributeError):
        r.steps = 3


def test_an_image_batch_keeps_each_requests_prompt_seeds_and_images():
    from engines.requests import ImageBatch

    requests = [ImageRequest("a red ball", seed=10, batch=2), ImageRequest("a cross", seed=3, steps=4)]
    batch = ImageBatch.of(requests, default_steps=4, default_guidance=1.5)
    assert (batch.steps, batch.guidance, batch.seeds) == (4, 1.5, [10, 3])
    assert batch.prompts == ["a red ball", "a red ball", "a cross"] and batch.image_seeds == [10, 11, 3]
    assert batch.split(["a", "b", "c"]) == [["a", "b"], ["c"]]
    with pytest.raises(InvalidRequest, match="at least one request"):
        ImageBatch.of([], 4, 1.5)
    with pytest.raises(InvalidRequest, match="must share steps and guidance"):
        ImageBatch.of([*requests, ImageRequest("x", steps=2)], 4, 1.5)
    with pytest.raises(InvalidRequest, match="takes an ImageRequest"):
        ImageBatch.of(["a red ball"], 4, 1.5)
