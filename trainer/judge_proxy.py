"""A differentiable stand-in for the shapes world's judge: an attribute classifier's loss against what a caption asks.

The judge (`shapes.matches`) detects blobs and fits shape templates: exact, but it gives a generator no gradient.
Reward-weighted DMD uses its verdicts only as weights. Issue 3 also allows a differentiable proxy of the judge; this
is one. A `ShapesFeatureNet` (the architecture of the FD network, trained on world renders by
`python -m trainer.train_features`, but with its own seed and its own checkpoint: a generator trained on the FD
network's own outputs would train on the metric) reads an image's objects. A caption fixes some of its labels:

- `count`: every category says how many objects there are;
- `shapes` (presence of each shape kind): every spec names its shape, and the count is exact, so all five are known;
- `colors` and `pairs` (colour x shape presence): known where every spec names its colour; where one leaves it free,
  only the named pairs' presence and the absence of every shape nobody asked for are known;
- `sizes`: known where every spec names its size, else only the named sizes' presence.

The proxy loss is the classifier's cross-entropy on the known labels alone, summed over an image's labels like the
classifier's own training loss (`train_features.losses`). Session 25 found one-step students' failures are mostly
missing or shapeless shapes (`probe_judge_failures.py`); the shape and pair heads are where that shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from engines.features import ShapesFeatureNet, resize_for_features
from trainer.worlds import shapes

HEADS = ("pairs", "colors", "shapes", "sizes")  # multi-label heads; `count` is a class


def condition_targets(conditions: Sequence[shapes.Condition]) -> dict[str, torch.Tensor]:
    """Per head, (B, labels) targets and (B, labels) masks (1 where the caption fixes the label), as
    `{head: target, head + "_mask": mask}`, plus `count` (B,) long."""
    n_colors, n_shapes, n_sizes = len(shapes.COLOR_NAMES), len(shapes.SHAPE_NAMES), len(shapes.SIZE_NAMES)
    b = len(conditions)
    pairs, pairs_mask = torch.zeros(b, n_colors, n_shapes), torch.zeros(b, n_colors, n_shapes)
    colors, colors_mask = torch.zeros(b, n_colors), torch.zeros(b, n_colors)
    shape_t, sizes, sizes_mask = torch.zeros(b, n_shapes), torch.zeros(b, n_sizes), torch.zeros(b, n_sizes)
    count = torch.zeros(b, dtype=torch.long)
    for i, condition in enumerate(conditions):
        if not isinstance(condition, shapes.Condition) or not condition.specs:
            raise ValueError(f"condition {i} is not a shapes.Condition with object specs: {condition!r}")
        specs = condition.specs
        if any(spec.shape is None for spec in specs):
            raise ValueError(f"condition {i} leaves a shape free; the proxy needs every spec's shape: {condition!r}")
        count[i] = sum(spec.count for spec in specs)
        if count[i] > shapes.MAX_OBJECTS:
            raise ValueError(f"condition {i} asks for {int(count[i])} objects, more than the world's {shapes.MAX_OBJECTS}")
        asked_shapes = {shapes.SHAPE_NAMES.index(spec.shape) for spec in specs}
        for s in asked_shapes:
            shape_t[i, s] = 1
        all_colored = all(spec.color is not None for spec in specs)
        # pairs: a shape nobody asked for is absent in every colour; a named (colour, shape) is present; with every
        # colour named, every other pair is absent too
        for s in range(n_shapes):
            if s not in asked_shapes:
                pairs_mask[i, :, s] = 1
        for spec in specs:
            if spec.color is not None:
                c = shapes.COLOR_NAMES.index(spec.color)
                pairs[i, c, shapes.SHAPE_NAMES.index(spec.shape)] = 1
                pairs_mask[i, c, shapes.SHAPE_NAMES.index(spec.shape)] = 1
                colors[i, c] = colors_mask[i, c] = 1
        if all_colored:
            pairs_mask[i] = 1
            colors_mask[i] = 1
        for spec in specs:
            if spec.size is not None:
                z = shapes.SIZE_NAMES.index(spec.size)
                sizes[i, z] = sizes_mask[i, z] = 1
        if all(spec.size is not None for spec in specs):
            sizes_mask[i] = 1
    return {
        "pairs": pairs.flatten(1),
        "pairs_mask": pairs_mask.flatten(1),
        "colors": colors,
        "colors_mask": colors_mask,
        "shapes": shape_t,
        "shapes_mask": torch.ones(b, n_shapes),
        "sizes": sizes,
        "sizes_mask": sizes_mask,
        "count": count,
    }


def _logits(model: ShapesFeatureNet, images: torch.Tensor) -> dict[str, torch.Tensor]:
    out = model(resize_for_features(images.float(), model.config.image_size))
    return {
        "pairs": out.pair_logits,
        "colors": out.color_logits,
        "shapes": out.shape_logits,
        "sizes": out.size_logits,
        "count": out.count_logits,
    }


def check_labels(model: ShapesFeatureNet) -> None:
    config = model.config
    world = (tuple(shapes.COLOR_NAMES), tuple(shapes.SHAPE_NAMES), tuple(shapes.SIZE_NAMES), shapes.MAX_OBJECTS)
    theirs = (tuple(config.color_names), tuple(config.shape_names), tuple(config.size_names), config.max_objects)
    if theirs != world:
        raise ValueError(f"the proxy classifier's labels {theirs} are not the shapes world's {world}")


def proxy_loss(model: ShapesFeatureNet, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) per-image loss: masked BCE summed over each head's known labels, plus the count's cross-entropy.
    `images` (B, 3, H, W) in [-1, 1], resized to the classifier's input as the FD features are; gradients flow to
    them (freeze the classifier: `requires_grad_(False)`)."""
    check_labels(model)
    logits = _logits(model, images)
    device = images.device
    loss = F.cross_entropy(logits["count"], targets["count"].to(device), reduction="none")
    for head in HEADS:
        bce = F.binary_cross_entropy_with_logits(logits[head], targets[head].to(device), reduction="none")
        loss = loss + (bce * targets[head + "_mask"].to(device)).sum(dim=1)
    return loss


@torch.no_grad()
def proxy_accepts(model: ShapesFeatureNet, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) bool: the classifier reads every label the caption fixes as asked (its own verdict, to set beside the
    judge's)."""
    check_labels(model)
    logits = _logits(model, images)
    device = images.device
    ok = logits["count"].argmax(dim=1) == targets["count"].to(device)
    for head in HEADS:
        read = (logits[head] > 0).float()
        wrong = (read != targets[head].to(device)).float() * targets[head + "_mask"].to(device)
        ok &= wrong.sum(dim=1) == 0
    return ok
