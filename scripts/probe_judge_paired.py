"""How far models' judge scores are from a base model's, image by image, for images an earlier `bench image --cache`
run kept: the paired comparison `python -m bench paired` makes from result rows, for rows measured before those
kept their per-image verdicts (session 25). No generation: on CPU, seconds.

    PYTHONPATH=. python scripts/probe_judge_paired.py BASE_CACHE CACHE [CACHE ...] [--prompts 560]

Each CACHE is one model-and-step-count folder of a bench cache (bench/cache/shapes-dmd2-1steps-<key>).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.image_cache import cached_pixels
from bench.paired import PairedDifference, paired_difference
from trainer.worlds import shapes


def main(argv: list[str] | None = None) -> list[tuple[str, PairedDifference]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the cache folder every other one is compared with")
    parser.add_argument("caches", nargs="+", type=Path, help="cache folders of the same prompts and seeds")
    parser.add_argument("--prompts", type=int, default=560, help="the prompt count the bench ran with")
    args = parser.parse_args(argv)
    scenes = shapes.eval_scenes(args.prompts)
    conditions = [scene.condition for scene in scenes]
    categories = [condition.category for condition in conditions]

    def verdicts(directory: Path):
        pixels = cached_pixels(directory, len(conditions))
        return shapes.verdicts(pixels, conditions)

    base = verdicts(args.base)
    print(f"{args.base.name}: judge overall {shapes.category_scores(base, categories)['overall']:.4f}; the others minus it:")
    out = []
    for directory in args.caches:
        d = paired_difference(base, verdicts(directory), categories)
        out.append((directory.name, d))
        print(f"  {directory.name}: {d.difference:+.4f} ± {d.standard_error:.4f} (z {d.z:+.2f}; {d.changed} verdicts differ)")
    return out


if __name__ == "__main__":
    main()
