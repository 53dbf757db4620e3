"""The one thread of this process that runs CUDA-graph work (torch.compile's mode="reduce-overhead").

torch keeps its CUDA graph trees in thread-local state, set up by the first thread that records one, and
asserts when any other thread records or replays (torch/_inductor/cudagraph_trees.py, `get_obj`): seen on
the H100 when a pipeline engine's worker thread had recorded graphs and the main thread then compiled its
own. The studio serves users from many threads, so every call that may record or replay CUDA graphs goes
through `on_graph_thread`: run directly when already there, else handed to the one thread and waited for.
The caller's grad mode goes with the call (grad mode is thread-local too).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

THREAD_NAME = "distillery-cuda-graphs"
T = TypeVar("T")

_worker: concurrent.futures.ThreadPoolExecutor | None = None
_lock = threading.Lock()


def graph_worker() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide single-thread executor for CUDA-graph work (made on first use, never shut down)."""
    global _worker
    with _lock:
        if _worker is None:
            _worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        return _worker


def is_graph_thread() -> bool:
    return threading.current_thread().name.startswith(THREAD_NAME)


def on_graph_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """fn(*args, **kwargs) on the graph thread, with the caller's grad and inference modes; its result or its
    exception comes back to the caller."""
    if is_graph_thread():
        return fn(*args, **kwargs)
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def call() -> T:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(*args, **kwargs)

    return graph_worker().submit(call).result()
