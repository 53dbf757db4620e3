"""The video path end to end on CPU: a tiny teacher and Self-Forcing student (trained once per session
by the `tiny_video_root` fixture), their checkpoints, the engine, MP4 output and the benchmark."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from engines.card import load_card
from engines.errors import CheckpointError, InvalidRequest
from engines.registry import Registry
from engines.requests import VIDEO_ACTIONS, VideoRequest
from engines.video import StreamControls, VideoEngine, load_video_network
from tests.conftest import REPO, one_thread
from trainer.config import ConfigError, load_config
from trainer.worlds import motion


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def test_requests_and_world_agree_on_actions() -> None:
    assert VIDEO_ACTIONS == motion.ACTIONS


def test_exported_checkpoints_carry_their_training(tiny_video_root) -> None:
    teacher = load_card(tiny_video_root / "tiny-video")
    student = load_card(tiny_video_root / "tiny-video-student")
    assert (teacher.modality, teacher.role, teacher.method) == ("video", "teacher", "video_fm")
    assert (student.modality, student.role, student.method, student.teacher) == ("video", "student", "self_forcing", "tiny-video")
    assert student.default_guidance == 1.0  # CFG is distilled in
    assert (tiny_video_root / "tiny-video-student" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    for name in ("identity", "consistency", "overall"):
        assert name in teacher.metrics["training_eval"]
    # the student starts from the teacher's weights: same architecture
    a, b = load_video_network(tiny_video_root / "tiny-video"), load_video_network(tiny_video_root / "tiny-video-student")
    assert a.config.chunk == b.config.chunk and set(a.state_dict()) == set(b.state_dict())


def test_student_streams_frames_and_writes_an_mp4(video_registry, tmp_path) -> None:
    engine: VideoEngine = video_registry.engine("tiny-video-student")
    assert engine.streaming
    results = list(engine.stream(VideoRequest("a red ball bouncing to the right", seed=5, frames=5)))
    assert [r.frame_index for r in results] == list(range(5))
    assert [r.final for r in results] == [False] * 4 + [True]
    assert len(results[-1].frames) == 5 and results[-1].images[0].size == (16, 16)
    assert results[0].timings.run_ms <= results[-1].timings.run_ms
    again = engine.generate(VideoRequest("a red ball bouncing to the right", seed=5, frames=5), mp4=tmp_path / "clip.mp4")
    for a, b in zip(results[-1].frames, again.frames):  # same seed, same frames
        assert np.array_equal(np.asarray(a), np.asarray(b))
    video = iio.imread(again.video_path)
    assert video.shape[0] == 5 and video.shape[1:3] == (64, 64)  # 16 px upscaled 4x for viewing
    other = engine.generate(VideoRequest("a red ball bouncing to the right", seed=6, frames=5))
    assert not np.array_equal(np.asarray(other.frames[0]), np.asarray(again.frames[0]))


def test_endless_stream_follows_steering_and_stops(video_registry) -> None:
    engine: VideoEngine = video_registry.engine("tiny-video-student")
    controls = StreamControls()
    seen = 0
    for result in engine.stream(VideoRequest("a red ball", frames=0, seed=1), controls):
        seen += 1
        assert result.total_steps == 0 and not result.final
        if seen == 2:
            controls.steer("a blue square sliding up")
            controls.hold("left")
        if seen == 6:
            controls.stop.set()
        assert seen < 20, "the stream did not stop"
    assert seen == 6  # chunks of 2 frames: it stops at the end of the chunk it was in
    assert "a blue square sliding up" in engine._embeddings  # later chunks were conditioned on the new prompt
    with pytest.raises(InvalidRequest, match="unknown action"):
        controls.hold("jump")
    with pytest.raises(InvalidRequest, match="empty"):
        controls.steer("   ")
    assert controls.prompt == "a blue square sliding up"  # a refused change leaves the stream as it was


def test_bidirectional_teacher_only_makes_whole_clips(video_registry) -> None:
    engine: VideoEngine = video_registry.engine("tiny-video")  # trained with causal_fraction 0
    assert not engine.streaming
    with pytest.raises(InvalidRequest, match="bidirectional"):
        list(engine.stream(VideoRequest("a red ball", frames=0)))
    with pytest.raises(InvalidRequest, match="cannot stream causally"):
        list(engine.stream(VideoRequest("a red ball", frames=4), causal=True))
    result = engine.generate(VideoRequest("a red ball", frames=4, seed=2, actions=("left", "up")))
    assert len(result.frames) == 4 and result.video_path.endswith(".mp4")
    assert result.timings.nfe == 2 * 4  # one bidirectional pass per step, doubled by CFG


def test_causally_trained_teacher_streams_with_cfg(tmp_path) -> None:
    from trainer.loop import train

    out = tmp_path / "ck" / "causal-teacher"
    overrides = [f"--run_dir={tmp_path / 'run'}", f"--export.output_dir={out}", "--export.id=causal-teacher", "--max_steps=1"]
    train(load_config(str(REPO / "configs" / "tiny-video-cpu.yaml"), [*overrides, "--method_config.causal_fraction=0.5"]))
    assert load_card(out).data["causal_fraction"] == 0.5
    engine: VideoEngine = Registry([tmp_path / "ck"], device="cpu").engine("causal-teacher")
    assert engine.streaming
    streamed = list(engine.stream(VideoRequest("a red ball", frames=4, seed=2)))
    assert [r.frame_index for r in streamed] == [0, 1, 2, 3]
    assert streamed[-1].timings.nfe == 2 * (2 * 4 + 1)  # 2 chunks x 4 steps + the first chunk's commit, CFG doubles
    clip = list(engine.stream(VideoRequest("a red ball", frames=4, seed=2), causal=False))
    assert len(clip[-1].frames) == 4 and clip[-1].timings.nfe == 2 * 4
    controls = StreamControls()
    for seen, _ in enumerate(engine.stream(VideoRequest("a red ball", frames=0, seed=1), controls), 1):
        if seen == 3:
            controls.stop.set()
        assert seen < 10
    assert seen == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(frames=-1), "length in frames"),
        (dict(frames=5000), "length in frames"),
        (dict(steps=0), "steps per chunk"),
        (dict(actions=("left", "fly")), "unknown action"),
        (dict(schedule=()), "schedule"),
    ],
)
def test_bad_video_requests_are_refused_clearly(kwargs, message) -> None:
    with pytest.raises(InvalidRequest, match=message):
        VideoRequest("a red ball", **kwargs)


def test_damaged_video_checkpoint_is_refused(tiny_video_root, tmp_path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_video_root / "tiny-video", broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_video_network(broken)
    with pytest.raises(CheckpointError, match="transformer/"):
        load_video_network(tmp_path)


def test_video_configs_refuse_bad_settings(tiny_video_root, tiny_image_root, tmp_path) -> None:
    from trainer.loop import train

    base = [f"--run_dir={tmp_path / 'run'}"]
    with pytest.raises(ConfigError, match="causal_fraction"):
        train(load_config(str(REPO / "configs" / "tiny-video-cpu.yaml"), [*base, "--method_config.causal_fraction=2"]))
    with pytest.raises(ConfigError, match="video model_preset"):
        train(load_config(str(REPO / "configs" / "tiny-video-cpu.yaml"), [*base, "--model_preset=unet-tiny"]))
    with pytest.raises(ConfigError, match="set `teacher`"):
        train(load_config(str(REPO / "configs" / "tiny-self-forcing-cpu.yaml"), base))
    with pytest.raises(ConfigError, match="does not exist"):
        train(load_config(str(REPO / "configs" / "tiny-self-forcing-cpu.yaml"), [*base, f"--teacher={tmp_path / 'nope'}"]))
    image_teacher = f"--teacher={tiny_image_root / 'tiny-cpu'}"
    with pytest.raises(ConfigError, match="is a image model; 'self_forcing' needs a video teacher"):
        train(load_config(str(REPO / "configs" / "tiny-self-forcing-cpu.yaml"), [*base, image_teacher]))


def test_self_forcing_rollout_is_causal_and_streams_like_the_engine(tiny_video_root) -> None:
    """The training rollout makes a clip the way the engine streams it: frames of the first chunk do not
    depend on what later chunks are conditioned on (actions), and gradients reach the student."""
    from engines.text_encoder import TextEncoder
    from trainer.methods.self_forcing import SelfForcing

    config = load_config(str(REPO / "configs" / "tiny-self-forcing-cpu.yaml"), [f"--teacher={tiny_video_root / 'tiny-video'}"])
    method = SelfForcing(config, torch.device("cpu"), TextEncoder(device="cpu"))
    emb = method.text_encoder.encode(["a red ball", "a blue square"])
    actions = torch.zeros(2, method.frames, dtype=torch.long)
    other = actions.clone()
    other[:, 2:] = VIDEO_ACTIONS.index("up")
    net = method.networks["generator"]
    a = method.rollout(net, emb, actions, torch.Generator().manual_seed(0), grad=True)
    b = method.rollout(net, emb, other, torch.Generator().manual_seed(0), grad=False)
    assert a.shape == (2, method.frames, 3, 16, 16)
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-5)
    a.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_bench_video_writes_results_with_the_issue_summary(tiny_video_root, tmp_path) -> None:
    from bench.video import main

    result = main(
        [
            "--device=cpu",
            f"--checkpoints={tiny_video_root}",
            "--models=tiny-video,tiny-video-student",  # not the shipped video model: seconds, not minutes, on CPU
            "--clips=4",
            "--long-clips=2",
            "--teacher-steps=2",
            "--student-steps=1",
            "--schedules=2-1",
            "--stream-frames=4",
            "--repeats=1",
            f"--out={tmp_path}",
        ]
    )
    for key in ("student_fps", "first_frame_ms", "ttff_speedup_vs_teacher", "drift_points", "drift_points_se"):
        assert key in result["summary"], key
    assert result["summary"]["drift_points_se"] >= 0  # two long clips: the drift has a spread to report
    # the gap to the teacher, with its error from the per-clip scores both rows keep
    clip_row = next(r for r in result["rows"] if r["model"] == "tiny-video" and r["mode"] == "clip")
    assert len(clip_row["clip_overall"]) == 4 and np.mean(clip_row["clip_overall"]) == pytest.approx(
        clip_row["quality"]["overall"], abs=1e-3
    )
    assert result["summary"]["gap_points"] == pytest.approx(
        100 * (result["summary"]["teacher_overall"] - result["summary"]["student_overall"]), abs=0.01
    )
    assert result["summary"]["gap_points_se"] >= 0
    # work before the first frame: the teacher's every step over all 16 frames, the student's first chunk only
    assert clip_row["first_frame_work"] == clip_row["nfe"] * 16
    stream_row = next(r for r in result["rows"] if r["model"] == "tiny-video-student" and r["schedule"] == "uniform 1")
    student_dir = tiny_video_root / "tiny-video-student"
    chunk = json.loads((student_dir / "transformer" / "config.json").read_text())["chunk"]
    cfg = 2 if (json.loads((student_dir / "card.json").read_text()).get("default_guidance") or 1) > 1 else 1
    assert stream_row["first_frame_work"] == 1 * cfg * chunk  # one step on the first chunk
    assert result["summary"]["ttff_work_ratio"] == round(clip_row["first_frame_work"] / stream_row["first_frame_work"], 1)
    schedules = {(r["model"], r["schedule"]) for r in result["rows"]}
    assert ("tiny-video-student", "diagonal 2-1") in schedules and ("tiny-video", "uniform 2") in schedules
    long = result["long_horizon"]["tiny-video-student"]
    assert long["frames"] == 216 and len(long["frame_score_by_16"]) == 14
    assert len(result["two_users_fps"]["tiny-video-student"]) == 2 and min(result["two_users_fps"]["tiny-video-student"]) > 0
    assert (tmp_path / "video-cpu.md").read_text().count("tiny-video") >= 3
    json.loads((tmp_path / "video-cpu.json").read_text())


def test_bench_video_combines_runs_cut_short_into_one_summary(tiny_video_root, tmp_path) -> None:
    """A GPU lease may end between models: one run measured the teacher, a later one the student. --combine
    adds them up (same device and settings only) and summarises them as one run would have."""
    from bench.video import main

    common = ["--device=cpu", f"--checkpoints={tiny_video_root}", "--clips=4", "--long-clips=1", "--teacher-steps=2"]
    common += ["--student-steps=1", "--schedules=2-1", "--stream-frames=4", "--repeats=1"]
    teacher = main([*common, "--models=tiny-video", f"--out={tmp_path / 'a'}"])
    student = main([*common, "--models=tiny-video-student", f"--out={tmp_path / 'b'}"])
    assert "ttff_speedup_vs_teacher" not in student["summary"]  # alone, the student run has no teacher to compare to
    parts = [tmp_path / "a" / "video-cpu.json", tmp_path / "b" / "video-cpu.json"]
    result = main(["--device=cpu", f"--checkpoints={tiny_video_root}", "--combine", *map(str, parts), f"--out={tmp_path}"])
    assert result["rows"] == teacher["rows"] + student["rows"]  # nothing lost, nothing counted twice
    summary = result["summary"]
    assert summary["teacher_ttff_ms"] == teacher["summary"]["teacher_ttff_ms"]
    assert summary["first_frame_ms"] == student["summary"]["first_frame_ms"]
    assert summary["ttff_speedup_vs_teacher"] == round(summary["teacher_ttff_ms"] / summary["first_frame_ms"], 1)
    assert result["long_horizon"] == student["long_horizon"] and [c["models"] for c in result["combined_from"]] == [
        ["tiny-video"],
        ["tiny-video-student"],
    ]
    assert "tiny-video-student" in (tmp_path / "video-cpu.md").read_text()
    # a later file's row replaces the same row of an earlier one
    twice = [*map(str, parts), str(parts[1])]
    again = main(["--device=cpu", f"--checkpoints={tiny_video_root}", "--combine", *twice, f"--out={tmp_path}"])
    assert again["rows"] == result["rows"]

    other = json.loads(parts[1].read_text()) | {"notes": "8 held-out clips"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "image.json").write_text(json.dumps({"suite": "image", "rows": []}))
    for bad, message in [
        (tmp_path / "other.json", "differs from .* in notes"),
        (tmp_path / "image.json", "is not a `bench video` result"),
        (tmp_path / "missing.json", "cannot read"),
    ]:
        with pytest.raises(SystemExit, match=message):
            main(["--device=cpu", "--combine", str(parts[0]), str(bad), f"--out={tmp_path / 'c'}"])
    assert not (tmp_path / "c").exists()  # a refused combination writes nothing


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--teacher-steps=4,25", "--teacher-steps '25': steps per chunk must be from 1 to 16, got 25"),
        ("--student-steps=1,x", "--student-steps 'x': invalid literal"),
        ("--teacher-steps=4-2", "--teacher-steps '4-2': invalid literal"),  # a schedule where one count belongs
        ("--schedules=4-0", "--schedules '4-0': schedule steps must be from 1 to 16, got 0"),
        # --long-clips 0 crashed in torch.cat after the first model's quality rows (the summary needs the drift)
        ("--long-clips=0", "--long-clips must be at least 1, got 0"),
        ("--clips=0", "--clips must be at least 1, got 0"),
        ("--batch=-2", "--batch must be at least 0, got -2"),
    ],
)
def test_bench_video_refuses_bad_step_counts_before_running_anything(flag, message, capsys) -> None:
    """Seen on an H200: the default --teacher-steps held 25, which VideoRequest refuses, so the run died after
    the teacher's first rows. Defaults are now valid requests, and a bad count stops the run at parse time."""
    from bench.video import parse

    assert parse([]).teacher_steps == "4,8,16"
    with pytest.raises(SystemExit):
        parse([flag])
    assert message in capsys.readouterr().err


def test_unknown_or_unavailable_video_backends_are_refused(video_registry) -> None:
    from engines.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="choose one of: torch, compiled"):
        video_registry.engine("tiny-video-student", "onnx")
    with pytest.raises(BackendUnavailable, match="CUDA GPU only"):
        video_registry.engine("tiny-video-student", "compiled")


def test_mp4_without_imageio_ffmpeg_is_refused_clearly(video_registry, tmp_path, monkeypatch) -> None:
    """Seen on a machine without imageio-ffmpeg: imageio chose its TIFF plugin for .mp4 and failed with a
    TypeError about 'fps'. Now the writer is named and its absence explained."""
    import sys

    from engines.errors import BackendUnavailable
    from engines.video import frames_to_pil, write_mp4

    frames = frames_to_pil(torch.zeros(2, 3, 8, 8))
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(BackendUnavailable, match="imageio-ffmpeg"):
        write_mp4(frames, tmp_path / "clip.mp4")
    assert not (tmp_path / "clip.mp4").exists()
    monkeypatch.delitem(sys.modules, "imageio_ffmpeg")
    assert write_mp4(frames, tmp_path / "clip.mp4").stat().st_size > 0


def test_a_stream_outlives_its_engine_being_evicted(tiny_video_root) -> None:
    """Two users, a cache of one: loading another model evicts (unloads) the engine a stream is using.
    The running stream keeps its network and finishes every frame; the evicted engine is unloaded."""
    registry = Registry([tiny_video_root], device="cpu", cache_size=1)
    student = registry.engine("tiny-video-student")
    with one_thread():
        stream = student.stream(VideoRequest("a red ball bouncing to the right", seed=3, frames=8, steps=1))
        first = next(stream)
        registry.engine("tiny-video")  # the other user's model: evicts the student
        assert student.network is None and registry.loaded() == [("tiny-video", "torch")]
        rest = list(stream)
    assert first.frame_index == 0 and [r.frame_index for r in rest] == list(range(1, 8))
    assert rest[-1].final and len(rest[-1].frames) == 8
    again = registry.engine("tiny-video-student")  # reloads cleanly
    assert again is not student and again.network is not None


def test_bench_video_runs_teachers_then_the_streaming_model_then_the_rest() -> None:
    from types import SimpleNamespace

    from bench.video import bench_order

    cards = [SimpleNamespace(id=i, role=r) for i, r in [("old", "student"), ("new", "student"), ("t", "teacher")]]
    assert bench_order(cards, "new") == ["t", "new", "old"]
    assert bench_order(cards, None) == ["t", "old", "new"]  # no streamer: the given order after the teachers


def test_re_dmd_weights_rollouts_by_the_motion_judge(tiny_video_root, tmp_path, monkeypatch) -> None:
    """Re-DMD (reward_beta > 0): the same rollout and DMD target as plain Self-Forcing, each clip's loss weighted by
    exp(beta r) / mean; equal rewards give plain DMD's loss, unequal ones another; a run logs its mean reward."""
    from engines.text_encoder import TextEncoder
    from trainer.loop import train
    from trainer.methods.self_forcing import SelfForcing

    teacher = f"--teacher={tiny_video_root / 'tiny-video'}"
    encoder = TextEncoder(device="cpu")

    def loss_of(method: SelfForcing) -> torch.Tensor:
        batch = method.data_source()(0, 0, 0)
        networks = method.networks
        return method.loss("generator", networks, batch, torch.Generator().manual_seed(5))[0]

    def method(*extra: str) -> SelfForcing:
        config = load_config(str(REPO / "configs" / "tiny-self-forcing-cpu.yaml"), [teacher, *extra])
        torch.manual_seed(0)
        return SelfForcing(config, torch.device("cpu"), encoder)

    plain = loss_of(method())
    rewarded = method("--method_config.reward_beta=2.0")
    judged = rewarded.rewards(torch.zeros(2, 4, 3, 16, 16), rewarded.data_source()(0, 0, 0)["clips"])
    assert judged.shape == (2,) and ((judged >= 0) & (judged <= 1)).all()
    monkeypatch.setattr(rewarded, "rewards", lambda clip, clips: torch.full((clip.shape[0],), 0.5))
    assert torch.allclose(loss_of(rewarded), plain)
    monkeypatch.setattr(rewarded, "rewards", lambda clip, clips: torch.tensor([1.0, 0.0]))
    assert not torch.allclose(loss_of(rewarded), plain)

    run = tmp_path / "re-dmd"
    train(
        load_config(
            str(REPO / "configs" / "tiny-self-forcing-cpu.yaml"), [teacher, f"--run_dir={run}", "--method_config.reward_beta=1.0"]
        )
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in records if "reward" in r]
    assert rewards and all(0.0 <= r <= 1.0 for r in rewards)
    assert all(math.isfinite(r["loss/dmd"]) for r in records if "loss/dmd" in r)
    evaluation = next(r for r in records if "eval/overall" in r)
    assert evaluation["eval/objects_vs_named"] >= 0  # the training evaluation shows dropped movers too


def test_re_dmd_settings_are_checked(tiny_video_root, tmp_path) -> None:
    from trainer.loop import train

    base = [f"--teacher={tiny_video_root / 'tiny-video'}", f"--run_dir={tmp_path / 'run'}"]
    config = str(REPO / "configs" / "tiny-self-forcing-cpu.yaml")
    with pytest.raises(ConfigError, match="reward_beta must be a finite number"):
        train(load_config(config, [*base, "--method_config.reward_beta=.inf"]))
    with pytest.raises(ConfigError, match="reward_categories must be among"):
        train(load_config(config, [*base, "--method_config.reward_categories=[speed, sharpness]"]))
    with pytest.raises(ConfigError, match="reward_workers must be >= 0"):
        train(load_config(config, [*base, "--method_config.reward_workers=-2"]))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before a step ran
