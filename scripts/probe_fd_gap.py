"""Where an image checkpoint's Fréchet distance comes from: what it draws, or how it draws it.

`bench image` gives one FD per row (generated images against the world's renders of the same held-out
scenes) and splits it the way this probe does (`fd_content`, `fd_drawing`); the probe adds their mean and
covariance terms and what was drawn (size, colour and count shares). A student can be far from the renders
because it picks other content (colours the caption leaves free, counts, sizes, places) or because its
pixels differ (soft edges, speckle, off-palette tints) on the right content. The world's own detector splits
the two: every generated image is read back into objects (shape, colour, size, centre) and those objects are
rendered again, cleanly (`shapes.render_detections`). Then
  content FD   = FD(clean re-renders, renders of the scenes asked for): what it drew,
  drawing FD   = FD(generated images, their own clean re-renders): how it drew it,
  total FD     = FD(generated images, renders): what `bench image` reports,
each also split into its mean term ||mu_a - mu_b||^2 and covariance term. The world's renders run
through the same read-back as a control (their drawing FD is the read-back's own error). Objects the
detector finds but cannot give a shape are re-rendered as circles and counted. On CPU.

    PYTHONPATH=. python scripts/probe_fd_gap.py CHECKPOINT[:STEPS] [...] [--prompts 560]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from engines.card import load_card
from engines.features import feature_statistics, fid_features, frechet_distance, load_feature_network
from engines.image import ImageEngine
from engines.text_encoder import TextEncoder
from trainer.worlds import shapes

FEATURES = "checkpoints/shapes-features"


@dataclass(frozen=True)
class Split:
    total: float
    mean_term: float

    def __str__(self) -> str:
        return f"{self.total:7.1f} (mean {self.mean_term:6.1f}, covariance {self.total - self.mean_term:6.1f})"


def split(a: np.ndarray, b: np.ndarray) -> Split:
    mu_a, _ = feature_statistics(a)
    mu_b, _ = feature_statistics(b)
    return Split(frechet_distance(a, b), float(((mu_a - mu_b) ** 2).sum()))


def gap(images: np.ndarray, target: np.ndarray, network) -> dict:
    """The three distances for uint8 images (N, 64, 64, 3) against the target scenes' renders' features."""
    detections = shapes.detect_all(images)
    clean, shapeless = shapes.render_detections(detections)
    generated, redrawn = fid_features(network, images), fid_features(network, clean)
    return {
        "total": split(generated, target),
        "content": split(redrawn, target),
        "drawing": split(generated, redrawn),
        "objects": sum(len(d) for d in detections),
        "shapeless": shapeless,
        "marginals": marginals(detections),
    }


def marginals(detections: list[list[shapes.Detection]]) -> dict:
    """What was drawn, whatever was asked: colour and size shares over all objects, objects per image,
    and how spread out their centres are (pixels, standard deviation of x and of y)."""
    found = [d for image in detections for d in image]
    share = lambda values, names: {n: round(values.count(n) / max(1, len(values)), 2) for n in names}  # noqa: E731
    counts = [len(image) for image in detections]
    return {
        "colour": share([d.color for d in found], shapes.COLOR_NAMES),
        "colour_bits": round(shapes.entropy_bits(share([d.color for d in found], shapes.COLOR_NAMES)), 2),
        "size": share([d.size for d in found], shapes.SIZE_NAMES),
        "objects": {k: round(counts.count(k) / len(counts), 2) for k in range(6)},
        "spread_xy": (round(float(np.std([d.x for d in found])), 1), round(float(np.std([d.y for d in found])), 1)),
    }


def report(name: str, result: dict, n: int) -> str:
    lines = [f"{name}: {result['objects'] / n:.2f} objects per image, {result['shapeless']} without a shape"]
    lines += [f"  {key:8s} FD {result[key]}" for key in ("total", "content", "drawing")]
    lines += [f"  drawn: {result['marginals']}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="CHECKPOINT or CHECKPOINT:STEPS (default: the card's steps)")
    parser.add_argument("--prompts", type=int, default=560)
    parser.add_argument("--features", default=FEATURES)
    args = parser.parse_args()
    network = load_feature_network(args.features)
    scenes = shapes.eval_scenes(args.prompts, seed=2024)  # bench image's held-out scenes; image i from seed i
    renders = shapes.to_uint8(shapes.render(scenes))
    target = fid_features(network, renders)
    print(f"{args.prompts} held-out scenes (seed 2024), features {args.features}; FD = total (mean term, covariance term)")
    print(report("world renders (control)", gap(renders, target, network), len(scenes)), flush=True)
    encoder = TextEncoder()
    for spec in args.checkpoints:
        checkpoint, _, steps = spec.partition(":")
        card = load_card(checkpoint)
        engine = ImageEngine.from_card(card, torch.device("cpu"), encoder)
        steps = int(steps) if steps else card.default_steps
        images = engine.sample_prompts([s.caption for s in scenes], list(range(len(scenes))), steps=steps)
        images = shapes.to_uint8((images.float() + 1) / 2)
        print(report(f"{checkpoint} ({steps} steps)", gap(images, target, network), len(scenes)), flush=True)


if __name__ == "__main__":
    main()
