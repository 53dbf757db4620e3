"""Network presets: named diffusers constructors. A model's config.json is its constructor's kwargs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin, SD3Transformer2DModel, UNet2DConditionModel
from transformers import PreTrainedModel

from trainer.config import ConfigError


def _unet(sample_size: int, channels: tuple[int, ...], layers: int, groups: int = 32, head_dim: int = 32) -> dict[str, Any]:
    """A pixel-space UNet2DConditionModel: convolution at full resolution, self- and cross-attention
    (MiniLM token states, 384-d) at every lower level, the pooled vector added to the time embedding."""
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1)
    return dict(
        _class="UNet2DConditionModel",
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        down_block_types=down,
        up_block_types=tuple("CrossAttnUpBlock2D" if b.startswith("CrossAttn") else "UpBlock2D" for b in reversed(down)),
        block_out_channels=channels,
        layers_per_block=layers,
        norm_num_groups=groups,
        # diffusers' UNet reads `attention_head_dim` as the number of heads (a legacy name)
        attention_head_dim=tuple(max(c // head_dim, 1) for c in channels),
        cross_attention_dim=384,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=384,
    )


PRESETS: dict[str, dict[str, Any]] = {
    # 11.9 M parameters (24 MB in fp16): attention at 32x32 and 16x16. Convolutions learn flat shapes
    # with crisp edges far sooner than a patch-4 transformer (dit-s reached judge 0.08 in the same time).
    "unet-s": _unet(64, (64, 96, 160), 2),
    # ~0.2 M parameters: for tests and CPU smoke runs.
    "unet-tiny": _unet(16, (8, 16), 1, groups=4, head_dim=8),
    # MMDiT (SD3 layout) in pixel space: 64x64x3 in patches of 4 -> 256 tokens, MiniLM (384-d) context.
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


_CLASSES = {"UNet2DConditionModel": UNet2DConditionModel, "SD3Transformer2DModel": SD3Transformer2DModel}


def add_unet_conditioning(
    network,
    layers: int = 0,
    dim: int = 192,
    heads: int = 3,
    token_positions: int = 0,
    position_frequencies: int = 0,
    position_gain: float = 1.0,
):
    """The network with a trainable text refiner in front of its cross-attention and/or absolute
    position features after its `conv_in` (engines/refined_unet.py): a plain UNet is extended (same
    outputs until trained), one that already has exactly these additions is returned as it is
    (continuing a run; only its position features' gain may change, which keeps its outputs),
    anything else is refused."""
    from engines.refined_unet import RefinedUNet2DConditionModel, extend_unet

    if position_gain <= 0:
        raise ConfigError(f"position_gain must be > 0, got {position_gain}")

    want = (layers, dim, heads, token_positions, position_frequencies)
    if isinstance(network, RefinedUNet2DConditionModel):
        c = network.config
        have = (c.text_refiner_layers, c.text_refiner_dim, c.text_refiner_heads, c.text_refiner_positions, c.position_frequencies)
        if not have[0] and not want[0]:  # no refiner either way: its dim, heads and positions mean nothing
            have, want = (0, 0, 0, 0, have[4]), (0, 0, 0, 0, want[4])
        if have != want:
            raise ConfigError(
                "init_from already has a text refiner (layers, dim, heads, positions) and position frequencies = "
                f"{have}, not {want}"
            )
        if position_frequencies and c.position_gain != position_gain:
            network.conv_in.set_gain(position_gain)
            network.register_to_config(position_gain=position_gain)
        return network
    if not isinstance(network, UNet2DConditionModel):
        kind = type(network).__name__
        raise ConfigError(
            f"a text refiner and position features go into a UNet2DConditionModel, not {kind} (transformers have their own)"
        )
    if layers < 0 or position_frequencies < 0 or token_positions < 0 or (layers and (dim < 1 or heads < 1 or dim % heads)):
        got = f"got layers {layers}, dim {dim}, heads {heads}, token positions {token_positions}"
        got += f", position frequencies {position_frequencies}"
        raise ConfigError(f"a text refiner needs layers, dim, heads >= 1 with dim a multiple of heads; {got}")
    if position_frequencies > 16:
        raise ConfigError(f"position_frequencies {position_frequencies} is more than 16: finer than a pixel at any size we train")
    return extend_unet(network, layers, dim, heads, token_positions, position_frequencies, position_gain)


def build_network(preset: str) -> UNet2DConditionModel | SD3Transformer2DModel:
    if preset not in PRESETS:
        raise ConfigError(f"unknown model_preset {preset!r}; known: {', '.join(PRESETS)}")
    kwargs = dict(PRESETS[preset])
    return _CLASSES[kwargs.pop("_class", "SD3Transformer2DModel")](**kwargs)


def load_network(checkpoint: str | Path) -> UNet2DConditionModel | SD3Transformer2DModel:
    """Start from an exported checkpoint's denoiser (to continue training, or as a frozen teacher), in float32."""
    from engines.denoisers import load_denoiser

    return load_denoiser(Path(checkpoint), dtype=torch.float32)


def enable_gradient_checkpointing(network: torch.nn.Module, role: str) -> int:
    """Activation checkpointing in every diffusers or transformers model inside `network` (a role may wrap one, as
    DMD2's critic wraps its denoiser): blocks recompute their activations in the backward pass instead of keeping
    them, trading compute for memory: session 23's one-step GAN stage at batch 128 peaked at 51 GB on an H100
    without it and 14 GB with it, at 0.79x the speed (bench/results/device/gradient-checkpointing-h100/), and
    SD-class students need it to fit at all. Returns how many models it turned on in."""
    enabled, covered = 0, set()  # the outermost models: each turns it on in the models nested inside it
    for module in network.modules():
        if id(module) in covered:
            continue
        if isinstance(module, ModelMixin) and module._supports_gradient_checkpointing:
            module.enable_gradient_checkpointing()
        elif isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            module.gradient_checkpointing_enable()
        else:
            continue
        enabled += 1
        covered.update(id(inner) for inner in module.modules())
    if not enabled:
        raise ConfigError(
            f"gradient_checkpointing: the {role} network ({type(network).__name__}) holds no diffusers or transformers "
            "model that supports it; set gradient_checkpointing: false"
        )
    return enabled
