"""The Video tab and its live stream: the newest-frame slot under back-pressure, stopping and freeing streams
(Stop, a closed generator, an idle viewer), two users at once, steering and actions mid-stream, the MP4, every
bad input as a clear message, and the tab inside the studio.

Slot mechanics run on a fake engine (exact frame counts, no model); the rest on the tiny video teacher and
student trained once per session (`tiny_video_root`), which make frames in about 10 ms each on one thread.
"""

import copy
import threading
import time

import gradio as gr
import pytest
from PIL import Image

from engines.requests import VideoRequest
from engines.results import Result, Timings
from studio.app import StudioSettings, build_ui
from studio.live_stream import LiveStream
from studio.video_tab import (
    DIAGONAL,
    NO_MODEL,
    NOT_STREAMING,
    UNIFORM,
    VideoHandlers,
    VideoSession,
    diagonal_schedule,
    model_choices,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TEACHER, STUDENT = "tiny-video", "tiny-video-student"
PROMPT = "a red ball bouncing to the right"
SETTINGS = StudioSettings(device="cpu", video_display_fps=100.0)  # poll fast: the tests wait less


class FakeEngine:
    """Stands in for VideoEngine: frame i is a 4x4 grey image of level i, made every `delay` s; it records when
    its stream is closed (the real engine frees its KV cache there) and can fail after `fail_after` frames."""

    streaming = True

    def __init__(self, delay: float = 0.0, fail_after: int | None = None) -> None:
        self.delay, self.fail_after = delay, fail_after
        self.closed = threading.Event()

    def stream(self, request, controls=None):
        try:
            index = 0
            while request.frames == 0 or index < request.frames:
                if self.fail_after is not None and index == self.fail_after:
                    raise RuntimeError("the fake engine broke (pretend)")
                if self.delay:
                    time.sleep(self.delay)
                final = index == request.frames - 1
                timings = Timings(run_ms=3.0 * (index + 1))
                image = Image.new("L", (4, 4), index % 256)
                yield Result([image], 7, index + 1, request.frames, timings, final, "fake", frame_index=index)
                index += 1
                if controls is not None and controls.stop.is_set():
                    return
        finally:
            self.closed.set()


def wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def handlers(video_registry):
    video_registry.engine(STUDENT)  # load once up front (the text encoder dominates)
    return VideoHandlers(video_registry, SETTINGS)


SESSIONS: list[VideoSession] = []


@pytest.fixture(autouse=True)
def close_sessions():
    """Every session a test streamed in is closed afterwards: streams stopped, temporary MP4s deleted."""
    yield
    while SESSIONS:
        SESSIONS.pop().close()


def start(handlers, session=None, prompt=PROMPT, model=STUDENT, seed=3, steps=None, schedule=UNIFORM, frames=8, endless=False):
    session = session if session is not None else VideoSession()
    SESSIONS.append(session)
    return handlers.start(session, prompt, model, seed, steps, schedule, frames, endless)


def frames_of(outputs) -> list[Image.Image]:
    return [frame for frame, _, _ in outputs if isinstance(frame, Image.Image)]


# ---------------------------------------------------------------------- the slot
def test_a_slow_viewer_gets_the_newest_frame_and_the_rest_count_as_dropped():
    engine = FakeEngine(delay=0.001)
    live = LiveStream(engine, VideoRequest(PROMPT, frames=200)).start()
    seen = []
    while not live.done:
        result = live.latest(timeout=0.5)
        if result is not None:
            seen.append(result)
            time.sleep(0.02)  # a viewer that takes 20 ms a frame, the engine makes one every ~1 ms
    stats = live.stats()
    indices = [r.frame_index for r in seen]
    assert indices == sorted(set(indices))  # never a stale or repeated frame
    assert indices[-1] == 199  # the viewer ends on the newest frame, not on a backlog
    assert stats.made == 200 and stats.shown == len(seen) < 200
    assert stats.dropped == stats.made - stats.shown > 0  # every frame was either shown or counted as dropped
    assert [r.dropped for r in seen] == sorted(r.dropped for r in seen) and seen[-1].dropped == stats.dropped
    assert stats.first_frame_ms == 3.0 and stats.fps > 0 and stats.made_fps > stats.fps
    assert len(live.frames()) == 200  # the MP4 gets every frame made, dropped ones included
    assert engine.closed.is_set() and not live.running and live.stop_reason == "finished"


def test_the_slot_holds_one_frame_however_far_behind_the_viewer_is():
    live = LiveStream(FakeEngine(), VideoRequest(PROMPT, frames=50)).start()
    wait_for(lambda: not live.running, what="the stream to finish")
    result = live.latest()
    assert result.frame_index == 49 and result.dropped == 49
    assert live.latest() is None and live.done  # nothing older was queued behind it


def test_stop_ends_the_thread_promptly_and_frees_the_stream():
    engine = FakeEngine(delay=0.002)
    live = LiveStream(engine, VideoRequest(PROMPT, frames=0)).start()
    assert live.latest(timeout=5.0) is not None
    began = time.perf_counter()
    assert live.stop(timeout=2.0)
    assert time.perf_counter() - began < 0.5
    assert engine.closed.is_set() and not live.running and live._thread is not None and not live._thread.is_alive()
    assert live.controls.stop.is_set() and live.stop_reason == "stopped"
    made = live.stats().made
    time.sleep(0.05)
    assert live.stats().made == made  # nothing more is made once stopped


def test_a_viewer_that_stops_polling_stops_the_stream():
    engine = FakeEngine(delay=0.001)
    live = LiveStream(engine, VideoRequest(PROMPT, frames=0), idle_timeout=0.1).start()
    wait_for(lambda: not live.running, timeout=3.0, what="the idle stream to stop itself")
    assert engine.closed.is_set() and live.stop_reason == "idle"


def test_an_engine_failure_reaches_the_viewer():
    live = LiveStream(FakeEngine(fail_after=3), VideoRequest(PROMPT, frames=0)).start()
    wait_for(lambda: not live.running, what="the failing stream to end")
    assert isinstance(live.error, RuntimeError) and live.stop_reason == "error"
    assert live.latest().frame_index == 2 and live.done


def test_a_stream_starts_once():
    live = LiveStream(FakeEngine(), VideoRequest(PROMPT, frames=1)).start()
    with pytest.raises(RuntimeError, match="already started"):
        live.start()
    live.stop()


# ---------------------------------------------------------------------- the real engine
def test_two_streams_at_once_both_make_frames(video_registry):
    engine = video_registry.engine(STUDENT)
    streams = [LiveStream(engine, VideoRequest(PROMPT, seed=seed, frames=0)).start() for seed in (1, 2)]
    try:
        shown = [0, 0]
        deadline = time.monotonic() + 20
        while min(shown) < 6 and time.monotonic() < deadline:
            for i, live in enumerate(streams):
                if live.latest(timeout=0.05) is not None:
                    shown[i] += 1
        assert min(shown) >= 6, shown
        assert all(live.stats().made >= 6 and live.error is None for live in streams)
        assert [live.stats().seed for live in streams] == [1, 2]  # each its own request
    finally:
        for live in streams:
            assert live.stop()


def test_steering_changes_the_prompt_of_later_chunks(video_registry, monkeypatch):
    engine = video_registry.engine(STUDENT)
    asked: list[str] = []
    embed = engine._embed

    def spy(prompt):
        asked.append(prompt)
        return embed(prompt)

    monkeypatch.setattr(engine, "_embed", spy)
    steered = "a blue square sliding up slowly"
    live = LiveStream(engine, VideoRequest(PROMPT, seed=5, frames=0)).start()
    try:
        assert live.latest(timeout=10) is not None
        live.controls.steer(steered)
        live.controls.hold("left")
        made = live.stats().made
        wait_for(lambda: live.stats().made >= made + 3 * engine.chunk, what="three more chunks")
    finally:
        assert live.stop()
    assert asked[0] == PROMPT and steered in asked
    after = asked[asked.index(steered) :]
    assert set(after) == {steered} and len(after) >= 3  # every chunk after the steer reads the new prompt
    assert steered in engine._embeddings  # encoded once, cached for the chunks that follow
    assert live.controls.snapshot() == (steered, "left")


# ---------------------------------------------------------------------- the handlers
def test_a_finite_clip_streams_then_hands_over_an_mp4(handlers):
    outputs = list(start(handlers, frames=8, seed=11))
    assert outputs[0][1] == "Starting…" and outputs[0][2] is None  # the previous clip is cleared at once
    shown = frames_of(outputs)
    assert shown and all(frame.size == (256, 256) for frame in shown)  # 16 px frames shown at 256 px, pixel-sharp
    streaming = [stats for frame, stats, _ in outputs if isinstance(frame, Image.Image)]
    assert all("**streaming**" in s and "**fps**" in s and "**first frame**" in s and "**dropped**" in s for s in streaming)
    _, stats, clip = outputs[-1]
    assert clip.endswith(".mp4") and "MP4 of 8 frames" in stats and "**frame** 8/8" in stats and "**seed** 11" in stats
    facts = ["**done**", "**shown**", f"`{STUDENT}` (student, self_forcing)", "2 steps per chunk", "**device** cpu"]
    assert [fact for fact in facts if fact not in stats] == []
    import imageio.v2 as imageio

    with imageio.get_reader(clip) as reader:
        assert sum(1 for _ in reader) == 8


def test_stop_ends_an_endless_stream_and_keeps_what_was_streamed(handlers):
    session = VideoSession()
    stream = start(handlers, session, endless=True)
    shown = 0
    for frame, stats, _ in stream:
        shown += isinstance(frame, Image.Image)
        if shown == 5:
            assert "(endless)" in stats
            VideoHandlers.stop(session)
            break
    outputs = list(stream)  # after Stop the generator finishes on its own, with the MP4
    _, stats, clip = outputs[-1]
    assert clip.endswith(".mp4") and "**stopped**" in stats and session.clip_path == clip
    assert not session.live.running and session.running() is None


def test_closing_the_generator_stops_the_engine_stream(handlers, video_registry, monkeypatch):
    """What Gradio does when the browser goes away: it closes the handler's generator."""
    engine = video_registry.engine(STUDENT)
    closed = threading.Event()
    stream = engine.stream

    def spied(request, controls=None):
        try:
            yield from stream(request, controls)
        finally:
            closed.set()

    monkeypatch.setattr(engine, "stream", spied)
    session = VideoSession()
    generator = start(handlers, session, endless=True)
    for frame, _, _ in generator:
        if isinstance(frame, Image.Image):
            break
    live = session.live
    assert live.running
    generator.close()
    assert closed.is_set() and not live.running and not live._thread.is_alive() and live.controls.stop.is_set()


def test_two_users_stream_at_once_each_with_their_own_fps(handlers):
    sessions = [VideoSession(), VideoSession()]
    generators = [start(handlers, session, seed=seed, endless=True) for seed, session in zip((1, 2), sessions)]
    shown, last = [0, 0], ["", ""]
    try:
        deadline = time.monotonic() + 20
        while min(shown) < 5 and time.monotonic() < deadline:
            for i, generator in enumerate(generators):
                frame, stats, _ = next(generator)
                shown[i] += isinstance(frame, Image.Image)
                last[i] = stats
        assert min(shown) >= 5, shown
        assert sessions[0].live is not sessions[1].live
        assert "**seed** 1" in last[0] and "**seed** 2" in last[1] and all("**fps**" in s for s in last)
    finally:
        for generator in generators:
            generator.close()
    assert all(not session.live.running for session in sessions)


def test_steer_and_arrow_keys_reach_the_running_stream(handlers):
    session = VideoSession()
    generator = start(handlers, session, endless=True)
    try:
        while not isinstance(next(generator)[0], Image.Image):
            pass
        note = handlers.steer(session, "  a blue square sliding up  ")
        assert "a blue square sliding up" in note
        handlers.hold(session, "left")
        assert session.live.controls.snapshot() == ("a blue square sliding up", "left")
        stats = next(s for frame, s, _ in generator if isinstance(frame, Image.Image))
        assert "**action** left" in stats and "a blue square sliding up" in stats
        handlers.hold(session, "none")  # key released
        assert session.live.controls.snapshot()[1] == "none"
        with pytest.raises(gr.Error, match="prompt is empty"):
            handlers.steer(session, "   ")
        with pytest.raises(gr.Error, match="unknown action 'jump'; known: none, up, down, left, right"):
            handlers.hold(session, "jump")
    finally:
        generator.close()
    with pytest.raises(gr.Error, match=NOT_STREAMING):
        handlers.steer(session, "a green triangle")
    handlers.hold(session, "up")  # keys pressed while nothing streams are ignored, quietly


def test_a_failing_engine_is_a_short_message_and_the_tab_keeps_working(handlers, video_registry, monkeypatch):
    broken = FakeEngine(fail_after=2)
    real = video_registry.engine
    monkeypatch.setattr(video_registry, "engine", lambda model_id, backend="torch": broken)
    with pytest.raises(gr.Error) as caught:
        list(start(handlers, endless=True))
    assert "RuntimeError" in caught.value.message and "still running" in caught.value.message
    assert "pretend" not in caught.value.message and broken.closed.is_set()
    monkeypatch.setattr(video_registry, "engine", real)
    assert list(start(handlers, frames=2))[-1][2].endswith(".mp4")


def test_the_teacher_hands_over_its_whole_clip(handlers):
    outputs = list(start(handlers, model=TEACHER, frames=4, steps=2))
    _, stats, clip = outputs[-1]
    assert len(frames_of(outputs)) >= 1 and clip.endswith(".mp4")
    assert f"`{TEACHER}` (teacher, video_fm)" in stats and "2 steps (whole clip)" in stats
    with pytest.warns(UserWarning, match="the diagonal schedule does not apply"):
        list(start(handlers, model=TEACHER, frames=2, schedule=DIAGONAL))


def test_the_diagonal_schedule_spends_more_steps_on_the_first_chunks(handlers):
    assert diagonal_schedule(1) == (4, 2, 1) and diagonal_schedule(2) == (8, 4, 2) and diagonal_schedule(8) == (16, 16, 8)
    assert VideoHandlers.request(PROMPT, 1, None, DIAGONAL, 8, False, default_steps=2).schedule == (8, 4, 2)
    assert VideoHandlers.request(PROMPT, 1, 3, UNIFORM, 8, True).frames == 0  # endless
    *_, (_, stats, _) = start(handlers, steps=1, schedule=DIAGONAL, frames=6)
    assert "4 → 2 → 1 steps per chunk" in stats


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "x" * 2000}, "prompt is 2000 characters long; the limit is 1000"),
        ({"frames": 5000}, "length in frames must be from 1 to 4096, got 5000; tick Endless"),
        ({"frames": 0}, "length in frames must be from 1 to 4096, got 0"),
        ({"frames": None}, "length is empty"),
        ({"steps": 0}, "steps per chunk must be from 1 to 16, got 0"),
        ({"steps": 99}, "steps per chunk must be from 1 to 16, got 99"),
        ({"schedule": "zigzag"}, "schedule must be one of: uniform, diagonal"),
        ({"seed": -1}, "seed must be from 0 to"),
        ({"model": None}, NO_MODEL),
        ({"model": "no-such-model"}, "unknown model id 'no-such-model'"),
        ({"model": TEACHER, "endless": True}, "is a bidirectional teacher: it denoises a whole clip at once"),
    ],
)
def test_bad_input_is_a_clear_message_and_the_tab_keeps_working(handlers, changes, message):
    with pytest.raises(gr.Error) as caught:
        list(start(handlers, **changes))
    assert message in caught.value.message and "Traceback" not in caught.value.message


def test_the_tab_still_serves_after_bad_input(handlers):
    with pytest.raises(gr.Error):
        list(start(handlers, frames=10_000))
    assert "MP4 of 4 frames" in list(start(handlers, frames=4))[-1][1]


# ---------------------------------------------------------------------- pickers, sessions, the studio
def test_models_are_listed_students_first_and_the_teacher_cannot_stream_endlessly(handlers, video_registry):
    choices = model_choices(video_registry)
    assert [model_id for _, model_id in choices] == [STUDENT, TEACHER]
    labels = dict((model_id, label) for label, model_id in choices)
    assert labels[STUDENT] == f"{STUDENT} · student · self_forcing · 2 steps · live"
    assert labels[TEACHER] == f"{TEACHER} · teacher · video_fm · 4 steps · whole clip"
    steps, endless = handlers.select_model(TEACHER)
    assert steps["value"] == 4 and endless == gr.update(value=False, interactive=False)
    steps, endless = handlers.select_model(STUDENT)
    assert steps["value"] == 2 and endless == gr.update(interactive=True)
    assert handlers.refresh_models(TEACHER)["value"] == TEACHER and handlers.refresh_models("gone")["value"] == STUDENT


def test_every_session_gets_a_fresh_state_and_closing_it_stops_its_stream():
    template = VideoSession()
    template.clip_path = "/nowhere.mp4"
    fresh = copy.deepcopy(template)  # what gr.State does for every new browser session
    assert fresh is not template and fresh.live is None and fresh.clip_path is None
    engine = FakeEngine(delay=0.002)
    fresh.live = LiveStream(engine, VideoRequest(PROMPT, frames=0)).start()
    fresh.close()  # gr.State's delete callback when the session ends
    assert engine.closed.is_set() and not fresh.live.running


def test_the_studio_has_a_video_tab(video_registry, tmp_path):
    from engines.registry import Registry
    from studio import video_tab

    demo = build_ui(video_registry, StudioSettings(device="cpu", train_tab=False))
    assert "stream_video" in {getattr(fn, "api_name", None) for fn in demo.fns.values()}
    tabs = [c["props"]["label"] for c in demo.config["components"] if c["type"] == "tabitem"]
    assert "Video" in tabs
    with gr.Blocks() as alone:  # the tab builds on its own too
        tab = video_tab.build(video_registry, StudioSettings(device="cpu"))
    assert isinstance(alone, gr.Blocks) and tab.model.value == STUDENT
    # No video checkpoints: the tab still builds (with a note), and Start says what is missing.
    empty = Registry([tmp_path], device="cpu")
    assert isinstance(build_ui(empty, StudioSettings(device="cpu", train_tab=False)), gr.Blocks)
    with pytest.raises(gr.Error, match="no video model is selected"):
        list(start(VideoHandlers(empty, SETTINGS), model=None))
