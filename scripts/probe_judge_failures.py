"""Why generated images fail the judge, per category: the object count is off, or the count is right and an
asked-for shape, colour or size is missing from what the detector reads, or every asked object is there and the
relation (or a binding of attributes to objects) is what fails.

`bench image` reports only pass rates. A one-step student 0.19 below its teacher could be short on layout
(counts, sides) or on drawing (objects whose shape the detector cannot read); the remedies differ. This probe
reads the images a `bench image --cache DIR` run kept (no generation: on CPU, seconds), in the order the bench
made them (the held-out scenes of seed 2024, image i from seed i), and splits every category's images into
`pass` and the first reason, in the order above, that each failed image gives.

    PYTHONPATH=. python scripts/probe_judge_failures.py CACHE_DIR [CACHE_DIR ...] [--prompts 560]

CACHE_DIR is one model-and-step-count folder of a bench cache, e.g. bench/cache/shapes-teacher-25steps-<key>.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from trainer.worlds import shapes

REASONS = ("pass", "count", "shape", "color", "size", "relation or binding")


def failure_reason(found: list[shapes.Detection], condition: shapes.Condition) -> str:
    """The first reason, in REASONS order, that this image fails its condition ('pass' when it does not)."""
    if shapes.matches(found, condition):
        return "pass"
    if len(found) != sum(spec.count for spec in condition.specs):
        return "count"
    for attribute in ("shape", "color", "size"):
        asked = Counter(
            getattr(spec, attribute) for spec in condition.specs for _ in range(spec.count) if getattr(spec, attribute)
        )
        if asked - Counter(getattr(det, attribute) for det in found):  # an asked value no detection supplies
            return attribute
    return "relation or binding"


def breakdown(images: np.ndarray, conditions: list[shapes.Condition]) -> dict[str, dict[str, float]]:
    """category -> reason -> share of that category's images. `images`: (B, H, W, 3) uint8."""
    if len(images) != len(conditions):
        raise ValueError(f"{len(images)} images but {len(conditions)} conditions")
    counts: dict[str, Counter] = {}
    for found, condition in zip(shapes.detect_all(images), conditions):
        counts.setdefault(condition.category, Counter())[failure_reason(found, condition)] += 1
    return {
        category: {reason: counts[category][reason] / sum(counts[category].values()) for reason in REASONS}
        for category in shapes.CATEGORIES
        if category in counts
    }


def cached_pixels(directory: Path) -> np.ndarray:
    """The images a bench cache folder holds, in order, as uint8 (the bench keeps them in [-1, 1])."""
    chunks = sorted(Path(directory).glob("chunk-*.safetensors"))
    if not chunks:
        raise SystemExit(f"{directory} holds no bench cache chunks (chunk-*.safetensors)")
    return np.concatenate([shapes.to_uint8((load_file(str(c))["images"].float() + 1) / 2) for c in chunks])


def report(name: str, table: dict[str, dict[str, float]]) -> str:
    widths = [max(len(r), 5) + 2 for r in REASONS]
    head = f"{name}\n  {'category':14s}" + "".join(f"{r:>{w}s}" for r, w in zip(REASONS, widths))
    rows = [f"  {c:14s}" + "".join(f"{shares[r]:{w}.2f}" for r, w in zip(REASONS, widths)) for c, shares in table.items()]
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caches", nargs="+", type=Path, help="bench image cache folders, one per model and step count")
    parser.add_argument("--prompts", type=int, default=560, help="the prompt count the bench ran with")
    args = parser.parse_args(argv)
    conditions = [scene.condition for scene in shapes.eval_scenes(args.prompts)]
    for directory in args.caches:
        pixels = cached_pixels(directory)
        if len(pixels) != len(conditions):
            raise SystemExit(f"{directory} holds {len(pixels)} images, not the {len(conditions)} of --prompts")
        print(report(directory.name, breakdown(pixels, conditions)), flush=True)


if __name__ == "__main__":
    main()
