"""Pick a checkpoint's default guidance by judged quality on held-out prompts; writes card.json."""

import json
import sys
from pathlib import Path

from engines.registry import Registry
from trainer.image_task import write_model_card
from trainer.worlds import shapes

model_id, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 140
registry = Registry()
engine = registry.engine(model_id)
scenes = shapes.eval_scenes(n, seed=99)  # a different held-out draw than the benchmark's
scores = {}
for g in (1.0, 1.5, 2.0, 3.0, 4.5):
    images = engine.sample_prompts([s.caption for s in scenes], list(range(n)), guidance=g, batch_size=n)
    scores[g] = shapes.judge(shapes.to_uint8((images.float() + 1) / 2), [s.condition for s in scenes])["overall"]
    print(f"guidance {g}: overall {scores[g]:.3f}", flush=True)
best = max(scores, key=scores.get)
path = Path(registry.card(model_id).path) / "card.json"
card = json.loads(path.read_text())
card["default_guidance"] = best
card.setdefault("metrics", {})["guidance_sweep"] = {str(k): v for k, v in scores.items()}
path.write_text(json.dumps(card, indent=2) + "\n")
write_model_card(path.parent)
print("default_guidance ->", best)
