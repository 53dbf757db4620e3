"""Train the shapes-world feature network that Fréchet distances are measured with.

    python -m trainer.train_features --out checkpoints/shapes-features   # the shipped recipe, ~5 min on 2 cores

A ~320 k-parameter CNN (engines/features.py) learns attribute heads from world renders: which
(colour, shape) pairs are present, how many objects there are, which sizes are present, plus
colour and shape presence alone (helpers that get the pair head off its prior). Its pooled
penultimate activations are the FD features. It trains on CPU in a few minutes:

- Data: scenes from `shapes.sample_scene` with their own seeded stream, rendered on the CPU by
  `shapes.render` and quantised to uint8 as generated images are. Rendering costs about as much
  as a training step per image, so each chunk of fresh renders is seen `passes` times (random
  horizontal flips, which keep every label: the world is left-right symmetric). A few blank
  backgrounds teach the count head "0", which generators can produce and the world never does.
- No noise or blur augmentation on purpose: the features must stay sensitive to exactly the
  artefacts FD is meant to catch. The judge proxy (`--role judge-proxy`, `trainer/judge_proxy.py`) is the
  other use of this recipe: a second network with its own seed, whose label heads a generator is trained
  against. It takes `--noise-std`: Gaussian pixel noise on half its images, so it reads a noisy, half-drawn
  shape by its shape rather than by its texture, and its input gradients point at shapes.
- Held-out accuracy per head on `shapes.eval_scenes` (never trained on: a different seed stream)
  goes into features.json and README.md beside the weights; features.json, not card.json, so the
  engine registry does not try to serve it.

A run is short enough that it does not checkpoint or resume; it is seeded end to end, so running
it again gives the same data, order and initialisation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.features import CARD_FILE, ShapesFeatureConfig, ShapesFeatureNet, as_model_input, fid_features, frechet_distance
from trainer.worlds import shapes

BLANK = shapes.Scene((), shapes.Condition("blank", ()))  # background only: zero objects
ROLES = {
    "fd-features": "Feature network for Fréchet distances on shapes-world images (engines/features.py): "
    "a CNN attribute classifier whose globally pooled penultimate activations are the FD features.",
    "judge-proxy": "Judge proxy for shapes-world images (trainer/judge_proxy.py): a CNN attribute classifier, "
    "trained apart from the FD network (its own seed, noise augmentation), whose label heads give generators a "
    "differentiable reading of what a caption asks. Not for Fréchet distances: the FD network is shapes-features.",
}


@dataclass(frozen=True)
class FeatureTrainConfig:
    out: Path = Path("checkpoints/shapes-features")
    id: str = "shapes-features"
    steps: int = 1400
    batch_size: int = 128
    chunk: int = 4096  # fresh renders per chunk; each chunk is trained on `passes` times
    passes: int = 3
    blank_fraction: float = 0.02
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 40
    seed: int = 0
    eval_scenes: int = 2000
    eval_seed: int = 2024  # shapes.eval_scenes' default: the held-out scenes the image bench prompts with
    fd_scenes: int = 500  # per set, for the reference distances recorded in the card
    max_minutes: float = 0.0  # stop early after this much wall time (0: no limit); the card records the steps done
    role: str = "fd-features"  # or "judge-proxy": what the card says the network is for (ROLES)
    noise_std: float = 0.0  # > 0: half of each batch gets Gaussian pixel noise of std uniform in [0, noise_std]
    log_every: int = 50


# ----------------------------------------------------------------------------- data


def scene_labels(scenes: list[shapes.Scene]) -> dict[str, torch.Tensor]:
    """Targets of the heads: pairs (B, colours*shapes), sizes (B, sizes), colors (B, colours) and
    shapes (B, shapes) multi-hot; count (B,) int."""
    pairs = torch.zeros(len(scenes), len(shapes.COLOR_NAMES) * len(shapes.SHAPE_NAMES))
    sizes = torch.zeros(len(scenes), len(shapes.SIZE_NAMES))
    count = torch.zeros(len(scenes), dtype=torch.long)
    for i, scene in enumerate(scenes):
        count[i] = len(scene.objects)
        for obj in scene.objects:
            pairs[i, shapes.COLOR_NAMES.index(obj.color) * len(shapes.SHAPE_NAMES) + shapes.SHAPE_NAMES.index(obj.shape)] = 1
            sizes[i, shapes.SIZE_NAMES.index(obj.size)] = 1
    grid = pairs.view(len(scenes), len(shapes.COLOR_NAMES), len(shapes.SHAPE_NAMES))
    return {"pairs": pairs, "count": count, "sizes": sizes, "colors": grid.amax(dim=2), "shapes": grid.amax(dim=1)}


def render_uint8(scenes: list[shapes.Scene], batch: int = 1024) -> np.ndarray:
    """World renders as (B, 64, 64, 3) uint8: the form generated images are judged and measured in."""
    return np.concatenate([shapes.to_uint8(shapes.render(scenes[i : i + batch])) for i in range(0, len(scenes), batch)])


def training_chunk(cfg: FeatureTrainConfig, index: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Chunk `index` of the training stream: fixed by (seed, index), so a rerun sees the same data."""
    rng = shapes.step_rng(cfg.seed, 0, index)
    scenes = [BLANK if rng.random() < cfg.blank_fraction else shapes.sample_scene(rng) for _ in range(cfg.chunk)]
    return render_uint8(scenes), scene_labels(scenes)


# ----------------------------------------------------------------------------- model, loss, evaluation


def new_network(seed: int) -> ShapesFeatureNet:
    config = ShapesFeatureConfig(
        image_size=shapes.RESOLUTION,
        color_names=shapes.COLOR_NAMES,
        shape_names=shapes.SHAPE_NAMES,
        size_names=shapes.SIZE_NAMES,
        max_objects=shapes.MAX_OBJECTS,
    )
    torch.manual_seed(seed)  # nn.init draws from the global generator; seed it so the start repeats
    return ShapesFeatureNet(config)


def losses(model: ShapesFeatureNet, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-head losses on (B, 3, 64, 64) images: BCE for the multi-label heads, CE for the count.

    BCE is summed over an image's labels, not averaged: averaged over 40 mostly-absent pairs, the
    pair head's gradient is too small next to the count's for the shared body to learn colours
    and shapes at all (a first run predicted "nothing present" for every pair)."""
    out = model(images)
    bce = lambda logits, target: nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(target)
    return {
        "pairs": bce(out.pair_logits, labels["pairs"]),
        "count": nn.functional.cross_entropy(out.count_logits, labels["count"]),
        "sizes": bce(out.size_logits, labels["sizes"]),
        "colors": bce(out.color_logits, labels["colors"]),
        "shapes": bce(out.shape_logits, labels["shapes"]),
    }


@torch.no_grad()
def evaluate_heads(model: ShapesFeatureNet, scenes: list[shapes.Scene], batch_size: int = 500) -> dict[str, float]:
    """Accuracy of each head on rendered `scenes`. Per-label accuracies of the multi-label heads
    are flattered by the many absent labels, so the exact-set accuracy (every label of the image
    right) is reported beside them; `all_heads` = pairs, count and sizes all right."""
    model.eval()
    labels = scene_labels(scenes)
    x = as_model_input(render_uint8(scenes))
    outs = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    ok = {
        name: (torch.cat([getattr(o, f"{attr}_logits") for o in outs]) > 0) == labels[name].bool()
        for name, attr in (("pairs", "pair"), ("sizes", "size"), ("colors", "color"), ("shapes", "shape"))
    }
    count_ok = torch.cat([o.count_logits for o in outs]).argmax(dim=1) == labels["count"]
    return {
        "pairs_exact": ok["pairs"].all(dim=1).float().mean().item(),
        "pairs_per_label": ok["pairs"].float().mean().item(),
        "count": count_ok.float().mean().item(),
        "sizes_exact": ok["sizes"].all(dim=1).float().mean().item(),
        "sizes_per_label": ok["sizes"].float().mean().item(),
        "colors_exact": ok["colors"].all(dim=1).float().mean().item(),
        "shapes_exact": ok["shapes"].all(dim=1).float().mean().item(),
        "all_heads": (ok["pairs"].all(dim=1) & ok["sizes"].all(dim=1) & count_ok).float().mean().item(),
    }


def reference_distances(model: ShapesFeatureNet, n: int) -> dict[str, float]:
    """What FD values mean for this network: two disjoint sets of real renders (near 0) and real
    renders against uniform noise images (far)."""
    real_a = fid_features(model, render_uint8(shapes.eval_scenes(n, seed=1)))
    real_b = fid_features(model, render_uint8(shapes.eval_scenes(n, seed=2)))
    noise = torch.Generator().manual_seed(3)
    noisy = fid_features(model, torch.rand(n, 3, shapes.RESOLUTION, shapes.RESOLUTION, generator=noise) * 2 - 1)
    return {
        f"real_vs_real_{n}": frechet_distance(real_a, real_b),
        f"real_vs_uniform_noise_{n}": frechet_distance(real_a, noisy),
    }


# ----------------------------------------------------------------------------- loop


def noised(x: torch.Tensor, noise_std: float, generator: torch.Generator) -> torch.Tensor:
    """Half the images (at random) plus Gaussian noise of a per-image std uniform in [0, noise_std]."""
    b = x.shape[0]
    std = noise_std * torch.rand(b, generator=generator) * (torch.rand(b, generator=generator) < 0.5)
    return x + std[:, None, None, None] * torch.randn(x.shape, generator=generator)


def learning_rate(cfg: FeatureTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to zero at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(cfg: FeatureTrainConfig) -> dict:
    """Train, evaluate and write the checkpoint directory; returns the card (features.json)."""
    started = time.perf_counter()
    model = new_network(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = torch.Generator().manual_seed(cfg.seed)
    per_chunk = cfg.chunk * cfg.passes // cfg.batch_size
    if per_chunk < 1:
        raise ValueError(f"chunk * passes ({cfg.chunk} * {cfg.passes}) must hold at least one batch of {cfg.batch_size}")
    step, chunk_index, renders, render_s = 0, 0, 0, 0.0
    history: list[dict] = []
    model.train()
    while step < cfg.steps:
        t0 = time.perf_counter()
        images, labels = training_chunk(cfg, chunk_index)
        render_s += time.perf_counter() - t0
        chunk_index, renders = chunk_index + 1, renders + len(images)
        x_all = as_model_input(images)
        # Each pass is a fresh permutation of the chunk; batches never straddle chunks.
        indices = torch.cat([torch.randperm(len(images), generator=order) for _ in range(cfg.passes)])
        for b in range(min(per_chunk, cfg.steps - step)):
            pick = indices[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x = x_all[pick]
            flip = torch.rand(cfg.batch_size, generator=order) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            if cfg.noise_std > 0:
                x = noised(x, cfg.noise_std, order)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step)
            parts = losses(model, x, {k: v[pick] for k, v in labels.items()})
            loss = sum(parts.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                entry = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()}}
                entry["seconds"] = round(time.perf_counter() - started, 1)
                history.append(entry)
                print(json.dumps(entry), flush=True)
            if cfg.max_minutes and time.perf_counter() - started > cfg.max_minutes * 60:
                break
        if cfg.max_minutes and time.perf_counter() - started > cfg.max_minutes * 60:
            print(f"stopping at step {step}: --max-minutes {cfg.max_minutes} reached", flush=True)
            break
    train_s = time.perf_counter() - started

    model.eval()
    heldout = evaluate_heads(model, shapes.eval_scenes(cfg.eval_scenes, cfg.eval_seed))
    first_200 = evaluate_heads(model, shapes.eval_scenes(200, cfg.eval_seed))
    fd = reference_distances(model, cfg.fd_scenes)
    print(json.dumps({"heldout": heldout, "fd": fd}), flush=True)
    card = {
        "id": cfg.id,
        "kind": "feature-network",
        "description": ROLES[cfg.role],
        "architecture": {
            "class": "engines.features.ShapesFeatureNet",
            "parameters": sum(p.numel() for p in model.parameters()),
            "channels": model.config.channels,
            "feature_dim": model.config.feature_dim,
            "input": f"(B, 3, {shapes.RESOLUTION}, {shapes.RESOLUTION}) float in [-1, 1] (uint8 renders / 127.5 - 1)",
            "heads": {
                "pairs": f"{len(model.config.pair_names)} (colour, shape) presence logits, colour-major",
                "count": f"{model.config.max_objects + 1} classes: 0..{model.config.max_objects} objects",
                "sizes": f"{len(model.config.size_names)} size presence logits",
                "colors": f"{len(model.config.color_names)} colour presence logits (helper)",
                "shapes": f"{len(model.config.shape_names)} shape presence logits (helper)",
            },
        },
        "role": cfg.role,
        "data": {
            "world": "shapes",
            "seed": cfg.seed,
            "renders": renders,
            "passes_per_render": cfg.passes,
            "blank_fraction": cfg.blank_fraction,
            "augmentation": "horizontal flip"
            + (f", Gaussian pixel noise of std U[0, {cfg.noise_std}] on half the images" if cfg.noise_std > 0 else ""),
        },
        "training": {
            "steps": step,
            "batch_size": cfg.batch_size,
            "images_seen": step * cfg.batch_size,
            "optimizer": f"AdamW lr {cfg.lr} (warm-up {cfg.warmup_steps}, cosine), weight decay {cfg.weight_decay}",
            "wall_seconds": round(train_s, 1),
            "render_seconds": round(render_s, 1),
            "device": "cpu",
            "cpu": cpu_name(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "final_losses": history[-1] if history else {},
        },
        "heldout": {"scenes": cfg.eval_scenes, "seed": cfg.eval_seed, "accuracy": heldout},
        "heldout_first_200": {"scenes": 200, "seed": cfg.eval_seed, "accuracy": first_200},
        "fd_reference": {
            "scenes_per_set": cfg.fd_scenes,
            "note": "real = shapes.eval_scenes(n, seed=1) vs seed=2 renders; noise = uniform in [-1, 1], torch seed 3",
            **fd,
        },
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "command": command_line(cfg),
    }
    write_checkpoint(model, card, cfg.out)
    return card


def cpu_name() -> str:
    """'<model name>, <n> cores' of this machine: wall times mean little without it."""
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    except OSError:
        names = []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{names[0] if names else platform.processor() or 'unknown CPU'}, {cores} cores"


def write_checkpoint(model: ShapesFeatureNet, card: dict, out: Path) -> Path:
    """save_pretrained + features.json + README.md, written beside `out` and swapped in whole,
    so an interrupted run never leaves a half-written checkpoint."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a shipped checkpoint is readable by all
    model.save_pretrained(staging)
    for file in staging.iterdir():
        file.chmod(0o644)
    (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    (staging / "README.md").write_text(model_card_markdown(card))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


USES = {  # how the card tells a reader to use the network, per role
    "fd-features": (
        "Load it with `engines.features.load_feature_network(path)`; features with `fid_features(model, images)`,",
        "distances with `frechet_distance(a, b)`.",
    ),
    "judge-proxy": (
        "Load it with `engines.features.load_feature_network(path)`; `trainer.judge_proxy.proxy_loss(model, images,",
        "condition_targets(conditions))` is its loss against what each caption asks, `proxy_accepts` its verdict.",
    ),
}


def model_card_markdown(card: dict) -> str:
    """README.md for the checkpoint, generated from features.json so the two never disagree."""
    arch, data, train_info = card["architecture"], card["data"], card["training"]
    heldout, fd = card["heldout"], card["fd_reference"]
    lines = [
        f"# {card['id']}",
        "",
        card["description"],
        "",
        "Not a generator: the engine registry does not list it (its card is `features.json`, not `card.json`).",
        *USES[card.get("role", "fd-features")],
        "",
        "## Network",
        "",
        f"- `{arch['class']}` (transformers `PreTrainedModel`, safetensors): {arch['parameters']:,} parameters.",
        f"- Conv-BN-SiLU stages of {arch['channels']} channels, each halving the resolution (64 -> 4); global mean "
        f"and max pooling -> linear + SiLU -> {arch['feature_dim']}-d features (the FD features) -> linear heads.",
        f"- Input: {arch['input']}.",
        *(f"- Head `{name}`: {text}." for name, text in arch["heads"].items()),
        "",
        "## Training",
        "",
        f"- Data: {data['renders']:,} world renders (`shapes.sample_scene`, seed {data['seed']}, CPU `shapes.render`, "
        f"uint8), each seen {data['passes_per_render']} times with {data['augmentation']}; "
        f"{data['blank_fraction']:.0%} blank backgrounds.",
        f"- {train_info['steps']} steps at batch {train_info['batch_size']} ({train_info['images_seen']:,} images), "
        f"{train_info['optimizer']}.",
        f"- {train_info['wall_seconds']} s wall time on CPU ({train_info['cpu']}, {train_info['torch_threads']} torch threads, "
        f"torch {train_info['torch']}), of which {train_info['render_seconds']} s rendering.",
        f"- Command: `{card['command']}`.",
        "",
        f"## Held-out accuracy ({heldout['scenes']} scenes of `shapes.eval_scenes`, seed {heldout['seed']})",
        "",
        "| " + " | ".join(heldout["accuracy"]) + " |",
        "|" + " --- |" * len(heldout["accuracy"]),
        "| " + " | ".join(f"{v:.4f}" for v in heldout["accuracy"].values()) + " |",
        "",
        "`*_exact`: every label of the image right; `*_per_label`: mean over labels; `all_heads`: pairs, count and sizes "
        "all right. Colours and shapes are helper heads.",
        "",
        f"## Reference Fréchet distances ({fd['scenes_per_set']} images per set)",
        "",
        f"- {fd['note']}.",
        *(f"- `{k}`: {v:.3f}" for k, v in fd.items() if isinstance(v, float)),
        "",
    ]
    return "\n".join(lines)


def command_line(cfg: FeatureTrainConfig) -> str:
    """The CLI call that repeats this run (every option `parse` takes, spelled out)."""
    options = (
        "out",
        "id",
        "role",
        "steps",
        "batch_size",
        "chunk",
        "passes",
        "lr",
        "seed",
        "noise_std",
        "eval_scenes",
        "max_minutes",
    )
    return "python -m trainer.train_features " + " ".join(f"--{k.replace('_', '-')} {getattr(cfg, k)}" for k in options)


def parse(argv: list[str] | None = None) -> FeatureTrainConfig:
    defaults = FeatureTrainConfig()
    parser = argparse.ArgumentParser(prog="python -m trainer.train_features", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=defaults.out, help="checkpoint directory to (re)write")
    parser.add_argument("--id", default=None, help="the card's id (default: shapes-features, or shapes-judge-proxy)")
    parser.add_argument("--role", choices=sorted(ROLES), default=defaults.role, help="what the network is for")
    parser.add_argument("--noise-std", type=float, default=defaults.noise_std, help="pixel noise augmentation (0: none)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--chunk", type=int, default=defaults.chunk, help="fresh renders per chunk")
    parser.add_argument("--passes", type=int, default=defaults.passes, help="times each render is trained on")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--eval-scenes", type=int, default=defaults.eval_scenes)
    parser.add_argument("--max-minutes", type=float, default=defaults.max_minutes, help="wall-time cap (0: none)")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "chunk", "passes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.noise_std <= 2 or args.noise_std != args.noise_std:
        parser.error(f"--noise-std must be in [0, 2] (images are in [-1, 1]), got {args.noise_std}")
    if args.eval_scenes < 200:
        parser.error("--eval-scenes must be at least 200 (the card also records the first 200 for the tests)")
    return FeatureTrainConfig(
        out=args.out,
        id=args.id or (defaults.id if args.role == "fd-features" else "shapes-judge-proxy"),
        role=args.role,
        noise_std=args.noise_std,
        steps=args.steps,
        batch_size=args.batch_size,
        chunk=args.chunk,
        passes=args.passes,
        lr=args.lr,
        seed=args.seed,
        eval_scenes=args.eval_scenes,
        max_minutes=args.max_minutes,
    )


def main(argv: list[str] | None = None) -> dict:
    cfg = parse(argv)
    card = train(cfg)
    print(f"wrote {cfg.out} ({card['training']['wall_seconds']} s training)")
    return card


if __name__ == "__main__":
    main()
