"""ZeroGPU support: on a Hugging Face ZeroGPU Space, GPU work runs inside `spaces.GPU`; elsewhere it runs as is.

Only picklable arguments may cross into a `spaces.GPU` function (model ids, requests), so wrapped
functions reach the registry through their closure, never through their arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def gpu(fn: F, duration: int = 60) -> F:
    """`spaces.GPU(duration=...)(fn)` when the `spaces` package is importable, else `fn` unchanged."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
