"""A live video stream decoupled from its viewer: the engine runs in a background thread and writes into a
"latest frame" slot; the viewer takes the newest frame whenever it is ready for one.

Why: a browser that renders slower than the model generates must see *now*, not a growing backlog. So the
producer never waits for the viewer: a frame still unseen when a newer one arrives is overwritten and counted
as dropped. The viewer (the Video tab's generator) polls at display rate and gets only the newest frame.

Why a thread at all: the engine's `stream()` is a generator that only advances when pulled; pulled from the
Gradio handler it would run at the browser's pace (back-pressure all the way into the model) and a slow
viewer would slow the world down. Here the model runs at its own pace and the viewer samples it.

Freeing: `stop()` sets the stream's `StreamControls.stop`, the thread closes the engine's generator (which
frees the KV cache) and ends; `stop()` waits for that, briefly. A viewer that stops polling for `idle_timeout`
seconds (a disconnect nobody reported) stops the stream too.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from engines.video import StreamControls

if TYPE_CHECKING:
    from engines.requests import VideoRequest
    from engines.results import Result

log = logging.getLogger("studio")
RATE_WINDOW_S = 2.0  # frames per second are measured over this trailing window, so they follow changes live
RECORD_ENDLESS = 1024  # an endless stream keeps its last this-many frames for the MP4 (64 s at 16 fps)
_RUNNING: weakref.WeakSet[LiveStream] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """At interpreter exit, stop streams still running: a daemon thread killed inside a torch op aborts the process."""
    for live in list(_RUNNING):
        live.stop(timeout=1.0)


@dataclass(frozen=True)
class LiveStats:
    """One viewer's view of a stream; `fps` is what this viewer is shown, `made_fps` what the model makes."""

    fps: float = 0.0
    made_fps: float = 0.0
    first_frame_ms: float | None = None  # the engine's time to the first frame (text encoding included)
    made: int = 0  # frames the engine produced
    shown: int = 0  # frames handed to the viewer
    dropped: int = 0  # frames overwritten before the viewer took them
    frame_index: int = -1  # index of the newest frame produced
    seed: int | None = None
    running: bool = False


def _rate(times: collections.deque[float], now: float) -> float:
    """Events per second over the trailing window (0 until two events are in it)."""
    while times and now - times[0] > RATE_WINDOW_S:
        times.popleft()
    if len(times) < 2:
        return 0.0
    span = max(now - times[0], times[-1] - times[0])
    return (len(times) - 1) / span if span > 0 else 0.0


class LiveStream:
    """Runs `engine.stream(request, controls)` in a background thread; `latest()` returns the newest unseen frame.

    Thread-safe: one producer (the thread) and any number of calls to `latest`/`stats`/`stop` from others.
    Every produced frame is also recorded (a finite clip whole, an endless one its last `record` frames) so the
    viewer can download what was streamed as an MP4, at the clip's own frame rate.
    """

    def __init__(
        self,
        engine: Any,
        request: VideoRequest,
        controls: StreamControls | None = None,
        *,
        record: int | None = None,
        idle_timeout: float = 15.0,
    ) -> None:
        self.engine = engine
        self.request = request
        self.controls = controls or StreamControls()
        self.idle_timeout = idle_timeout
        self._record_limit = record if record is not None else (request.frames or RECORD_ENDLESS)
        self._frames: collections.deque = collections.deque(maxlen=max(self._record_limit, 1))
        self._cond = threading.Condition()
        self._slot: Result | None = None  # the newest frame the viewer has not taken yet
        self._made = self._shown = self._dropped = 0
        # bounded, so a stream nobody reads stats of cannot grow them; 512 events are plenty for a 2 s window
        self._made_times: collections.deque[float] = collections.deque(maxlen=512)
        self._shown_times: collections.deque[float] = collections.deque(maxlen=512)
        self._first_frame_ms: float | None = None
        self._frame_index = -1
        self._seed: int | None = None
        self._error: BaseException | None = None
        self._finished = threading.Event()
        self._ended_at: float | None = None  # frame rates of a finished stream are read as of its end
        self._last_poll = time.monotonic()
        self._thread: threading.Thread | None = None
        self.stop_reason = ""  # "", "stopped", "idle", "finished" or "error"

    # ------------------------------------------------------------------ producer
    def start(self) -> LiveStream:
        if self._thread is not None:
            raise RuntimeError("this LiveStream was already started; make a new one for a new stream")
        self._last_poll = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"live-video-{id(self):x}", daemon=True)
        _RUNNING.add(self)
        self._thread.start()
        return self

    def _run(self) -> None:
        generator = None
        try:
            generator = self.engine.stream(self.request, self.controls)
            for result in generator:
                self._put(result)
                if self.controls.stop.is_set():
                    break
                if time.monotonic() - self._last_poll > self.idle_timeout:
                    log.info("live video stream stopped: no viewer polled for %.0f s", self.idle_timeout)
                    self.stop_reason = self.stop_reason or "idle"
                    break
            else:
                self.stop_reason = self.stop_reason or "finished"
        except Exception as err:  # handed to the viewer, who turns it into a message
            self._error = err
            self.stop_reason = "error"
        finally:
            if generator is not None:
                try:
                    generator.close()  # GeneratorExit inside the engine: its cache goes now, not at garbage collection
                except Exception:  # freeing must not mask the stream's own outcome
                    log.exception("closing the video engine's stream failed")
            _RUNNING.discard(self)
            with self._cond:
                self._ended_at = time.monotonic()
                self._finished.set()
                self._cond.notify_all()

    def _put(self, result: Result) -> None:
        now = time.monotonic()
        with self._cond:
            if self._slot is not None:
                self._dropped += 1  # the viewer never saw the frame this one replaces
            self._slot = result
            self._made += 1
            self._made_times.append(now)
            self._frame_index = result.frame_index
            self._seed = result.seed
            if self._first_frame_ms is None:
                self._first_frame_ms = result.timings.run_ms
            if self._record_limit:
                self._frames.append(result.images[0])
            self._cond.notify_all()

    # ------------------------------------------------------------------ viewer
    def latest(self, timeout: float = 0.0) -> Result | None:
        """The newest frame not yet taken (its `dropped` = frames skipped so far), waiting up to `timeout` s
        for one; None when there is none (yet, or any more: see `done`)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._last_poll = time.monotonic()
            while self._slot is None and not self._finished.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            result, self._slot = self._slot, None
            if result is None:
                return None
            self._shown += 1
            self._shown_times.append(time.monotonic())
            return replace(result, dropped=self._dropped)

    @property
    def done(self) -> bool:
        """The stream has ended and its last frame has been taken."""
        with self._cond:
            return self._finished.is_set() and self._slot is None

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._finished.is_set()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def stats(self) -> LiveStats:
        with self._cond:
            now = self._ended_at if self._ended_at is not None else time.monotonic()
            return LiveStats(
                fps=_rate(self._shown_times, now),
                made_fps=_rate(self._made_times, now),
                first_frame_ms=self._first_frame_ms,
                made=self._made,
                shown=self._shown,
                dropped=self._dropped,
                frame_index=self._frame_index,
                seed=self._seed,
                running=self._thread is not None and not self._finished.is_set(),
            )

    def frames(self) -> list[Any]:
        """The recorded frames (PIL), oldest first: what the MP4 download holds."""
        with self._cond:
            return list(self._frames)

    # ------------------------------------------------------------------ stopping
    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the stream to end and wait up to `timeout` s for its thread; True once it has ended.
        The engine is asked through `controls.stop`; the thread also leaves after the frame in hand."""
        if self._thread is not None and not self._finished.is_set():
            self.stop_reason = self.stop_reason or "stopped"
        self.controls.stop.set()
        if self._thread is None:
            return True
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()
