"""Judge an image checkpoint on held-out prompts over a grid of steps and guidance scales.

    python scripts/judge_checkpoint.py checkpoints/shapes-teacher --n 210 --steps 25 --guidance 1.5 3 4.5 \
        [--json out.json] [--set-default-guidance]

`--set-default-guidance` writes the best scale at the card's default steps into card.json (and its
README). Held-out scenes use seed 99, a different draw than `bench image` (seed 2024), so picking a
default here does not tune on the benchmark.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from engines.card import load_card
from engines.devices import pick_device
from engines.image import ImageEngine
from engines.text_encoder import TextEncoder
from trainer.image_task import write_model_card
from trainer.worlds import shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--n", type=int, default=140, help="held-out prompts (category-balanced)")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="default: the card's default_steps")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.5])
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--set-default-guidance", action="store_true")
    args = parser.parse_args()

    card = load_card(args.checkpoint)
    engine = ImageEngine.from_card(card, pick_device(args.device), TextEncoder())
    scenes = shapes.eval_scenes(args.n, seed=99)
    prompts, conditions = [s.caption for s in scenes], [s.condition for s in scenes]
    results = []
    for steps in args.steps or [card.default_steps]:
        for guidance in args.guidance:
            start = time.perf_counter()
            images = engine.sample_prompts(prompts, list(range(args.n)), steps=steps, guidance=guidance, batch_size=256)
            scores = shapes.judge(shapes.to_uint8((images.float() + 1) / 2), conditions)
            results.append({"steps": steps, "guidance": guidance, **scores})
            cells = " ".join(f"{k} {v:.3f}" for k, v in scores.items())
            print(f"steps {steps:3d} guidance {guidance:4.1f}: {cells} ({time.perf_counter() - start:.1f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": card.id, "n": args.n, "results": results}, indent=2) + "\n")
    if args.set_default_guidance:
        at_default = [r for r in results if r["steps"] == card.default_steps]
        if not at_default:
            raise SystemExit(f"--set-default-guidance needs --steps to include the card's default_steps ({card.default_steps})")
        best = max(at_default, key=lambda r: r["overall"])
        path = args.checkpoint / "card.json"
        data = json.loads(path.read_text())
        data["default_guidance"] = best["guidance"]
        data.setdefault("metrics", {})["guidance_sweep"] = {str(r["guidance"]): r["overall"] for r in at_default}
        path.write_text(json.dumps(data, indent=2) + "\n")
        write_model_card(args.checkpoint)
        print("default_guidance ->", best["guidance"])


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
