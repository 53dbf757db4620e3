"""The engine contract. Streaming is the core call; `generate` is `stream` collected."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from engines.card import ModelCard
from engines.results import Result


@runtime_checkable
class Engine(Protocol):
    card: ModelCard
    backend: str

    def stream(self, request: Any) -> Iterator[Result]:
        """Yield intermediate states (previews, frames, tokens) and finally the finished output."""
        ...

    def generate(self, request: Any) -> Result:
        """The finished output of `stream`."""
        ...

    def unload(self) -> None:
        """Release weights (and GPU memory)."""
        ...


def collect(stream: Iterator[Result]) -> Result:
    """Run a stream to its end and return the final result."""
    last: Result | None = None
    for result in stream:
        last = result
    if last is None or not last.final:
        raise RuntimeError("engine stream ended without a final result")
    return last
