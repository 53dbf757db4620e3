"""What DMD2's projection loss (`projection_weight`) could buy at most: for the images of an earlier `bench image
--cache DIR` run, how many have a target (`shapes.corrected_scene`: the object count is right), how many of the
targets the judge accepts, how many of the images the judge rejects it would accept as their targets, and how far
(mean absolute pixel distance in [-1, 1] units) the images are from their targets.

    PYTHONPATH=. python scripts/probe_projection.py CACHE_DIR [CACHE_DIR ...] [--prompts 560]

A student that drew every target exactly would read `judge_if_all_projected` (the category mean the bench reports,
with each image that has a target judged as its target); the loss pulls towards that, so it is a ceiling.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.image_cache import cached_pixels
from trainer.worlds import shapes


def projection_report(pixels: np.ndarray, conditions: list) -> dict[str, float]:
    categories = [condition.category for condition in conditions]
    judged = shapes.verdicts(pixels, conditions)
    projected = shapes.projected_targets(pixels, conditions)
    valid = projected["valid"]
    target_verdicts = shapes.verdicts(projected["target"], conditions) & valid
    ceiling = np.where(valid, target_verdicts, judged)
    rejected_with_target = valid & ~judged
    distance = np.abs(projected["target"].astype(np.float32) - pixels.astype(np.float32)).mean(axis=(1, 2, 3)) / 127.5
    return {
        "judge": shapes.category_scores(judged, categories)["overall"],
        "with_target": float(valid.mean()),
        "targets_accepted": float(target_verdicts[valid].mean()) if valid.any() else float("nan"),
        "rejected_fixed_by_target": float(target_verdicts[rejected_with_target].mean())
        if rejected_with_target.any()
        else float("nan"),
        "judge_if_all_projected": shapes.category_scores(ceiling, categories)["overall"],
        "distance_accepted": float(distance[valid & judged].mean()) if (valid & judged).any() else float("nan"),
        "distance_rejected": float(distance[rejected_with_target].mean()) if rejected_with_target.any() else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caches", nargs="+", type=Path, help="bench image cache folders, one per model and step count")
    parser.add_argument("--prompts", type=int, default=560, help="the prompt count the bench ran with")
    args = parser.parse_args(argv)
    conditions = [scene.condition for scene in shapes.eval_scenes(args.prompts)]
    for directory in args.caches:
        pixels = cached_pixels(directory, len(conditions))
        report = projection_report(pixels, conditions)
        print(directory.name, json.dumps({k: round(v, 4) for k, v in report.items()}), flush=True)


if __name__ == "__main__":
    main()
