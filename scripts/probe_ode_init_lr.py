"""Does Self-Forcing's ODE initialisation lower its own loss at a given learning rate? (CPU; fp32, or --bf16)

On an H200 (bf16, batch 32, lr 1e-4 after 50 warm-up steps) the logged ODE loss went 0.0035 -> 0.0088 -> 0.0187
over 150 steps (bench/results/device/motion-ode-init-h200-metrics.jsonl); those were single steps (the loop
logged the last step's loss, not its window's mean), and each step draws one step count k for its whole batch.
This trains the shipped teacher's causal copy on a small pair set at each learning rate from the same start and
reports the loss on three fixed batches (same clips, steps and noise) every quarter of the run, so only the
student changes between readings. Those batches come from the pairs it trains on (memorising them lowers the
loss too); --held-out N also reads N pairs of another caption stream it never trains on. The first and last
readings are also given per step count k (`by_steps`), the spread a single logged step can land anywhere in.

  PYTHONPATH=. python scripts/probe_ode_init_lr.py --lrs 1e-4,1e-5 --steps 40 --held-out 8
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from engines.text_encoder import TextEncoder
from trainer.config import load_config
from trainer.methods.self_forcing import SelfForcing
from trainer.ode_pairs import run_pair_set


def fixed_loss(method: SelfForcing, generator, batch: int, bf16: bool, pairs=None, steps=None, draws: int = 3) -> float:
    """The mean ODE loss over `draws` fixed batches of `pairs` (the training set if None), with the
    step count drawn from `steps` (the config's if None)."""
    kept = method.pairs, method.args.student_steps
    method.pairs, method.args.student_steps = pairs or method.pairs, steps or method.args.student_steps
    try:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            losses = [method.ode_loss(generator, batch, torch.Generator().manual_seed(s)).item() for s in range(draws)]
    finally:
        method.pairs, method.args.student_steps = kept
    return sum(losses) / draws


def by_steps(method: SelfForcing, generator, batch: int, bf16: bool, pairs=None) -> dict[int, float]:
    return {k: round(fixed_loss(method, generator, batch, bf16, pairs, [k]), 5) for k in method.args.student_steps}


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
    parser.add_argument("--held-out", type=int, default=0, metavar="N", help="also read N pairs it never trains on")
    parser.add_argument("--bf16", action="store_true", help="losses under bfloat16 autocast, as the GPU run trained")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    args = parser.parse_args(argv)
    if args.steps < 4 or args.batch < 1 or args.pairs < args.batch or args.held_out < 0:
        parser.error("need --steps >= 4, --batch >= 1, --pairs >= --batch and --held-out >= 0")
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
    held_out = None
    if args.held_out:  # the same recipe from another caption stream and other noise seeds, in its own run dir
        unseen = copy.deepcopy(config)
        unseen.seed, unseen.run_dir = config.seed + 1000, f"{args.run_dir}/held-out"
        held_out = run_pair_set(
            unseen,
            method.teacher,
            method.text_encoder,
            torch.device("cpu"),
            steps=args.pair_steps,
            guidance=method.guidance,
            count=args.held_out,
            frames=method.frames,
            interactive_fraction=method.interactive_fraction,
        )
    generator = method.networks["generator"]
    start = copy.deepcopy(generator.state_dict())
    n = 2 * args.batch  # clips per fixed batch (drawn with replacement, so a small held-out set serves too)

    def read() -> tuple[float, float | None]:
        train_loss = fixed_loss(method, generator, n, args.bf16)
        return train_loss, held_out and fixed_loss(method, generator, n, args.bf16, held_out)

    results = []
    for lr in lrs:
        generator.load_state_dict(start)
        optimizer = torch.optim.AdamW(
            generator.parameters(), lr=lr, betas=(0.9, config.adam_beta2), weight_decay=config.weight_decay
        )
        rng = torch.Generator().manual_seed(1)
        start_by_steps = by_steps(method, generator, n, args.bf16, held_out)
        readings = [read()]
        for step in range(args.steps):
            with torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
                loss = method.ode_loss(generator, args.batch, rng)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if (step + 1) % (args.steps // 4) == 0:
                readings.append(read())
        result = {"lr": lr, "fixed_batch_loss": [round(r[0], 5) for r in readings]}
        if held_out:
            result["held_out_loss"] = [round(r[1], 5) for r in readings]
        result["by_steps"] = {"start": start_by_steps, "end": by_steps(method, generator, n, args.bf16, held_out)}
        results.append(result)
        print(f"lr {lr:g}: fixed-batch ODE loss every {args.steps // 4} steps: {result['fixed_batch_loss']}", flush=True)
        if held_out:
            print(f"  on {len(held_out)} held-out pairs: {result['held_out_loss']}", flush=True)
        print(
            f"  by steps per chunk ({'held-out' if held_out else 'training'} pairs), start -> end: "
            f"{result['by_steps']['start']} -> {result['by_steps']['end']}",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
