"""Straightness (Liu et al. 2022) of image checkpoints' sampling ODEs, on the probe reflow training logs its
`straightness` metric with: the same 8 held-out captions and noises, 16 uniform Euler steps, so a teacher measured
here compares with a reflow run's curve in its metrics.jsonl. 0 is a straight path at constant speed.

    PYTHONPATH=. python scripts/probe_straightness.py shapes-teacher [MODEL ...] [--guidance 1.0 2.0]

MODEL is a checkpoint id of checkpoints/ or a checkpoint directory. Training measures guidance 1 (a reflowed
student has its pairs' guidance built in); a teacher's own sampler runs at its card's default guidance, so pass
both to see what the pairs were drawn from. Runs on the CPU in seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engines.registry import Registry
from trainer.methods.reflow import measure_straightness, probe_prompts


def main(argv: list[str] | None = None) -> dict[tuple[str, float], float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--checkpoints", default="checkpoints")
    args = parser.parse_args(argv)
    if bad := [g for g in args.guidance if g < 1]:
        parser.error(f"--guidance must be >= 1 (1 = no CFG), got {bad}")
    registry = Registry([args.checkpoints], device="cpu")
    prompts, seeds = probe_prompts(args.prompts), list(range(args.prompts))
    results = {}
    for model in args.models:
        model_id = registry.add(model).id if Path(model).is_dir() else model
        if (modality := registry.card(model_id).modality) != "image":
            parser.error(f"{model} is a {modality} checkpoint; straightness is measured on image ODEs")
        engine = registry.engine(model_id)
        for guidance in args.guidance:
            value = measure_straightness(engine, None, prompts, seeds, args.steps, guidance)
            results[(model_id, guidance)] = value
            print(f"{model_id}  guidance {guidance:g}: straightness {value:.5f}")
    return results


if __name__ == "__main__":
    main()
