"""What every image method shares: world batches at the network's resolution, judged evaluation,
sample grids and the export of a finished network as a shipped checkpoint."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image

from engines.card import ModelCard
from engines.denoisers import DENOISER_FOLDERS, denoiser_folder
from engines.image import sample_prompts, to_pil
from engines.text_encoder import TextEncoder
from trainer.attention_maps import object_specs, phrase_token_masks
from trainer.worlds import shapes

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def world_batch_cpu(
    step: int,
    rank: int,
    micro: int,
    *,
    seed: int,
    batch_size: int,
    tokenizer=None,
    max_tokens: int = 40,
    category_weights: dict[str, float] | None = None,
) -> dict:
    """The CPU half of a batch, fixed by (seed, rank, step, micro): scene parameters, captions,
    tokens. Picklable and cheap, so data-loader workers make it while the GPU trains.
    `category_weights` over-samples categories (e.g. the relations a teacher has not learned yet);
    None draws them uniformly."""
    rng = shapes.step_rng(seed, rank, step * 1000 + micro)
    if category_weights:
        weights = [category_weights.get(c, 0.0) for c in shapes.CATEGORIES]
        scenes = [shapes.sample_scene(rng, rng.choices(shapes.CATEGORIES, weights)[0]) for _ in range(batch_size)]
    else:
        scenes = [shapes.sample_scene(rng) for _ in range(batch_size)]
    batch = {
        "params": shapes.scene_tensors(scenes),
        "captions": [s.caption for s in scenes],
        "conditions": [s.condition for s in scenes],  # what the judge checks (reward-weighted methods)
    }
    if tokenizer is not None:
        tokens = dict(
            tokenizer(
                batch["captions"],
                padding="max_length",
                truncation=True,
                max_length=max_tokens,
                return_tensors="pt",
                return_offsets_mapping=True,
            )
        )
        # which tokens describe which object, for methods that ground cross-attention (trainer/attention_maps.py)
        batch["phrase_tokens"] = phrase_token_masks(tokens.pop("offset_mapping"), [s.spans for s in scenes])
        batch["object_specs"] = object_specs(scenes)
        batch["tokens"] = tokens
    return batch


def render_batch(batch: dict, resolution: int, device: torch.device, coverage: bool = False):
    """The GPU half: render scene parameters to images in [-1, 1] at `resolution`. `coverage`: also
    return each object slot's coverage (B, MAX_OBJECTS, 64, 64) at the world's resolution."""
    params = {k: v.to(device, non_blocking=True) for k, v in batch["params"].items()}
    cover = shapes.object_coverage(params)
    images = shapes.render_tensors(params, cover=cover)
    if resolution != images.shape[-1]:
        images = torch.nn.functional.interpolate(images, size=(resolution, resolution), mode="area")
    return (images * 2 - 1, cover) if coverage else images * 2 - 1


def new_scheduler(shift: float = 1.0, stochastic: bool = False) -> FlowMatchEulerDiscreteScheduler:
    """The sampler a checkpoint ships with. `stochastic`: each step jumps to the model's clean
    estimate and re-noises it to the next sigma (the multi-step sampler of DMD2/consistency students)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift, stochastic_sampling=stochastic)


def sample_images(
    network,
    text_encoder: TextEncoder,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float,
    device: torch.device,
    batch_size: int = 64,
    scheduler=None,
) -> torch.Tensor:
    """Final images in [-1, 1] from a network in training, through the engines' sampler."""
    scheduler = scheduler or new_scheduler()
    return sample_prompts(network, text_encoder, prompts, seeds, steps, guidance, device, scheduler, batch_size)


def evaluate(
    network,
    text_encoder: TextEncoder,
    n: int,
    steps: int,
    guidance: float,
    device: torch.device,
    seed: int = 2024,
    scheduler=None,
) -> dict[str, float]:
    """Judge scores on the first `n` held-out scenes (fixed seeds), as in `bench image`, and the entropy of
    the colours and sizes drawn where captions leave them free (`free_colour_bits`, `free_size_bits`): a
    student can raise the judge while narrowing what it does not check (a GAN-headed DMD2 did, 2.69 to 2.31
    bits of colour)."""
    scenes = shapes.eval_scenes(n, seed)
    images = sample_images(
        network, text_encoder, [s.caption for s in scenes], list(range(n)), steps, guidance, device, scheduler=scheduler
    )
    if images.shape[-1] != shapes.RESOLUTION:
        images = torch.nn.functional.interpolate(images, size=(shapes.RESOLUTION,) * 2, mode="nearest")
    pixels, conditions = shapes.to_uint8((images + 1) / 2), [s.condition for s in scenes]
    found = shapes.detect_all(pixels)
    scores = shapes.judge(pixels, conditions, found)
    for attribute, key in (("color", "free_colour_bits"), ("size", "free_size_bits")):
        scores[key] = shapes.entropy_bits(shapes.free_shares(pixels, conditions, attribute, found))
    return scores


def sample_diversity(
    network,
    text_encoder: TextEncoder,
    steps: int,
    guidance: float,
    device: torch.device,
    scheduler=None,
    prompts: int = 4,
    seeds: int = 4,
) -> float:
    """How much samples of one prompt differ across seeds (trainer.guard.diversity), on fixed prompts."""
    from trainer.guard import diversity

    captions = [s.caption for s in shapes.eval_scenes(prompts, seed=11) for _ in range(seeds)]
    images = sample_images(
        network, text_encoder, captions, list(range(len(captions))), steps, guidance, device, scheduler=scheduler
    )
    return diversity(images, seeds)


def image_grid(images: list[Image.Image], columns: int = 8, scale: int = 2) -> Image.Image:
    w, h = images[0].size
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * w, rows * h), (0, 0, 0))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)


def sample_grid(
    network, text_encoder: TextEncoder, steps: int, guidance: float, device: torch.device, n: int = 16, scheduler=None
) -> Image.Image:
    scenes = shapes.eval_scenes(n, seed=7)
    images = sample_images(
        network, text_encoder, [s.caption for s in scenes], list(range(n)), steps, guidance, device, scheduler=scheduler
    )
    return image_grid(to_pil(images))


def export_checkpoint(network, directory: Path, card: ModelCard, dtype: str = "float16", scheduler=None) -> Path:
    """Write unet/ or transformer/ + scheduler/ + card.json (+ README.md) as a loadable checkpoint."""
    import copy

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shipped = copy.deepcopy(network).to("cpu", DTYPES[dtype])
    folder = denoiser_folder(shipped)
    for stale in DENOISER_FOLDERS:  # re-exporting with another architecture must not leave the old one behind
        if stale != folder and (directory / stale).is_dir():
            shutil.rmtree(directory / stale)
    shipped.save_pretrained(directory / folder, safe_serialization=True)
    (scheduler or new_scheduler()).save_pretrained(directory / "scheduler")
    card.save(directory)
    write_model_card(directory)
    return directory


def write_model_card(directory: Path) -> Path:
    """README.md for a checkpoint, generated from card.json so the two never disagree."""
    card: dict[str, Any] = json.loads((Path(directory) / "card.json").read_text())
    lines = [
        f"# {card['id']}",
        "",
        card.get("description") or f"A {card['modality']} {card['role']} trained by Distillery.",
        "",
        "| field | value |",
        "| --- | --- |",
    ]
    for key in (
        "modality",
        "role",
        "teacher",
        "method",
        "default_steps",
        "default_guidance",
        "resolution",
        "train_gpu_seconds",
        "device",
    ):
        if card.get(key) is not None:
            lines.append(f"| {key} | {card[key]} |")
    lines.append(f"| data | `{json.dumps(card.get('data', {}))}` |")
    if card.get("text_encoder"):
        lines.append(f"| text encoder | `{json.dumps(card['text_encoder'])}` |")
    if card.get("decoding"):
        lines.append(f"| decoding | `{json.dumps(card['decoding'])}` |")
    metrics = card.get("metrics") or {}
    if metrics:
        lines += ["", "## Measured metrics", "", f"Source: `{metrics.get('source', 'training-time evaluation')}`.", ""]
        for name, table in metrics.items():
            if isinstance(table, dict) and table:
                lines += [f"### {name}", "", "| " + " | ".join(table) + " |", "|" + " --- |" * len(table)]
                lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in table.values()) + " |")
                lines.append("")
    path = Path(directory) / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path
