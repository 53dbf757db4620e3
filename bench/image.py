"""`python -m bench image`: judge quality, batch-1 latency and large-batch throughput of every
image checkpoint (or those named) at several step counts, on fixed held-out prompts and seeds."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import RESULTS, percentiles, time_calls, write_result
from engines.devices import device_name, device_slug, synchronize
from engines.image import to_pil
from engines.registry import Registry
from engines.requests import ImageRequest
from trainer.worlds import shapes

TEACHER_STEPS = (1, 2, 4, 8, 25, 50)
STUDENT_STEPS = (1, 2, 4)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench image", description=__doc__)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--models", default="", help="comma-separated checkpoint ids (default: every image checkpoint)")
    parser.add_argument("--checkpoints", action="append", default=[], help="extra checkpoint root directories")
    parser.add_argument("--prompts", type=int, default=560, help="held-out prompts (balanced over the 7 categories)")
    parser.add_argument("--steps", default="", help="step counts, e.g. 1,2,4 (default 1,2,4,8,25,50 teachers; 1,2,4 students)")
    parser.add_argument("--latency-repeats", type=int, default=0, help="timed batch-1 calls per row (default 20 GPU, 5 CPU)")
    parser.add_argument("--throughput-batch", type=int, default=0, help="batch for throughput (default 256 GPU, 32 CPU)")
    parser.add_argument("--chunk", type=int, default=0, help="images per forward when scoring (default 280 GPU, 64 CPU)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--update-cards", action="store_true", help="copy this run's numbers into the checkpoints' cards")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    roots = [Path(__file__).resolve().parent.parent / "checkpoints", *map(Path, args.checkpoints)]
    registry = Registry(roots, device=args.device, cache_size=1)
    device = registry.device
    on_gpu = device.type == "cuda"
    repeats = args.latency_repeats or (20 if on_gpu else 5)
    tp_batch = args.throughput_batch or (256 if on_gpu else 32)
    chunk = args.chunk or (280 if on_gpu else 64)
    names = [m for m in args.models.split(",") if m] or [c.id for c in registry.cards("image")]
    scenes = shapes.eval_scenes(args.prompts)
    prompts, conditions = [s.caption for s in scenes], [s.condition for s in scenes]
    seeds = list(range(len(scenes)))

    rows = []
    for name in names:
        card = registry.card(name)
        engine = registry.engine(name)
        steps_list = [int(s) for s in args.steps.split(",") if s] or (TEACHER_STEPS if card.role == "teacher" else STUDENT_STEPS)
        for steps in steps_list:
            started = time.perf_counter()
            images = engine.sample_prompts(prompts, seeds, steps, batch_size=chunk)
            quality = shapes.judge(shapes.to_uint8((images.float() + 1) / 2), conditions)
            scored_s = time.perf_counter() - started
            # Batch 1, end to end (text encoding of a fresh prompt included: the cache is bypassed by new prompts).
            latency = time_calls(
                lambda i, s=steps, e=engine: e.generate(ImageRequest(prompts[i % len(prompts)], seed=i, steps=s)),
                device,
                warmup=2,
                repeats=repeats,
            )
            last = engine.generate(ImageRequest(prompts[0], seed=0, steps=steps))
            # Throughput: a large batch of different prompts per call.
            batch_prompts = (prompts * (tp_batch // len(prompts) + 1))[:tp_batch]
            tp_times = time_calls(
                lambda i, s=steps, e=engine, bp=batch_prompts: e.sample_prompts(bp, list(range(len(bp))), s, batch_size=len(bp)),
                device,
                warmup=1,
                repeats=3 if on_gpu else 1,
            )
            throughput = tp_batch / (min(tp_times) / 1000)
            row = {
                "model": name,
                "role": card.role,
                "method": card.method,
                "backend": engine.backend,
                "steps": steps,
                "nfe": last.timings.nfe,
                "guidance": card.default_guidance,
                "batch": 1,
                "quality": quality,
                **percentiles(latency),
                "throughput_per_s": throughput,
                "throughput_batch": tp_batch,
                "prompts": len(prompts),
                "scoring_seconds": round(scored_s, 1),
            }
            rows.append(row)
            print(
                json.dumps(
                    {k: row[k] for k in ("model", "steps", "nfe", "latency_ms_p50", "throughput_per_s")}
                    | {"overall": quality["overall"]}
                ),
                flush=True,
            )
            synchronize(device)
        sample_sheet(engine, prompts[:16], args.out / f"image-{name}-{device_slug(device)}.png")
        registry.unload_all()

    summary = summarise(rows)
    extra = {
        "notes": f"{len(prompts)} held-out prompts (world 'shapes', eval seed 2024), image i from seed i; "
        f"latency = batch-1 end-to-end generate() incl. text encoding, {repeats} timed calls; "
        f"throughput at batch {tp_batch}.",
        "prompts": len(prompts),
    }
    json_path, md_path = write_result("image", device_slug(device), device_name(device), rows, summary, extra, args.out)
    print(f"wrote {json_path} and {md_path}")
    if args.update_cards:
        update_cards(registry, rows, json_path)
    return json.loads(json_path.read_text())


def summarise(rows: list[dict]) -> dict:
    summary: dict = {}
    teachers = [r for r in rows if r["role"] == "teacher"]
    if teachers:
        best = max(teachers, key=lambda r: r["quality"]["overall"])
        summary["teacher_best_overall"] = best["quality"]["overall"]
        summary["teacher_best_steps"] = best["steps"]
        one = [r for r in teachers if r["steps"] == 1]
        if one:
            summary["teacher_1step_overall"] = one[0]["quality"]["overall"]
        summary["teacher_best_latency_ms_p50"] = best["latency_ms_p50"]
    return summary


def sample_sheet(engine, prompts: list[str], path: Path) -> None:
    """A picture of what the numbers mean: one row per step count is too much; default steps only."""
    from trainer.image_task import image_grid  # noqa: PLC0415 - only for the optional sheet

    images = engine.sample_prompts(prompts, list(range(len(prompts))))
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(to_pil(images), columns=8, scale=2).save(path)


def update_cards(registry: Registry, rows: list[dict], source: Path) -> None:
    from trainer.image_task import write_model_card  # noqa: PLC0415

    for card in registry.cards("image"):
        mine = [r for r in rows if r["model"] == card.id]
        if not mine or card.path is None:
            continue
        raw = json.loads((card.path / "card.json").read_text())
        key = source.stem  # e.g. image-h100
        raw.setdefault("metrics", {})
        for r in mine:
            raw["metrics"][f"{key} @ {r['steps']} steps"] = {
                **r["quality"],
                "latency_ms_p50": r["latency_ms_p50"],
                "throughput_per_s": r["throughput_per_s"],
            }
        raw["metrics"]["source"] = f"bench/results/{source.name}"
        (card.path / "card.json").write_text(json.dumps(raw, indent=2) + "\n")
        write_model_card(card.path)
        print(f"updated {card.path / 'card.json'}")
