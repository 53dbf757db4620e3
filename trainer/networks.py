"""Network presets: named diffusers constructors. A model's config.json is its constructor's kwargs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import SD3Transformer2DModel

from trainer.config import ConfigError

# MMDiT (SD3 layout) in pixel space: 64x64x3 in patches of 4 -> 256 tokens, MiniLM (384-d) context.
PRESETS: dict[str, dict[str, Any]] = {
    "dit-s": dict(
        sample_size=64,
        patch_size=4,
        in_channels=3,
        out_channels=3,
        num_layers=8,
        attention_head_dim=64,
        num_attention_heads=3,
        joint_attention_dim=384,
        caption_projection_dim=192,
        pooled_projection_dim=384,
        pos_embed_max_size=16,
    ),
    # ~60 k parameters: for tests and CPU smoke runs.
    "dit-tiny": dict(
        sample_size=16,
        patch_size=4,
        in_channels=3,
        out_channels=3,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=384,
        caption_projection_dim=16,
        pooled_projection_dim=384,
        pos_embed_max_size=4,
    ),
}


def build_network(preset: str) -> SD3Transformer2DModel:
    if preset not in PRESETS:
        raise ConfigError(f"unknown model_preset {preset!r}; known: {', '.join(PRESETS)}")
    return SD3Transformer2DModel(**PRESETS[preset])


def load_network(checkpoint: str | Path) -> SD3Transformer2DModel:
    """Start from an exported checkpoint's transformer (e.g. to continue a teacher's training), in float32."""
    from engines.checkpoints import load_diffusers_model

    return load_diffusers_model(Path(checkpoint) / "transformer", "SD3Transformer2DModel", dtype=torch.float32)
