"""Samples/s of one training recipe on 1 and on N GPUs, from the runs' metrics.jsonl (scripts/device_scaling.sh).

The first logged window of each run holds process start-up and the first CUDA kernels, so only the later
windows count. Writes <out>.json and <out>.md.
Usage: python scripts/scaling_summary.py OUT METRICS_1GPU METRICS_NGPU [N]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def steady_rate(metrics: Path) -> tuple[float, list[float]]:
    windows = [r["images_per_s"] for r in map(json.loads, metrics.read_text().splitlines()) if "images_per_s" in r]
    if len(windows) < 2:
        raise SystemExit(f"{metrics}: need at least two logged windows, found {len(windows)}")
    steady = windows[1:]
    return statistics.mean(steady), steady


def main(argv: list[str]) -> None:
    out, one, many = Path(argv[0]), Path(argv[1]), Path(argv[2])
    gpus = int(argv[3]) if len(argv) > 3 else 2
    rate_1, windows_1 = steady_rate(one)
    rate_n, windows_n = steady_rate(many)
    result = {
        "gpus": gpus,
        "samples_per_s_1_gpu": rate_1,
        f"samples_per_s_{gpus}_gpus": rate_n,
        "scaling": rate_n / rate_1,
        "windows_1_gpu": windows_1,
        f"windows_{gpus}_gpus": windows_n,
        "sources": [str(one), str(many)],
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(
        f"| GPUs | samples/s (mean of steady windows) | windows |\n| --- | --- | --- |\n"
        f"| 1 | {rate_1:.0f} | {', '.join(f'{w:.0f}' for w in windows_1)} |\n"
        f"| {gpus} | {rate_n:.0f} | {', '.join(f'{w:.0f}' for w in windows_n)} |\n\n"
        f"Scaling: **{rate_n / rate_1:.2f}×**\n"
    )
    print(json.dumps({k: result[k] for k in ("gpus", "scaling")}))


if __name__ == "__main__":
    main(sys.argv[1:])
