"""`python -m bench text`: accuracy, NFE, latency and tokens/s of every text (masked-diffusion LM)
checkpoint under several decoders, on the same held-out problems, in one process.

Decoders per model (teachers and students alike, so training-free and distilled speed-ups are
measured side by side):
  - fixed steps (LLaDA low-confidence remasking): gen_length (one token per step: the teacher's
    default), /2, /4, /8 — the "fewer fixed steps" baseline;
  - confidence-adaptive (commit every token above a threshold, at least one per step): on the
    teacher this is Fast-dLLM's training-free parallel decoding, on the student CD4LM's CAD;
    with and without the block-wise KV cache.
Speed-up at matched accuracy: the teacher's default decoding's batch-1 latency over the fastest
student row whose overall accuracy is within `--match` (1 point) of it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import (
    add_model_args,
    bench_registry,
    model_names,
    percentiles,
    plain_log_ticks,
    pyplot,
    time_calls,
    write_result,
)
from engines.devices import device_name, device_slug, synchronize
from engines.registry import Registry
from engines.text_decoding import DecodeConfig
from trainer.worlds import textworld


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench text", description=__doc__)
    add_model_args(parser, "text")
    parser.add_argument("--prompts", type=int, default=512, help="held-out problems (balanced over the task families)")
    parser.add_argument("--thresholds", default="0.99,0.97,0.95,0.9,0.7", help="confidence-adaptive thresholds")
    parser.add_argument("--step-divisors", default="1,2,4,8,16", help="fixed steps = gen_length / d")
    parser.add_argument("--latency-repeats", type=int, default=0, help="timed batch-1 calls per row (default 20 GPU, 5 CPU)")
    parser.add_argument("--batch", type=int, default=0, help="large batch for accuracy and throughput (default 256 GPU, 64 CPU)")
    parser.add_argument("--match", type=float, default=0.01, help="accuracy tolerance of 'matched accuracy'")
    parser.add_argument("--update-cards", action="store_true", help="copy this run's numbers into the checkpoints' cards")
    return parser.parse_args(argv)


def decoders(engine, thresholds: list[float], divisors: list[int]) -> list[tuple[str, DecodeConfig]]:
    g, block = engine.gen_length, engine.block_length
    blocks = g // block
    out = []
    for d in divisors:
        steps = g // d
        if steps >= blocks and steps % blocks == 0:
            out.append((f"fixed-{steps}", DecodeConfig(gen_length=g, block_length=block, steps=steps)))
    caches = [False, True] if engine.supports_cache else [False]
    # eos-fill: once a row commits [EOS], the rest of its answer is [EOS] at no network cost (an early exit)
    variants = [(c, False) for c in caches] + [(caches[-1], True)]
    for use_cache, eos_fill in variants:
        for t in thresholds:
            name = f"threshold-{t:g}" + ("+cache" if use_cache else "") + ("+eos" if eos_fill else "")
            config = DecodeConfig(
                gen_length=g, block_length=block, steps=None, threshold=t, use_cache=use_cache, eos_fill=eos_fill
            )
            out.append((name, config))
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    registry = bench_registry(args)
    device = registry.device
    on_gpu = device.type == "cuda"
    repeats = args.latency_repeats or (64 if on_gpu else 5)  # 64: the rows differ by a few ms on the GPU
    batch = args.batch or (256 if on_gpu else 64)
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    divisors = [int(d) for d in args.step_divisors.split(",") if d]
    names = model_names(args, registry, "text")
    if not names:
        raise SystemExit("no text checkpoints found: train one (configs/text-teacher.yaml) or pass --checkpoints DIR")
    examples = textworld.eval_examples(args.prompts)
    prompts = [e.prompt for e in examples]

    rows = []
    for name in names:
        card = registry.card(name)
        engine = registry.engine(name)
        for label, config in decoders(engine, thresholds, divisors):
            started = time.perf_counter()
            result = engine.decode_batch(prompts, config, batch_size=batch)
            quality = textworld.judge(result.texts, examples)
            # Throughput: the whole held-out set in batches of `batch` (accuracy comes from this run).
            tokens_per_s_batch = len(prompts) * config.gen_length / (result.run_ms / 1000)
            nfe = result.nfe / -(-len(prompts) // batch)  # calls per batch: every row of a batch shares them
            # Batch 1: one problem per call, end to end (tokenising, canvas, decoding, detokenising).
            calls: list[int] = []  # NFE of every batch-1 decode, read from the timed calls themselves

            def one(i: int, c=config, e=engine, calls=calls) -> None:
                calls.append(e.decode_batch([prompts[i % len(prompts)]], c).nfe)

            latency = time_calls(one, device, 2, repeats)
            nfe_b1 = sum(calls) / len(calls)
            stats = percentiles(latency)
            row = {
                "model": name,
                "role": card.role,
                "method": card.method,
                "backend": engine.backend,
                "decoder": label,
                "steps": config.steps if config.steps else f"adaptive@{config.threshold:g}",
                "threshold": config.threshold,
                "use_cache": config.use_cache,
                "eos_fill": config.eos_fill,
                "gen_length": config.gen_length,
                "block_length": config.block_length,
                "nfe": round(nfe_b1, 2),
                "nfe_batch": round(nfe, 2),
                "batch": 1,
                "quality": quality,
                **stats,
                "tokens_per_s_batch1": config.gen_length / (stats["latency_ms_p50"] / 1000),
                "throughput_per_s": tokens_per_s_batch,
                "throughput_unit": "tokens/s",
                "throughput_batch": batch,
                "prompts": len(prompts),
                "scoring_seconds": round(time.perf_counter() - started, 1),
                "train_gpu_minutes": None if card.train_gpu_seconds is None else round(card.train_gpu_seconds / 60, 1),
                "teacher": card.teacher,
            }
            rows.append(row)
            print(
                json.dumps({k: row[k] for k in ("model", "decoder", "nfe", "latency_ms_p50")} | {"overall": quality["overall"]}),
                flush=True,
            )
            synchronize(device)
        registry.unload_all()

    summary = summarise(rows, args.match)
    slug = device_slug(device)
    plot_paths = plot(rows, args.out, slug)
    extra = {
        "notes": f"{len(prompts)} held-out problems ({', '.join(textworld.FAMILIES)}; eval seed 2024); quality = exact "
        "match of the answer after '####'; latency = batch-1 decode of one problem end to end, "
        f"{repeats} timed calls; tokens/s counts the gen_length canvas tokens decoded; throughput at batch {batch}.",
        "prompts": len(prompts),
        "plots": [p.name for p in plot_paths],
    }
    json_path, md_path = write_result("text", slug, device_name(device), rows, summary, extra, args.out)
    print(f"wrote {json_path} and {md_path}")
    if args.update_cards:
        update_cards(registry, rows, summary, json_path)
    return json.loads(json_path.read_text())


def default_row(rows: list[dict], role: str) -> dict | None:
    """A model's shipped decoding: fixed gen_length steps for teachers, the card's threshold for students."""
    mine = [r for r in rows if r["role"] == role]
    if not mine:
        return None
    if role == "teacher":
        full = [r for r in mine if r["threshold"] is None and r["steps"] == r["gen_length"]]
        return full[0] if full else None
    return max(mine, key=lambda r: (r["quality"]["overall"], -r["latency_ms_p50"]))


# "Clearly ahead" of training-free parallel decoding, either way along the accuracy/speed trade-off: at matched
# accuracy at least 20 % fewer network calls and 20 % less batch-1 latency, or at no more latency and calls at
# least 2 points more accurate (about twice the standard error of an accuracy near 0.95 on 512 problems).
CLEAR_MARGIN = 1.2
CLEAR_ACCURACY_GAIN = 0.02


def summarise(rows: list[dict], match: float) -> dict:
    summary: dict = {}
    teacher = default_row(rows, "teacher")
    if teacher is None:
        return summary
    base_acc, base_ms = teacher["quality"]["overall"], teacher["latency_ms_p50"]
    summary["teacher"] = teacher["model"]
    summary["teacher_decoder"] = teacher["decoder"]
    summary["teacher_accuracy"] = base_acc
    summary["teacher_arithmetic_accuracy"] = teacher["quality"].get("arithmetic")
    summary["teacher_latency_ms_p50"] = base_ms
    for row in rows:
        row["speedup_vs_teacher_default"] = base_ms / row["latency_ms_p50"]
    matched = lambda role: [r for r in rows if r["role"] == role and r["quality"]["overall"] >= base_acc - match]
    students = [r for r in rows if r["role"] == "student"]
    if students:
        best = max(students, key=lambda r: r["quality"]["overall"])
        summary["student_accuracy"] = best["quality"]["overall"]
        summary["student_best_decoder"] = f"{best['model']} {best['decoder']}"
        fast = min(matched("student"), key=lambda r: r["latency_ms_p50"], default=None)
        summary["speedup_at_matched_accuracy"] = fast["speedup_vs_teacher_default"] if fast else None
        summary["student_matched_decoder"] = f"{fast['model']} {fast['decoder']}" if fast else None
        summary["student_matched_accuracy"] = fast["quality"]["overall"] if fast else None
    free = min(matched("teacher"), key=lambda r: r["latency_ms_p50"], default=None)
    summary["training_free_speedup_at_matched_accuracy"] = free["speedup_vs_teacher_default"] if free else None
    summary["training_free_matched_decoder"] = f"{free['model']} {free['decoder']}" if free else None
    # Distilled against training-free at matched accuracy: batch-1 latency jitters by milliseconds between
    # rows, so the fewest network calls among the matched rows is reported beside it (device-independent).
    fewest = lambda role: min((r["nfe"] for r in matched(role)), default=None)
    if students:
        summary["student_nfe_at_matched_accuracy"] = fewest("student")
    summary["training_free_nfe_at_matched_accuracy"] = fewest("teacher")
    if students and fast and free:
        summary["student_vs_training_free_latency"] = free["latency_ms_p50"] / fast["latency_ms_p50"]
        summary["student_vs_training_free_nfe"] = summary["training_free_nfe_at_matched_accuracy"] / max(
            summary["student_nfe_at_matched_accuracy"], 1e-9
        )
        # ...and the other way round: the best student accuracy at no more latency and no more calls than
        # the training-free row (where both sit on the batch-1 latency floor, the gain shows as accuracy).
        at_speed = [r for r in students if r["latency_ms_p50"] <= free["latency_ms_p50"] and r["nfe"] <= free["nfe"]]
        gain = max((r["quality"]["overall"] for r in at_speed), default=None)
        summary["student_accuracy_gain_at_training_free_speed"] = None if gain is None else gain - free["quality"]["overall"]
        faster = (
            summary["student_vs_training_free_latency"] >= CLEAR_MARGIN
            and summary["student_vs_training_free_nfe"] >= CLEAR_MARGIN
        )
        more_accurate = gain is not None and gain - free["quality"]["overall"] >= CLEAR_ACCURACY_GAIN
        summary["student_clearly_ahead_of_training_free"] = faster or more_accurate
    return summary


def plot(rows: list[dict], out: Path, slug: str) -> list[Path]:
    """Accuracy vs NFE and accuracy vs batch-1 latency, one line per (model, decoder family)."""
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for x_key, x_label, name in (
        ("nfe", "network calls per problem (batch 1)", "nfe"),
        ("latency_ms_p50", "latency p50, ms (batch 1)", "latency"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        groups: dict[str, list[dict]] = {}
        for row in rows:
            family = "fixed steps" if row["threshold"] is None else "threshold" + (" + cache" if row["use_cache"] else "")
            family += " + eos-fill" if row.get("eos_fill") else ""
            groups.setdefault(f"{row['model']} ({row['role']}) — {family}", []).append(row)
        for label, group in groups.items():
            group = sorted(group, key=lambda r: r[x_key])
            style = "-o" if group[0]["role"] == "student" else "--s"
            ax.plot([r[x_key] for r in group], [r["quality"]["overall"] for r in group], style, label=label, markersize=4)
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
        ax.set_xlabel(x_label)
        ax.set_ylabel("accuracy (held-out problems)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"text-{slug}-accuracy-vs-{name}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def update_cards(registry: Registry, rows: list[dict], summary: dict, source: Path) -> None:
    for card in registry.cards("text"):
        mine = [r for r in rows if r["model"] == card.id]
        if not mine or card.path is None:
            continue
        raw = json.loads((card.path / "card.json").read_text())
        key = source.stem
        for r in mine:
            raw.setdefault("metrics", {})[f"{key} @ {r['decoder']}"] = {
                **r["quality"],
                "nfe": r["nfe"],
                "latency_ms_p50": r["latency_ms_p50"],
                "tokens_per_s_batch1": r["tokens_per_s_batch1"],
                "throughput_per_s": r["throughput_per_s"],
            }
        raw["metrics"][f"summary ({key})"] = summary
        raw["metrics"].pop("summary", None)
        # every benchmark file the card quotes (keys are '<file stem> @ <decoder>'), not only the latest
        stems = sorted({k.split(" @ ")[0] for k in raw["metrics"] if " @ " in k})
        raw["metrics"]["source"] = ", ".join(f"bench/results/{stem}.json" for stem in stems)
        (card.path / "card.json").write_text(json.dumps(raw, indent=2) + "\n")
        print(f"updated {card.path / 'card.json'}")
