"""Dynamic batching for the studio: requests that arrive together for the same engine and the same sampling
settings run as one batched sampling call.

Why here and not in engines/: an engine is a thread-safe, one-call unit (`ImageEngine.stream_many` samples
many requests at once); *when* to merge requests, how long to wait for company and who gets which slice is
a serving policy of this process, and on ZeroGPU the batch must run through the studio's `spaces.GPU`
wrapper (studio/gpu.py). This module never touches tensors: it groups requests, runs a batch function on
one worker thread and fans each step's per-request results out to the callers.

How a batch forms: the worker takes the oldest waiting request (so no request starves) and gathers every
waiting request with the same key (model id, backend, steps, guidance), oldest first, until the batch
holds `max_images` images or `window_ms` has passed since that oldest request arrived. Requests that
queued while the previous batch ran are therefore merged at once, without waiting again. A request
larger than `max_images` runs alone. `window_ms` = 0 turns merging off (one request per batch).
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("studio")

MAX_WINDOW_MS = 1000.0  # a longer window would add up to a second to every request's latency
_ALIVE_CHECK_S = 1.0  # how often a waiting caller checks that the worker thread still runs

# run_batch(key, requests) -> an iterator that yields, at every step, one result per request (in order)
BatchFn = Callable[[Hashable, list[Any]], Iterator[Sequence[Any]]]


@dataclass(frozen=True)
class BatchSettings:
    window_ms: float = 5.0  # how long the oldest waiting request waits for others to join it; 0 = never merge
    max_images: int = 32  # the most images one batched call samples

    def __post_init__(self) -> None:
        window = self.window_ms
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 <= window <= MAX_WINDOW_MS:
            raise ValueError(
                f"batch window must be from 0 to {MAX_WINDOW_MS:g} ms (0 turns dynamic batching off), got {window!r}"
            )
        if isinstance(self.max_images, bool) or not isinstance(self.max_images, int) or self.max_images < 1:
            raise ValueError(f"max images per batch must be a whole number of at least 1, got {self.max_images!r}")


@dataclass(frozen=True)
class Batched:
    """One result of a request, with the batch it ran in."""

    result: Any
    requests: int  # requests in the batch (1: it ran alone)
    images: int  # images in the batch
    wait_ms: float  # from submission to the start of its batch

    @property
    def others(self) -> int:
        return self.requests - 1


_DONE = object()


class Ticket:
    """A submitted request: iterate it for its results (`Batched`), in step order, until its final one."""

    def __init__(self, key: Hashable, request: Any, images: int, worker_alive: Callable[[], bool]) -> None:
        self.key, self.request, self.images = key, request, images
        self.submitted = time.monotonic()
        self.cancelled = False
        self._items: queue.SimpleQueue = queue.SimpleQueue()
        self._worker_alive = worker_alive

    def put(self, item: Batched) -> None:
        if not self.cancelled:  # a caller that left gets nothing more; the batch goes on for the others
            self._items.put(item)

    def finish(self, error: BaseException | None = None) -> None:
        self._items.put(_DONE if error is None else error)

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self) -> Iterator[Batched]:
        """Every step's result as it comes (as `Engine.stream` gives them), up to the final one. A failure of
        the batch is raised here, with its own message."""
        while True:
            item = self._get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _get(self):
        while True:
            try:
                return self._items.get(timeout=_ALIVE_CHECK_S)
            except queue.Empty:
                if not self._worker_alive():  # never hang on a worker that is gone
                    raise RuntimeError("the studio's batching worker stopped; restart the studio") from None


class Batcher:
    """Merges compatible requests into batched calls of `run_batch`, run one at a time on one worker thread
    (the only thread that calls `run_batch`, so the engine sees one batch at a time). Thread-safe."""

    def __init__(self, run_batch: BatchFn, settings: BatchSettings | None = None, name: str = "batcher") -> None:
        self.run_batch = run_batch
        self.settings = settings or BatchSettings()
        self.name = name
        self._pending: list[Ticket] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # batched calls run so far (for tests and logs)

    # ------------------------------------------------------------------ callers
    def submit(self, key: Hashable, request: Any, images: int = 1) -> Ticket:
        """Queue a request of `images` images under `key`; iterate the ticket for its results."""
        ticket = Ticket(key, request, images, self._alive)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            if self._thread is None:  # started on first use: building the UI starts no threads
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._pending.append(ticket)
            self._cond.notify_all()
        return ticket

    def stream(self, key: Hashable, request: Any, images: int = 1) -> Iterator[Batched]:
        """Submit and yield the results; a caller that stops early (a closed browser tab) cancels its ticket."""
        ticket = self.submit(key, request, images)
        try:
            yield from ticket
        finally:
            ticket.cancel()

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking requests; the worker finishes what is queued, then exits."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[Ticket] | None:
        """The next batch (oldest request first), once it is full or its window has passed; None once closed and drained."""
        window_s = self.settings.window_ms / 1000
        with self._cond:
            while True:
                self._pending = [t for t in self._pending if not t.cancelled]
                if self._pending:
                    break
                if self._closed:
                    return None
                self._cond.wait()
            leader = self._pending[0]
            deadline = leader.submitted + window_s
            while True:
                batch = self._compatible(leader)
                remaining = deadline - time.monotonic()
                full = sum(t.images for t in batch) >= self.settings.max_images
                if full or window_s == 0 or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)  # woken by each new request, to check the bound
            taken = set(map(id, batch))
            self._pending = [t for t in self._pending if id(t) not in taken]
            return batch

    def _compatible(self, leader: Ticket) -> list[Ticket]:
        """The leader plus waiting requests with its key, oldest first, within the image bound."""
        if self.settings.window_ms == 0:
            return [leader]
        batch, images = [leader], leader.images
        for ticket in self._pending[1:]:
            if ticket.key == leader.key and not ticket.cancelled and images + ticket.images <= self.settings.max_images:
                batch.append(ticket)
                images += ticket.images
        return batch

    def _run(self, batch: list[Ticket]) -> None:
        """One batched call; its results fanned out, step by step. A failure fails this batch's requests only."""
        live = [t for t in batch if not t.cancelled]
        if not live:
            return
        started = time.monotonic()
        images = sum(t.images for t in live)
        waits = [(started - t.submitted) * 1000 for t in live]
        self.batches += 1
        results = None
        try:
            results = self.run_batch(live[0].key, [t.request for t in live])
            for step in results:
                if len(step) != len(live):
                    raise RuntimeError(f"a batched call returned {len(step)} results for {len(live)} requests")
                for ticket, result, wait in zip(live, step, waits):
                    ticket.put(Batched(result, len(live), images, wait))
                if all(t.cancelled for t in live):  # everyone left: stop sampling for nobody
                    log.info("%s: every caller of a batch of %d left; stopped it", self.name, len(live))
                    break
        except Exception as err:  # noqa: BLE001 - any failure goes to this batch's callers, never kills the worker
            log.info("%s: a batch of %d request(s) failed: %s: %s", self.name, len(live), type(err).__name__, err)
            for ticket in live:
                ticket.finish(_own_copy(err))
            return
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()  # a generator stopped early releases what it holds now, not at garbage collection
        for ticket in live:
            ticket.finish()


def _own_copy(err: Exception) -> Exception:
    """A copy of the exception per caller, so callers raising it in their own threads do not share one
    traceback; the message (what the user sees) is the same."""
    try:
        twin = copy.copy(err)
    except Exception:  # noqa: BLE001 - an exception class that cannot be copied is shared as it is
        return err
    twin.__cause__ = err
    return twin
