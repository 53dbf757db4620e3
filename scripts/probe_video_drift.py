"""Long-horizon drift of video students on more long clips than a bench run spends (CPU, minutes).

`bench video` measures drift (judge on frames 0-16 minus frames 200-216) on the streaming model only and, within
a GPU lease, on few clips: 4 on the H200 in session 14, 2 on the CPU, where one failed check moves it by 10-20
points. This streams the same held-out long clips (seed 2026, as the bench) through each named model at its
default steps and prints the bench's own long-horizon record for each.

    PYTHONPATH=. python scripts/probe_video_drift.py --clips 16 --models motion-student [--checkpoints DIR]
"""

from __future__ import annotations

import argparse
import json
import time

from bench.common import bench_registry, model_names
from bench.video import LONG_FRAMES, _long_horizon
from trainer.worlds import motion

KEYS = ("clips", "early", "late", "drift_points", "drift_points_se", "frame_score_by_16")


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--models", required=True, help="comma-separated video checkpoint ids (checked before any runs)")
    parser.add_argument("--checkpoints", action="append", default=[], help="extra checkpoint roots")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.batch < 1:
        parser.error("need --clips >= 1 and --batch >= 1")
    registry = bench_registry(args)  # the shipped checkpoints and --checkpoints roots, as the bench reads them
    names = model_names(args, registry, "video")
    clips = motion.eval_clips(args.clips, LONG_FRAMES, seed=2026)
    results = {}
    for name in names:
        started = time.perf_counter()
        engine = registry.engine(name)
        record = _long_horizon(engine, clips, engine.card.default_steps, args.batch)
        results[name] = {k: record[k] for k in KEYS}
        print(f"{name} ({time.perf_counter() - started:.0f} s): {json.dumps(results[name])}", flush=True)
        registry.unload_all()
    return results


if __name__ == "__main__":
    main()
