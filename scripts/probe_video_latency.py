"""Where a streaming video student's first frame spends its time (GPU; CPU works for the eager parts).

`bench video` gives one number per row: the first frame of a batch-1 stream, end to end. This splits it:
the network call alone per backend (eager, compiled with CUDA graphs), the sampler's host work around it
(noise, a fresh scheduler, the Euler step), the frames' trip to PIL; and a `torch.profiler` pass over a whole
first chunk that counts the kernels launched and the host time between them. With TORCH_LOGS=perf_hints set,
torch says when and why it skipped CUDA graphs.

    PYTHONPATH=. python scripts/probe_video_latency.py --device cuda [--models motion-student] [--steps 1,2]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from bench.common import bench_registry, model_names, time_calls
from engines.requests import VideoRequest
from engines.video import frames_to_pil

PROMPT = "a red ball bouncing to the right and a blue square sliding up"


def _timed(fn, device: torch.device, repeats: int, warmup: int = 0) -> float:
    """Median ms of fn(), the device drained after each call (bench.common.time_calls)."""
    return statistics.median(time_calls(lambda _i: fn(), device, warmup=warmup, repeats=repeats))


def _first_frame(engine, steps: int):
    for result in engine.stream(VideoRequest(PROMPT, seed=0, frames=2 * engine.chunk, steps=steps)):
        return result


def probe(engine, steps_list: list[int], repeats: int) -> dict:
    device, net = engine.device, engine.network
    chunk = engine.chunk
    dtype = next(net.parameters()).dtype
    emb = engine.text_encoder.encode([PROMPT]).to(device, dtype)
    x = torch.randn(1, chunk, net.config.in_channels, net.config.resolution, net.config.resolution, device=device, dtype=dtype)
    sigma = torch.full((1, chunk), 0.9, device=device, dtype=dtype)
    record: dict = {"model": engine.card.id, "backend": engine.backend, "device": str(device)}
    with torch.no_grad():
        for steps in steps_list:  # three warm-up calls: they compile and record the CUDA graphs
            first = lambda s=steps: _first_frame(engine, s)  # noqa: E731
            record[f"first_frame_ms_{steps}step"] = round(_timed(first, device, repeats, warmup=3), 3)
        cache = net.new_cache(1)
        call = lambda: net.forward_chunk(x, sigma, emb.states, emb.pooled, None, cache, 0)  # noqa: E731
        record["network_call_ms"] = round(_timed(call, device, repeats, warmup=3), 3)
        frames = x[0].float().clamp(-1, 1)
        record["frames_to_pil_ms"] = round(_timed(lambda: frames_to_pil(frames), device, repeats), 3)
        fresh = lambda: type(engine.scheduler).from_config(engine.scheduler.config)  # noqa: E731
        record["scheduler_from_config_ms"] = round(_timed(fresh, torch.device("cpu"), repeats), 3)
        shape = (chunk, int(net.config.in_channels), int(net.config.resolution), int(net.config.resolution))
        noise = lambda: torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)  # noqa: E731
        record["noise_ms"] = round(_timed(noise, device, repeats), 3)
        steps = steps_list[-1]
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            _first_frame(engine, steps)
        events = prof.key_averages()
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        record["profile_steps"] = steps
        record["cuda_kernels"] = int(sum(e.count for e in kernels))
        record["cuda_kernel_ms"] = round(sum(e.self_device_time_total for e in kernels) / 1000, 3)
        record["graph_launches"] = int(sum(e.count for e in events if "cudaGraphLaunch" in e.key))
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
        record["top_host_ops"] = [(e.key[:60], e.count, round(e.self_cpu_time_total / 1000, 3)) for e in top]
    return record


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="motion-student", help="comma-separated streaming video checkpoint ids")
    parser.add_argument("--checkpoints", action="append", default=[], help="extra checkpoint roots")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", default="", help="comma-separated (default: torch, and compiled on CUDA)")
    parser.add_argument("--steps", default="1,2", help="steps per chunk to time the first frame at")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    if args.repeats < 1 or not steps or min(steps) < 1:
        parser.error("need --repeats >= 1 and steps >= 1")
    registry = bench_registry(args)
    backends = args.backends.split(",") if args.backends else ["torch"] + (["compiled"] if args.device.startswith("cuda") else [])
    records = []
    for name in model_names(args, registry, "video"):
        for backend in backends:
            engine = registry.engine(name, backend=backend)
            record = probe(engine, steps, args.repeats)
            print(json.dumps(record), flush=True)
            records.append(record)
        registry.unload_all()
    return records


if __name__ == "__main__":
    main()
