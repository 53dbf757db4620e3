"""`python -m bench load`: the studio under load, before and after dynamic batching.

Configurations: batching off (window 0: every request samples alone, one at a time, as before batching
existed) and each batching window above 0 with each batch bound (default: the studio's 5 ms with its
32-image bound, and with 8; a bound of 1 never merges one-image requests, so it shows what letting
requests run concurrently up to the one sampling worker gives, without batching). Each runs as a real
studio in a subprocess (`python app.py --port <free port> ...`, the entry point users run); all are up at
once, and each of `--rounds` rounds alternates between them level by level (results pooled).

For 1, 8 and 32 concurrent users, as many `gradio_client.Client`s in threads each send their requests to
the `generate` API one after another (closed loop, varied prompts and seeds). Per request: end-to-end
latency as the client sees it; per level: p50/p90/p99 latency, throughput (images/s over the level's wall
time), failures (must be 0) and the batch sizes the studio reports in each result's info line. Writes
bench/results/load-<device>.json and .md. Clients do not download the result images
(`download_files=False`): on a small machine that would measure the clients' disk and PNG decoding more
than the studio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import RESULTS, free_port, percentiles, write_result
from engines.devices import device_name, device_slug, pick_device

ROOT = Path(__file__).resolve().parent.parent
API = "/generate"
MIN_REQUESTS = 16  # per concurrency level and round (at least 2 per client): with 2 rounds, p99 is not one request


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench load", description=__doc__)
    parser.add_argument("--device", default="auto", help="where the studio runs models: auto | cpu | cuda")
    parser.add_argument("--model", default="shapes-dmd2", help="image checkpoint id to request (default: the 1-step student)")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--steps", type=int, default=0, help="steps per request (default: the card's)")
    parser.add_argument("--concurrency", default="1,8,32", help="concurrent clients per level, comma-separated")
    parser.add_argument(
        "--requests-per-client",
        type=int,
        default=0,
        help=f"requests each client sends per round (default: enough for {MIN_REQUESTS} a level, at least 2)",
    )
    parser.add_argument(
        "--windows", default="0,5", help="batching windows in ms to compare (5: the studio's default); 0 = batching off (before)"
    )
    parser.add_argument(
        "--max-batch-images",
        default="32,8",
        help="batch bounds to try with each window above 0 (32: the studio's default; 1: concurrent requests, never merged)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="times every level runs on every configuration (pooled)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one request may take before it counts as failed")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds the studio may take to start")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Mode:
    """One studio configuration under test."""

    window_ms: float
    max_images: int

    @property
    def label(self) -> str:
        return f"batching on ({self.window_ms:g} ms, ≤{self.max_images} images)" if self.window_ms > 0 else "batching off"

    @property
    def tag(self) -> str:
        return f"on_{self.window_ms:g}ms_{self.max_images}img" if self.window_ms > 0 else "off"


def modes(windows: str, bounds: str) -> list[Mode]:
    """Window 0 once (the bound does not matter without merging), every other window with every bound."""
    maxes = [int(m) for m in bounds.split(",") if m]
    found = []
    for window in (float(w) for w in windows.split(",") if w):
        found += [Mode(0.0, maxes[0])] if window == 0 else [Mode(window, m) for m in maxes]
    return found


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c]
    configs = modes(args.windows, args.max_batch_images)
    device = pick_device(args.device)
    target = Target.from_args(args)
    per_client = {c: args.requests_per_client or max(2, math.ceil(MIN_REQUESTS / c)) for c in levels}
    measured = {(m, c): Level(c, per_client[c], [], [], [], []) for m in configs for c in levels}
    # Every configuration's studio runs at once, and each round alternates between them level by level, so that load
    # from anything else on the machine (a shared 2-core box drifts a lot) falls on every configuration alike.
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(studio(device.type, m.window_ms, m.max_images, args.startup_timeout)) for m in configs]
        for url in urls:
            warm_up(url, target, args.timeout)
        for round_ in range(args.rounds):
            for clients in levels:
                for mode, url in zip(configs, urls):
                    outcomes, wall_s = load_level(url, target, clients, per_client[clients], args.timeout)
                    level = measured[mode, clients]
                    level.outcomes += outcomes
                    level.walls_s.append(wall_s)
                    level.loads.append(os.getloadavg()[0])
                    level.images.append(sum(o.images for o in outcomes if not o.error))
                    progress = {"round": round_, "mode": mode.label, "clients": clients, "img/s": level.images[-1] / wall_s}
                    print(json.dumps(progress, ensure_ascii=False), flush=True)
    rows = []
    for (mode, _), level in measured.items():
        row = level.row(target) | {"mode": mode.label, "batch_window_ms": mode.window_ms, "max_batch_images": mode.max_images}
        rows.append(row)
        print(json.dumps({k: row[k] for k in PRINTED}, ensure_ascii=False), flush=True)
    summary = summarise(rows)
    extra = {
        "notes": "Each level: N gradio_client clients in threads, each sending its requests one after another to a "
        f"studio started with `python app.py --device {device.type}` in a subprocess (one per configuration, all up at "
        f"once; {args.rounds} rounds, each alternating between them level by level, pooled); latency = submit to result "
        "at the client (queueing, sampling, encoding the PNGs and the SSE stream included); throughput = images finished / "
        "the levels' wall time; the clients run on the same machine. 'batching off' = --batch-window-ms 0 (the studio "
        "before dynamic batching: one request at a time).",
        "model": target.model,
        "levels": levels,
        "configurations": [{"batch_window_ms": m.window_ms, "max_batch_images": m.max_images} for m in configs],
    }
    slug = device_slug(device)
    json_path, md_path = write_result("load", slug, device_name(device), rows, summary, extra, args.out)
    md_path.write_text(markdown_table(json.loads(json_path.read_text())))  # serving has its own columns, no quality
    print(f"wrote {json_path} and {md_path}")
    return json.loads(json_path.read_text())


PRINTED = (
    "mode",
    "concurrency",
    "requests",
    "failures",
    "latency_ms_p50",
    "latency_ms_p99",
    "throughput_per_s",
    "batch_requests_mean",
)


# ---------------------------------------------------------------------------- the studio under test


@contextlib.contextmanager
def studio(device: str, window_ms: float, max_batch_images: int, startup_timeout: float) -> Iterator[str]:
    """A studio in a subprocess (train tab off, its data in a temporary directory); yields its URL once it answers."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        command = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--device", device, "--no-train-tab"]
        command += ["--batch-window-ms", str(window_ms), "--max-batch-images", str(max_batch_images)]
        env = os.environ | {"DISTILLERY_DATA_DIR": tmp, "GRADIO_ANALYTICS_ENABLED": "False"}
        log_path = Path(tmp) / "studio.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{port}/"
                wait_ready(url, process, log_path, startup_timeout)
                yield url
            finally:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the studio exited with code {process.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "config", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the studio did not answer at {url} within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


# ---------------------------------------------------------------------------- clients


def connect(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False, analytics_enabled=False)


@dataclass(frozen=True)
class Target:
    """What every request asks for: the model, its card's facts, and the sampling settings (explicit, as the UI sends them)."""

    model: str
    role: str
    method: str
    backend: str
    steps: int
    guidance: float

    @classmethod
    def from_args(cls, args) -> Target:
        from engines.registry import Registry

        card = Registry(device="cpu").card(args.model)  # reads the card only, no weights
        return cls(card.id, card.role, card.method, args.backend, args.steps or card.default_steps, card.default_guidance)


@dataclass
class Outcome:
    latency_ms: float
    images: int = 0
    batch_requests: int = 1  # requests in the batch that served it, from the info line
    nfe: int = 0
    error: str = ""


class Prompts:
    """Varied prompts (the shapes world's held-out captions) and a fresh seed for every request, shared by threads."""

    def __init__(self) -> None:
        from trainer.worlds import shapes

        self.captions = [scene.caption for scene in shapes.eval_scenes(560)]
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> tuple[str, int]:
        with self._lock:
            i, self._next = self._next, self._next + 1
        return self.captions[i % len(self.captions)], i


def send(client, prompt: str, seed: int, target: Target, timeout: float) -> Outcome:
    """One `generate` call, timed at the client. A failure is an outcome, not an exception."""
    start = time.perf_counter()
    try:
        inputs = (prompt, target.model, seed, target.steps, target.guidance, 1, target.backend)
        job = client.submit(*inputs, api_name=API)
        _preview, gallery, _originals, info = job.result(timeout=timeout)
    except Exception as err:  # noqa: BLE001 - every failure is counted, with its message
        return Outcome((time.perf_counter() - start) * 1000, error=f"{type(err).__name__}: {err}"[:300])
    latency = (time.perf_counter() - start) * 1000
    if not gallery or f"**seed** {seed}" not in str(info):
        return Outcome(latency, error=f"unexpected result: {len(gallery or [])} images, info {str(info)[:200]!r}")
    nfe = re.search(r"\*\*NFE\*\* (\d+)", str(info))
    return Outcome(latency, images=len(gallery), batch_requests=batch_requests(str(info)), nfe=int(nfe.group(1)) if nfe else 0)


def batch_requests(info: str) -> int:
    """Requests in the batch that served a result, from its info line (1 when it ran alone or unbatched)."""
    match = re.search(r"\*\*batched with\*\* (\d+) other", info)
    return int(match.group(1)) + 1 if match else 1


def warm_up(url: str, target: Target, timeout: float) -> None:
    """Load the model and encode a first prompt before anything is timed."""
    client = connect(url)
    outcome = send(client, "a red circle to the left of a blue square", 0, target, timeout)
    if outcome.error:
        raise RuntimeError(f"the studio failed its warm-up request: {outcome.error}")


@dataclass
class Level:
    """One concurrency level of one configuration, pooled over rounds."""

    clients: int
    per_client: int
    outcomes: list[Outcome]
    walls_s: list[float]  # one per round
    images: list[int]  # images finished, one count per round
    loads: list[float]  # the machine's 1-minute load average after each round

    def row(self, target: Target) -> dict:
        ok = [o for o in self.outcomes if not o.error]
        latencies = [o.latency_ms for o in ok] or [float("nan")]
        sizes = [o.batch_requests for o in ok] or [0]
        return {
            "model": target.model,
            "role": target.role,
            "method": target.method,
            "backend": target.backend,
            "steps": target.steps,
            "nfe": max((o.nfe for o in ok), default=0),
            "guidance": target.guidance,
            "batch": 1,  # images per request
            "concurrency": self.clients,
            "requests_per_client": self.per_client,
            "rounds": len(self.walls_s),
            "requests": len(self.outcomes),
            "failures": len(self.outcomes) - len(ok),
            "errors": sorted({o.error for o in self.outcomes if o.error})[:5],
            **percentiles(latencies, (50, 90, 99)),
            "throughput_per_s": sum(self.images) / sum(self.walls_s),
            "throughput_unit": "img/s",
            "throughput_per_round": [round(n / wall, 2) for n, wall in zip(self.images, self.walls_s)],
            "wall_s": round(sum(self.walls_s), 2),
            "load_average_1min": [round(load, 2) for load in self.loads],
            "batch_requests_mean": float(np.mean(sizes)),
            "batch_requests_max": int(max(sizes)),
        }


def load_level(url: str, target: Target, clients: int, per_client: int, timeout: float) -> tuple[list[Outcome], float]:
    """`clients` clients in threads, each sending `per_client` requests one after another, released together:
    every request's outcome and the wall time from release to the last answer."""
    prompts = Prompts()
    connected: list = [None] * clients
    threads = [threading.Thread(target=lambda i=i: connected.__setitem__(i, connect(url))) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    barrier = threading.Barrier(clients + 1)
    outcomes: list[list[Outcome]] = [[] for _ in range(clients)]

    def user(i: int) -> None:
        barrier.wait()
        for _ in range(per_client):
            prompt, seed = prompts.take()
            outcomes[i].append(send(connected[i], prompt, seed, target, timeout))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return [o for per in outcomes for o in per], time.perf_counter() - start


# ---------------------------------------------------------------------------- results


def summarise(rows: list[dict]) -> dict:
    """Failures, then per level and configuration: throughput, p99, and each batching configuration's gain over off."""
    summary: dict = {"failures": sum(r["failures"] for r in rows)}
    off = {r["concurrency"]: r for r in rows if r["batch_window_ms"] == 0}
    for row in rows:
        tag = Mode(row["batch_window_ms"], row["max_batch_images"]).tag
        clients = row["concurrency"]
        summary[f"throughput_img_s_{clients}_clients_{tag}"] = round(row["throughput_per_s"], 2)
        summary[f"latency_ms_p99_{clients}_clients_{tag}"] = round(row["latency_ms_p99"], 1)
        before = off.get(clients)
        if row["batch_window_ms"] > 0 and before:
            summary[f"throughput_gain_{clients}_clients_{tag}"] = round(row["throughput_per_s"] / before["throughput_per_s"], 2)
    return summary


def markdown_table(result: dict) -> str:
    head = ["mode", "clients", "requests", "failures", "p50 ms", "p90 ms", "p99 ms", "img/s", "mean batch", "max batch"]
    head += ["img/s per round", "load avg after each round"]
    lines = [
        f"# load benchmark — {result['device']}",
        "",
        f"Created {result['created']} at commit `{result['git']}`; model `{result['model']}`. {result['notes']}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * len(head),
    ]
    for row in result["rows"]:
        cells = [
            row["mode"],
            str(row["concurrency"]),
            str(row["requests"]),
            str(row["failures"]),
            f"{row['latency_ms_p50']:.0f}",
            f"{row['latency_ms_p90']:.0f}",
            f"{row['latency_ms_p99']:.0f}",
            f"{row['throughput_per_s']:.2f}",
            f"{row['batch_requests_mean']:.1f}",
            str(row["batch_requests_max"]),
            " / ".join(f"{x:.2f}" for x in row["throughput_per_round"]),
            " / ".join(f"{x:.1f}" for x in row["load_average_1min"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Summary", ""] + [f"- **{k}**: {v}" for k, v in result["summary"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
