"""Chunk-by-chunk training under DistributedDataParallel (two CPU processes over gloo): Self-Forcing's
rollouts and ODE regression call the student one chunk at a time through its KV cache. Those calls
must go through the DDP wrapper's forward (`VideoDiT.forward(..., cache=...)`), or each rank keeps
its own gradients and the ranks drift apart silently. The wrapped module's own `forward_chunk`, which
skips the wrapper, is the control that shows the test can tell the difference."""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from engines.video_model import build_video_network

CHUNKS = 2


def _grads_after_chunks(rank: int, through_wrapper: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)  # the same initial weights on every rank, as DDP requires
    model = build_video_network("video-tiny")
    with torch.no_grad():  # open AdaLN-Zero's gates so that every block gets gradients
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    ddp = DistributedDataParallel(model)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    chunk, res = int(model.config.chunk), int(model.config.resolution)
    states, pooled = torch.randn(2, 5, 384, generator=g), torch.randn(2, 384, generator=g)
    cache = model.new_cache(2)
    loss = 0.0
    for c in range(CHUNKS):  # several grad-carrying forwards, one backward: as a rollout does
        x = torch.randn(2, chunk, 3, res, res, generator=g)
        sigma = torch.full((2, chunk), 0.7)
        if through_wrapper:
            v = ddp(x, sigma, states, pooled, None, cache=cache, frame_index=c * chunk)
        else:
            v = model.forward_chunk(x, sigma, states, pooled, None, cache, c * chunk)
        loss = loss + v.square().mean()
        with torch.no_grad():
            model.commit_chunk(x, states, pooled, None, cache, c * chunk)
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        verdict = {}
        for through_wrapper in (True, False):
            grads = torch.cat([g.flatten() for g in _grads_after_chunks(rank, through_wrapper)])
            gathered = [torch.zeros_like(grads) for _ in range(2)]
            dist.all_gather(gathered, grads)
            verdict["wrapper" if through_wrapper else "bypass"] = {
                "equal": bool(torch.allclose(gathered[0], gathered[1], atol=1e-6)),
                "nonzero": bool(grads.abs().sum() > 0),
            }
        if rank == 0:
            with open(out, "w") as f:
                json.dump(verdict, f)
    finally:
        dist.destroy_process_group()


def test_chunk_calls_through_the_ddp_wrapper_synchronise_gradients(tmp_path) -> None:
    out = tmp_path / "verdict.json"
    mp.spawn(_worker, args=(f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2, join=True)
    verdict = json.loads(out.read_text())
    assert verdict["wrapper"] == {"equal": True, "nonzero": True}
    assert verdict["bypass"] == {"equal": False, "nonzero": True}  # the control: unsynchronised ranks
