"""The world's judge on many samples at once, for reward-weighted training.

Judges are NumPy, SciPy and small torch ops on the CPU: a student's motion clip takes ~35 ms (16 frames of blob
detection; ~90 ms before session 16 sped the template fit up) on this repository's 2-core CPU, so judging a 32-clip
batch in the training process would stall the GPU for about a second every generator step. `JudgePool(workers)`
splits the batch over spawned worker processes (spawn, not fork: the trainer holds a CUDA context); `workers=0`
judges in-process, as the CPU tests and small runs do.

Each worker runs torch on one thread. The workers are the parallelism; left at torch's default, twelve workers on a
16-core machine would each spin 16 OpenMP threads over the detector's small tensor ops. (Session 27: a GPU probe
judging with 12 workers, OMP_NUM_THREADS unset, stalled for over six minutes before its first report; the training
runs, which set OMP_NUM_THREADS=2, never did. Session 28 ran the same probe with 12 one-thread workers, the
rest unchanged: it judged six sets of 512 images in a 206 s call. Oversubscription was the likely cause.)
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
            self._executor = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=_one_thread)
            weakref.finalize(self, self._executor.shutdown, cancel_futures=True)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None


def _one_thread() -> None:
    """A worker's initializer: torch on one thread (the pool's processes are the parallelism)."""
    import torch

    torch.set_num_threads(1)


def worker_threads(samples: np.ndarray, items: Sequence) -> np.ndarray:
    """A judge that reports, per item, how many threads torch uses where it runs (checks the workers' setting)."""
    import torch

    return np.full(len(items), torch.get_num_threads())
