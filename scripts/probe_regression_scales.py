"""Where a one-step student's distance to its teacher's ODE endpoints lives: in the layout, or in the edges.

DMD's regression loss pulls G's one-step image from a pair's noise toward the teacher's ODE endpoint from the same
noise. Session 24 found that pull, on pixels, gave back the shapes a learning discriminator had fixed. DMD2's
`regression_pool` p measures it on p x p block means instead. This probe says what a pool would leave of the pull on
a given student: for N pairs made by the teacher's ODE (the same recipe as DMD2's), it prints the regression distance
(0.5 mean squared) on pixels and on block means of 2, 4, 8 and 16, and the share of the pixel distance that each
pool keeps. A share near 1 means the gap is in where things are (layout, sizes, colours): pooling barely changes the
pull. A small share means the gap is in edges, and the pool frees them. On CPU.

    PYTHONPATH=. python scripts/probe_regression_scales.py checkpoints/shapes-dmd2 [more students] \\
        --teacher checkpoints/shapes-teacher --pairs 48
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.text_encoder import TextEncoder
from trainer import distill
from trainer.methods.dmd2 import regression_loss
from trainer.networks import load_network
from trainer.ode_pairs import PairRecipe, PairSet, make_pair_set

POOLS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Scales:
    student: str
    distances: dict[int, float]  # pool -> 0.5 mean squared distance on block means (1: pixels)

    def shares(self) -> dict[int, float]:
        """Each pool's distance as a share of the pixel distance (nested pools: never rising with p)."""
        return {p: d / self.distances[1] for p, d in self.distances.items()}

    def __str__(self) -> str:
        cells = ", ".join(f"pool {p}: {d:.5f} ({self.shares()[p]:.2f})" for p, d in self.distances.items())
        return f"{self.student}: {cells}"


def regression_pairs(
    teacher: distill.Teacher, encoder: TextEncoder, count: int, steps: int, guidance: float, seed: int
) -> PairSet:
    """DMD2's recipe for its regression pairs, at `count` pairs."""
    recipe = PairRecipe.for_teacher(teacher, encoder, steps=steps, guidance=guidance, count=count, seed=seed)
    return make_pair_set(recipe, teacher.network, encoder, torch.device("cpu"), chunk=16)


@torch.no_grad()
def scales(student: torch.nn.Module, name: str, pairs: PairSet, encoder: TextEncoder, pools=POOLS) -> Scales:
    """The student's one-step images from the pairs' noise against the teacher's, at every pool."""
    batch = pairs.batch(torch.arange(len(pairs)), torch.device("cpu"))
    emb = encoder.encode_tokens(batch["tokens"])
    one_step = distill.predict_x0(student, batch["noise"], torch.ones(len(pairs)), emb)
    side = one_step.shape[-1]  # pools that do not tile the image are left out
    return Scales(name, {p: regression_loss(one_step, batch["samples"], p).item() for p in pools if side % p == 0})


def main(argv: list[str] | None = None) -> list[Scales]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("students", nargs="+", type=Path, help="one-step student checkpoints")
    parser.add_argument("--teacher", type=Path, default=Path("checkpoints/shapes-teacher"))
    parser.add_argument("--pairs", type=int, default=48, help="pairs to make with the teacher's ODE (CPU minutes)")
    parser.add_argument("--steps", type=int, default=25, help="the teacher ODE's steps (DMD2's regression_pair_steps)")
    parser.add_argument("--guidance", type=float, default=None, help="the teacher's CFG (default: its card's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.pairs < 1:
        raise SystemExit(f"--pairs must be >= 1, got {args.pairs}")
    for path in args.students:
        if not (path / "card.json").is_file():
            raise SystemExit(f"{path} is not a checkpoint directory (no card.json)")
    torch.manual_seed(0)
    teacher = distill.load_teacher(str(args.teacher), torch.device("cpu"), "probe")
    encoder = TextEncoder(device="cpu")
    guidance = teacher.card.default_guidance if args.guidance is None else args.guidance
    pairs = regression_pairs(teacher, encoder, args.pairs, args.steps, guidance, args.seed)
    print(f"{len(pairs)} pairs from {teacher.id} ({args.steps} steps, guidance {guidance}) in {pairs.seconds:.0f} s", flush=True)
    results = []
    for path in args.students:
        student = load_network(path).eval()
        results.append(scales(student, path.name, pairs, encoder))
        print(results[-1], flush=True)
    return results


if __name__ == "__main__":
    main()
