"""What DMD2's projection loss (`projection_weight`) could buy at most: for the images of an earlier `bench image
--cache DIR` run, how many have a target (`shapes.corrected_scene`: the object count is right), how many of the
targets the judge accepts, how many of the images the judge rejects it would accept as their targets, and how far
(mean absolute pixel distance in [-1, 1] units) the images are from their targets.

    PYTHONPATH=. python scripts/probe_projection.py ceiling CACHE_DIR [CACHE_DIR ...] [--prompts 560]
    PYTHONPATH=. python scripts/probe_projection.py follow [--student DIR] [--steps 20] [--out F]

`ceiling`: a student that drew every target exactly would read `judge_if_all_projected` (the category mean the
bench reports, with each image that has a target judged as its target); the loss pulls towards that, so it is a
ceiling.

`follow`: does a one-step student move towards that ceiling when it follows the projection loss alone? It
fine-tunes the student on the CPU for a few steps (Adam, training captions) and judges its one-step images of
held-out prompts before and after from the same noise, paired image by image (`bench.paired.paired_difference`).
No DMD and no GAN: what the loss alone does, in minutes, before GPU time is spent on the full stage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bench.image_cache import cached_pixels
from bench.paired import paired_difference
from engines.card import load_card
from engines.text_encoder import TextEncoder
from trainer import distill
from trainer.image_task import world_batch_cpu
from trainer.methods.dmd2 import projection_loss
from trainer.networks import load_network
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


@torch.no_grad()
def one_step_verdicts(network, encoder: TextEncoder, scenes: list, noise: torch.Tensor, batch: int = 56) -> np.ndarray:
    """The judge's verdicts on the network's one-step images of `scenes`, from `noise`."""
    images = []
    for i in range(0, len(scenes), batch):
        emb = encoder.encode([scene.caption for scene in scenes[i : i + batch]])
        chunk = noise[i : i + batch]
        images.append(distill.predict_x0(network, chunk, torch.ones(len(chunk)), emb).clamp(-1, 1))
    pixels = shapes.to_uint8((torch.cat(images) + 1) / 2)
    return shapes.verdicts(pixels, [scene.condition for scene in scenes])


def follow(
    student: Path, steps: int, batch_size: int, lr: float, prompts: int, seed: int = 0, rejected_only: bool = False
) -> dict:
    card = load_card(student)
    encoder = TextEncoder(card.text_encoder.get("path") or card.text_encoder.get("package"), device="cpu")
    network = load_network(student)
    scenes = shapes.eval_scenes(prompts)
    side = int(card.resolution)
    noise = torch.randn((prompts, 3, side, side), generator=torch.Generator().manual_seed(seed + 1))
    before = one_step_verdicts(network.eval(), encoder, scenes, noise)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    rng = torch.Generator().manual_seed(seed + 2)
    history = []
    network.train()
    for step in range(steps):
        batch = world_batch_cpu(step, 0, 0, seed=seed + 7, batch_size=batch_size)
        x = torch.randn((batch_size, 3, side, side), generator=rng)
        x0 = distill.predict_x0(network, x, torch.ones(batch_size), encoder.encode(batch["captions"]))
        loss, valid = projection_loss(x0, batch["conditions"], rejected_only=rejected_only)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append({"step": step + 1, "loss": round(loss.item(), 6), "with_target": round(valid.item(), 3)})
        print(json.dumps(history[-1]), flush=True)
    after = one_step_verdicts(network.eval(), encoder, scenes, noise)
    categories = [scene.condition.category for scene in scenes]
    difference = paired_difference(before, after, categories)
    return {
        "student": str(student),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "prompts": prompts,
        "rejected_only": rejected_only,
        "judge_before": shapes.category_scores(before, categories)["overall"],
        "judge_after": shapes.category_scores(after, categories)["overall"],
        "paired_difference": difference.difference,
        "paired_se": difference.standard_error,
        "verdicts_changed": difference.changed,
        "history": history,
    }


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ceiling = sub.add_parser("ceiling", help="what drawing every target would buy, on a bench cache's images")
    ceiling.add_argument("caches", nargs="+", type=Path, help="bench image cache folders, one per model and step count")
    ceiling.add_argument("--prompts", type=int, default=560, help="the prompt count the bench ran with")
    fine = sub.add_parser("follow", help="fine-tune a one-step student on the projection loss alone; judge before and after")
    fine.add_argument("--student", type=Path, default=Path("checkpoints/shapes-dmd2"))
    fine.add_argument("--steps", type=int, default=20)
    fine.add_argument("--batch-size", type=int, default=16)
    fine.add_argument("--lr", type=float, default=1e-5)
    fine.add_argument("--prompts", type=int, default=224, help="held-out prompts judged before and after")
    fine.add_argument("--rejected-only", action="store_true", help="pull only the samples the judge rejects")
    fine.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args(argv)
    if args.command == "ceiling":
        conditions = [scene.condition for scene in shapes.eval_scenes(args.prompts)]
        for directory in args.caches:
            report = projection_report(cached_pixels(directory, len(conditions)), conditions)
            print(directory.name, json.dumps({k: round(v, 4) for k, v in report.items()}), flush=True)
        return None
    if min(args.steps, args.batch_size, args.prompts) < 1 or not args.lr > 0:
        parser.error("--steps, --batch-size and --prompts must be at least 1 and --lr above 0")
    result = follow(args.student, args.steps, args.batch_size, args.lr, args.prompts, rejected_only=args.rejected_only)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
