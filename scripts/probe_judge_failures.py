"""Why generated images fail the judge, per category: the object count is off, or the count is right and an
asked-for shape, colour or size is missing from what the detector reads, or every asked object is there and the
relation (or a binding of attributes to objects) is what fails.

`bench image` reports these shares in every row (`failures`, from `shapes.failure_shares`). This probe gives
them for the images an earlier `bench image --cache DIR` run kept (no generation: on CPU, seconds), in the order
the bench made them (the held-out scenes of seed 2024, image i from seed i), and splits every category's images into
`pass` and the first reason, in the order above, that each failed image gives.

    PYTHONPATH=. python scripts/probe_judge_failures.py CACHE_DIR [CACHE_DIR ...] [--prompts 560] [--by-size]

CACHE_DIR is one model-and-step-count folder of a bench cache, e.g. bench/cache/shapes-teacher-25steps-<key>.
`--by-size` adds, per size the detector reads, that size's share of all objects found and the share of them no
shape template fits (session 25: one-step students leave 14-16 % of small objects shapeless, 2-5 % of medium and
large ones, the teacher none; so a student that draws fewer small objects reads better and matches the world less).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.image_cache import cached_pixels
from trainer.worlds import shapes


def report(name: str, table: dict[str, dict[str, float]]) -> str:
    reasons = shapes.FAILURE_REASONS
    widths = [max(len(r), 5) + 2 for r in reasons]
    head = f"{name}\n  {'category':14s}" + "".join(f"{r:>{w}s}" for r, w in zip(reasons, widths))
    rows = [f"  {c:14s}" + "".join(f"{shares[r]:{w}.2f}" for r, w in zip(reasons, widths)) for c, shares in table.items()]
    return "\n".join([head, *rows])


def shapeless_by_size(pixels: np.ndarray) -> dict[str, tuple[int, float, float]]:
    """Per size the detector reads: (objects found, their share of all objects, the share of them no shape fits)."""
    found = [d for detections in shapes.detect_all(pixels) for d in detections]
    total = max(1, len(found))
    table = {}
    for size in shapes.SIZE_NAMES:
        of_size = [d for d in found if d.size == size]
        table[size] = (len(of_size), len(of_size) / total, sum(d.shape is None for d in of_size) / max(1, len(of_size)))
    return table


def size_report(table: dict[str, tuple[int, float, float]]) -> str:
    head = f"  {'objects by size':22s}" + "".join(f"{size:>9s}" for size in table)
    share = f"  {'share of objects':22s}" + "".join(f"{row[1]:9.2f}" for row in table.values())
    shapeless = f"  {'no shape fits':22s}" + "".join(f"{row[2]:9.2f}" for row in table.values())
    found = f"  {'found':22s}" + "".join(f"{row[0]:9d}" for row in table.values())
    return "\n".join([head, found, share, shapeless])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caches", nargs="+", type=Path, help="bench image cache folders, one per model and step count")
    parser.add_argument("--prompts", type=int, default=560, help="the prompt count the bench ran with")
    parser.add_argument("--by-size", action="store_true", help="also: objects by detected size, and how many are shapeless")
    args = parser.parse_args(argv)
    conditions = [scene.condition for scene in shapes.eval_scenes(args.prompts)]
    for directory in args.caches:
        pixels = cached_pixels(directory, len(conditions))
        print(report(directory.name, shapes.failure_shares(pixels, conditions)), flush=True)
        if args.by_size:
            print(size_report(shapeless_by_size(pixels)), flush=True)


if __name__ == "__main__":
    main()
