"""Cross-attention grounding (trainer/attention_maps.py): spans, token masks, masks, maps and losses."""

import random

import pytest
import torch

from trainer.attention_maps import (
    attention_centroids,
    grounding_losses,
    object_specs,
    phrase_token_masks,
    record_cross_attention,
    relation_order_loss,
    relation_targets,
    spec_coverage,
)
from trainer.networks import build_network
from trainer.worlds import shapes


def scenes(n: int, seed: int = 0, category: str | None = None) -> list[shapes.Scene]:
    rng = random.Random(seed)
    return [shapes.sample_scene(rng, category) for _ in range(n)]


def test_each_spec_has_a_span_naming_its_shape_and_colour_without_the_article() -> None:
    for scene in scenes(400):
        specs = scene.condition.specs
        assert len(scene.spans) == len(specs)
        for spec, (start, end) in zip(specs, scene.spans):
            words = scene.caption[start:end]
            plural = scene.condition.category == "counting"
            assert any(w in words for w in shapes.SHAPES[spec.shape][1 if plural else 0]), (scene.caption, words)
            if spec.color:
                assert any(w in words for w in shapes.COLORS[spec.color][1]), (scene.caption, words)
            assert not words.startswith(("a ", "an ")) and words == words.strip()
        if len(scene.spans) == 2:  # the two phrases never overlap
            (a0, a1), (b0, b1) = scene.spans
            assert a1 <= b0 or b1 <= a0


def test_spans_do_not_change_what_the_world_draws() -> None:
    # caption_for and sample_scene share one generator: same seed, same caption as the spans' version
    for scene, again in zip(scenes(50, seed=5), scenes(50, seed=5)):
        assert scene == again
    rng_a, rng_b = random.Random(3), random.Random(3)
    condition = scenes(1, category="position")[0].condition
    assert shapes.caption_for(condition, rng_a) == shapes.caption_with_spans(condition, rng_b)[0]


def test_phrase_token_masks_pick_the_tokens_inside_each_span() -> None:
    # offsets of "[CLS] a red circle left of a blue square [SEP] [PAD]" as a fast tokenizer gives them
    caption = "a red circle left of a blue square"
    words = [(0, 1), (2, 5), (6, 12), (13, 17), (18, 20), (21, 22), (23, 27), (28, 34)]
    offsets = torch.tensor([[(0, 0), *words, (0, 0), (0, 0)]])
    masks = phrase_token_masks(offsets, [((2, 12), (23, 34))])
    assert masks.shape == (1, 2, 11)
    assert masks[0, 0].nonzero().flatten().tolist() == [2, 3]  # "red", "circle"
    assert masks[0, 1].nonzero().flatten().tolist() == [7, 8]  # "blue", "square"
    assert caption[2:12] == "red circle"
    assert not phrase_token_masks(offsets, [()]).any()  # a caption without spans grounds nothing
    with pytest.raises(ValueError, match="2 span lists"):
        phrase_token_masks(offsets, [(), ()])
    with pytest.raises(ValueError, match="at most 2"):
        phrase_token_masks(offsets, [((0, 1), (2, 3), (4, 5))])


def test_objects_belong_to_their_specs_and_coverage_joins_them() -> None:
    counting = scenes(20, seed=1, category="counting")
    owners = object_specs(counting)
    for scene, row in zip(counting, owners):
        assert row.tolist() == [0] * len(scene.objects) + [-1] * (shapes.MAX_OBJECTS - len(scene.objects))
    pairs = scenes(10, seed=2, category="position")
    assert (object_specs(pairs)[:, :2] == torch.tensor([0, 1])).all()

    params = shapes.scene_tensors(pairs)
    cover = shapes.object_coverage(params)
    joined = spec_coverage(cover, object_specs(pairs))
    assert joined.shape == (10, 2, 64, 64)
    assert torch.allclose(joined[:, 0], cover[:, 0]) and torch.allclose(joined[:, 1], cover[:, 1])
    both = spec_coverage(shapes.object_coverage(shapes.scene_tensors(counting)), object_specs(counting))
    assert torch.allclose(both[:, 0], shapes.object_coverage(shapes.scene_tensors(counting)).sum(1))
    assert not both[:, 1].any()
    broken = shapes.Scene(pairs[0].objects[:1], pairs[0].condition, pairs[0].caption, pairs[0].spans)
    with pytest.raises(ValueError, match="describes 2"):
        object_specs([broken])


def _two_objects() -> tuple[torch.Tensor, torch.Tensor]:
    """Phrase tokens (1, 2, 4): object 0 is token 1, object 1 is token 2; coverage (1, 2, 8, 8):
    object 0 fills the left half, object 1 the right half."""
    phrase = torch.zeros(1, 2, 4, dtype=torch.bool)
    phrase[0, 0, 1] = phrase[0, 1, 2] = True
    cover = torch.zeros(1, 2, 8, 8)
    cover[0, 0, :, :4] = 1
    cover[0, 1, :, 4:] = 1
    return phrase, cover


def _attention(left_token: int, right_token: int, side: int = 8) -> torch.Tensor:
    probs = torch.zeros(1, side, side, 4)
    probs[0, :, : side // 2, left_token] = 1
    probs[0, :, side // 2 :, right_token] = 1
    return probs.view(1, side * side, 4)


def test_grounding_losses_reward_attention_on_the_right_object() -> None:
    phrase, cover = _two_objects()
    keep = torch.ones(1, dtype=torch.bool)
    right_token, right_pixel = grounding_losses([_attention(1, 2)], phrase, cover, keep)
    swapped_token, swapped_pixel = grounding_losses([_attention(2, 1)], phrase, cover, keep)
    assert right_token.item() < 1e-4 and swapped_token.item() > 0.99
    assert right_pixel.item() < 1e-3 < 5 < swapped_pixel.item()
    # the same at a coarser layer (masks are pooled to each map's size), averaged over layers
    coarse, _ = grounding_losses([_attention(1, 2), _attention(1, 2, side=4)], phrase, cover, keep)
    assert coarse.item() < 1e-4
    # a dropped caption (CFG) is not supervised
    dropped = grounding_losses([_attention(2, 1)], phrase, cover, torch.zeros(1, dtype=torch.bool))
    assert all(loss.item() == 0 for loss in dropped)
    with pytest.raises(ValueError, match="not a square"):
        grounding_losses([torch.full((1, 10, 4), 0.25)], phrase, cover, keep)
    with pytest.raises(ValueError, match="no cross-attention maps"):
        grounding_losses([], phrase, cover, keep)


def test_per_image_weights_choose_which_images_the_losses_average() -> None:
    """Two images, one attending rightly and one swapped: the weights (sigma^power in training) decide
    how much each counts; the result is a weighted mean, so uniform weights of any size agree."""
    phrase, cover = _two_objects()
    phrase, cover = phrase.repeat(2, 1, 1), cover.repeat(2, 1, 1, 1)
    probs = torch.cat([_attention(1, 2), _attention(2, 1)])
    right, _ = grounding_losses([probs], phrase, cover, torch.tensor([1.0, 0.0]))
    swapped, _ = grounding_losses([probs], phrase, cover, torch.tensor([0.0, 1.0]))
    even, _ = grounding_losses([probs], phrase, cover, torch.tensor([0.3, 0.3]))
    leaning, _ = grounding_losses([probs], phrase, cover, torch.tensor([0.1, 0.9]))
    assert right.item() < 1e-4 and swapped.item() > 0.99
    assert even.item() == pytest.approx((right.item() + swapped.item()) / 2, abs=1e-4)
    assert leaning.item() == pytest.approx(0.1 * right.item() + 0.9 * swapped.item(), abs=1e-4)
    with pytest.raises(ValueError, match=">= 0"):
        grounding_losses([probs], phrase, cover, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="weights must be"):
        grounding_losses([probs], phrase, cover, torch.ones(3))


def test_grounding_losses_stay_finite_under_bf16_autocast() -> None:
    phrase, cover = _two_objects()
    probs = _attention(1, 2).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        token, pixel = grounding_losses([probs], phrase, cover, torch.ones(1, dtype=torch.bool))
    (token + pixel).backward()
    assert torch.isfinite(token) and torch.isfinite(pixel) and torch.isfinite(probs.grad).all()


def test_recording_reads_every_cross_attention_layer_and_changes_nothing() -> None:
    torch.manual_seed(0)
    unet = build_network("unet-tiny").eval()
    x = torch.randn(2, 3, 16, 16)
    states = torch.randn(2, 5, 384)
    args = (x, torch.tensor([10.0, 500.0]), states)
    kwargs = {"class_labels": torch.randn(2, 384)}
    plain = unet(*args, **kwargs).sample
    with record_cross_attention(unet) as maps:
        recorded = unet(*args, **kwargs).sample
    layers = [m for m in unet.modules() if getattr(m, "is_cross_attention", False)]
    assert torch.equal(plain, recorded)
    assert len(maps) == len(layers) > 0
    for probs in maps:
        assert probs.shape[0] == 2 and probs.shape[2] == 5 and probs.dtype == torch.float32
        assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:2]), atol=1e-5)
    sum(m[..., 0].mean() for m in maps).backward()  # gradients reach the key projections
    assert all(layer.to_k.weight.grad is not None for layer in layers)
    with torch.no_grad():
        unet(*args, **kwargs)
    assert len(maps) == len(layers)  # the hooks are gone after the block
    with pytest.raises(ValueError, match="no cross-attention"):
        with record_cross_attention(torch.nn.Linear(2, 2)):
            pass


def test_relation_targets_give_each_relation_its_axis_and_sign() -> None:
    a, b = shapes.ObjSpec("circle", "red"), shapes.ObjSpec("square", "blue")
    conditions = [shapes.Condition("position", (a, b), r) for r in ("left_of", "right_of", "above", "below")]
    conditions.append(shapes.Condition("two_objects", (a, b)))
    axis, sign = relation_targets(conditions)
    assert axis.tolist() == [0, 0, 1, 1, 0] and sign.tolist() == [1.0, -1.0, 1.0, -1.0, 0.0]


def test_attention_centroids_read_x_along_rows_and_y_down_columns() -> None:
    mass = torch.zeros(1, 2, 16)  # a 4 x 4 map, row-major
    mass[0, 0, 1 * 4 + 3] = 1  # row 1, column 3
    mass[0, 1] = 1  # uniform
    centroids = attention_centroids(mass)
    assert centroids[0, 0].tolist() == pytest.approx([3.5 / 4, 1.5 / 4])
    assert centroids[0, 1].tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="not a square"):
        attention_centroids(torch.ones(1, 2, 10))


def test_order_loss_is_zero_when_attention_follows_the_relation_and_pushes_back_otherwise() -> None:
    """Token 1 (spec 0) attends to the left half, token 2 (spec 1) to the right: centroids 0.25 and 0.75."""
    phrase, _ = _two_objects()
    ones = torch.ones(1)

    def loss(relation: str, margin: float = 0.1, probs=None) -> torch.Tensor:
        axis, sign = relation_targets([shapes.Condition("position", (shapes.ObjSpec(), shapes.ObjSpec()), relation)])
        return relation_order_loss([_attention(1, 2) if probs is None else probs], phrase, axis, sign, ones, margin)

    assert loss("left_of").item() == 0
    assert loss("right_of").item() == pytest.approx(0.6)  # margin 0.1 + the 0.5 it is on the wrong side
    assert loss("above").item() == pytest.approx(0.1)  # same height: short of the margin
    assert loss("left_of", margin=0.6).item() == pytest.approx(0.1)
    probs = _attention(1, 2).requires_grad_()
    loss("right_of", probs=probs).backward()
    assert torch.isfinite(probs.grad).all() and probs.grad.abs().sum() > 0
    # no relation, a dropped caption or a zero weight: nothing to learn
    none = relation_targets([shapes.Condition("two_objects", (shapes.ObjSpec(), shapes.ObjSpec()))])
    assert relation_order_loss([_attention(2, 1)], phrase, *none, ones).item() == 0
    axis, sign = relation_targets([shapes.Condition("position", (shapes.ObjSpec(), shapes.ObjSpec()), "left_of")])
    assert relation_order_loss([_attention(2, 1)], phrase, axis, sign, torch.zeros(1)).item() == 0


def test_order_loss_refuses_mismatched_shapes_negative_weights_and_no_maps() -> None:
    phrase, _ = _two_objects()
    axis, sign = torch.zeros(1, dtype=torch.long), torch.ones(1)
    with pytest.raises(ValueError, match="must each be"):
        relation_order_loss([_attention(1, 2)], phrase, axis, sign, torch.ones(2))
    with pytest.raises(ValueError, match=">= 0"):
        relation_order_loss([_attention(1, 2)], phrase, axis, sign, torch.ones(1), margin=-0.1)
    with pytest.raises(ValueError, match="no cross-attention maps"):
        relation_order_loss([], phrase, axis, sign, torch.ones(1))
