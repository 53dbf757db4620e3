"""A UNet2DConditionModel with what its base lacks for layouts: a small trainable text refiner in
front of its cross-attention, and absolute position features.

Why: a frozen sentence encoder's token states say *which* words the prompt holds but bind them
only weakly ("a red circle and a blue square" vs "a blue circle and a red square" differ mostly in
where the colour words sit). Cross-attention reads each token on its own, so a UNet fed those states
learns a bag of words: right shapes, right colours, swapped between them, and left/right at chance.
Models that bind well refine text tokens with trained layers (SD3's MMDiT joint blocks, Imagen's
large T5). This adds the cheapest version of that: a few self-attention blocks (diffusers'
`BasicTransformerBlock`) over the token states, as a residual that starts at zero, so wrapping a
trained UNet leaves it exactly as it was until fine-tuning moves the refiner.

Position: a UNet's attention has no position embedding, and its convolutions learn where they are
only from the zero padding at the borders, so "a circle to the left of a square" gives its
cross-attention nothing to tie "left" to. `position_frequencies` > 0 adds fixed 2-D sinusoidal
features of each pixel's coordinates, through a learned 1x1 convolution that starts at zero, to the
output of `conv_in`; every later block then knows where it is (CoordConv, Liu et al. 2018; the
position embeddings of DiT/MMDiT do the same for transformers). With them, and with a refiner
pre-trained to expose each object's colour and side, short fine-tunes still placed objects at chance
(configs/shapes-teacher-spatial.yaml, configs/shapes-teacher-binding.yaml), and so did three stages
that grounded cross-attention in the objects' masks (configs/shapes-teacher-grounded*.yaml), which
fixed colour binding. The reason: the projection starts at zero and Adam moves each weight by about
the learning rate a step, so the features stayed ~50x weaker than conv_in's own output (std 0.014 vs
0.68). `position_gain` multiplies the fixed features so the projection's output can grow that much
faster.

The class is a diffusers `UNet2DConditionModel` subclass: same checkpoint layout (`unet/` with
config.json + safetensors), same forward, same ONNX export; its config adds the `text_refiner_*` and
`position_frequencies` keys. Either addition can be off (0); with both off it is the base UNet.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import BasicTransformerBlock


class TextRefiner(torch.nn.Module):
    """Residual self-attention over token states (B, T, dim) -> (B, T, dim); padding stays zero.

    `positions` > 0 adds a learned embedding of each token's index (up to that many tokens). Without
    it the refiner is permutation-equivariant and sees word order only as far as the encoder's last
    layer kept it. That is enough in principle: on 18 k captions, a 2-block refiner trained directly
    to read an object's colour and side reaches 1.00 with or without positions (chance after 6
    epochs either way), so positions are a convenience, not a necessity.
    """

    def __init__(self, dim: int, inner_dim: int, layers: int, heads: int, positions: int = 0) -> None:
        super().__init__()
        if inner_dim % heads:
            raise ValueError(f"text_refiner_dim {inner_dim} must be a multiple of text_refiner_heads {heads}")
        self.proj_in = torch.nn.Linear(dim, inner_dim)
        self.position = torch.nn.Parameter(torch.randn(positions, inner_dim) * 0.02) if positions else None
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
        if self.position is not None:
            if states.shape[1] > self.position.shape[0]:
                raise ValueError(
                    f"{states.shape[1]} token states but the text refiner has positions for {self.position.shape[0]}"
                )
            hidden = hidden + self.position[: states.shape[1]].to(hidden.dtype)
        for block in self.blocks:
            hidden = block(hidden, attention_mask=bias)
        return (states + self.proj_out(self.norm(hidden))) * real.unsqueeze(-1).to(states.dtype)


def position_grid(size: int, frequencies: int) -> torch.Tensor:
    """(4 * frequencies, size, size): sin and cos of 2^k * pi/2 * x and of 2^k * pi/2 * y, k < frequencies,
    at the pixel centres, with x and y in (-1, 1) (x grows to the right, y downwards). The lowest
    frequency spans half a period, so the left and right edges never look alike."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    angles = coords[None, :] * (2.0 ** torch.arange(frequencies, dtype=torch.float32))[:, None] * (torch.pi / 2)
    along = torch.cat([angles.sin(), angles.cos()])  # (2F, size)
    x = along[:, None, :].expand(-1, size, -1)  # varies along the width
    y = along[:, :, None].expand(-1, -1, size)  # varies along the height
    return torch.cat([x, y])


class PositionedConv2d(torch.nn.Conv2d):
    """`conv_in` plus a learned projection of fixed position features (zero at start). Same weight and
    bias keys as the plain convolution, so a trained UNet's weights load into it unchanged."""

    def __init__(self, conv: torch.nn.Conv2d, frequencies: int, size: int, gain: float = 1.0) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
        self.load_state_dict(conv.state_dict())
        self.frequencies = frequencies
        self.gain = gain
        # Built once at the trained size and moved with the module (not saved: derived from the config).
        self.register_buffer("grid", position_grid(size, frequencies)[None] * gain, persistent=False)
        self.position = torch.nn.Conv2d(4 * frequencies, conv.out_channels, 1)
        torch.nn.init.zeros_(self.position.weight)
        torch.nn.init.zeros_(self.position.bias)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        out = super().forward(sample)
        if out.shape[-1] != out.shape[-2]:
            raise ValueError(f"position features are defined for square images, got {tuple(out.shape[-2:])}")
        grid = self.grid
        # Another resolution than the trained one builds its grid; so does an ONNX trace, so that the
        # exported graph computes the grid from the input's size instead of baking in the trained one.
        if grid.shape[-1] != out.shape[-1] or torch.jit.is_tracing():
            grid = position_grid(out.shape[-1], self.frequencies)[None].to(out.device) * self.gain
        return out + self.position(grid.to(out.dtype))

    def set_gain(self, gain: float) -> None:
        """Scale the features by `gain` instead, rescaling the projection so the output is unchanged."""
        with torch.no_grad():
            self.position.weight.mul_(self.gain / gain)
            self.grid.mul_(gain / self.gain)
        self.gain = gain


def _init(
    self,
    *,
    text_refiner_layers: int = 2,
    text_refiner_dim: int = 192,
    text_refiner_heads: int = 3,
    text_refiner_positions: int = 0,
    position_frequencies: int = 0,
    position_gain: float = 1.0,
    **unet_kwargs,
) -> None:
    UNet2DConditionModel.__init__.__wrapped__(self, **unet_kwargs)
    cross = unet_kwargs.get("cross_attention_dim", 1280)
    if text_refiner_layers and not isinstance(cross, int):
        raise ValueError("a text refiner needs one cross_attention_dim for every block, not a tuple")
    if text_refiner_layers < 0 or position_frequencies < 0:
        raise ValueError(
            f"text_refiner_layers and position_frequencies must be >= 0, got {text_refiner_layers}, {position_frequencies}"
        )
    self.text_refiner = (
        TextRefiner(cross, text_refiner_dim, text_refiner_layers, text_refiner_heads, text_refiner_positions)
        if text_refiner_layers
        else None
    )
    if position_gain <= 0:
        raise ValueError(f"position_gain must be > 0, got {position_gain}")
    if position_frequencies:
        size = int(unet_kwargs.get("sample_size") or 64)
        self.conv_in = PositionedConv2d(self.conv_in, position_frequencies, size, position_gain)


# diffusers reads a model's config keys from its __init__ signature: the UNet's own, plus ours.
_base = inspect.signature(UNet2DConditionModel.__init__)
_extra = [p for p in inspect.signature(_init).parameters.values() if p.kind is p.KEYWORD_ONLY]
_init.__signature__ = _base.replace(parameters=[*_base.parameters.values(), *_extra])


class RefinedUNet2DConditionModel(UNet2DConditionModel):
    __init__ = register_to_config(_init)

    def forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        if self.text_refiner is not None:
            encoder_hidden_states = self.text_refiner(encoder_hidden_states)
        return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)


def extend_unet(
    unet: UNet2DConditionModel,
    layers: int = 0,
    dim: int = 192,
    heads: int = 3,
    token_positions: int = 0,
    position_frequencies: int = 0,
    position_gain: float = 1.0,
) -> RefinedUNet2DConditionModel:
    """A float32 copy of a trained plain UNet with a fresh (identity) text refiner of `layers` blocks
    and/or fresh (zero) position features in front: same outputs until trained."""
    if isinstance(unet, RefinedUNet2DConditionModel):
        raise ValueError("this UNet already has a text refiner or position features")
    if not (layers or position_frequencies):
        raise ValueError("nothing to add: give text refiner layers or position frequencies > 0")
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    refined = RefinedUNet2DConditionModel.from_config(
        {
            **config,
            "text_refiner_layers": layers,
            "text_refiner_dim": dim,
            "text_refiner_heads": heads,
            "text_refiner_positions": token_positions,
            "position_frequencies": position_frequencies,
            "position_gain": position_gain,
        }
    )
    missing, unexpected = refined.load_state_dict(unet.state_dict(), strict=False)
    new = ("text_refiner.", "conv_in.position.")
    if unexpected or any(not k.startswith(new) for k in missing):
        raise ValueError(f"UNet weights did not map onto the refined UNet: missing {missing}, unexpected {unexpected}")
    return refined
