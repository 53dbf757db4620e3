"""Resumable scoring for `bench image --cache DIR`: the images a row is judged on, kept chunk by chunk.

A teacher at 50 steps on 560 prompts takes about 2.5 hours of this repository's 2 CPU cores, longer than a
working session. With a cache, every finished chunk of images is written as it is made, and a later run
with the same inputs picks up where the last one stopped; the row it writes is the same. A chunk is found
again only under the same key: the checkpoint's weights (a digest of its safetensors files), steps,
guidance, backend, device, the prompts, their seeds and the chunk size. Chunks are safetensors files
(nothing is unpickled), checked for shape and finiteness when read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainer.worlds.shapes import to_uint8


def weights_digest(checkpoint: Path) -> str:
    """sha256 over the checkpoint's safetensors files (relative path, then bytes), in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(Path(checkpoint).rglob("*.safetensors")):
        digest.update(str(path.relative_to(checkpoint)).encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def cache_key(**inputs) -> str:
    """A short stable name for everything that decides the images (JSON-able values)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


def cached_images(
    sample: Callable[[list[str], list[int]], torch.Tensor],
    prompts: list[str],
    seeds: list[int],
    chunk: int,
    directory: Path | None,
) -> tuple[torch.Tensor, int]:
    """(images for every prompt, how many chunks came from the cache). `sample(prompts, seeds)` makes one
    chunk; with `directory` None nothing is cached. Image i depends only on prompt i and seed i (its own
    noise), so chunking does not change the images."""
    if directory is None:
        return sample(prompts, seeds), 0
    directory.mkdir(parents=True, exist_ok=True)
    parts, reused = [], 0
    for index, start in enumerate(range(0, len(prompts), chunk)):
        path = directory / f"chunk-{index:04d}.safetensors"
        n = len(prompts[start : start + chunk])
        if path.exists():
            parts.append(_read_chunk(path, n))
            reused += 1
            continue
        images = sample(prompts[start : start + chunk], seeds[start : start + chunk]).float().cpu().contiguous()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"images": images}, str(tmp))
        os.replace(tmp, path)  # a run killed mid-write leaves no half chunk behind
        parts.append(images)
    return torch.cat(parts), reused


def cached_pixels(directory: Path, prompts: int | None = None) -> np.ndarray:
    """Every image one model-and-step-count folder of a cache holds, in prompt order, as (N, H, W, 3) uint8 (the
    cache keeps them in [-1, 1]): for probes that score an earlier run's images again without making them. With
    `prompts`, the folder must hold exactly that many (the probe's --prompts: the bench's held-out scenes)."""
    chunks = sorted(Path(directory).glob("chunk-*.safetensors"))
    if not chunks:
        raise SystemExit(f"{directory} holds no bench cache chunks (chunk-*.safetensors)")
    pixels = np.concatenate([to_uint8((_read_chunk(path).float() + 1) / 2) for path in chunks])
    if prompts is not None and len(pixels) != prompts:
        raise SystemExit(f"{directory} holds {len(pixels)} images, not the {prompts} of --prompts")
    return pixels


def _read_chunk(path: Path, n: int | None = None) -> torch.Tensor:
    """A chunk's images, checked: 4-d, finite, and `n` of them when given."""
    try:
        images = load_file(str(path))["images"]
    except (SafetensorError, OSError, KeyError) as err:
        raise SystemExit(f"bench cache: {path} cannot be read ({err}); delete it to make the chunk again") from err
    if images.dim() != 4 or (n is not None and images.shape[0] != n) or not torch.isfinite(images).all():
        raise SystemExit(f"bench cache: {path} holds {tuple(images.shape)} (or non-finite values), expected {n} images")
    return images
