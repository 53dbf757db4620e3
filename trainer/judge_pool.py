"""The world's judge on many samples at once, for reward-weighted training.

Judges are NumPy, SciPy and small torch ops on the CPU: a student's motion clip takes ~35 ms (16 frames of blob
detection; ~90 ms before session 16 sped the template fit up) on this repository's 2-core CPU, so judging a 32-clip
batch in the training process would stall the GPU for about a second every generator step. `JudgePool(workers)`
splits the batch over spawned worker processes (spawn, not fork: the trainer holds a CUDA context); `workers=0`
judges in-process, as the CPU tests and small runs do.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np


class JudgePool:
    def __init__(self, workers: int = 0) -> None:
        if workers < 0:
            raise ValueError(f"judge workers must be >= 0, got {workers}")
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def __call__(self, judge: Callable[..., np.ndarray], samples: np.ndarray, items: Sequence, *args) -> np.ndarray:
        """judge(samples[i:j], items[i:j], *args) over pieces of the batch, concatenated in order. `judge` must be a
        module-level function (workers import it by name)."""
        if len(samples) != len(items):
            raise ValueError(f"{len(samples)} samples but {len(items)} conditions to judge them against")
        pieces = min(self.workers, len(items))
        if pieces <= 1:
            return np.asarray(judge(samples, items, *args))
        bounds = np.linspace(0, len(items), pieces + 1).round().astype(int)
        futures = [self._pool().submit(judge, samples[a:b], list(items[a:b]), *args) for a, b in zip(bounds[:-1], bounds[1:])]
        return np.concatenate([np.asarray(f.result()) for f in futures])

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
            weakref.finalize(self, self._executor.shutdown, cancel_futures=True)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None
