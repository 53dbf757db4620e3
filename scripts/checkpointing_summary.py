"""Peak GPU memory and training speed without and with gradient_checkpointing (scripts/device_checkpointing.sh).

Reads DIR/mem-{false,true}.txt (nvidia-smi's used MiB, sampled twice a second during each run) and
DIR/train-{false,true}.log (the trainer's `step N/M ... X img/s` lines; the first window holds start-up, so only
later ones count) and writes DIR/checkpointing.json and DIR/checkpointing.md.
Usage: python scripts/checkpointing_summary.py DIR
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

RATE = re.compile(r"^step \d+/\d+ .* ([\d.]+) img/s")


def peak_mib(samples: Path) -> int:
    values = [int(line) for line in samples.read_text().split() if line.strip().isdigit()]
    if not values:
        raise SystemExit(f"{samples}: no memory samples")
    return max(values)


def steady_rate(log: Path) -> float:
    windows = [float(m.group(1)) for m in map(RATE.match, log.read_text().splitlines()) if m]
    if len(windows) < 2:
        raise SystemExit(f"{log}: need at least two logged windows, found {len(windows)}")
    return statistics.mean(windows[1:])


def main(argv: list[str]) -> dict:
    folder = Path(argv[0])
    device = (folder / "device.txt").read_text().strip() if (folder / "device.txt").exists() else "unknown"
    runs = {gc: (peak_mib(folder / f"mem-{gc}.txt"), steady_rate(folder / f"train-{gc}.log")) for gc in ("false", "true")}
    (off_mib, off_rate), (on_mib, on_rate) = runs["false"], runs["true"]
    result = {
        "device": device,
        "peak_used_mib": {"off": off_mib, "on": on_mib},
        "images_per_s": {"off": off_rate, "on": on_rate},
        "memory_ratio": on_mib / off_mib,
        "speed_ratio": on_rate / off_rate,
    }
    (folder / "checkpointing.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "checkpointing.md").write_text(
        f"One-step GAN stage (three GAN taps, batch 128, bf16) on {device}:\n\n"
        "| gradient_checkpointing | peak used GPU memory (MiB) | images/s (steady windows) |\n| --- | --- | --- |\n"
        f"| off | {off_mib} | {off_rate:.0f} |\n| on | {on_mib} | {on_rate:.0f} |\n\n"
        f"Memory: **{on_mib / off_mib:.2f}×**; speed: **{on_rate / off_rate:.2f}×**\n"
    )
    print(json.dumps({k: result[k] for k in ("memory_ratio", "speed_ratio")}))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
