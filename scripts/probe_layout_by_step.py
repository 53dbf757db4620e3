"""When does an image teacher lay out a position prompt? Over a sampling run on held-out scenes of the
shapes world's position category, the share of x0 previews in which the two objects' colour-mass
centroids are ordered like the caption's relation, per step (0.5 is chance). On CPU, minutes.

    PYTHONPATH=. python scripts/probe_layout_by_step.py [CHECKPOINT] [N] [GUIDANCE] [STEPS]
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from engines.card import load_card
from engines.image import ImageEngine
from engines.requests import ImageRequest
from engines.text_encoder import TextEncoder
from trainer.attention_maps import RELATION_AXES
from trainer.worlds import shapes

KERNEL = 40.0  # RGB distance at which a pixel stops counting towards a colour's mass


def relation_agrees(image: np.ndarray, condition: shapes.Condition) -> bool:
    """Whether the colour-mass centroids of the condition's two objects lie in the captioned order."""
    if condition.relation is None:
        raise ValueError(f"a {condition.category!r} condition relates no objects; this measure needs a position scene")
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    centroids = []
    for spec in condition.specs[:2]:
        reference = np.array(shapes.COLORS[spec.color][0], np.float32)
        weight = np.exp(-((image.astype(np.float32) - reference) ** 2).sum(-1) / (2 * KERNEL**2))
        centroids.append(((weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()))
    axis, sign = RELATION_AXES[condition.relation]  # the order the training loss asks of attention
    return bool(sign * (centroids[1][axis] - centroids[0][axis]) > 0)


def main(checkpoint: str, n: int, guidance: float, steps: int) -> None:
    engine = ImageEngine.from_card(load_card(checkpoint), torch.device("cpu"), TextEncoder())
    scenes = [s for s in shapes.eval_scenes(8 * n, seed=99) if s.condition.category == "position"][:n]
    requests = [ImageRequest(s.caption, seed=i, steps=steps, guidance=guidance) for i, s in enumerate(scenes)]
    print(f"{checkpoint}: {len(scenes)} position scenes, {steps} steps, guidance {guidance}")
    for results in engine.stream_many(requests):
        agree = np.mean([relation_agrees(np.asarray(r.images[0]), s.condition) for r, s in zip(results, scenes)])
        print(f"step {results[0].step:2d}: colour-centroid order agrees {agree:.2f}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        args[0] if args else "checkpoints/shapes-teacher",
        int(args[1]) if len(args) > 1 else 48,
        float(args[2]) if len(args) > 2 else 1.5,
        int(args[3]) if len(args) > 3 else 25,
    )
