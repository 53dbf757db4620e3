"""Colour diversity of image checkpoints where the caption leaves colour free: on the held-out scenes of
`bench image` (seed 2024) whose conditions name no colour, the colours the world's detector finds in
each model's images, as shares and their entropy in bits (8 colours: 3.0 at most), beside the world's
own renders of the same scenes (shapes.free_shares; `bench image` reports the entropy per row).
A mode-seeking student (DMD with a GAN head) can raise the judge's score, which only checks what the
caption asks for, while collapsing what it leaves free. On CPU.

    PYTHONPATH=. python scripts/probe_colour_diversity.py CHECKPOINT [CHECKPOINT ...] [--steps 1]
"""

from __future__ import annotations

import argparse

import torch

from engines.card import load_card
from engines.image import ImageEngine
from engines.text_encoder import TextEncoder
from trainer.worlds import shapes


def describe(name: str, shares: dict[str, float]) -> str:
    rounded = {colour: round(share, 2) for colour, share in shares.items()}
    return f"{name}: entropy {shapes.entropy_bits(shares):.2f} bits {rounded}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--steps", type=int, default=None, help="default: each card's default_steps")
    parser.add_argument("--prompts", type=int, default=560)
    args = parser.parse_args()
    encoder = TextEncoder()
    scenes = [s for s in shapes.eval_scenes(args.prompts, seed=2024) if shapes.leaves_free(s.condition)]
    conditions = [s.condition for s in scenes]
    print(f"{len(scenes)} of {args.prompts} held-out scenes leave colour free")
    print(describe("world renders", shapes.free_shares(shapes.to_uint8(shapes.render(scenes)), conditions)))
    for checkpoint in args.checkpoints:
        card = load_card(checkpoint)
        engine = ImageEngine.from_card(card, torch.device("cpu"), encoder)
        steps = args.steps or card.default_steps
        images = engine.sample_prompts([s.caption for s in scenes], list(range(len(scenes))), steps=steps)
        shares = shapes.free_shares(shapes.to_uint8((images.float() + 1) / 2), conditions)
        print(describe(f"{checkpoint} ({steps} steps)", shares), flush=True)


if __name__ == "__main__":
    main()
