"""What engines return: the output, the seed used, and where the time went."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Timings:
    load_ms: float = 0.0  # loading the engine, when this call had to load it
    encode_ms: float = 0.0  # conditioning (text encoding)
    run_ms: float = 0.0  # denoising and decoding, up to this result
    nfe: int = 0  # network function evaluations so far (a CFG step counts 2)

    @property
    def total_ms(self) -> float:
        return self.load_ms + self.encode_ms + self.run_ms


@dataclass(frozen=True)
class Result:
    """One state of a generation. `final` is True for the finished output."""

    images: list[Any]  # PIL images (image modality); empty for text
    seed: int
    step: int
    total_steps: int
    timings: Timings = field(default_factory=Timings)
    final: bool = False
    model_id: str = ""
    backend: str = "torch"
    # text: the decoded answer, the canvas as token strings ("[MASK]" where still masked) and the
    # step at which each answer token was committed (-1: still masked)
    text: str = ""
    canvas: tuple[str, ...] = ()
    committed_step: tuple[int, ...] = ()
    # video: the frame this result shows (0-based), frames the viewer skipped because it lagged,
    # and, on a finished clip, every frame and the MP4 written
    frame_index: int = -1
    dropped: int = 0
    frames: tuple[Any, ...] = ()
    video_path: str = ""
