"""What every benchmark suite shares: timing, result files in the DESIGN.md shape, tables."""

from __future__ import annotations

import datetime as dt
import gc
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.devices import synchronize
from engines.registry import Registry

RESULTS = Path(__file__).resolve().parent / "results"


def add_model_args(parser, modality: str) -> None:
    """The options every suite takes: device, which checkpoints, where results go."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--models", default="", help=f"comma-separated checkpoint ids (default: every {modality} checkpoint)")
    parser.add_argument("--checkpoints", action="append", default=[], help="extra checkpoint root directories")
    parser.add_argument("--out", type=Path, default=RESULTS)


def bench_registry(args) -> Registry:
    """The checkpoints a suite measures: the shipped ones plus `--checkpoints` roots, one engine loaded at a time."""
    roots = [Path(__file__).resolve().parent.parent / "checkpoints", *map(Path, args.checkpoints)]
    return Registry(roots, device=args.device, cache_size=1)


def model_names(args, registry: Registry, modality: str) -> list[str]:
    """`--models` (comma-separated ids), or every checkpoint of the suite's modality. Every named id is
    checked before anything is timed, so a typo (or a checkpoint missing on this machine) stops the run at
    once instead of after the models before it have been measured and their results dropped."""
    named = [m for m in args.models.split(",") if m]
    if not named:
        return [c.id for c in registry.cards(modality)]
    known = {c.id for c in registry.cards(modality)}
    missing = [m for m in named if m not in known]
    if missing:
        roots = ", ".join(map(str, registry.roots))
        raise SystemExit(
            f"--models names {', '.join(missing)}, not {modality} checkpoints in {roots}; "
            f"known: {', '.join(sorted(known)) or 'none'}"
        )
    return named


def free_port() -> int:
    """A TCP port free on localhost now (for a studio a suite or a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def time_calls(fn: Callable[[int], Any], device, warmup: int, repeats: int) -> list[float]:
    """Wall-clock milliseconds of fn(i) for i in range(repeats), after `warmup` untimed calls."""
    for i in range(warmup):
        fn(i)
    synchronize(device)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(warmup + i)
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


@dataclass
class GcPauses:
    """Collections seen while a block ran: count per generation, total and longest pause in ms."""

    collections: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0, 2: 0})
    total_ms: float = 0.0
    max_ms: float = 0.0

    def as_dict(self) -> dict:
        return {
            "gc_collections": {f"gen{g}": n for g, n in self.collections.items()},
            "gc_total_ms": self.total_ms,
            "gc_max_ms": self.max_ms,
        }


@contextmanager
def gc_pauses() -> Iterator[GcPauses]:
    """The cyclic garbage collector's pauses in this block (all threads: it runs in whichever one allocates),
    so a latency tail can be told apart from collection pauses."""
    pauses, started = GcPauses(), {}

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
        elif "t" in started:
            ms = (time.perf_counter() - started.pop("t")) * 1000
            pauses.collections[info["generation"]] += 1
            pauses.total_ms += ms
            pauses.max_ms = max(pauses.max_ms, ms)

    gc.callbacks.append(callback)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(callback)


def percentiles(times_ms: list[float], levels: tuple[int, ...] = (50, 90)) -> dict[str, float]:
    return {f"latency_ms_p{q}": float(np.percentile(times_ms, q)) for q in levels}


def write_result(
    suite: str,
    slug: str,
    device: str,
    rows: list[dict],
    summary: dict,
    extra: dict | None = None,
    out_dir: Path = RESULTS,
    markdown: Callable[[dict], str] | None = None,
) -> tuple[Path, Path]:
    """`<suite>-<slug>.json` and `.md`; `markdown` renders the table for suites whose rows are not per model."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "suite": suite,
        "device": device,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_commit(),
        "rows": rows,
        "summary": summary,
    } | (extra or {})
    json_path = out_dir / f"{suite}-{slug}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path = out_dir / f"{suite}-{slug}.md"
    md_path.write_text((markdown or markdown_table)(result))
    return json_path, md_path


def markdown_table(result: dict) -> str:
    rows = result["rows"]
    categories = list(dict.fromkeys(k for row in rows for k in row.get("quality", {}) if k != "overall"))
    with_fd = any("fd" in row for row in rows)  # suites without a distribution metric keep their table
    with_free = any("free_colour_bits" in row for row in rows)  # image rows measured since it was added
    with_free_size = any("free_size_bits" in row for row in rows)
    with_split = any("fd_content" in row for row in rows)  # image rows: FD split into what is drawn and how
    with_decoder = any("decoder" in row for row in rows)  # text: one row per decoder, not per step count
    with_mode = any("mode" in row for row in rows)  # video: whole clip or stream, and the step schedule
    unit = rows[0].get("throughput_unit", "img/s") if rows else "img/s"
    head = ["model", "role", "method", "backend", *(["decoder"] * with_decoder), *(["mode", "schedule"] * with_mode)]
    head += ["steps", "NFE", "overall", *categories]
    with_cost = any(row.get("train_gpu_minutes") is not None for row in rows)
    head += (
        ["FD"] * with_fd
        + ["FD content", "FD drawing"] * with_split
        + ["free colours (bits)"] * with_free
        + ["free sizes (bits)"] * with_free_size
        + ["p50 ms", "p90 ms", f"{unit} (batch)"]
        + ["train GPU min"] * with_cost
    )
    lines = [
        f"# {result['suite']} benchmark — {result['device']}",
        "",
        f"Created {result['created']} at commit `{result['git']}`. {result.get('notes', '')}".rstrip(),
        "",
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * len(head),
    ]
    for row in rows:
        q = row.get("quality", {})
        cells = [
            row["model"],
            row["role"],
            row.get("method", ""),
            row["backend"],
            *([row.get("decoder", "")] * with_decoder),
            *([row.get("mode", ""), row.get("schedule", "")] * with_mode),
            str(row["steps"]),
            str(row["nfe"]),
            f"{q.get('overall', float('nan')):.3f}",
            *(f"{q[c]:.3f}" if c in q else "" for c in categories),
            *([f"{row['fd']:.2f}" if "fd" in row else ""] * with_fd),
            *(f"{row[k]:.2f}" if k in row else "" for k in ("fd_content", "fd_drawing") if with_split),
            *([f"{row['free_colour_bits']:.2f}" if "free_colour_bits" in row else ""] * with_free),
            *([f"{row['free_size_bits']:.2f}" if "free_size_bits" in row else ""] * with_free_size),
            f"{row['latency_ms_p50']:.1f}",
            f"{row['latency_ms_p90']:.1f}",
            f"{row['throughput_per_s']:.1f} ({row.get('throughput_batch', '')})",
            *([f"{row['train_gpu_minutes']}" if row.get("train_gpu_minutes") is not None else ""] * with_cost),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Summary", ""] + [f"- **{k}**: {v}" for k, v in result["summary"].items()]
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (benches run headless), imported only when a bench plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_log_ticks(axis) -> None:
    """Label a log-scaled matplotlib axis (`ax.xaxis`) 2, 3, 5, 10, 20, 30, 50, 100 rather than 2x10^1."""
    import matplotlib.ticker

    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}" if f"{x:g}"[0] in "235" else ""))
