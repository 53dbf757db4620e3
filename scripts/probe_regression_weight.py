"""How hard does DMD's regression term pull against DMD itself? Gradient norms of a student's two generator terms.

`method_config.regression_weight` scales the regression loss on teacher ODE pairs (DMD2 for images,
trainer/methods/dmd2.py; Self-Forcing's DMD stage for video, trainer/methods/self_forcing.py). The paper's 0.25 was
set for LPIPS; ours is a pixel MSE, so the number does not transfer. This probe builds the config's method for a
checkpoint, draws generator steps, and reports the norm of each term's gradient with respect to the generator's
weights at weight 1, their ratio and the cosine between them, so a weight can be chosen before spending GPU time.
On CPU.

    PYTHONPATH=. python scripts/probe_regression_weight.py --set method_config.student_steps=[1]   # DMD2, 1 step
    PYTHONPATH=. python scripts/probe_regression_weight.py --config configs/motion-continue.yaml \
        --init-from checkpoints/motion-student --teacher checkpoints/motion-teacher --pairs 8 --batch 4
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from engines.text_encoder import TextEncoder
from trainer.config import load_config
from trainer.methods import method_class

PAIR_COUNT_KEY = {"dmd2": "regression_pairs", "self_forcing": "ode_pairs"}  # each method's size of its pair set


@dataclass(frozen=True)
class Pull:
    dmd_norm: float
    regression_norm: float  # at regression_weight 1
    cosine: float

    @property
    def ratio(self) -> float:
        return self.regression_norm / self.dmd_norm

    def __str__(self) -> str:
        return (
            f"grad norm dmd {self.dmd_norm:.4g}, regression (weight 1) {self.regression_norm:.4g}, "
            f"ratio {self.ratio:.3f}, cosine {self.cosine:.2f}"
        )


def pulls(method, batch: dict, seed: int) -> Pull:
    """The two terms' gradients from the same draw of one generator step (the method's weight is restored)."""
    params = [p for p in method.networks["generator"].parameters() if p.requires_grad]
    weight = method.args.regression_weight

    def grads(w: float) -> list[torch.Tensor]:
        method.args.regression_weight = w
        loss, _ = method.loss("generator", method.networks, batch, torch.Generator().manual_seed(seed))
        return [g.float() for g in torch.autograd.grad(loss, params)]

    try:
        dmd, both = grads(0.0), grads(1.0)
    finally:
        method.args.regression_weight = weight
    regression = [b - d for b, d in zip(both, dmd)]
    norm = lambda gs: float(torch.sqrt(sum((g**2).sum() for g in gs)))  # noqa: E731
    dot = float(sum((a * b).sum() for a, b in zip(dmd, regression)))
    return Pull(norm(dmd), norm(regression), dot / (norm(dmd) * norm(regression)))


def main(argv: list[str] | None = None) -> list[Pull]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shapes-dmd2.yaml")
    parser.add_argument("--init-from", default="checkpoints/shapes-dmd2")
    parser.add_argument("--teacher", default="checkpoints/shapes-teacher")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--run-dir", default="runs/probe-regression-weight")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    args = parser.parse_args(argv)
    if min(args.pairs, args.batch, args.draws) < 1:
        parser.error("need --pairs, --batch and --draws >= 1")
    method_name = load_config(args.config).method
    if method_name not in PAIR_COUNT_KEY:
        parser.error(f"{args.config} trains {method_name!r}, which has no regression term ({', '.join(PAIR_COUNT_KEY)} do)")
    overrides = [
        "--device=cpu",
        "--mixed_precision=no",
        f"--teacher={args.teacher}",
        f"--init_from={args.init_from}",
        f"--run_dir={args.run_dir}",
        f"--batch_size={args.batch}",
        "--method_config.regression_weight=1.0",
        f"--method_config.{PAIR_COUNT_KEY[method_name]}={args.pairs}",
        *(f"--{kv}" for kv in args.set),
    ]
    config = load_config(args.config, overrides)
    torch.manual_seed(config.seed)
    encoder = TextEncoder(device="cpu", max_tokens=config.max_tokens)
    method = method_class(config.method)(config, torch.device("cpu"), encoder)
    batch = method.data_source()(0, 0, 0)
    found = []
    for draw in range(args.draws):
        found.append(pulls(method, batch, draw))
        print(f"draw {draw}: {found[-1]}", flush=True)
    return found


if __name__ == "__main__":
    main()
