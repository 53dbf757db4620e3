"""`python -m bench video`: quality, time-to-first-frame, streaming FPS and long-horizon drift of
every video checkpoint on the same held-out clips and seeds, in one process.

Rows:
  - teacher (bidirectional) at several steps with CFG: it must denoise the whole 16-frame clip before
    any frame exists, so its time-to-first-frame is the whole clip's latency;
  - student (causal, streaming) at 1, 2, 4 steps per chunk (uniform) and Diagonal Distillation's
    asymmetric schedules (more steps for the first chunks): first-frame latency = the first chunk
    out of `VideoEngine.stream`, FPS = frames per second of a batch-1 stream after its first chunk.
Long horizon (students): `--long-clips` clips streamed for 216 frames, judged on frames 0-16 and
200-216 (drift, in points) with per-window flicker; first chunk vs later frames judged apart
(warm-up artefacts); two concurrent batch-1 streams give FPS per user.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import add_model_args, bench_registry, model_names, percentiles, write_result
from engines.devices import device_name, device_slug, name_slug, synchronize
from engines.registry import Registry
from engines.requests import VideoRequest
from engines.video import VideoEngine
from trainer.video_task import sample_for_clips, to_uint8_frames
from trainer.worlds import motion

CLIP_FRAMES = 16
LONG_FRAMES = 216


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench video", description=__doc__)
    add_model_args(parser, "video")
    parser.add_argument("--compiled", action="store_true", help="also time the streaming model with CUDA graphs")
    parser.add_argument("--clips", type=int, default=256, help="held-out 16-frame clips (a quarter of them interactive)")
    parser.add_argument("--long-clips", type=int, default=32, help="clips streamed for 216 frames (drift)")
    parser.add_argument("--teacher-steps", default="4,8,16", help="whole-clip steps (the motion teacher's default: 16)")
    parser.add_argument("--student-steps", default="1,2,4")
    parser.add_argument("--teacher-stream-steps", default="4,8", help="steps per chunk when a causally trained teacher streams")
    parser.add_argument("--schedules", default="4-2-1,2-1", help="asymmetric per-chunk schedules (Diagonal Distillation)")
    parser.add_argument("--stream-frames", type=int, default=0, help="frames of each timed stream (default 128 GPU, 32 CPU)")
    parser.add_argument("--repeats", type=int, default=0, help="timed batch-1 runs per row (default 10 GPU, 2 CPU)")
    parser.add_argument("--batch", type=int, default=0, help="batch for quality runs (default 64 GPU, 16 CPU)")
    parser.add_argument("--match", type=float, default=0.02, help="'within 2 points' of the teacher")
    parser.add_argument("--update-cards", action="store_true", help="copy this run's numbers into the checkpoints' cards")
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="RESULT",
        help="instead of measuring: merge result files of runs cut short on one device with the same settings (a "
        "later file's row replaces an earlier one's of the same model and setting) and summarise them as one run",
    )
    args = parser.parse_args(argv)
    # the summary reads the streamer's drift from the long clips, so a run needs at least one of each
    for flag, least in (("clips", 1), ("long_clips", 1), ("stream_frames", 0), ("repeats", 0), ("batch", 0)):
        if getattr(args, flag) < least:
            parser.error(f"--{flag.replace('_', '-')} must be at least {least}, got {getattr(args, flag)}")
    # every step count becomes a VideoRequest: refuse a bad one now, not after the models before it have run
    for flag in ("teacher_steps", "student_steps", "teacher_stream_steps", "schedules"):
        for item in filter(None, getattr(args, flag).split(",")):
            try:
                if flag == "schedules":
                    VideoRequest("probe", schedule=tuple(int(s) for s in item.split("-")))
                else:
                    VideoRequest("probe", steps=int(item))
            except ValueError as error:  # InvalidRequest is one
                parser.error(f"--{flag.replace('_', '-')} {item!r}: {error}")
    return args


def _schedules(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(s) for s in item.split("-")) for item in text.split(",") if item]


def _label(steps: int | tuple[int, ...]) -> str:
    return f"diagonal {'-'.join(map(str, steps))}" if isinstance(steps, tuple) else f"uniform {steps}"


def _quality(
    engine: VideoEngine, clips: list, steps, batch: int, causal: bool
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Judge scores of 16-frame clips, per-frame scores (B, T) and each clip's overall score (B,), same seeds
    (clip index) for every row."""
    guidance = engine.card.default_guidance or 1.0
    schedule = (lambda i, s=steps: s[min(i, len(s) - 1)]) if isinstance(steps, tuple) else steps
    video = sample_for_clips(
        engine.network, engine.text_encoder, clips, CLIP_FRAMES, schedule, guidance, engine.scheduler, causal, batch_size=batch
    )
    frames = to_uint8_frames(video, motion.RESOLUTION)
    summary, per_clip = motion.clip_verdicts(frames, clips)
    return summary, motion.frame_scores(frames, clips), per_clip["overall"]


def _cfg_factor(card) -> int:
    """Network evaluations per step: 2 under classifier-free guidance (conditioned and null), else 1."""
    return 2 if (card.default_guidance or 1) > 1 else 1


def _nfe(engine: VideoEngine, card, steps, causal: bool) -> int:
    """Network evaluations for one 16-frame clip (a CFG step counts 2): whole clips take `steps`;
    streams take their steps per chunk plus one cache commit per chunk but the last (stream_chunks commits a
    chunk only when another follows)."""
    cfg = _cfg_factor(card)
    if not causal:
        return steps * cfg
    chunks = CLIP_FRAMES // engine.chunk
    per_chunk = [steps[min(i, len(steps) - 1)] for i in range(chunks)] if isinstance(steps, tuple) else [steps] * chunks
    return (sum(per_chunk) + chunks - 1) * cfg


def _first_frame_work(engine: VideoEngine, card, steps, causal: bool) -> int:
    """Frame-evaluations before the first frame shows: a stream's first chunk at its first steps, a whole clip
    at every step."""
    first_steps = steps[0] if isinstance(steps, tuple) else steps
    return first_steps * _cfg_factor(card) * (engine.chunk if causal else CLIP_FRAMES)


def _timed_stream(engine: VideoEngine, steps, frames: int, seed: int, causal: bool) -> tuple[float, float, float]:
    """(first-frame ms, frames/s after the first chunk, whole-clip ms) of one batch-1 stream."""
    request = VideoRequest(
        "a red ball bouncing to the right and a blue square sliding up",
        seed=seed,
        frames=frames,
        **({"schedule": steps} if isinstance(steps, tuple) else {"steps": steps}),
    )
    synchronize(engine.device)
    start = time.perf_counter()
    first, after_first, count = None, None, 0
    for _frame in engine.stream(request, causal=causal):
        count += 1
        if first is None:
            synchronize(engine.device)
            first = (time.perf_counter() - start) * 1000
        if count == engine.chunk and after_first is None:  # the first chunk's last frame: later frames come from later chunks
            after_first = time.perf_counter()
    synchronize(engine.device)
    end = time.perf_counter()
    streamed = count - engine.chunk
    fps = streamed / (end - after_first) if after_first and streamed > 1 else float("nan")
    return first, fps, (end - start) * 1000


def _two_users(engine: VideoEngine, steps: int, frames: int) -> list[float]:
    """Frames/s of each of two batch-1 streams running at once (two studio users)."""
    rates: list[float] = [0.0, 0.0]

    def user(i: int) -> None:
        start = time.perf_counter()
        n = sum(
            1 for _ in engine.stream(VideoRequest("a green triangle moving left quickly", seed=i, steps=steps, frames=frames))
        )
        rates[i] = n / (time.perf_counter() - start)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rates


def _long_horizon(engine: VideoEngine, clips: list, steps: int, batch: int) -> dict:
    video = sample_for_clips(
        engine.network, engine.text_encoder, clips, LONG_FRAMES, steps, 1.0, engine.scheduler, True, batch_size=batch
    )
    frames = to_uint8_frames(video, motion.RESOLUTION)
    early, early_clips = motion.window_verdicts(frames, clips, 0, 16)
    late, late_clips = motion.window_verdicts(frames, clips, LONG_FRAMES - 16, LONG_FRAMES)
    per_frame = motion.frame_scores(frames, clips).mean(0)
    return {
        "frames": LONG_FRAMES,
        "clips": len(clips),
        "early": early,
        "late": late,
        "drift_points": round(100 * (early["overall"] - late["overall"]), 2),
        "drift_points_se": paired_standard_error(early_clips["overall"], late_clips["overall"]),
        "flicker_early": early.get("flicker"),
        "flicker_late": late.get("flicker"),
        "frame_score_by_16": [round(float(per_frame[i : i + 16].mean()), 4) for i in range(0, LONG_FRAMES, 16)],
    }


def paired_standard_error(a, b) -> float | None:
    """Standard error, in points, of mean(a) - mean(b) for per-clip scores of the same clips (two windows of one
    stream for drift, two models for a gap): the per-clip differences are what varies. With 32 clips it is
    several points, so a limit of 5 is only decided by more clips. None for fewer than two clips, or scores of
    different clips."""
    if a is None or b is None or len(a) != len(b) or len(a) < 2:
        return None
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return round(float(100 * differences.std(ddof=1) / np.sqrt(differences.size)), 2)


def bench_order(cards: list, streamer: str | None) -> list[str]:
    """Which models run first, should a run be cut short: the teachers (the reference every summary key needs),
    then the streaming model the summary is about, then the rest (an earlier student kept for comparison). A
    session-14 run that put the streamer last lost it, and with it the summary, to its time limit."""
    return [c.id for c in sorted(cards, key=lambda c: (c.role != "teacher", c.id != streamer))]


def _streamer(registry: Registry, names: list[str]) -> str | None:
    """The model whose long-horizon stream is measured: the first student, else a teacher that streams."""
    cards = [registry.card(n) for n in names]
    students = [c.id for c in cards if c.role == "student"]
    causal = [c.id for c in cards if float((c.data or {}).get("causal_fraction", 0) or 0) > 0]
    return (students or causal or [None])[0]


def _row(
    engine: VideoEngine, card, steps, clips: list, batch: int, repeats: int, stream_frames: int, causal: bool, same_as=None
) -> dict:
    """One benchmark row: judged quality on the held-out clips, then timed batch-1 runs. `causal`: streamed
    chunk by chunk (frames arrive as made); else the whole clip at once (the first frame waits for all).
    `same_as`: a row of the same model and steps on another backend whose quality this one shares (the
    compiled backend's frames match eager's, tests/gpu/test_video_gpu.py; CUDA graphs for the quality
    batch would cost minutes of compilation per batch size)."""
    started = time.perf_counter()
    if same_as is None:
        quality, per_frame, clip_overall = _quality(engine, clips, steps, batch, causal)
        clip_overall = [round(float(v), 4) for v in clip_overall]
    else:
        quality, per_frame, clip_overall = same_as["quality"], None, same_as.get("clip_overall")
    length = stream_frames if causal else CLIP_FRAMES
    _timed_stream(engine, steps, min(length, 2 * engine.chunk), 0, causal)  # warm-up
    timed = [_timed_stream(engine, steps, length, i, causal) for i in range(repeats)]
    first = [t[0] for t in timed]
    # a whole clip arrives at once: its rate is frames per whole-clip latency, not a stream's
    fps = [t[1] for t in timed if np.isfinite(t[1])] if causal else []
    chunk = engine.chunk
    row = {
        "model": card.id,
        "role": card.role,
        "method": card.method,
        "backend": engine.backend,
        "mode": "stream" if causal else "clip",
        "schedule": _label(steps),
        "steps": "-".join(map(str, steps)) if isinstance(steps, tuple) else steps,
        "nfe": _nfe(engine, card, steps, causal),
        # frames pushed through the network before the first frame shows (evaluations x frames each covers):
        # the first chunk's steps for a stream, every step over the whole clip for a bidirectional one
        "first_frame_work": _first_frame_work(engine, card, steps, causal),
        "quality": quality,
        **({"clip_overall": clip_overall} if clip_overall is not None else {}),  # per clip, for the gap's error
        "first_chunk_score": same_as["first_chunk_score"] if same_as else round(float(per_frame[:, :chunk].mean()), 4),
        "later_frames_score": same_as["later_frames_score"] if same_as else round(float(per_frame[:, chunk:].mean()), 4),
        **({"quality_from": same_as["backend"]} if same_as else {}),
        "first_frame_ms": float(np.median(first)),
        **percentiles(first),
        "stream_fps": float(np.median(fps)) if fps else None,
        "throughput_per_s": float(np.median(fps)) if fps else CLIP_FRAMES / (np.median([t[2] for t in timed]) / 1000),
        "throughput_unit": "frames/s",
        "throughput_batch": 1,
        "clips": len(clips),
        "scoring_seconds": round(time.perf_counter() - started, 1),
        "train_gpu_minutes": None if card.train_gpu_seconds is None else round(card.train_gpu_seconds / 60, 1),
        "teacher": card.teacher,
    }
    summary = {k: row[k] for k in ("model", "backend", "mode", "schedule", "first_frame_ms", "stream_fps")}
    print(json.dumps(summary | {"overall": quality["overall"]}), flush=True)
    return row


def _models(result: dict) -> list[str]:
    return sorted({row["model"] for row in result["rows"]})


def combine(paths: list[Path]) -> tuple[str, list[dict], dict, dict, dict]:
    """The device, rows, long-horizon results and per-user FPS of several result files of one device and
    one set of settings (checked: a device or settings that differ are refused), a later file's row winning
    over an earlier one's of the same model and setting; and the notes they share, with where each part came from."""
    results = []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(f"--combine: cannot read {path}: {error}") from error
        if not isinstance(result, dict) or result.get("suite") != "video" or not isinstance(result.get("rows"), list):
            raise SystemExit(f"--combine: {path} is not a `bench video` result")
        results.append(result)
    for path, result in zip(paths[1:], results[1:]):
        for key in ("device", "notes"):
            if result.get(key) != results[0].get(key):
                raise SystemExit(
                    f"--combine: {path} differs from {paths[0]} in {key} ({result.get(key)!r} against "
                    f"{results[0].get(key)!r}); only runs of one device with the same settings add up to one result"
                )
    rows: dict[tuple, dict] = {}
    long_horizon: dict = {}
    users: dict = {}
    for result in results:
        for row in result["rows"]:
            rows[(row["model"], row["backend"], row["mode"], row["schedule"])] = row
        long_horizon |= result.get("long_horizon", {})
        users |= result.get("two_users_fps", {})
    parts = [
        f"{Path(p).name} ({r.get('created')}, commit `{r.get('git')}`: {', '.join(_models(r))})" for p, r in zip(paths, results)
    ]
    extra = {
        "notes": f"{results[0].get('notes', '')} Combined (`--combine`) from {'; '.join(parts)}.".strip(),
        "combined_from": [
            {"file": Path(p).name, "created": r.get("created"), "git": r.get("git"), "models": _models(r)}
            for p, r in zip(paths, results)
        ],
    }
    return results[0]["device"], list(rows.values()), long_horizon, users, extra


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    registry = bench_registry(args)
    if args.combine:
        device, rows, long_horizon, users, extra = combine(args.combine)
        summary = summarise(rows, long_horizon, registry, args.match)
        extra |= {"long_horizon": long_horizon, "two_users_fps": users}
        json_path, md_path = write_result("video", name_slug(device), device, rows, summary, extra, args.out)
        print(f"wrote {json_path} and {md_path}", flush=True)
        if args.update_cards:
            update_cards(registry, rows, summary, long_horizon, json_path)
        return json.loads(json_path.read_text())
    device = registry.device
    on_gpu = device.type == "cuda"
    repeats = args.repeats or (10 if on_gpu else 2)
    batch = args.batch or (64 if on_gpu else 16)
    stream_frames = args.stream_frames or (128 if on_gpu else 32)
    names = model_names(args, registry, "video")
    if not names:
        raise SystemExit("no video checkpoints found: train one (configs/motion-teacher.yaml) or pass --checkpoints DIR")
    interactive = args.clips // 4
    clips = motion.eval_clips(args.clips - interactive, CLIP_FRAMES) + motion.eval_clips(
        interactive, CLIP_FRAMES, seed=2025, interactive=True
    )
    long_clips = motion.eval_clips(args.long_clips, LONG_FRAMES, seed=2026)

    rows, long_horizon, users = [], {}, {}
    streamer = _streamer(registry, names)
    names = bench_order([registry.card(n) for n in names], streamer)

    def write(rows: list[dict], long_horizon: dict, users: dict) -> Path:
        summary = summarise(rows, long_horizon, registry, args.match)
        extra = {
            "notes": f"{len(clips)} held-out 16-frame clips ({interactive} interactive; eval seeds 2024/2025), clip i seeded "
            f"i; latency = batch-1 `VideoEngine.stream`, {repeats} timed runs of {stream_frames} frames (students) or one "
            f"clip (teachers); drift on {args.long_clips} clips of {LONG_FRAMES} frames (seed 2026). Compiled rows share "
            "the eager rows' quality (`quality_from`).",
            "long_horizon": long_horizon,
            "two_users_fps": users,
        }
        json_path, md_path = write_result("video", device_slug(device), device_name(device), rows, summary, extra, args.out)
        print(f"wrote {json_path} and {md_path}", flush=True)
        return json_path

    with torch.no_grad():  # not set_grad_enabled(False): an in-process caller (a test) keeps its grad mode
        for name in names:
            card = registry.card(name)
            engine: VideoEngine = registry.engine(name)
            runs: list[tuple[object, bool]] = []
            if card.role == "teacher":
                runs += [(int(k), False) for k in args.teacher_steps.split(",")]
            if engine.streaming:
                steps = args.student_steps if card.role == "student" else args.teacher_stream_steps
                runs += [(int(k), True) for k in filter(None, steps.split(","))]
                if card.role == "student" or steps:  # no teacher stream steps asked: no teacher streams at all
                    runs += [(sched, True) for sched in _schedules(args.schedules)]
            for steps, causal in runs:
                rows.append(_row(engine, card, steps, clips, batch, repeats, stream_frames, causal))
            if name == streamer:
                default = card.default_steps if card.role == "student" else int(args.teacher_stream_steps.split(",")[-1])
                long_horizon[name] = _long_horizon(engine, long_clips, default, batch)
                users[name] = [round(r, 1) for r in _two_users(engine, default, stream_frames)]
                print(
                    json.dumps({"model": name, "drift_points": long_horizon[name]["drift_points"], "two_users_fps": users[name]}),
                    flush=True,
                )
            registry.unload_all()
            if args.compiled and name == streamer and device.type == "cuda":
                # the serving configuration of the model the summary is about: CUDA graphs at batch 1, timed;
                # quality shared with the eager row of the same steps (re-measured only where there is none)
                compiled = registry.engine(name, "compiled")
                for steps in sorted({1, card.default_steps}):
                    eager = next((r for r in rows if r["model"] == name and r["mode"] == "stream" and r["steps"] == steps), None)
                    rows.append(_row(compiled, card, steps, clips, batch, repeats, stream_frames, True, same_as=eager))
                registry.unload_all()
            json_path = write(rows, long_horizon, users)  # after each model: a run cut short keeps what it measured

    if args.update_cards:
        update_cards(registry, rows, summarise(rows, long_horizon, registry, args.match), long_horizon, json_path)
    return json.loads(json_path.read_text())


def summarise(rows: list[dict], long_horizon: dict, registry: Registry, match: float) -> dict:
    """The issue's summary keys. Reference: the teacher's whole-clip row with the most steps. Streamer: the
    student's shipped steps (compiled backend where measured), else the streaming teacher's most-step stream."""
    clip_rows = [r for r in rows if r["role"] == "teacher" and r["mode"] == "clip"]
    summary: dict = {}
    if clip_rows:
        best = max(clip_rows, key=lambda r: r["steps"])
        summary["teacher_overall"] = best["quality"]["overall"]
        summary["teacher_ttff_ms"] = best["first_frame_ms"]
    streams = [r for r in rows if r["mode"] == "stream" and r["model"] in long_horizon]
    if not streams:
        return summary
    default_steps = {c.id: c.default_steps for c in registry.cards("video")}
    uniform_rows = [r for r in streams if r["schedule"].startswith("uniform")]
    if streams[0]["role"] == "student":
        shipped = [r for r in uniform_rows if r["steps"] == default_steps.get(r["model"])] or uniform_rows
    else:
        shipped = sorted(uniform_rows, key=lambda r: -int(r["steps"]))
    s = next((r for r in shipped if r["backend"] == "compiled"), shipped[0])
    summary["streaming_model"] = f"{s['model']} ({s['role']}, {s['schedule']}, {s['backend']})"
    summary["student_overall"] = s["quality"]["overall"]
    summary["student_fps"] = s["stream_fps"]
    summary["first_frame_ms"] = s["first_frame_ms"]
    if clip_rows:
        summary["ttff_speedup_vs_teacher"] = round(summary["teacher_ttff_ms"] / s["first_frame_ms"], 1)
        if best.get("first_frame_work") and s.get("first_frame_work"):
            # the speed-up were both sides' time proportional to their work: what the methods alone buy
            summary["ttff_work_ratio"] = round(best["first_frame_work"] / s["first_frame_work"], 1)
        summary["student_within_2_points"] = summary["teacher_overall"] - s["quality"]["overall"] <= match
        summary["gap_points"] = round(100 * (summary["teacher_overall"] - s["quality"]["overall"]), 2)
        gap_se = paired_standard_error(best.get("clip_overall"), s.get("clip_overall"))
        if gap_se is not None:  # rows from before per-clip scores were kept lack it
            summary["gap_points_se"] = gap_se
    summary["drift_points"] = long_horizon[s["model"]]["drift_points"]
    if long_horizon[s["model"]].get("drift_points_se") is not None:  # files from before it was measured lack it
        summary["drift_points_se"] = long_horizon[s["model"]]["drift_points_se"]
    eager = [r for r in streams if r["model"] == s["model"] and r["backend"] == "torch"]
    uniform = {int(r["steps"]): r for r in eager if r["schedule"].startswith("uniform")}
    for r in eager:
        if r["schedule"].startswith("diagonal"):
            last = int(str(r["steps"]).split("-")[-1])
            if last in uniform:
                summary[f"diagonal_{r['steps']}_vs_uniform_{last}"] = {
                    "first_chunk_score": [r["first_chunk_score"], uniform[last]["first_chunk_score"]],
                    "overall": [r["quality"]["overall"], uniform[last]["quality"]["overall"]],
                    "first_frame_ms": [round(r["first_frame_ms"], 1), round(uniform[last]["first_frame_ms"], 1)],
                }
    return summary


def update_cards(registry: Registry, rows: list[dict], summary: dict, long_horizon: dict, source: Path) -> None:
    from trainer.image_task import write_model_card

    slug = source.stem.split("-", 1)[1]
    for card in registry.cards("video"):
        mine = [r for r in rows if r["model"] == card.id]
        if not mine:
            continue
        path = Path(card.path) / "card.json"
        data = json.loads(path.read_text())
        metrics = data.setdefault("metrics", {})
        for r in mine:
            metrics[f"{source.stem} @ {r['mode']} {r['schedule']}{' compiled' if r['backend'] == 'compiled' else ''}"] = {
                **r["quality"],
                "first_frame_ms": r["first_frame_ms"],
                **({"stream_fps": r["stream_fps"]} if r["stream_fps"] else {}),
            }
        if card.id in long_horizon:
            metrics[f"{source.stem} drift"] = {"drift_points": long_horizon[card.id]["drift_points"]}
        sources = set(filter(None, str(metrics.get("source", "")).split(", "))) - {""}
        metrics["source"] = ", ".join(sorted(sources | {f"bench/results/{source.name}"}))
        metrics[f"{slug} summary"] = {k: v for k, v in summary.items() if not isinstance(v, dict)}
        path.write_text(json.dumps(data, indent=2) + "\n")
        write_model_card(Path(card.path))
