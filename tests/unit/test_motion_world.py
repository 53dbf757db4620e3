"""The motion world: sampling, physics, captions, rendering, and a judge that passes its own clips and fails broken ones."""

import itertools
import random
import re
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from trainer.worlds import motion as M
from trainer.worlds import shapes as S

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FRAMES = 16
OPPOSITE = {"none": "none", "up": "down", "down": "up", "left": "right", "right": "left"}


def clips_of(n: int, seed: int = 0, frames: int = FRAMES, interactive: bool = False) -> list[M.Clip]:
    rng = random.Random(seed)
    return [M.sample_clip(rng, frames, interactive=interactive) for _ in range(n)]


def make_clip(*movers: M.Mover, actions: tuple[str, ...] | None = None, interactive: bool = False) -> M.Clip:
    """A hand-made clip whose caption states everything about every mover."""
    specs = tuple(
        M.MoverSpec(
            m.shape, m.color, m.size, None if interactive and i == 0 else m.direction, m.speed, player=interactive and i == 0
        )
        for i, m in enumerate(movers)
    )
    actions = actions or ("none",) * FRAMES
    return M.Clip(tuple(movers), actions, interactive, "a hand-made clip", M.Condition(specs, interactive))


def video_of(clips: list[M.Clip], frames: int = FRAMES) -> np.ndarray:
    return M.to_uint8(M.render_clips(clips, frames))


def bounces(clip: M.Clip, frames: int = FRAMES) -> bool:
    """Does a non-player mover turn at a wall, or reach one, within the frames (so that, played backwards, it could
    be starting with a bounce)?"""
    path = M.trajectory(clip, frames)
    for j, mover in enumerate(clip.movers):
        if clip.interactive and j == 0:
            continue
        axis = 0 if mover.direction in ("left", "right") else 1
        steps = np.diff(path[:, j, axis])
        position, radius = path[-1, j, axis], path[-1, j, 2]
        if (np.sign(steps) != np.sign(steps[0])).any() or min(position - radius, 64 - radius - position) < 2 * M.SPEEDS[
            mover.speed
        ]:
            return True
    return False


@pytest.fixture(scope="module")
def eval_set() -> tuple[list[M.Clip], np.ndarray]:
    """64 held-out clips, half interactive, rendered: the judge's reference set (its fits are cached for later tests)."""
    clips = M.eval_clips(32, FRAMES) + M.eval_clips(32, FRAMES, interactive=True)
    return clips, video_of(clips)


@pytest.fixture(scope="module")
def small_set(eval_set) -> tuple[list[M.Clip], np.ndarray]:
    """18 of them (9 plain, 9 interactive: every mover count x change), for the corruption tests."""
    clips, video = eval_set
    pick = list(range(9)) + list(range(32, 41))
    return [clips[i] for i in pick], video[pick]


# ----------------------------------------------------------------------------- vocabulary and sampling


def test_world_reuses_the_shapes_vocabulary():
    assert M.RESOLUTION == S.RESOLUTION == 64
    assert M.ACTIONS == ("none", "up", "down", "left", "right")
    assert M.SPEEDS == {"slowly": 1.0, "quickly": 2.5} and M.PLAYER_SPEED == 2.0
    for clip in clips_of(100, seed=1):
        for m in clip.movers:
            assert m.shape in S.SHAPES and m.color in S.COLORS and m.size in S.SIZES


def test_sampling_is_deterministic():
    for interactive in (False, True):
        a, b = clips_of(30, seed=5, interactive=interactive), clips_of(30, seed=5, interactive=interactive)
        assert a == b
        assert torch.equal(M.render_clips(a[:4], 8), M.render_clips(b[:4], 8))
        assert clips_of(30, seed=6, interactive=interactive) != a
    assert np.array_equal(M.trajectory(a[0], FRAMES), M.trajectory(a[0], FRAMES))  # a pure function


def test_clips_hold_one_to_three_distinct_movers_that_start_apart():
    counts = Counter()
    for clip in clips_of(200, seed=2) + clips_of(100, seed=3, interactive=True):
        movers = clip.movers
        counts[len(movers)] += 1
        assert 1 <= len(movers) <= M.MAX_MOVERS
        assert len({m.shape for m in movers}) == len(movers)
        colors = [m.color for m in movers] + [m.change.to for m in movers if m.change and m.change.kind == "color"]
        assert len(set(colors)) == len(colors)  # a colour names one mover, before and after any change
        assert len(clip.actions) == FRAMES
        start = M.trajectory(clip, 1)[0]
        for i in range(len(movers)):
            for j in range(i + 1, len(movers)):
                reach = M._reach(movers[i]) + M._reach(movers[j])
                apart = np.abs(start[i, :2] - start[j, :2])
                assert apart.max() >= reach  # boxes apart in the first frame
                a, b = movers[i], movers[j]
                if a.vx and b.vx:
                    assert apart[1] >= reach  # same axis: separate lanes
                if a.vy and b.vy:
                    assert apart[0] >= reach
        for j, m in enumerate(movers):
            if clip.interactive and j == 0:
                assert (m.vx, m.vy) == (0.0, 0.0) and clip.condition.movers[0].player
            else:
                assert m.direction in M.DIRECTIONS and m.speed in M.SPEEDS
            if m.change:
                assert FRAMES // 4 <= m.change.at <= 3 * FRAMES // 4
        if not clip.interactive:
            assert set(clip.actions) == {"none"}
    assert set(counts) == {1, 2, 3}


def test_condition_states_only_what_is_true():
    for clip in clips_of(200, seed=4) + clips_of(100, seed=4, interactive=True):
        assert len(clip.condition.movers) == len(clip.movers) and clip.condition.interactive == clip.interactive
        for spec, m in zip(clip.condition.movers, clip.movers):
            assert spec.shape == m.shape
            assert spec.color in (None, m.color) and spec.size in (None, m.size)
            assert spec.direction == (None if spec.player else m.direction)
            assert spec.speed in (None, m.speed)
            assert spec.becomes == (m.change.to if m.change and m.change.kind == "color" else None)
            if spec.resize:
                step = S.SIZE_NAMES.index(m.change.to) - S.SIZE_NAMES.index(m.size)
                assert step == (1 if spec.resize == "grow" else -1)


def test_actions_change_in_runs_of_4_to_12_frames():
    for clip in clips_of(40, seed=7, frames=120, interactive=True):
        runs = [len(list(g)) for _, g in itertools.groupby(clip.actions)]
        assert clip.actions[0] != "none"  # the player shows its control from the start
        assert all(4 <= r <= 12 for r in runs[:-1]) and 1 <= runs[-1] <= 12
        assert set(clip.actions) <= set(M.ACTIONS)


def test_eval_set_is_fixed_balanced_and_held_out():
    a = M.eval_clips(18, FRAMES)
    assert a == M.eval_clips(18, FRAMES) and a != M.eval_clips(18, FRAMES, seed=7)
    kinds = Counter((len(c.movers), next((m.change.kind for m in c.movers if m.change), "none")) for c in a)
    assert set(kinds.values()) == {2} and len(kinds) == 9
    assert all(c.interactive for c in M.eval_clips(9, FRAMES, interactive=True))
    held_out = {c.caption for c in M.eval_clips(150, FRAMES) + M.eval_clips(150, FRAMES, interactive=True)}
    assert all(M.is_eval_caption(c) for c in held_out)
    trained = {c.caption for c in clips_of(1500, seed=8)}
    assert not trained & held_out and not any(M.is_eval_caption(c) for c in trained)


def test_train_batch_mixes_interactive_clips():
    rng = random.Random(0)
    assert not any(c.interactive for c in M.train_batch(rng, 20, FRAMES, interactive_fraction=0.0))
    assert all(c.interactive for c in M.train_batch(rng, 20, FRAMES, interactive_fraction=1.0))
    batch = M.train_batch(random.Random(1), 64, FRAMES)
    assert len(batch) == 64 and 4 <= sum(c.interactive for c in batch) <= 32
    assert batch == M.train_batch(random.Random(1), 64, FRAMES)


# ----------------------------------------------------------------------------- captions


def test_captions_are_varied_paraphrases():
    clips = clips_of(400, seed=9) + clips_of(200, seed=9, interactive=True)
    captions = [c.caption for c in clips]
    assert len(set(captions)) >= 0.97 * len(captions)
    text = " ".join(captions)
    for stem in ("bounc", "slid", "moving", "drift", "glid", "roll"):
        assert stem in text, stem
    for word in ("slowly", "quickly", "fast", "gently", "turn", "changing to", "grow", "shrink", "you control", "you steer"):
        assert word in text, word
    assert re.search(r"\b(crimson|scarlet|azure|cobalt|emerald)\b", text)  # the shapes world's colour synonyms
    assert len({c.split()[0] for c in captions}) > 5  # openings vary too


def test_captions_name_each_mover_and_the_player():
    for clip in clips_of(150, seed=10) + clips_of(150, seed=10, interactive=True):
        caption = clip.caption
        assert bool(re.search(r"\byour?\b", caption)) == clip.interactive
        for spec in clip.condition.movers:
            assert any(re.search(rf"\b{w}\b", caption) for w in S.SHAPES[spec.shape][0]), (spec.shape, caption)
            for color in (spec.color, spec.becomes):
                if color:
                    assert any(w in caption for w in S.COLORS[color][1]), (color, caption)


# ----------------------------------------------------------------------------- physics


def test_trajectories_stay_inside_and_bounce_over_long_clips():
    clips = clips_of(40, seed=11, frames=216)
    bounced = 0
    for clip in clips:
        path = M.trajectory(clip, 216)
        assert path.shape == (216, len(clip.movers), 4)
        x, y, r = path[..., 0], path[..., 1], path[..., 2]
        assert (x >= r - 1e-9).all() and (x <= 64 - r + 1e-9).all() and (y >= r - 1e-9).all() and (y <= 64 - r + 1e-9).all()
        for j, m in enumerate(clip.movers):
            axis = 0 if m.direction in ("left", "right") else 1
            step = np.diff(path[:, j, axis])
            resized = np.diff(path[:, j, 2]) != 0
            assert np.allclose(np.diff(path[:, j, 1 - axis])[~resized], 0)  # straight along its axis
            assert (np.abs(step[~resized]) <= M.SPEEDS[m.speed] + 1e-9).all()
            plain = np.abs(np.abs(step) - M.SPEEDS[m.speed]) < 1e-9
            assert plain.mean() > 0.8  # full speed except at a bounce
            bounced += (np.sign(step[plain]) != np.sign(step[plain][0])).any()
    assert bounced >= 30


def test_a_mover_reflects_off_the_wall():
    ball = M.Mover("circle", "red", "small", 56.0, 32.0, vx=2.5)
    xs = M.trajectory(make_clip(ball), 6)[:, 0, 0]
    assert np.allclose(xs, [56.0, 58.5, 57.0, 54.5, 52.0, 49.5])  # the wall is at 64 - 5 = 59: 61 reflects to 57


def test_the_player_follows_actions_and_stops_at_walls():
    player = M.Mover("square", "blue", "small", 8.0, 32.0)
    actions = ("left", "left", "left", "none", "right", "right", "up", "down")
    path = M.trajectory(make_clip(player, actions=actions, interactive=True), len(actions))[:, 0, :2]
    expected = [(8, 32), (6, 32), (5, 32), (5, 32), (7, 32), (9, 32), (9, 30), (9, 32)]  # held at x = r = 5
    assert np.allclose(path, expected)
    ids = M.action_ids(make_clip(player, actions=actions, interactive=True), len(actions))
    assert ids.dtype == torch.long and ids.tolist() == [M.ACTIONS.index(a) for a in actions]
    assert M.action_ids(clips_of(1)[0], 40).tolist() == [0] * 40  # not interactive: any length, all "none"
    with pytest.raises(ValueError, match="actions"):
        M.trajectory(make_clip(player, actions=actions, interactive=True), 9)


def test_changes_take_effect_at_their_frame():
    turning = M.Mover("diamond", "red", "medium", 20.0, 20.0, vx=1.0, change=M.Change("color", "blue", 5))
    growing = M.Mover("circle", "green", "medium", 32.0, 55.0, vy=1.0, change=M.Change("size", "large", 3))
    path = M.trajectory(make_clip(turning, growing), 8)
    assert path[:5, 0, 3].tolist() == [S.COLOR_NAMES.index("red")] * 5
    assert path[5:, 0, 3].tolist() == [S.COLOR_NAMES.index("blue")] * 3
    assert path[:3, 1, 2].tolist() == [7.5] * 3 and path[3:, 1, 2].tolist() == [10.5] * 5
    assert (path[:, 1, 1] <= 64 - path[:, 1, 2] + 1e-9).all()  # grown against the wall: pushed back inside


def test_mover_properties():
    assert M.Mover("circle", "red", "small", 10, 10, vx=-2.5).direction == "left"
    assert M.Mover("circle", "red", "small", 10, 10, vy=1.0).direction == "down"
    assert M.Mover("circle", "red", "small", 10, 10, vy=-1.0).speed == "slowly"
    player = M.Mover("circle", "red", "small", 10, 10)
    assert player.direction is None and player.speed is None


# ----------------------------------------------------------------------------- rendering


def test_render_shape_range_and_background():
    clips = clips_of(6, seed=12) + clips_of(2, seed=12, interactive=True)
    video = M.render_clips(clips, 5, device="cpu")
    assert video.shape == (8, 5, 3, 64, 64) and video.dtype == torch.float32
    assert video.min() >= 0 and video.max() <= 1
    background = torch.tensor(S.BACKGROUND) / 255
    empty = (video - background.view(1, 1, 3, 1, 1)).abs().amax(2) < 1e-6
    assert empty.float().mean() > 0.6  # mostly dark background


def test_render_draws_what_the_shapes_world_draws():
    clips = [c for c in clips_of(20, seed=13) if len(c.movers) == 1][:5]
    video = M.render_clips(clips, 6)
    for clip, frames in zip(clips, video):
        path = M.trajectory(clip, 6)
        for t in (0, 5):
            x, y, r, color = path[t, 0]
            size = next(s for s in S.SIZE_NAMES if S.SIZES[s][0] == r)
            obj = S.Obj(clip.movers[0].shape, S.COLOR_NAMES[int(color)], size, float(x), float(y))
            scene = S.Scene((obj,), S.Condition("single_object", ()))
            assert torch.allclose(frames[t], S.render([scene])[0], atol=1e-5)


def test_small_movers_and_the_player_are_painted_on_top():
    big = M.Mover("square", "red", "large", 32.0, 32.0)
    small = M.Mover("circle", "blue", "small", 32.0, 32.0)
    blue = torch.tensor(S.COLORS["blue"][0]) / 255
    for clip in (make_clip(big, small), make_clip(small, big), make_clip(small, big, actions=("none",) * 4, interactive=True)):
        centre = M.render_clips([clip], 1)[0, 0, :, 32, 32]
        assert torch.allclose(centre, blue, atol=1e-6)
    player = M.Mover("circle", "white", "small", 32.0, 32.0)
    centre = M.render_clips([make_clip(player, big, actions=("none",) * 4, interactive=True)], 1)[0, 0, :, 32, 32]
    assert torch.allclose(centre, torch.tensor(S.COLORS["white"][0]) / 255, atol=1e-6)


def test_rendering_is_fast_on_cpu():
    clips = M.train_batch(random.Random(14), 32, FRAMES)
    start = time.perf_counter()
    M.render_clips(clips, FRAMES)
    assert time.perf_counter() - start < 3.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rendering_256_clips_on_the_gpu_is_well_under_a_second():
    clips = M.train_batch(random.Random(15), 256, FRAMES)
    M.render_clips(clips[:8], FRAMES, device="cuda")  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    video = M.render_clips(clips, FRAMES, device="cuda")
    torch.cuda.synchronize()
    assert time.perf_counter() - start < 0.5
    assert torch.allclose(video[:4].cpu(), M.render_clips(clips[:4], FRAMES), atol=1e-5)


# ----------------------------------------------------------------------------- judge: the world's own clips


def test_judge_scores_the_worlds_own_clips_at_least_99_percent(eval_set):
    clips, video = eval_set
    scores = M.judge_clips(video, clips)
    assert set(scores) == {*M.CATEGORIES, "overall", "flicker"}
    for category in (*M.CATEGORIES, "overall"):
        assert scores[category] >= 0.99, (category, scores)
    assert scores["flicker"] < 1e-6


def test_clip_scores_are_per_clip_verdicts(small_set):
    clips, video = small_set
    per_clip = M.clip_scores(video, clips)
    assert all(v.shape == (len(clips),) for v in per_clip.values())
    assert np.isnan(per_clip["action"][:9]).all() and (per_clip["action"][9:] == 1).all()
    assert (per_clip["overall"] == 1).all()


def test_frame_scores_follow_the_movers(small_set):
    clips, video = small_set
    scores = M.frame_scores(video, clips)
    assert scores.shape == (len(clips), FRAMES) and ((scores >= 0) & (scores <= 1)).all()
    assert scores.mean() > 0.95  # below 1 only where movers overlap
    blank = np.broadcast_to(np.array(S.BACKGROUND, np.uint8), video[:2, :3].shape).copy()
    assert (M.frame_scores(blank, clips[:2]) == 0).all()
    assert M.frame_scores(video[:2, :1], clips[:2]).shape == (2, 1)  # a single frame is fine here


def test_judge_windows_of_long_clips_score_alike():
    rng = random.Random(16)
    clips = [M.sample_clip(rng, 216, interactive=i % 3 == 0) for i in range(9)]
    video = video_of(clips, 216)
    early, late = M.judge_window(video, clips, 0, 16), M.judge_window(video, clips, 200, 216)
    assert early["overall"] >= 0.95 and late["overall"] >= 0.95
    assert abs(early["overall"] - late["overall"]) <= 0.05  # the world itself does not drift
    # the per-clip verdicts behind a window's summary, for drift's standard error: they average to it
    summary, per_clip = M.window_verdicts(video, clips, 200, 216)
    assert summary == late and per_clip["overall"].shape == (len(clips),)
    assert per_clip["overall"].mean() == pytest.approx(late["overall"])
    with pytest.raises(ValueError, match="at least 2 frames"):
        M.window_verdicts(video, clips, 10, 11)


# ----------------------------------------------------------------------------- judge: broken clips fail


def test_judge_fails_swapped_colours(small_set):
    clips = small_set[0][::2]

    def swapped(clip: M.Clip) -> M.Clip:
        movers = clip.movers
        if len(movers) > 1:
            colors = [m.color for m in movers[1:] + movers[:1]]
        else:
            taken = {movers[0].color, movers[0].change.to if movers[0].change else None}
            colors = [next(c for c in S.COLOR_NAMES if c not in taken)]
        return replace(clip, movers=tuple(replace(m, color=c) for m, c in zip(movers, colors)))

    scores = M.judge_clips(video_of([swapped(c) for c in clips]), clips)
    assert scores["color"] == 0.0
    assert scores["identity"] >= 0.99 and scores["direction"] >= 0.99  # the rest of the clip is still right


def test_judge_fails_time_reversed_clips(small_set):
    clips, video = small_set
    per_clip = M.clip_scores(np.ascontiguousarray(video[:, ::-1]), clips)
    far_from_walls = [d for clip, d in zip(clips, per_clip["direction"]) if not np.isnan(d) and not bounces(clip)]
    assert len(far_from_walls) >= 3 and not any(far_from_walls)  # going backwards is plainly the wrong way
    assert np.nanmean(per_clip["direction"]) <= 0.7  # (backwards after a bounce can look like a bounce at the start)
    assert np.nanmean(per_clip["action"]) <= 0.2


def test_judge_window_judges_the_axis_not_the_sign():
    straight = [
        make_clip(
            M.Mover("circle", "red", "medium", 16.0, 20.0, vx=1.0), M.Mover("square", "blue", "small", 40.0, 50.0, vy=-1.0)
        ),
        make_clip(M.Mover("triangle", "green", "large", 45.0, 32.0, vx=-1.0)),
    ]
    video = video_of(straight)
    backwards = np.ascontiguousarray(video[:, ::-1])
    assert M.judge_clips(video, straight)["direction"] == 1.0
    assert M.judge_clips(backwards, straight)["direction"] == 0.0
    # In a window of a long clip bounces may have flipped the sign: backwards is still a consistent path...
    assert M.judge_window(backwards, straight, 0, FRAMES)["direction"] == 1.0
    # ... but not motion across the stated axis, nor none.
    across = [replace(c, movers=tuple(replace(m, vx=m.vy, vy=m.vx) for m in c.movers)) for c in straight]
    assert M.judge_window(video_of(across), straight, 0, FRAMES)["direction"] == 0.0
    assert M.judge_window(np.repeat(video[:, :1], FRAMES, axis=1), straight, 0, FRAMES)["direction"] == 0.0


def test_judge_fails_static_clips(small_set):
    clips, video = small_set
    scores = M.judge_clips(np.repeat(video[:, :1], FRAMES, axis=1), clips)
    assert scores["direction"] == 0.0 and scores["speed"] == 0.0 and scores["action"] <= 0.2


def test_judge_fails_shuffled_frames(small_set):
    clips, video = small_set
    rng = np.random.default_rng(0)
    shuffled = np.stack([v[rng.permutation(FRAMES)] for v in video])
    scores = M.judge_clips(shuffled, clips)
    assert scores["consistency"] <= 0.1 and scores["direction"] <= 0.1


def test_judge_fails_a_mover_that_vanishes(small_set):
    clips, video = small_set
    gone = video.copy()
    for i, clip in enumerate(clips):  # the last mover is gone from the middle on
        rest = video_of([replace(clip, movers=clip.movers[:-1])])[0] if len(clip.movers) > 1 else S.BACKGROUND
        gone[i, FRAMES // 2 :] = rest[FRAMES // 2 :] if len(clip.movers) > 1 else np.array(rest, np.uint8)
    assert M.judge_clips(gone, clips)["consistency"] == 0.0
    scores = M.frame_scores(gone, clips)
    assert (scores[:, FRAMES // 2 :] < 1).all() and scores[:, : FRAMES // 2].mean() > 0.95


def test_judge_fails_ignored_actions(small_set):
    clips, _ = small_set
    players = [c for c in clips if c.interactive]
    backwards = [replace(c, actions=tuple(OPPOSITE[a] for a in c.actions)) for c in players]
    idle = [replace(c, actions=("none",) * FRAMES) for c in players]
    for rendered in (backwards, idle):
        scores = M.judge_clips(video_of(rendered), players)
        assert scores["action"] <= 0.12, scores
        assert scores["identity"] >= 0.99


def test_judge_fails_wrong_speeds_and_axes(small_set):
    clips = small_set[0][::2]
    faster = {"slowly": 2.5, "quickly": 0.4}  # slow movers go quick, quick ones crawl
    swapped = [
        replace(c, movers=tuple(replace(m, vx=m.vx * faster.get(m.speed, 1), vy=m.vy * faster.get(m.speed, 1)) for m in c.movers))
        for c in clips
    ]
    assert M.judge_clips(video_of(swapped), clips)["speed"] == 0.0
    rotated = [replace(c, movers=tuple(replace(m, vx=m.vy, vy=m.vx) for m in c.movers)) for c in clips]
    assert M.judge_clips(video_of(rotated), clips)["direction"] == 0.0


def test_judge_fails_noise_and_blank_frames(small_set):
    clips, video = small_set
    clips, shape = clips[::3], (6, 8, 64, 64, 3)
    noise = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    blank = np.broadcast_to(np.array(S.BACKGROUND, np.uint8), shape).copy()
    for frames in (noise, blank):
        scores = M.judge_clips(frames, clips)
        assert all(v == 0.0 for k, v in scores.items() if k != "flicker"), scores
    assert M.judge_clips(noise, clips)["flicker"] > 0.2 and M.judge_clips(blank, clips)["flicker"] == 0.0


def test_flicker_measures_a_shimmering_background(small_set):
    clips, video = small_set
    video = video[:2, :6]
    shimmer = np.random.default_rng(2).integers(-8, 9, video.shape)
    noisy = np.clip(video.astype(int) + shimmer, 0, 255).astype(np.uint8)
    assert M.judge_clips(noisy, clips[:2])["flicker"] > 0.01 > M.judge_clips(video, clips[:2])["flicker"]


# ----------------------------------------------------------------------------- bad input


def test_judge_rejects_bad_input(small_set):
    clips, video = small_set
    with pytest.raises(ValueError, match="uint8"):
        M.judge_clips(video.astype(np.float32), clips)
    with pytest.raises(ValueError, match="shape"):
        M.judge_clips(video.transpose(0, 1, 4, 2, 3), clips)
    with pytest.raises(ValueError, match="numpy"):
        M.judge_clips(torch.from_numpy(video), clips)
    with pytest.raises(ValueError, match="clips to judge"):
        M.judge_clips(video, clips[:-1])
    with pytest.raises(ValueError, match="at least 2 frames"):
        M.judge_clips(video[:, :1], clips)
    with pytest.raises(ValueError, match="Clip"):
        M.judge_clips(video[:1], ["a red ball moving left"])
    with pytest.raises(ValueError, match="start < stop"):
        M.judge_window(video, clips, 10, 10)
    with pytest.raises(ValueError, match="start < stop"):
        M.judge_window(video, clips, 0, FRAMES + 1)
    with pytest.raises(ValueError, match="actions"):  # an interactive clip has no actions beyond its frames
        long = np.concatenate([video, video], axis=1)
        M.judge_clips(long[9:], clips[9:])


@pytest.mark.parametrize("frames", [0, -3, 1.5, True])
def test_bad_frame_counts_are_refused(frames):
    clip = clips_of(1)[0]
    for call in (
        lambda: M.sample_clip(random.Random(0), frames),
        lambda: M.trajectory(clip, frames),
        lambda: M.render_clips([clip], frames),
        lambda: M.action_ids(clip, frames),
        lambda: M.eval_clips(2, frames),
        lambda: M.train_batch(random.Random(0), 2, frames),
    ):
        with pytest.raises(ValueError, match="frames must be a positive integer"):
            call()


def test_bad_arguments_are_refused():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="split"):
        M.sample_clip(rng, FRAMES, split="test")
    with pytest.raises(ValueError, match="n_movers"):
        M.sample_clip(rng, FRAMES, n_movers=4)
    with pytest.raises(ValueError, match="change_kind"):
        M.sample_clip(rng, FRAMES, change_kind="spin")
    with pytest.raises(ValueError, match="interactive_fraction"):
        M.train_batch(rng, 4, FRAMES, interactive_fraction=1.5)
    with pytest.raises(ValueError, match="batch"):
        M.train_batch(rng, 0, FRAMES)
    with pytest.raises(ValueError, match="at least one clip"):
        M.render_clips([], FRAMES)
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        M.to_uint8(torch.zeros(2, 3, 64, 64))
    one = M.sample_clip(rng, 1)  # a single frame is a valid (still) clip
    assert len(one.actions) == 1 and M.render_clips([one], 1).shape == (1, 1, 3, 64, 64)


# ----------------------------------------------------------------------------- speeds and rewards (Re-DMD)


def test_mover_speeds_read_the_stated_speeds_of_the_worlds_own_clips(small_set):
    clips, video = small_set
    readings = M.mover_speeds(video, clips)
    stated = [m.speed for c in clips for m in c.condition.movers if m.speed and m.direction]
    assert [s for s, _ in readings] == stated and len(stated) >= 5
    bands = {"slowly": (M.MIN_SPEED, M.SPEED_SPLIT), "quickly": (M.SPEED_SPLIT, M.MAX_SPEED)}
    for name, measured in readings:  # in the judge's band (a bounce shortens a step, so not always exactly the speed)
        assert bands[name][0] <= measured <= bands[name][1], (name, measured)
    assert np.median([m for s, m in readings if s == "slowly"]) == pytest.approx(M.SPEEDS["slowly"], abs=0.1)


def test_mover_speeds_of_a_frozen_clip_are_zero_and_of_noise_untracked(small_set):
    clips, video = small_set
    frozen = np.ascontiguousarray(np.repeat(video[:, :1], FRAMES, axis=1))
    assert all(m == 0.0 for _, m in M.mover_speeds(frozen, clips))
    noise = np.random.default_rng(0).integers(0, 256, video.shape, dtype=np.uint8)
    assert all(np.isnan(m) for _, m in M.mover_speeds(noise, clips))


def test_motion_rewards_score_motion_and_fall_back_to_overall(small_set):
    clips, video = small_set
    assert (M.motion_rewards(video, clips) == 1).all()
    frozen = np.ascontiguousarray(np.repeat(video[:, :1], FRAMES, axis=1))
    rewards = M.motion_rewards(frozen, clips)
    assert rewards.dtype == np.float32 and rewards.shape == (len(clips),) and (rewards == 0).all()  # nothing moves
    # a clip with no stated speed: ("speed",) falls back to the clip's overall verdict
    per_clip = M.clip_scores(frozen, clips)
    speed_only = M.motion_rewards(frozen, clips, ("speed",))
    unstated = np.isnan(per_clip["speed"])
    assert unstated.any() and np.allclose(speed_only[unstated], per_clip["overall"][unstated])
    with pytest.raises(ValueError, match="reward categories must be among"):
        M.motion_rewards(video, clips, ("speed", "sharpness"))
    with pytest.raises(ValueError, match="reward categories"):
        M.motion_rewards(video, clips, ())


def test_objects_per_frame_counts_the_named_movers_and_sees_merges(small_set):
    clips, video = small_set
    seen = M.objects_per_frame(video)
    named = np.array([len(c.condition.movers) for c in clips])
    assert seen.shape == video.shape[:2] and seen.dtype == np.int64
    assert (np.median(seen, axis=1) == named).all()  # the world draws every mover (overlaps aside)
    only_first = video.copy()
    two = [i for i, n in enumerate(named) if n >= 2]
    background = np.array(S.BACKGROUND, np.uint8)
    for i in two:  # paint the frames blank but the first mover: one object where the caption names several
        lone = M.render_clips([replace(clips[i], movers=clips[i].movers[:1])], FRAMES)
        only_first[i] = M.to_uint8(lone)[0]
    assert (np.median(M.objects_per_frame(only_first)[two], axis=1) == 1).all()
    assert M.objects_vs_named(video, clips) == 1.0
    expected = np.mean([1 / n if i in two else 1.0 for i, n in enumerate(named)])
    assert M.objects_vs_named(only_first, clips) == pytest.approx(expected) and expected < 0.9
    assert (M.objects_per_frame(np.broadcast_to(background, video[:1].shape).copy()) == 0).all()
    with pytest.raises(ValueError, match="uint8"):
        M.objects_per_frame(video.astype(np.float32))
