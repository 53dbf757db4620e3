"""Does the sampler's timestep shift decide where a teacher puts the objects of a position prompt? (CPU)

`probe_layout_by_step.py` found the layout set in the first steps: the first x0 preview orders the two
objects like the caption in 62 % of position scenes, and from step 3 on the noise decides (chance). An Euler
step from sigma 1 to s mixes the first x0 preview into the noise with weight 1 - s, so a smaller shift (a bigger
first step) hands the caption's layout more of the image before the noise's own low frequencies take over;
a larger one the reverse. This samples held-out position scenes (seed 99) at each shift from the same noise and
reports the judge's position accuracy and the colour-centroid order agreement of the final images.

    PYTHONPATH=. python scripts/probe_position_by_shift.py [--checkpoint C] [--n 48] [--shifts 1,2,3] [--steps 25]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from probe_layout_by_step import relation_agrees  # noqa: E402  (a sibling script: run from the repo root)

from engines.card import load_card
from engines.image import ImageEngine
from engines.text_encoder import TextEncoder
from trainer.worlds import shapes


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/shapes-teacher")
    parser.add_argument("--n", type=int, default=48, help="held-out position scenes")
    parser.add_argument("--shifts", default="1,2,3")
    parser.add_argument("--steps", type=int, default=None, help="default: the card's")
    parser.add_argument("--guidance", type=float, default=None, help="default: the card's")
    parser.add_argument("--category", default="position", choices=shapes.CATEGORIES)
    args = parser.parse_args(argv)
    try:
        shifts = [float(s) for s in args.shifts.split(",")]
    except ValueError:
        parser.error(f"--shifts must be comma-separated numbers, got {args.shifts!r}")
    if args.n < 1 or any(s <= 0 for s in shifts):
        parser.error("need --n >= 1 and every shift > 0")
    card = load_card(args.checkpoint)
    engine = ImageEngine.from_card(card, torch.device("cpu"), TextEncoder())
    steps = args.steps or card.default_steps
    guidance = card.default_guidance if args.guidance is None else args.guidance
    scenes = [s for s in shapes.eval_scenes(8 * args.n, seed=99) if s.condition.category == args.category][: args.n]
    captions = [s.caption for s in scenes]
    base = engine.scheduler
    results = []
    for shift in shifts:
        engine.scheduler = type(base).from_config(base.config, shift=shift)
        images = shapes.to_uint8((engine.sample_prompts(captions, list(range(len(scenes))), steps, guidance) + 1) / 2)
        row = {"shift": shift, args.category: shapes.judge(images, [s.condition for s in scenes])[args.category]}
        if args.category == "position":
            row["order_agrees"] = float(np.mean([relation_agrees(im, s.condition) for im, s in zip(images, scenes)]))
        results.append(row)
        print(f"{card.id}, {len(scenes)} {args.category} scenes, {steps} steps, guidance {guidance}: {row}", flush=True)
    engine.scheduler = base
    return results


if __name__ == "__main__":
    main()
