"""Video tab: a causal student streams frames live; the viewer steers it with a new prompt or the arrow keys.

The model runs in a background thread (`studio.live_stream.LiveStream`) that writes into a "latest frame"
slot; Start's generator polls that slot at display rate and shows only the newest frame, so a lagging browser
sees the present and the stats line counts the frames it skipped. Every user has their own stream (a
`VideoSession` in `gr.State`); closing the tab or the generator stops that user's stream and frees it.

`VideoHandlers` holds the event functions (plain Python, tested directly); `build` lays out the widgets and
wires them. Every bad input is a `gr.Error` with the engine's own message.
"""

from __future__ import annotations

import contextlib
import html
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from engines.errors import CheckpointError, InvalidRequest
from engines.requests import MAX_STEPS_PER_CHUNK, MAX_VIDEO_FRAMES, VIDEO_ACTIONS, VideoRequest, as_int
from engines.video import streams
from studio.errors import user_errors
from studio.imaging import upscale
from studio.live_stream import LiveStats, LiveStream
from studio.pickers import random_seed, refreshed_picker

if TYPE_CHECKING:
    from engines.card import ModelCard
    from engines.registry import Registry
    from studio.app import StudioSettings

UNIFORM, DIAGONAL = "uniform", "diagonal"
SCHEDULES = (UNIFORM, DIAGONAL)
STATS_EVERY_S = 0.5  # while no new frame comes (a teacher denoising its whole clip), the stats still refresh
NO_MODEL = "no video model is selected; add a video checkpoint directory and press refresh on the Models tab"
NOT_STREAMING = "nothing is streaming in this tab: press Start first"
EXAMPLES = [
    "a red ball bouncing to the right, a blue square sliding up",
    "a small green triangle moves left quickly",
    "a crimson disc drifting down slowly that turns blue",
    "a red ball you control and a blue square sliding left",
]
# Arrow keys press the on-screen pad's buttons (so keys and clicks take one path to the server); releasing the
# key presses the centre button ("none"). Keys typed into a text box are left alone, and nothing happens while
# the Video tab is hidden. Registered once per page, however often the component mounts.
KEYS_JS = """
if (!window.distilleryVideoKeys) {
  window.distilleryVideoKeys = true;
  const KEYS = {ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right"};
  let held = null;
  const typing = () => {
    const el = document.activeElement;
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.isContentEditable);
  };
  const press = (action) => {
    const button = document.getElementById("video-" + action);
    if (!button || button.offsetParent === null) return false;
    button.click();
    return true;
  };
  document.addEventListener("keydown", (e) => {
    const action = KEYS[e.key];
    if (!action || typing()) return;
    if (e.repeat && action === held) { e.preventDefault(); return; }
    if (press(action)) { held = action; e.preventDefault(); }
  });
  document.addEventListener("keyup", (e) => {
    const action = KEYS[e.key];
    if (!action || action !== held) return;
    held = null;
    press("none");
    e.preventDefault();
  });
}
"""
PAD = {"up": "▲", "left": "◀", "none": "■", "right": "▶", "down": "▼"}


# ---------------------------------------------------------------------- model picker
def model_label(card: ModelCard) -> str:
    """What the picker shows: id, role, method, steps and whether it streams, so teacher and student stand apart."""
    mode = "live" if streams(card) else "whole clip"
    return f"{card.id} · {card.role} · {card.method} · {card.default_steps} step{'s' * (card.default_steps != 1)} · {mode}"


def model_choices(registry: Registry) -> list[tuple[str, str]]:
    """(label, id) pairs for the video models: students first (as `Registry.default` picks), then teachers."""
    cards = sorted(registry.cards("video"), key=lambda c: (c.role != "student", c.default_steps, c.id))
    return [(model_label(c), c.id) for c in cards]


def default_model(registry: Registry) -> ModelCard | None:
    try:
        return registry.default("video")
    except CheckpointError:
        return None


def steps_info(card: ModelCard | None) -> str:
    if card is None:
        return "no model selected"
    return f"model default: {card.default_steps}" + ("" if streams(card) else " (a teacher: for the whole clip)")


# ---------------------------------------------------------------------- requests and the stats line
def diagonal_schedule(steps: int) -> tuple[int, ...]:
    """Diagonal Distillation's asymmetric schedule: 4x then 2x the steps on the first chunks, which set the
    scene and every later frame attends to, then `steps` per chunk from there on (e.g. 1 -> (4, 2, 1))."""
    return tuple(min(MAX_STEPS_PER_CHUNK, steps * factor) for factor in (4, 2, 1))


def schedule_text(request: VideoRequest, card: ModelCard) -> str:
    if not streams(card):
        return f"{request.steps or card.default_steps} steps (whole clip)"
    if request.schedule:
        return " → ".join(map(str, request.schedule)) + " steps per chunk"
    return f"{request.steps or card.default_steps} steps per chunk"


def stats_line(stats: LiveStats, live: LiveStream, card: ModelCard, device: str, state: str, note: str = "") -> str:
    """FPS (shown to this viewer and made by the model), first-frame latency, frames dropped, and what runs."""
    request = live.request
    first = f"{stats.first_frame_ms:.0f} ms" if stats.first_frame_ms is not None else "…"
    prompt, action = live.controls.snapshot()
    length = f"/{request.frames}" if request.frames else " (endless)"
    return (
        f"**{state}**{note} · **fps** {stats.fps:.1f} shown, {stats.made_fps:.1f} made · **first frame** {first} · "
        f"**frame** {stats.frame_index + 1}{length} · **shown** {stats.shown} · **dropped** {stats.dropped} · "
        f"**action** {action or 'none'}  \n"
        f"**prompt** “{html.escape(prompt or request.prompt)}” · **seed** {stats.seed if stats.seed is not None else '…'} · "
        f"**schedule** {schedule_text(request, card)} · **model** `{card.id}` ({card.role}, {card.method}) · "
        f"**device** {device}"
    )


# ---------------------------------------------------------------------- per-user state
class VideoSession:
    """One browser tab's stream and its last MP4, kept in `gr.State` so every user has their own."""

    def __init__(self) -> None:
        self.live: LiveStream | None = None
        self.clip_path: str | None = None

    def __deepcopy__(self, memo: dict) -> VideoSession:
        # gr.State deep-copies its initial value for every new session: each gets a fresh, empty one.
        return VideoSession()

    def running(self) -> LiveStream | None:
        return self.live if self.live is not None and self.live.running else None

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()

    def new_clip_path(self) -> str:
        """A fresh temporary MP4 path; the previous clip's file goes (Gradio has its own copy by then)."""
        self.forget_clip()
        fd, path = tempfile.mkstemp(prefix="distillery-video-", suffix=".mp4")
        os.close(fd)
        self.clip_path = path
        return path

    def forget_clip(self) -> None:
        if self.clip_path:
            with contextlib.suppress(OSError):
                os.remove(self.clip_path)
            self.clip_path = None

    def close(self) -> None:
        """The session is gone (Gradio's delete callback): stop its stream, delete its clip."""
        self.stop()
        self.forget_clip()


# ---------------------------------------------------------------------- handlers
class VideoHandlers:
    """The Video tab's event functions, bound to one registry and the studio settings."""

    def __init__(self, registry: Registry, settings: StudioSettings) -> None:
        self.registry = registry
        self.settings = settings
        self.display_fps = float(settings.video_display_fps)
        self.start = user_errors(self._start)
        self.steer = user_errors(self._steer)
        self.hold = user_errors(self._hold)
        self.select_model = user_errors(self._select_model)

    @staticmethod
    def request(prompt, seed, steps, schedule, frames, endless, default_steps: int = 1) -> VideoRequest:
        """Validate the widgets' values into a VideoRequest; `default_steps` (the card's) seeds a diagonal schedule
        when the steps box is empty."""
        if schedule not in SCHEDULES:
            raise InvalidRequest(f"schedule must be one of: {', '.join(SCHEDULES)}; got {schedule!r}")
        if endless:
            frames = 0
        else:
            if frames is None:
                raise InvalidRequest("length is empty: enter a number of frames, or tick Endless to stream until Stop")
            try:
                frames = as_int("length in frames", frames, 1, MAX_VIDEO_FRAMES)
            except InvalidRequest as err:
                raise InvalidRequest(f"{err}; tick Endless to stream for longer, until you press Stop") from None
        if steps is not None:
            steps = as_int("steps per chunk", steps, 1, MAX_STEPS_PER_CHUNK)
        plan = diagonal_schedule(steps or default_steps) if schedule == DIAGONAL else None
        return VideoRequest(prompt=prompt, seed=seed, steps=steps, frames=frames, schedule=plan)

    def _start(self, session, prompt, model_id, seed, steps, schedule, frames, endless):
        """Yield (frame, stats, clip): the newest frame at display rate while the stream runs, then the MP4."""
        card = self.registry.card(model_id) if model_id else None
        request = self.request(prompt, seed, steps, schedule, frames, endless, card.default_steps if card else 1)
        if card is None:
            raise CheckpointError(NO_MODEL)
        if request.schedule and not streams(card):
            gr.Warning(f"{card.id} is a teacher: it denoises the whole clip at once, so the diagonal schedule does not apply.")
        session = session if isinstance(session, VideoSession) else VideoSession()  # API callers pass no state
        session.stop()  # Start again while streaming: the old stream makes way
        session.forget_clip()
        loading = (model_id, "torch") not in self.registry.loaded()
        yield gr.skip(), f"Loading `{model_id}`…" if loading else "Starting…", None  # the previous clip goes
        live = LiveStream(self.registry.engine(model_id), request)
        session.live = live.start()
        device = str(self.registry.device)
        try:
            yield from self._watch(live, card, device)
            if live.error is not None:
                raise live.error
            frames = live.frames()
            clip = None
            if frames:
                from engines.video import write_mp4

                clip = str(write_mp4(frames, session.new_clip_path()))
            state = "stopped" if live.stop_reason in ("stopped", "idle") else "done"
            yield gr.skip(), stats_line(live.stats(), live, card, device, state, f" · MP4 of {len(frames)} frames below"), clip
        finally:
            live.stop()  # a closed generator (browser gone, Stop of the event) ends the stream and frees its cache

    def _watch(self, live: LiveStream, card: ModelCard, device: str) -> Iterator[tuple[Any, str, Any]]:
        """Poll the slot at most `display_fps` times a second; show only the newest frame."""
        period = 1.0 / self.display_fps
        px = self.settings.display_px
        while True:
            tick = time.monotonic()
            result = live.latest(timeout=STATS_EVERY_S)
            if result is not None:
                frame = upscale(result.images[0], px)
                yield frame, stats_line(live.stats(), live, card, device, "streaming"), gr.skip()
            elif live.done:
                return
            else:
                yield gr.skip(), stats_line(live.stats(), live, card, device, "waiting for frames"), gr.skip()
            rest = period - (time.monotonic() - tick)
            if rest > 0:
                time.sleep(rest)

    @staticmethod
    def stop(session) -> None:
        """Stop this user's stream; its Start generator then hands over the MP4 of what was streamed."""
        if isinstance(session, VideoSession):
            session.stop()

    @staticmethod
    def _steer(session, prompt) -> str:
        """Change the running stream's prompt: the next chunk is generated from it, on top of the frames so far."""
        live = session.running() if isinstance(session, VideoSession) else None
        if live is None:
            raise InvalidRequest(NOT_STREAMING)
        live.controls.steer(prompt)
        return f"Steering to “{html.escape(prompt.strip())}” from the next chunk."

    @staticmethod
    def _hold(session, action: str) -> None:
        """Hold an action (arrow key or pad button) from the next chunk on; "none" releases it. Ignored while idle."""
        if action not in VIDEO_ACTIONS:
            raise InvalidRequest(f"unknown action {action!r}; known: {', '.join(VIDEO_ACTIONS)}")
        live = session.running() if isinstance(session, VideoSession) else None
        if live is not None:
            live.controls.hold(action)

    def _select_model(self, model_id):
        """New steps default and, for a teacher (it cannot stream endlessly), the Endless box off."""
        card = self.registry.card(model_id) if model_id else None
        live = card is not None and streams(card)
        endless = gr.update(interactive=True) if live else gr.update(value=False, interactive=False)
        return gr.update(value=card.default_steps if card else None, info=steps_info(card)), endless

    def refresh_models(self, current: str | None = None):
        """Dropdown choices after a registry refresh; keeps the selection when that model is still there."""
        card = default_model(self.registry)
        return refreshed_picker(model_choices(self.registry), current, card.id if card else None)

    random_seed = staticmethod(random_seed)


@dataclass
class VideoTab:
    handlers: VideoHandlers
    model: gr.Dropdown


def _pad_handler(handlers: VideoHandlers, action: str):
    def hold(session):
        return handlers.hold(session, action)

    hold.__name__ = f"hold_{action}"
    return hold


def build(registry: Registry, settings: StudioSettings) -> VideoTab:
    """Lay out the Video tab inside the current Blocks context and wire its events."""
    handlers = VideoHandlers(registry, settings)
    card = default_model(registry)
    if card is None:
        gr.Markdown(
            "**No video checkpoints found.** Train a teacher (`python -m trainer train configs/motion-teacher.yaml`), "
            "then its streaming student (`configs/motion-self-forcing.yaml`), start the studio with `--checkpoints DIR`, "
            "then press refresh on the Models tab."
        )
    live = card is not None and streams(card)
    session = gr.State(VideoSession(), delete_callback=VideoSession.close)
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", placeholder=EXAMPLES[0], lines=2, elem_id="video-prompt")
            model = gr.Dropdown(
                model_choices(registry),
                value=card.id if card else None,
                label="Model (students stream live)",
                elem_id="video-model",
            )
            with gr.Row():
                seed = gr.Number(value=0, label="Seed", precision=0, elem_id="video-seed", scale=3)
                dice = gr.Button("🎲 randomise", elem_id="video-randomise", scale=1, min_width=80)
            with gr.Row():
                steps = gr.Number(
                    value=card.default_steps if card else None,
                    label="Steps per chunk",
                    precision=0,
                    info=steps_info(card),
                    elem_id="video-steps",
                )
                schedule = gr.Radio(
                    list(SCHEDULES),
                    value=UNIFORM,
                    label="Schedule",
                    info="diagonal: 4x, 2x the steps on the first chunks, which set the scene",
                    elem_id="video-schedule",
                )
            with gr.Row():
                frames = gr.Number(
                    value=64, label="Length (frames)", precision=0, info=f"1 to {MAX_VIDEO_FRAMES}", elem_id="video-frames"
                )
                endless = gr.Checkbox(value=False, label="Endless (until Stop)", interactive=live, elem_id="video-endless")
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="video-start")
                stop = gr.Button("Stop", variant="stop", elem_id="video-stop")
            with gr.Row():
                steer_prompt = gr.Textbox(
                    label="Steer", placeholder="a new prompt, mid-stream", scale=3, elem_id="video-steer-prompt"
                )
                steer = gr.Button("Steer", scale=1, min_width=80, elem_id="video-steer")
            gr.Markdown("**Interactive**: arrow keys or these buttons move the player (the first object); ■ lets go.")
            with gr.Row(elem_id="video-pad"):
                pad = {action: gr.Button(label, min_width=40, elem_id=f"video-{action}") for action, label in PAD.items()}
            gr.HTML("", js_on_load=KEYS_JS, elem_id="video-keys")
            gr.Examples([[p] for p in EXAMPLES], inputs=[prompt], label="Example prompts")
        with gr.Column(scale=3):
            frame = gr.Image(label="Live", type="pil", format="png", interactive=False, elem_id="video-frame", height=288)
            stats = gr.Markdown("FPS, first-frame latency and dropped frames show up here.", elem_id="video-stats")
            note = gr.Markdown("", elem_id="video-steer-note")
            clip = gr.Video(label="Clip (MP4)", interactive=False, height=288, elem_id="video-clip")

    inputs = [session, prompt, model, seed, steps, schedule, frames, endless]
    start.click(
        handlers.start,
        inputs=inputs,
        outputs=[frame, stats, clip],
        api_name="stream_video",
        concurrency_limit=settings.video_streams,
        concurrency_id="video",
    )
    stop.click(VideoHandlers.stop, inputs=session, api_visibility="private", queue=False)
    run_steer = dict(fn=handlers.steer, inputs=[session, steer_prompt], outputs=note, api_visibility="private", queue=False)
    steer.click(**run_steer)
    steer_prompt.submit(**run_steer)
    for action, button in pad.items():
        button.click(_pad_handler(handlers, action), inputs=session, api_visibility="private", queue=False)
    dice.click(VideoHandlers.random_seed, outputs=seed, api_visibility="private", queue=False)
    model.change(handlers.select_model, inputs=model, outputs=[steps, endless], api_visibility="private", queue=False)
    return VideoTab(handlers, model)
