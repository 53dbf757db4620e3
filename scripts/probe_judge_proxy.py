"""Is the judge proxy (trainer/judge_proxy.py) a reading of the judge, and does following its gradient fix shapes?

Two questions, before any GPU time is spent on it:

    PYTHONPATH=. python scripts/probe_judge_proxy.py agree CACHE_DIR [CACHE_DIR ...] [--proxy DIR] [--prompts 560]
    PYTHONPATH=. python scripts/probe_judge_proxy.py descend CACHE_DIR [--through-teacher DIR] [--png F] [--out F]

`agree` reads the images an earlier `bench image --cache DIR` run kept (as `probe_judge_failures.py` does) and sets
the proxy's verdict (`judge_proxy.proxy_accepts`) and loss beside the judge's: how often each accepts, how often
they disagree, and the proxy's mean loss on the images the judge rejects and accepts. A proxy whose loss does not
separate the two gives DMD2 nothing to follow.

`descend` takes images the judge rejects and runs Adam on their pixels against the proxy loss, then judges them
again: if the judge now accepts them, the proxy's gradient draws the asked shapes; if only the proxy does, it is
fooled by a pattern no shape makes (adversarial pixels), and a generator trained against it could learn that
pattern instead. `--through-teacher DIR` makes the proxy read the teacher's clean estimate of the image noised to
`--sigma`, so only what survives the teacher's denoising counts (as a DMD gradient sees an image).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.image_cache import cached_pixels
from engines.card import load_card
from engines.features import load_feature_network
from engines.text_encoder import TextEncoder
from trainer import distill, judge_proxy
from trainer.networks import load_network
from trainer.worlds import shapes


def agreement(pixels: np.ndarray, conditions: list, proxy) -> dict[str, float]:
    """Judge and proxy verdicts on (N, H, W, 3) uint8 images for their conditions, and the proxy's mean loss on the
    images the judge rejects and accepts."""
    judged = shapes.verdicts(pixels, conditions).astype(bool)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    targets = judge_proxy.condition_targets(conditions)
    with torch.no_grad():
        accepted = judge_proxy.proxy_accepts(proxy, images, targets).numpy()
        loss = judge_proxy.proxy_loss(proxy, images, targets).numpy()
    mean = lambda values: float(values.mean()) if len(values) else float("nan")  # noqa: E731
    return {
        "judge": float(judged.mean()),
        "proxy": float(accepted.mean()),
        "proxy_only": float((accepted & ~judged).mean()),
        "judge_only": float((judged & ~accepted).mean()),
        "loss_judge_rejects": mean(loss[~judged]),
        "loss_judge_accepts": mean(loss[judged]),
    }


def descend(
    pixels: np.ndarray,
    conditions: list,
    proxy,
    steps: int,
    lr: float,
    teacher=None,
    sigma: float = 0.5,
    encoder=None,
    captions: list[str] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, list[float]]:
    """Adam on the images' pixels against the proxy loss, `steps` times: the images it ends with (uint8) and the mean
    loss per step. With `teacher`, the proxy reads the teacher's clean estimate of the image noised to `sigma` (a
    fresh noise each step), as a generator's DMD gradient sees it, so only changes that survive the teacher's
    denoising count."""
    targets = judge_proxy.condition_targets(conditions)
    start = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    image = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=lr)
    rng = torch.Generator().manual_seed(seed)
    emb = encoder.encode(captions) if teacher is not None else None
    losses = []
    for _ in range(steps):
        read = image.clamp(-1, 1)
        if teacher is not None:
            level = torch.full((len(read),), sigma)
            read = distill.predict_x0(teacher, distill.add_noise(read, torch.randn(read.shape, generator=rng), level), level, emb)
        loss = judge_proxy.proxy_loss(proxy, read.clamp(-1, 1), targets).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 4))
    return shapes.to_uint8((image.detach().clamp(-1, 1) + 1) / 2), losses


def descend_report(args: argparse.Namespace) -> dict:
    """Pixel descent on the images of a bench cache the judge rejects: do they pass the judge afterwards?"""
    scenes = shapes.eval_scenes(args.prompts)
    conditions = [scene.condition for scene in scenes]
    pixels = cached_pixels(args.cache, len(conditions))
    rejected = np.flatnonzero(~shapes.verdicts(pixels, conditions).astype(bool))[: args.images]
    chosen = [conditions[i] for i in rejected]
    proxy = load_feature_network(args.proxy).requires_grad_(False)
    teacher = encoder = None
    if args.through_teacher:
        teacher = load_network(args.through_teacher).eval().requires_grad_(False)
        card = load_card(args.through_teacher)
        encoder = TextEncoder(card.text_encoder.get("path") or card.text_encoder.get("package"), device="cpu")
    started = time.perf_counter()
    after, losses = descend(
        pixels[rejected], chosen, proxy, args.steps, args.lr, teacher, args.sigma, encoder, [scenes[i].caption for i in rejected]
    )
    images = torch.from_numpy(after).permute(0, 3, 1, 2).float() / 127.5 - 1
    result = {
        "cache": args.cache.name,
        "images": len(rejected),
        "steps": args.steps,
        "lr": args.lr,
        "through_teacher": str(args.through_teacher) if args.through_teacher else None,
        "sigma": args.sigma if args.through_teacher else None,
        "proxy_loss_first_last": [losses[0], losses[-1]],
        "judge_accepts_after": float(shapes.verdicts(after, chosen).mean()),
        "proxy_accepts_after": float(
            judge_proxy.proxy_accepts(proxy, images, judge_proxy.condition_targets(chosen)).float().mean()
        ),
        "mean_abs_pixel_change": float(np.abs(after.astype(np.float32) - pixels[rejected].astype(np.float32)).mean() / 127.5),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.png:
        strip = lambda batch: np.concatenate(list(batch[:12]), axis=1)  # noqa: E731
        Image.fromarray(np.concatenate([strip(pixels[rejected]), strip(after)], axis=0)).resize(
            (12 * 64 * 2, 2 * 64 * 2), Image.NEAREST
        ).save(args.png)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    agree = sub.add_parser("agree", help="the proxy's verdicts beside the judge's on a bench cache's images")
    agree.add_argument("caches", nargs="+", type=Path)
    agree.add_argument("--prompts", type=int, default=560, help="the prompt count the bench ran with")
    down = sub.add_parser("descend", help="pixel descent against the proxy on images the judge rejects; judged after")
    down.add_argument("cache", type=Path, help="a bench cache folder of one model and step count")
    down.add_argument("--prompts", type=int, default=560, help="the prompt count the bench ran with")
    down.add_argument("--images", type=int, default=80, help="how many of the rejected images")
    down.add_argument("--steps", type=int, default=60)
    down.add_argument("--lr", type=float, default=0.01)
    down.add_argument("--through-teacher", type=Path, default=None, help="a teacher checkpoint the proxy reads through")
    down.add_argument("--sigma", type=float, default=0.5, help="the noise level of the teacher's reading")
    down.add_argument("--png", type=Path, default=None, help="write 12 images before (top) and after (bottom) here")
    down.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    for command in (agree, down):
        command.add_argument("--proxy", type=Path, default=Path("checkpoints/shapes-judge-proxy"))
    args = parser.parse_args(argv)
    if args.command == "agree":
        conditions = [scene.condition for scene in shapes.eval_scenes(args.prompts)]
        proxy = load_feature_network(args.proxy)
        for directory in args.caches:
            pixels = cached_pixels(directory, len(conditions))
            print(
                directory.name, json.dumps({k: round(v, 3) for k, v in agreement(pixels, conditions, proxy).items()}), flush=True
            )
        return
    if args.steps < 1 or args.images < 1 or not 0 < args.sigma < 1:
        parser.error("--steps and --images must be at least 1, --sigma in (0, 1)")
    result = descend_report(args)
    print(json.dumps(result), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
