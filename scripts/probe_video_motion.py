"""How fast do video models move things, and how many do they draw, against what their captions state (CPU, minutes)?

`bench video` scores `speed` as pass/fail per clip. A distilled student can fail it by moving too slowly (DMD is
mode-seeking: Reward Forcing, sec. 3.3, reports distilled students losing motion dynamics), by overshooting, or by
not moving at all; each calls for a different fix. This samples the same validation clips through each model (the
teacher as a whole clip, a student streamed chunk by chunk, both at their card's default steps unless `--steps`) and
prints, per stated speed, the movers' measured median step (the judge's own reading, `motion.mover_speeds`) and how
many fall static, slow, quick or beyond; and, per number of movers the caption names, the median number of objects
the judge sees in a clip's frames and the share of clips showing fewer or more (`motion.objects_per_frame`).

    PYTHONPATH=. python scripts/probe_video_motion.py --models motion-teacher,motion-student --clips 64 [--seed 77]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench.common import bench_registry, model_names
from bench.video import CLIP_FRAMES
from trainer.video_task import sample_for_clips, to_uint8_frames
from trainer.worlds import motion

BANDS = (  # px/frame bands of the judge's speed check (motion.MIN_SPEED, SPEED_SPLIT, MAX_SPEED)
    ("static", 0.0, motion.MIN_SPEED),
    ("slow", motion.MIN_SPEED, motion.SPEED_SPLIT),
    ("quick", motion.SPEED_SPLIT, motion.MAX_SPEED + 1e-9),
    ("beyond", motion.MAX_SPEED + 1e-9, float("inf")),
)


def speed_table(readings: list[tuple[str, float]]) -> dict[str, dict]:
    """Per stated speed: movers, untracked (no two clean steps), median measured px/frame, and the fraction of the
    tracked ones in each band."""
    table = {}
    for stated in motion.SPEEDS:
        values = np.array([m for s, m in readings if s == stated], dtype=float)
        tracked = values[~np.isnan(values)]
        row = {"movers": int(len(values)), "untracked": int(np.isnan(values).sum())}
        row["median_px"] = round(float(np.median(tracked)), 3) if len(tracked) else None
        for name, low, high in BANDS:
            row[name] = round(float(((tracked >= low) & (tracked < high)).mean()), 3) if len(tracked) else None
        table[stated] = row
    return table


def count_table(seen: np.ndarray, clips: list) -> dict[str, dict]:
    """Per number of movers named: clips, the median over clips of their median objects per frame, and the shares of
    clips whose median is below / above the number named."""
    medians = np.median(seen, axis=1)
    named = np.array([len(c.condition.movers) for c in clips])
    table = {}
    for k in sorted(set(named.tolist())):
        m = medians[named == k]
        table[str(k)] = {
            "clips": int(len(m)),
            "median_objects": float(np.median(m)),
            "fewer": round(float((m < k).mean()), 3),
            "more": round(float((m > k).mean()), 3),
        }
    return table


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="comma-separated video checkpoint ids (checked before any runs)")
    parser.add_argument("--checkpoints", action="append", default=[], help="extra checkpoint roots")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--seed", type=int, default=77, help="eval_clips seed (the bench uses 2024/2025)")
    parser.add_argument("--steps", type=int, default=None, help="steps (per chunk when streamed); default: the card's")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.batch < 1 or (args.steps is not None and args.steps < 1):
        parser.error("need --clips >= 1, --batch >= 1 and --steps >= 1")
    registry = bench_registry(args)
    names = model_names(args, registry, "video")
    clips = motion.eval_clips(args.clips, CLIP_FRAMES, seed=args.seed)
    results = {}
    for name in names:
        started = time.perf_counter()
        engine = registry.engine(name)
        streamed = engine.streaming and engine.card.role == "student"  # teachers as whole clips, as the bench scores them
        steps = args.steps or engine.card.default_steps
        video = sample_for_clips(
            engine.network,
            engine.text_encoder,
            clips,
            CLIP_FRAMES,
            steps,
            engine.card.default_guidance or 1.0,
            engine.scheduler,
            streamed,
            batch_size=args.batch,
        )
        frames = to_uint8_frames(video, motion.RESOLUTION)
        judged = motion.judge_clips(frames, clips)
        results[name] = {
            "mode": "stream" if streamed else "clip",
            "steps": steps,
            "speed_score": round(judged["speed"], 4) if "speed" in judged else None,  # no clip states a speed
            "overall": round(judged["overall"], 4),
            "by_stated_speed": speed_table(motion.mover_speeds(frames, clips)),
            "objects_by_movers_named": count_table(motion.objects_per_frame(frames), clips),
        }
        print(f"{name} ({time.perf_counter() - started:.0f} s): {json.dumps(results[name])}", flush=True)
        registry.unload_all()
    return results


if __name__ == "__main__":
    main()
