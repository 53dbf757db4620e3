"""Colour diversity of image checkpoints where the caption leaves colour free: on the held-out scenes of
`bench image` (seed 2024) whose conditions name no colour, the colours the world's detector finds in
each model's images, as shares and their entropy in bits (8 colours: 3.0 at most), beside the world's
own renders of the same scenes. A mode-seeking student (DMD with a GAN head) can raise the judge's
score, which only checks what the caption asks for, while collapsing what it leaves free. On CPU.

    PYTHONPATH=. python scripts/probe_colour_diversity.py CHECKPOINT [CHECKPOINT ...] [--steps 1]
"""

from __future__ import annotations

import argparse
import collections
import math

import torch

from engines.card import load_card
from engines.image import ImageEngine
from engines.text_encoder import TextEncoder
from trainer.worlds import shapes


def shares_and_entropy(counts: collections.Counter) -> tuple[dict[str, float], float]:
    total = sum(counts.values())
    shares = {colour: round(c / total, 2) for colour, c in counts.most_common()}
    return shares, -sum(c / total * math.log2(c / total) for c in counts.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=560)
    args = parser.parse_args()
    encoder = TextEncoder()
    scenes = [s for s in shapes.eval_scenes(args.prompts, seed=2024) if all(p.color is None for p in s.condition.specs)]
    print(f"{len(scenes)} of {args.prompts} held-out scenes leave colour free; {args.steps} step(s)")
    shares, entropy = shares_and_entropy(collections.Counter(o.color for s in scenes for o in s.objects))
    print(f"world renders: entropy {entropy:.2f} bits {shares}")
    for checkpoint in args.checkpoints:
        engine = ImageEngine.from_card(load_card(checkpoint), torch.device("cpu"), encoder)
        images = engine.sample_prompts([s.caption for s in scenes], list(range(len(scenes))), steps=args.steps)
        found = collections.Counter(d.color for image in shapes.to_uint8((images.float() + 1) / 2) for d in shapes.detect(image))
        shares, entropy = shares_and_entropy(found)
        print(f"{checkpoint}: entropy {entropy:.2f} bits {shares}", flush=True)


if __name__ == "__main__":
    main()
