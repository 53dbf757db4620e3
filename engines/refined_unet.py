"""A UNet2DConditionModel with a small trainable text refiner in front of its cross-attention.

Why: a frozen sentence encoder's token states say *which* words the prompt holds but bind them
only weakly ("a red circle and a blue square" vs "a blue circle and a red square" differ mostly in
where the colour words sit). Cross-attention reads each token on its own, so a UNet fed those states
learns a bag of words: right shapes, right colours, swapped between them, and left/right at chance.
Models that bind well refine text tokens with trained layers (SD3's MMDiT joint blocks, Imagen's
large T5). This adds the cheapest version of that: a few self-attention blocks (diffusers'
`BasicTransformerBlock`) over the token states, as a residual that starts at zero, so wrapping a
trained UNet leaves it exactly as it was until fine-tuning moves the refiner.

The class is a diffusers `UNet2DConditionModel` subclass: same checkpoint layout (`unet/` with
config.json + safetensors), same forward, same ONNX export; its config adds the `text_refiner_*` keys.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import BasicTransformerBlock


class TextRefiner(torch.nn.Module):
    """Residual self-attention over token states (B, T, dim) -> (B, T, dim); padding stays zero."""

    def __init__(self, dim: int, inner_dim: int, layers: int, heads: int) -> None:
        super().__init__()
        if inner_dim % heads:
            raise ValueError(f"text_refiner_dim {inner_dim} must be a multiple of text_refiner_heads {heads}")
        self.proj_in = torch.nn.Linear(dim, inner_dim)
        self.blocks = torch.nn.ModuleList(
            BasicTransformerBlock(inner_dim, heads, inner_dim // heads, activation_fn="gelu", ff_inner_dim=2 * inner_dim)
            for _ in range(layers)
        )
        self.norm = torch.nn.LayerNorm(inner_dim)
        self.proj_out = torch.nn.Linear(inner_dim, dim)
        torch.nn.init.zeros_(self.proj_out.weight)  # identity at start: wrapping a trained UNet changes nothing
        torch.nn.init.zeros_(self.proj_out.bias)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        # The text encoder zeroes padding (engines/text_encoder.pool); real tokens are never all-zero.
        real = states.abs().amax(-1) > 0  # (B, T)
        # Additive key bias (0 or -10000), the form diffusers' Attention takes for a (B, 1, T) mask;
        # an all-padding row (the CFG null prompt) gets none, so its softmax stays finite.
        attend = real | ~real.any(1, keepdim=True)
        bias = ((~attend).to(states.dtype) * -10000.0).unsqueeze(1)
        hidden = self.proj_in(states)
        for block in self.blocks:
            hidden = block(hidden, attention_mask=bias)
        return (states + self.proj_out(self.norm(hidden))) * real.unsqueeze(-1).to(states.dtype)


def _init(
    self,
    *,
    text_refiner_layers: int = 2,
    text_refiner_dim: int = 192,
    text_refiner_heads: int = 3,
    **unet_kwargs,
) -> None:
    UNet2DConditionModel.__init__.__wrapped__(self, **unet_kwargs)
    cross = unet_kwargs.get("cross_attention_dim", 1280)
    if not isinstance(cross, int):
        raise ValueError("a text refiner needs one cross_attention_dim for every block, not a tuple")
    self.text_refiner = TextRefiner(cross, text_refiner_dim, text_refiner_layers, text_refiner_heads)


# diffusers reads a model's config keys from its __init__ signature: the UNet's own, plus ours.
_base = inspect.signature(UNet2DConditionModel.__init__)
_extra = [p for p in inspect.signature(_init).parameters.values() if p.kind is p.KEYWORD_ONLY]
_init.__signature__ = _base.replace(parameters=[*_base.parameters.values(), *_extra])


class RefinedUNet2DConditionModel(UNet2DConditionModel):
    __init__ = register_to_config(_init)

    def forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        return super().forward(sample, timestep, self.text_refiner(encoder_hidden_states), *args, **kwargs)


def with_text_refiner(unet: UNet2DConditionModel, layers: int, dim: int, heads: int) -> RefinedUNet2DConditionModel:
    """A float32 copy of a trained UNet with a fresh (identity) text refiner in front: same outputs until trained."""
    if isinstance(unet, RefinedUNet2DConditionModel):
        raise ValueError("this UNet already has a text refiner")
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    refined = RefinedUNet2DConditionModel.from_config(
        {**config, "text_refiner_layers": layers, "text_refiner_dim": dim, "text_refiner_heads": heads}
    )
    missing, unexpected = refined.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not k.startswith("text_refiner.") for k in missing):
        raise ValueError(f"UNet weights did not map onto the refined UNet: missing {missing}, unexpected {unexpected}")
    return refined
