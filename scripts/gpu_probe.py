"""Throughput probe on the lent GPU: eager vs torch.compile for the teacher config, a few seconds each."""

import time

import torch

from engines.text_encoder import TextEncoder
from trainer.config import load_config
from trainer.methods.flow_matching import FlowMatching

device = torch.device("cuda")
te = TextEncoder(device=device)
for compile_ in (False, True):
    for bs in (256, 512):
        cfg = load_config("configs/shapes-teacher.yaml", [f"--batch_size={bs}"])
        m = FlowMatching(cfg, device, te)
        net = m.networks["model"].to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        run = torch.compile(net) if compile_ else net
        g = torch.Generator(device=device).manual_seed(0)
        t0 = time.perf_counter()
        for i in range(60):
            if i == 10:
                torch.cuda.synchronize()
                t1 = time.perf_counter()
            b = m.batch(i, 0, 0)
            with torch.autocast("cuda", torch.bfloat16):
                losses, _ = m.losses({"model": run}, b, g)
            losses["model"].backward()
            opt.step()
            opt.zero_grad()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        print(
            f"compile={compile_} bs={bs}: first10 {t1 - t0:.1f}s, {50 / (t2 - t1):.1f} it/s, {50 * bs / (t2 - t1):.0f} img/s",
            flush=True,
        )
        # where does the time go: data vs model
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        for i in range(20):
            b = m.batch(i, 0, 0)
            te.encode(b["captions"])
        torch.cuda.synchronize()
        print(f"   data+text only: {(time.perf_counter() - t3) / 20 * 1000:.1f} ms/batch", flush=True)
