"""The training loop under two CPU processes (gloo), as `accelerate launch` runs it: a time budget read from one
clock. Each rank reading its own would stop at a different step, leaving the other blocked in DDP's all-reduce, and
with lr_clock "time" would step with a different learning rate. Here rank 1's clock runs 2.5x faster than rank 0's."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.multiprocessing as mp

from tests.integration.conftest import TINY

SECONDS_PER_STEP = (10.0, 25.0)  # rank 0, rank 1: a one-minute budget is 6 steps by rank 0's clock, 3 by rank 1's


def _train_rank(rank: int, port: int, run_dir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    import trainer.loop as loop
    from trainer.config import load_config

    now = [0.0]
    loop.time = SimpleNamespace(perf_counter=lambda: now[0])
    used: list[tuple[int, float]] = []
    schedule = loop.lr_at

    def recording_lr_at(config, step, time_progress=0.0):
        lr = schedule(config, step, time_progress)
        used.append((step, lr))
        return lr

    loop.lr_at = recording_lr_at

    def tick(_step: int) -> None:
        now[0] += SECONDS_PER_STEP[rank]

    args = [*TINY, f"--run_dir={run_dir}", "--max_steps=1000", "--warmup_steps=0", "--max_minutes=1", "--lr_clock=time"]
    summary = loop.train(load_config(None, [*args, "--eval_prompts=7"]), on_step=tick)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"step": summary["step"], "lrs": used}))


def test_ranks_stop_together_and_share_the_time_clocked_lr(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(
        _train_rank, args=(port, str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    try:
        for _ in range(150):  # each join waits up to a second (the run takes ~15 s); a deadlock fails, not hangs
            if context.join(timeout=1):
                break
        else:
            pytest.fail("the two ranks did not finish in 150 s: one is waiting for the other (deadlock)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 6  # rank 0's clock decides for both
    assert ranks[0]["lrs"] == ranks[1]["lrs"] and len(ranks[0]["lrs"]) == 6
    lrs = [lr for _, lr in ranks[0]["lrs"]]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # the decay follows rank 0's clock
