"""The judge proxy (trainer/judge_proxy.py): which labels a caption fixes, a classifier's loss and verdict on them,
and the refusals."""

import pytest
import torch

from engines.features import load_feature_network
from trainer import judge_proxy
from trainer.worlds import shapes

COLORS, SHAPES, SIZES = shapes.COLOR_NAMES, shapes.SHAPE_NAMES, shapes.SIZE_NAMES


def pair(color: str, shape: str) -> int:
    return COLORS.index(color) * len(SHAPES) + SHAPES.index(shape)


def test_a_fully_named_caption_fixes_every_pair_colour_and_shape() -> None:
    condition = shapes.Condition("color_attr", (shapes.ObjSpec(SHAPES[0], COLORS[1]), shapes.ObjSpec(SHAPES[2], COLORS[3])))
    t = judge_proxy.condition_targets([condition])
    assert t["count"].tolist() == [2]
    assert t["pairs_mask"].sum() == len(COLORS) * len(SHAPES) and t["colors_mask"].sum() == len(COLORS)
    assert torch.nonzero(t["pairs"][0]).flatten().tolist() == sorted([pair(COLORS[1], SHAPES[0]), pair(COLORS[3], SHAPES[2])])
    assert torch.nonzero(t["colors"][0]).flatten().tolist() == [1, 3]
    assert torch.nonzero(t["shapes"][0]).flatten().tolist() == [0, 2] and t["shapes_mask"].sum() == len(SHAPES)
    assert t["sizes_mask"].sum() == 0  # no size named: none known


def test_a_free_colour_leaves_that_shape_s_pairs_and_the_other_colours_unknown() -> None:
    counting = shapes.Condition("counting", (shapes.ObjSpec(SHAPES[1], None, None, count=3),))
    sized = shapes.Condition("size", (shapes.ObjSpec(SHAPES[4], COLORS[0], SIZES[2]),))
    t = judge_proxy.condition_targets([counting, sized])
    assert t["count"].tolist() == [3, 1]
    # counting: the asked shape's pairs are unknown in every colour, every other shape's pairs are known absent
    mask = t["pairs_mask"][0].view(len(COLORS), len(SHAPES))
    assert mask[:, 1].sum() == 0 and mask.sum() == len(COLORS) * (len(SHAPES) - 1) and t["pairs"][0].sum() == 0
    assert t["colors_mask"][0].sum() == 0
    assert t["shapes"][0].tolist() == [float(i == 1) for i in range(len(SHAPES))]
    # size: everything named, so everything known, sizes included
    assert t["pairs_mask"][1].sum() == len(COLORS) * len(SHAPES) and t["pairs"][1, pair(COLORS[0], SHAPES[4])] == 1
    assert t["sizes"][1].tolist() == [0.0, 0.0, 1.0] and t["sizes_mask"][1].sum() == len(SIZES)


def test_the_proxy_accepts_renders_for_their_captions_and_refuses_swapped_ones() -> None:
    """On world renders, a classifier trained on renders (the shipped FD network stands in) reads what each caption
    asks; the same images under other captions' conditions lose far more and are mostly refused."""
    model = load_feature_network("checkpoints/shapes-features").requires_grad_(False)
    scenes = shapes.eval_scenes(120)
    images = shapes.render(scenes) * 2 - 1
    own = judge_proxy.condition_targets([s.condition for s in scenes])
    swapped = judge_proxy.condition_targets([s.condition for s in scenes[1:] + scenes[:1]])
    own_loss, swapped_loss = judge_proxy.proxy_loss(model, images, own), judge_proxy.proxy_loss(model, images, swapped)
    assert own_loss.shape == (120,) and torch.isfinite(own_loss).all()
    assert own_loss.mean() < 0.3 and swapped_loss.mean() > 10 * own_loss.mean()
    assert judge_proxy.proxy_accepts(model, images, own).float().mean() > 0.95
    assert judge_proxy.proxy_accepts(model, images, swapped).float().mean() < 0.2
    # half-resolution images are read too (replicated up, as the FD features are)
    small = torch.nn.functional.avg_pool2d(images, 2)
    assert judge_proxy.proxy_loss(model, small, own).mean() < swapped_loss.mean()


def test_the_loss_gradient_reaches_the_images_and_lowers_the_loss() -> None:
    model = load_feature_network("checkpoints/shapes-features").requires_grad_(False)
    scenes = shapes.eval_scenes(16)
    targets = judge_proxy.condition_targets([s.condition for s in scenes[1:] + scenes[:1]])  # captions that do not fit
    images = (shapes.render(scenes) * 2 - 1).requires_grad_(True)
    before = judge_proxy.proxy_loss(model, images, targets).sum()
    before.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    stepped = (images - 0.01 * images.grad.sign()).detach()
    assert judge_proxy.proxy_loss(model, stepped, targets).sum() < before


def test_bad_conditions_and_classifiers_are_refused() -> None:
    with pytest.raises(ValueError, match="leaves a shape free"):
        judge_proxy.condition_targets([shapes.Condition("single_object", (shapes.ObjSpec(None),))])
    with pytest.raises(ValueError, match="not a shapes.Condition"):
        judge_proxy.condition_targets(["a red circle"])
    with pytest.raises(ValueError, match="more than the world's"):
        judge_proxy.condition_targets([shapes.Condition("counting", (shapes.ObjSpec(SHAPES[0], count=5),))])
    model = load_feature_network("checkpoints/shapes-features")
    model.config.color_names = list(COLORS[:-1])
    with pytest.raises(ValueError, match="not the shapes world's"):
        judge_proxy.proxy_loss(
            model, torch.zeros(1, 3, 64, 64), judge_proxy.condition_targets([shapes.eval_scenes(1)[0].condition])
        )
