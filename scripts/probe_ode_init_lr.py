"""Does Self-Forcing's ODE initialisation lower its own loss at a given learning rate? (CPU; fp32, or --bf16)

On an H200 (bf16, batch 32, lr 1e-4 after 50 warm-up steps) the logged ODE loss rose 0.0035 -> 0.0088 -> 0.0187
over 150 steps (bench/results/device/motion-ode-init-h200-metrics.jsonl). This trains the shipped teacher's
causal copy on a small pair set at each learning rate from the same start and reports the loss on three fixed
batches (same clips, steps and noise) every quarter of the run, so only the student changes between readings.
The fixed batches are drawn from the pairs it trains on: with a small set, memorising them lowers the loss too.

  PYTHONPATH=. python scripts/probe_ode_init_lr.py --lrs 1e-4,1e-5 --steps 40
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from engines.text_encoder import TextEncoder
from trainer.config import load_config
from trainer.methods.self_forcing import SelfForcing


def fixed_loss(method: SelfForcing, generator, batch: int, bf16: bool, draws: int = 3) -> float:
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        return sum(method.ode_loss(generator, batch, torch.Generator().manual_seed(s)).item() for s in range(draws)) / draws


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/motion-ode-init.yaml")
    parser.add_argument("--teacher", default="checkpoints/motion-teacher")
    parser.add_argument("--lrs", default="1e-4,1e-5")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--pair-steps", type=int, default=8)
    parser.add_argument("--run-dir", default="/tmp/probe-ode-init-lr")
    parser.add_argument("--bf16", action="store_true", help="losses under bfloat16 autocast, as the GPU run trained")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    args = parser.parse_args(argv)
    if args.steps < 4 or args.batch < 1 or args.pairs < args.batch:
        parser.error("need --steps >= 4, --batch >= 1 and --pairs >= --batch")
    lrs = [float(x) for x in args.lrs.split(",")]
    config = load_config(
        args.config,
        [
            f"--teacher={args.teacher}",
            "--device=cpu",
            "--mixed_precision=no",
            f"--method_config.ode_pairs={args.pairs}",
            f"--method_config.ode_pair_steps={args.pair_steps}",
            f"--run_dir={args.run_dir}",
            *(f"--{item}" for item in args.set),
        ],
    )
    started = time.perf_counter()
    method = SelfForcing(config, torch.device("cpu"), TextEncoder(max_tokens=config.max_tokens))
    print(f"{args.pairs} pairs ({args.pair_steps} teacher steps) in {time.perf_counter() - started:.0f} s", flush=True)
    generator = method.networks["generator"]
    start = copy.deepcopy(generator.state_dict())
    results = []
    for lr in lrs:
        generator.load_state_dict(start)
        optimizer = torch.optim.AdamW(
            generator.parameters(), lr=lr, betas=(0.9, config.adam_beta2), weight_decay=config.weight_decay
        )
        rng = torch.Generator().manual_seed(1)
        readings = [fixed_loss(method, generator, 2 * args.batch, args.bf16)]
        for step in range(args.steps):
            with torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
                loss = method.ode_loss(generator, args.batch, rng)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if (step + 1) % (args.steps // 4) == 0:
                readings.append(fixed_loss(method, generator, 2 * args.batch, args.bf16))
        results.append({"lr": lr, "fixed_batch_loss": [round(r, 5) for r in readings]})
        print(f"lr {lr:g}: fixed-batch ODE loss every {args.steps // 4} steps: {results[-1]['fixed_batch_loss']}", flush=True)
    return results


if __name__ == "__main__":
    main()
