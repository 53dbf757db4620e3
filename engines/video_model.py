"""`VideoDiT`: a diffusion transformer over frame tokens, bidirectional (teacher) or chunk-causal with a
rolling KV cache and an EMA attention sink (the streaming student). Design: docs/video.md, "Network".

Shape of the network, per frame and why:
- A light conv stem (conv3x3 at full resolution, two stride-2 convs, a patchify conv) turns each
  frame into (resolution / patch)^2 tokens, plus a learned 2-D position embedding. The conv decoder
  goes back up by pixel shuffles and fuses the stem's features at every scale (a U-Net skip), so the
  flat-coloured shapes of the motion world keep crisp edges that 8x8 patch tokens alone would blur.
- Transformer blocks are AdaLN-Zero (DiT) with one shared modulation projection plus a learned
  per-block offset (PixArt-alpha's adaLN-single), which keeps the default model near 10 M parameters.
  The per-frame condition is timestep(sigma * 1000) + linear(pooled text) + action embedding, so each
  frame of a clip can sit at its own noise level (the Self-Forcing student denoises a chunk while
  earlier frames are clean).
- Self-attention covers all tokens of every frame a frame may see, with rotary position embedding over
  *time only*: the relative frame offset is the only position it sees (space comes from the learned
  2-D embedding), so frame 10 000 of an endless stream looks exactly like frame 10 to the network.
- Cross-attention reads the text encoder's token states; padding tokens are all-zero vectors
  (engines/text_encoder.pool) and are masked out; an all-padding prompt (the CFG null prompt)
  contributes exactly zero.

Streaming (Self-Forcing / CausVid style inference with Reward Forcing's EMA-Sink): a `VideoKVCache`
holds each layer's keys/values of committed frames, before rotary, with their frame indices.
`forward_chunk` attends over [sink, cached frames, this chunk] without touching the cache;
`commit_chunk` runs the finished (clean) chunk at sigma 0 and appends its keys/values, then evicts
whole frames beyond `window` into the sink: sink = decay * sink + (1 - decay) * evicted. Rotary is
applied at attention time, from positions relative to the queried chunk, so memory stays bounded and
generation can go on indefinitely with the offsets training saw.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from engines.graphs import on_graph_thread

# Named overrides of VideoDiT's defaults (STYLE: presets are named dicts of overrides).
PRESETS: dict[str, dict] = {
    "video-s": {},  # ~10 M parameters: the motion world's teacher and student
    "video-tiny": dict(dim=32, layers=2, heads=2, resolution=16, patch=4, chunk=2, window=4),  # CPU tests
}

TIMESTEP_FREQUENCIES = 256  # sinusoidal features of sigma * 1000 (DiT's TimestepEmbedder)
ROPE_THETA = 10000.0
MODULATIONS = 9  # shift, scale, gate for each of self-attention, cross-attention, MLP

# Per layer: (keys, values), each (B, heads, tokens, head_dim), keys after QK-norm and before rotary.
LayerKV = tuple[torch.Tensor, torch.Tensor]


def build_video_network(preset: str = "video-s", **overrides) -> VideoDiT:
    """A freshly initialised VideoDiT from a named preset plus keyword overrides of its config."""
    if preset not in PRESETS:
        raise ValueError(f"unknown video network preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return VideoDiT(**{**PRESETS[preset], **overrides})


@dataclass
class VideoKVCache:
    """Keys/values of committed frames for chunk-by-chunk generation, and the EMA sink.

    `keys[l]` / `values[l]`: layer l's (B, heads, num_frames * tokens_per_frame, head_dim) for the
    frames in `frames` (consecutive indices, oldest first), keys after QK-norm and *before* rotary, so
    positions can be re-expressed relative to whichever chunk is queried. `sink_keys[l]` /
    `sink_values[l]`: (B, heads, sink_frames * tokens_per_frame, head_dim), the EMA of evicted frames.
    Lists are empty until the first commit (the cache adopts that commit's device and dtype).
    """

    batch: int
    window: int
    tokens_per_frame: int
    sink: int
    sink_decay: float
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    sink_keys: list[torch.Tensor] = field(default_factory=list)
    sink_values: list[torch.Tensor] = field(default_factory=list)
    evicted: int = 0  # frames folded into the sink so far

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def sink_frames(self) -> int:
        """Sink slots in use: min(evicted, sink)."""
        return min(self.evicted, self.sink)

    @property
    def num_tokens(self) -> int:
        """Key/value tokens a query attends to besides its own chunk (sink + cached frames)."""
        return (self.sink_frames + self.num_frames) * self.tokens_per_frame

    @property
    def next_frame(self) -> int | None:
        """The frame index the next chunk must start at, or None while the cache is empty."""
        return self.frames[-1] + 1 if self.frames else None

    def detach(self) -> VideoKVCache:
        """A copy whose tensors are cut from the autograd graph (for rollouts that keep gradients
        only through the last denoising step: commit with grad, detach, go on)."""
        cut = lambda tensors: [t.detach() for t in tensors]
        return VideoKVCache(
            self.batch,
            self.window,
            self.tokens_per_frame,
            self.sink,
            self.sink_decay,
            cut(self.keys),
            cut(self.values),
            list(self.frames),
            cut(self.sink_keys),
            cut(self.sink_values),
            self.evicted,
        )


def timestep_embedding(t: torch.Tensor, frequencies: int = TIMESTEP_FREQUENCIES) -> torch.Tensor:
    """Sinusoidal features (..., frequencies) of t (any shape), computed in float32."""
    half = frequencies // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rotary_cos_sin(frame_positions: torch.Tensor, tokens_per_frame: int, head_dim: int, dtype: torch.dtype):
    """cos, sin (tokens, head_dim) for frames at `frame_positions` (F,), each repeated over the frame's
    tokens: every token of a frame shares its time, so rotary encodes time offsets only. Positions are
    float32 and small (relative to the queried chunk), so precision does not degrade with stream length."""
    inv_freq = ROPE_THETA ** (-torch.arange(0, head_dim, 2, device=frame_positions.device, dtype=torch.float32) / head_dim)
    angles = frame_positions.float()[:, None] * inv_freq  # (F, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)  # rotate-half convention
    angles = angles[:, None, :].expand(-1, tokens_per_frame, -1).reshape(-1, head_dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """(grid * grid, dim) 2-D sin-cos table (MAE / DiT): the starting value of the learned embedding."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / max(quarter, 1))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        angles = coord[:, None] * omega
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1)
    return F.pad(table, (0, dim - table.shape[1])).float()


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class SelfAttention(nn.Module):
    """Multi-head self-attention over frame tokens, QK-normed, rotary over time, optional extra context
    (cached keys/values) in front of the tokens' own."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.out = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        rope_q: tuple[torch.Tensor, torch.Tensor],
        rope_k: tuple[torch.Tensor, torch.Tensor],
        context: LayerKV | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, LayerKV]:
        """x (B, L, dim); rope_q for the L tokens, rope_k for [context, x]; mask (L, Lk) bool or None.
        Returns the output and x's own (keys before rotary, values)."""
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        keys, values = k, v
        if context is not None:
            keys = torch.cat([context[0].to(k.dtype), k], dim=2)
            values = torch.cat([context[1].to(v.dtype), v], dim=2)
        q = apply_rotary(q, *rope_q)
        keys = apply_rotary(keys, *rope_k)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.out(out.transpose(1, 2).reshape(batch, length, dim)), (k, v)


class CrossAttention(nn.Module):
    """Attention from frame tokens to text token states; padding keys masked, empty prompts give zero."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, has_text: torch.Tensor) -> torch.Tensor:
        """x (B, L, dim); text (B, Lt, dim) projected states; text_mask (B, 1, 1, Lt) bool with at least
        one True per row (so softmax never sees an all -inf row); has_text (B, 1, 1) zeroes empty prompts."""
        batch, length, dim = x.shape
        q = self.q_norm(self.q(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2))
        k, v = self.kv(text).view(batch, text.shape[1], 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, self.k_norm(k), v, attn_mask=text_mask)
        return self.out(out.transpose(1, 2).reshape(batch, length, dim)) * has_text


class Block(nn.Module):
    """AdaLN-Zero block: modulated self-attention, cross-attention and MLP, each gated (gates start at 0)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross = CrossAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        # adaLN-single: this block's learned offset to the shared modulation (zero: starts as identity).
        self.modulation = nn.Parameter(torch.zeros(MODULATIONS, dim))

    def forward(
        self,
        x: torch.Tensor,
        mod: torch.Tensor,
        rope_q: tuple[torch.Tensor, torch.Tensor],
        rope_k: tuple[torch.Tensor, torch.Tensor],
        context: LayerKV | None,
        mask: torch.Tensor | None,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        has_text: torch.Tensor,
    ) -> tuple[torch.Tensor, LayerKV]:
        """x (B, T, N, dim); mod (B, T, 9, dim) the shared per-frame modulation."""
        batch, frames, tokens, dim = x.shape
        m = (mod + self.modulation.to(mod.dtype)).unsqueeze(3)  # (B, T, 9, 1, dim): broadcast over tokens
        shift1, scale1, gate1, shift2, scale2, gate2, shift3, scale3, gate3 = m.unbind(2)
        flat = (batch, frames * tokens, dim)
        h = _modulate(self.norm1(x), shift1, scale1).reshape(flat)
        attended, kv = self.attn(h, rope_q, rope_k, context, mask)
        x = x + gate1 * attended.view_as(x)
        h = _modulate(self.norm2(x), shift2, scale2).reshape(flat)
        x = x + gate2 * self.cross(h, text, text_mask, has_text).view_as(x)
        x = x + gate3 * self.mlp(_modulate(self.norm3(x), shift3, scale3))
        return x, kv


class VideoDiT(ModelMixin, ConfigMixin):
    """Velocity network for flow matching over short clips (B, T, C, H, W), one sigma per frame.

    forward(sample, sigma, encoder_hidden_states, pooled, actions=None, causal=False) -> velocity
    (eps - x0 for x_sigma = (1 - sigma) x0 + sigma eps). `causal=True` restricts each frame to its own
    chunk and earlier ones, the attention pattern the streaming API (`new_cache`, `forward_chunk`,
    `commit_chunk`) reproduces chunk by chunk.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        resolution: int = 64,
        patch: int = 8,
        in_channels: int = 3,
        dim: int = 256,
        layers: int = 8,
        heads: int = 4,
        text_dim: int = 384,
        num_actions: int = 5,
        chunk: int = 4,
        window: int = 12,
        sink: int = 1,
        sink_decay: float = 0.9,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        for name, value in dict(
            resolution=resolution,
            patch=patch,
            in_channels=in_channels,
            dim=dim,
            layers=layers,
            heads=heads,
            text_dim=text_dim,
            num_actions=num_actions,
            chunk=chunk,
            window=window,
        ).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VideoDiT {name} must be a positive integer, got {value!r}")
        if patch % 4:
            raise ValueError(f"VideoDiT patch={patch} must be a multiple of 4 (the stem halves the frame twice, then patchifies)")
        if resolution % patch:
            raise ValueError(f"VideoDiT resolution={resolution} must be a multiple of patch={patch}")
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"VideoDiT dim={dim} must split into heads={heads} of even size (rotary rotates channel pairs)")
        if chunk > window:
            raise ValueError(f"VideoDiT chunk={chunk} is larger than window={window}: a chunk must fit in the KV cache")
        if isinstance(sink, bool) or not isinstance(sink, int) or sink < 0:
            raise ValueError(f"VideoDiT sink must be a non-negative integer (frames of sink tokens; 0 = none), got {sink!r}")
        if not 0.0 <= sink_decay <= 1.0:
            raise ValueError(f"VideoDiT sink_decay must be in [0, 1], got {sink_decay}")
        if mlp_ratio <= 0:
            raise ValueError(f"VideoDiT mlp_ratio must be positive, got {mlp_ratio}")

        self.grid = resolution // patch
        self.head_dim = dim // heads
        self.gradient_checkpointing = False
        self._compiled: dict[bool, Callable] | None = None  # compile_streaming: decode -> compiled _chunk_core
        c0, c1, c2 = max(8, dim // 8), max(8, dim // 4), max(8, dim // 2)
        unpatch = patch // 4

        # Stem: full-resolution features (the decoder's finest skip), /2, /4, then patchify to tokens.
        self.stem0 = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.stem1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.stem2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.patchify = nn.Conv2d(c2, dim, unpatch, stride=unpatch)
        self.pos_embed = nn.Parameter(sincos_2d(self.grid, dim))  # learned, starts as 2-D sin-cos

        # Per-frame condition: timestep + pooled text + action.
        self.time_mlp = nn.Sequential(nn.Linear(TIMESTEP_FREQUENCIES, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.pooled_proj = nn.Linear(text_dim, dim)
        self.action_embed = nn.Embedding(num_actions, dim)
        self.text_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.adaln = nn.Linear(dim, MODULATIONS * dim)  # shared by all blocks (adaLN-single)

        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(layers))

        # Final AdaLN, then back to pixels with a skip from the stem at every scale.
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaln_out = nn.Linear(dim, 2 * dim)
        self.proj_out = nn.Linear(dim, c2 * unpatch * unpatch)
        self.unpatch = unpatch
        self.dec2 = nn.Conv2d(2 * c2, c2, 3, padding=1)
        self.up1 = nn.Conv2d(c2, 4 * c1, 1)
        self.dec1 = nn.Conv2d(2 * c1, c1, 3, padding=1)
        self.up0 = nn.Conv2d(c1, 4 * c0, 1)
        self.dec0 = nn.Conv2d(2 * c0, c0, 3, padding=1)
        self.dec0b = nn.Conv2d(c0, c0, 3, padding=1)  # a second full-resolution conv: edges are decided here
        self.conv_out = nn.Conv2d(c0, in_channels, 3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's init: xavier linears, He convs, small embeddings, and AdaLN-Zero: every gate, the modulations and
        the output conv start at zero, so a fresh network is the identity in its blocks and outputs 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):  # variance-preserving through SiLU, so pixels reach the tokens
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patchify.weight.view(self.patchify.weight.shape[0], -1))  # as DiT's patch embed
        nn.init.normal_(self.action_embed.weight, std=0.02)
        for layer in (self.time_mlp[0], self.time_mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for layer in (self.adaln, self.adaln_out, self.conv_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ----------------------------------------------------------------------------------------- shapes
    @property
    def tokens_per_frame(self) -> int:
        return self.grid * self.grid

    def _check(
        self,
        sample: torch.Tensor,
        sigma: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled: torch.Tensor,
        actions: torch.Tensor | None,
        what: str = "sample",
        action_ids_checked: bool = False,
    ) -> None:
        cfg = self.config
        expected = (cfg.in_channels, cfg.resolution, cfg.resolution)
        if sample.ndim != 5 or tuple(sample.shape[2:]) != expected:
            raise ValueError(
                f"VideoDiT {what} must be (batch, frames, {', '.join(map(str, expected))}), got {tuple(sample.shape)}"
            )
        batch, frames = sample.shape[:2]
        if frames < 1:
            raise ValueError(f"VideoDiT {what} has no frames")
        if tuple(sigma.shape) != (batch, frames):
            raise ValueError(
                f"VideoDiT sigma must be (batch, frames) = {(batch, frames)}, one per frame; got {tuple(sigma.shape)}"
            )
        if (
            encoder_hidden_states.ndim != 3
            or encoder_hidden_states.shape[0] != batch
            or encoder_hidden_states.shape[2] != cfg.text_dim
        ):
            raise ValueError(
                f"VideoDiT encoder_hidden_states must be (batch={batch}, tokens, text_dim={cfg.text_dim}), "
                f"got {tuple(encoder_hidden_states.shape)}"
            )
        if encoder_hidden_states.shape[1] < 1:
            raise ValueError("VideoDiT encoder_hidden_states has no tokens: pass at least one (all-zero = empty prompt)")
        if tuple(pooled.shape) != (batch, cfg.text_dim):
            raise ValueError(f"VideoDiT pooled must be (batch, text_dim) = {(batch, cfg.text_dim)}, got {tuple(pooled.shape)}")
        if actions is not None:
            if tuple(actions.shape) != (batch, frames):
                raise ValueError(f"VideoDiT actions must be (batch, frames) = {(batch, frames)}, got {tuple(actions.shape)}")
            if not action_ids_checked:
                self.check_action_ids(actions)

    def check_action_ids(self, actions: torch.Tensor) -> None:
        """Integer ids in [0, num_actions). Reading the values is a host sync when they live on the GPU:
        a caller that makes many calls with the same ids (every denoising step of a chunk) checks them once,
        on the CPU, and passes action_ids_checked=True. Skipped inside torch.compile graphs."""
        if actions.is_floating_point() or actions.is_complex() or actions.dtype == torch.bool:
            raise ValueError(f"VideoDiT actions must be integer action ids, got dtype {actions.dtype}")
        if not torch.compiler.is_compiling() and actions.numel():
            low, high = torch.stack([actions.min(), actions.max()]).tolist()
            if low < 0 or high >= self.config.num_actions:
                raise ValueError(
                    f"VideoDiT actions must be ids in [0, {self.config.num_actions}), got values from {low} to {high}"
                )

    # ------------------------------------------------------------------------------------ components
    def _embed_frames(self, sample: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(B, T, C, H, W) -> tokens (B, T, N, dim) and the stem's skips (B*T, c, h, w) at 1, 1/2, 1/4."""
        batch, frames = sample.shape[:2]
        x = sample.reshape(batch * frames, *sample.shape[2:]).to(self.stem0.weight.dtype)
        s0 = F.silu(self.stem0(x))
        s1 = F.silu(self.stem1(s0))
        s2 = F.silu(self.stem2(s1))
        tokens = self.patchify(s2).flatten(2).transpose(1, 2) + self.pos_embed.to(s2.dtype)
        return tokens.reshape(batch, frames, self.tokens_per_frame, -1), (s0, s1, s2)

    def _condition(self, sigma: torch.Tensor, pooled: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """Per-frame conditioning vector (B, T, dim)."""
        dtype = self.pooled_proj.weight.dtype
        cond = self.time_mlp(timestep_embedding(sigma * 1000.0).to(dtype))
        cond = cond + self.pooled_proj(pooled.to(dtype))[:, None]
        if actions is None:
            actions = torch.zeros(sigma.shape, dtype=torch.long, device=sigma.device)
        return cond + self.action_embed(actions.long())

    def _text(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected text (B, L, dim), key mask (B, 1, 1, L), has_text (B, 1, 1).

        Padding is recognised as all-zero token states. A row with no real token attends to everything
        (so the softmax stays finite) and its output is then multiplied by has_text = 0."""
        states = encoder_hidden_states.to(self.pooled_proj.weight.dtype)
        real = states.abs().amax(-1) > 0  # (B, L)
        any_real = real.any(1, keepdim=True)
        mask = (real | ~any_real)[:, None, None, :]
        return self.text_proj(states), mask, any_real.to(states.dtype)[:, :, None]

    def _blocks(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        text: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        rope_q: tuple[torch.Tensor, torch.Tensor],
        rope_k: tuple[torch.Tensor, torch.Tensor],
        contexts: list[LayerKV] | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, list[LayerKV]]:
        batch, frames = cond.shape[:2]
        mod = self.adaln(F.silu(cond)).view(batch, frames, MODULATIONS, -1)
        kvs = []
        for i, block in enumerate(self.blocks):
            context = None if contexts is None else contexts[i]
            args = (x, mod, rope_q, rope_k, context, mask, *text)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x, kv = self._gradient_checkpointing_func(block, *args)
            else:
                x, kv = block(*args)
            kvs.append(kv)
        return x, kvs

    def _decode(self, x: torch.Tensor, cond: torch.Tensor, skips: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Tokens (B, T, N, dim) -> pixels (B, T, C, H, W) through the final AdaLN and the conv decoder."""
        batch, frames = x.shape[:2]
        shift, scale = self.adaln_out(F.silu(cond)).unsqueeze(2).chunk(2, dim=-1)
        h = self.proj_out(_modulate(self.norm_out(x), shift, scale))  # (B, T, N, c2 * u * u)
        h = h.reshape(batch * frames, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        h = F.pixel_shuffle(h, self.unpatch) if self.unpatch > 1 else h
        s0, s1, s2 = skips
        h = F.silu(self.dec2(torch.cat([h, s2], dim=1)))
        h = F.silu(self.dec1(torch.cat([F.pixel_shuffle(self.up1(h), 2), s1], dim=1)))
        h = F.silu(self.dec0(torch.cat([F.pixel_shuffle(self.up0(h), 2), s0], dim=1)))
        out = self.conv_out(h + F.silu(self.dec0b(h)))
        return out.reshape(batch, frames, *out.shape[1:])

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return rotary_cos_sin(positions, self.tokens_per_frame, self.head_dim, dtype)

    # --------------------------------------------------------------------------------- whole clips
    def forward(
        self,
        sample: torch.Tensor,
        sigma: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled: torch.Tensor,
        actions: torch.Tensor | None = None,
        causal: bool = False,
        cache: VideoKVCache | None = None,
        frame_index: int = 0,
    ) -> torch.Tensor:
        """Velocity (B, T, C, H, W) for a whole clip.

        sample (B, T, C, H, W); sigma (B, T) in [0, 1]; encoder_hidden_states (B, L, text_dim) with
        all-zero padding tokens; pooled (B, text_dim); actions (B, T) ids or None (= action 0, "none").
        causal: frame f attends to frames of chunk f // chunk and earlier chunks (a final partial chunk
        is fine); otherwise every frame attends to every frame.
        cache: `sample` is instead one chunk starting at `frame_index`, attending to the cache
        (`forward_chunk`). Training calls chunks this way so that a DistributedDataParallel wrapper sees
        the forward it must synchronise gradients for (calling the wrapped module's method skips it).
        """
        if cache is not None:
            return self.forward_chunk(sample, sigma, encoder_hidden_states, pooled, actions, cache, frame_index)
        self._check(sample, sigma, encoder_hidden_states, pooled, actions)
        batch, frames = sample.shape[:2]
        x, skips = self._embed_frames(sample)
        cond = self._condition(sigma, pooled, actions)
        rope = self._rope(torch.arange(frames, device=sample.device), x.dtype)
        mask = None
        if causal:
            chunk_of = torch.arange(frames * self.tokens_per_frame, device=sample.device) // (
                self.tokens_per_frame * self.config.chunk
            )
            mask = chunk_of[:, None] >= chunk_of[None, :]  # (L, L): True = may attend
        x, _ = self._blocks(x, cond, self._text(encoder_hidden_states), rope, rope, None, mask)
        return self._decode(x, cond, skips).to(sample.dtype)

    # ----------------------------------------------------------------------------------- streaming
    def new_cache(self, batch: int, window: int | None = None) -> VideoKVCache:
        """An empty KV cache for `batch` streams. `window` (frames kept before eviction into the sink)
        defaults to the config's; a larger one (e.g. the clip length) never evicts, which makes
        streaming equal `forward(..., causal=True)`."""
        window = self.config.window if window is None else window
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"new_cache window must be a positive number of frames, got {window!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"new_cache batch must be a positive integer, got {batch!r}")
        return VideoKVCache(batch, window, self.tokens_per_frame, self.config.sink, float(self.config.sink_decay))

    def _check_chunk(self, x_chunk: torch.Tensor, cache: VideoKVCache, frame_index: int) -> None:
        if not isinstance(cache, VideoKVCache):
            raise ValueError(f"cache must come from VideoDiT.new_cache, got {type(cache).__name__}")
        if x_chunk.ndim == 5 and x_chunk.shape[1] > cache.window:
            raise ValueError(
                f"chunk of {x_chunk.shape[1]} frames is larger than the cache window of {cache.window} frames; "
                "use chunks of at most `window` frames (config chunk is "
                f"{self.config.chunk}) or a larger window"
            )
        if x_chunk.ndim == 5 and x_chunk.shape[0] != cache.batch:
            raise ValueError(f"chunk batch {x_chunk.shape[0]} does not match the cache's batch {cache.batch}")
        if cache.tokens_per_frame != self.tokens_per_frame or (cache.keys and len(cache.keys) != len(self.blocks)):
            raise ValueError("this cache was made by a VideoDiT of another size; make one with this model's new_cache")
        if isinstance(frame_index, bool) or not isinstance(frame_index, int) or frame_index < 0:
            raise ValueError(f"frame_index must be a non-negative integer (the chunk's first frame), got {frame_index!r}")
        if cache.frames and frame_index != cache.next_frame:
            raise ValueError(
                f"frame_index {frame_index} does not continue the cache (it ends at frame {cache.frames[-1]}); "
                f"pass frame_index={cache.next_frame}"
            )

    def _chunk_core(
        self,
        x_chunk: torch.Tensor,
        sigma: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled: torch.Tensor,
        actions: torch.Tensor | None,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        sink_keys: list[torch.Tensor],
        sink_values: list[torch.Tensor],
        decode: bool,
    ) -> torch.Tensor | list[LayerKV]:
        """One chunk attending to [sink, cached frames, itself]: the velocity (decode=True) or the chunk's
        per-layer (keys, values) (decode=False, for commit_chunk).

        Tensors and shapes only (no frame indices, no cache bookkeeping), so it is what `compile_streaming`
        compiles. Positions are relative to the chunk's first frame (= 0): cached frames continue into the
        chunk (forward_chunk checks it), so they sit at -F .. -1, and the sink (every slot) one frame before
        the oldest, at -F - 1: a fixed offset once the window is full. All built on the device from shapes."""
        chunk, n = x_chunk.shape[1], self.tokens_per_frame
        frames = keys[0].shape[2] // n if keys else 0
        sinks = sink_keys[0].shape[2] // n if (keys and sink_keys) else 0
        contexts = None
        if frames and sinks:
            contexts = [
                (torch.cat([sk, k], dim=2), torch.cat([sv, v], dim=2))
                for sk, sv, k, v in zip(sink_keys, sink_values, keys, values)
            ]
        elif frames:
            contexts = list(zip(keys, values))
        x, skips = self._embed_frames(x_chunk)
        cond = self._condition(sigma, pooled, actions)
        own = torch.arange(chunk, device=x_chunk.device)
        key_positions = torch.arange(-frames - sinks, chunk, device=x_chunk.device).clamp(min=-frames - 1)
        rope_q, rope_k = self._rope(own, x.dtype), self._rope(key_positions, x.dtype)
        x, kvs = self._blocks(x, cond, self._text(encoder_hidden_states), rope_q, rope_k, contexts, None)
        return self._decode(x, cond, skips).to(x_chunk.dtype) if decode else kvs

    def _run_chunk(self, x_chunk, sigma, encoder_hidden_states, pooled, actions, cache: VideoKVCache, decode: bool):
        args = (x_chunk, sigma, encoder_hidden_states, pooled, actions)
        state = (cache.keys, cache.values, cache.sink_keys, cache.sink_values)
        if self._compiled is None:
            return self._chunk_core(*args, *state, decode)
        # The compiled functions are unbound and take the model as an argument, so a deep copy (an EMA, a
        # critic initialised from the student) runs its own weights. Outputs are cloned: a CUDA-graph
        # replay reuses its output buffers, and the cache keeps the keys/values.
        return on_graph_thread(self._compiled_chunk, decode, args, state)  # CUDA graphs live on one thread

    def _compiled_chunk(self, decode: bool, args: tuple, state: tuple):
        out = self._compiled[decode](self, *args, *state)
        return out.clone() if decode else [(k.clone(), v.clone()) for k, v in out]

    def compile_streaming(self, **compile_kwargs) -> None:
        """Compile the per-chunk computation of forward_chunk / commit_chunk with torch.compile(**kwargs);
        e.g. mode="reduce-overhead" (CUDA graphs) for batch-1 streaming, which eager PyTorch spends
        launching kernels. Input checks and cache bookkeeping stay eager, and frame indices never reach
        the compiled code, so an endless stream does not recompile: only the cache's warm-up lengths
        (0, chunk, 2 chunks, ... window frames + sink) compile, once each, for each of the two calls."""
        # One compiled function per call: torch.compile keeps a graph cache (and a recompile limit) per code object.
        # Static shapes: the warm-up lengths are few and known, and a dynamic-shape graph (what torch.compile
        # switches to at the second length) compiles slower and still records a CUDA graph per length.
        compile_kwargs = {"dynamic": False, **compile_kwargs}
        # one graph per (warm-up length, batch, CFG doubling): more than dynamo's default of 8 before it falls back to eager
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        self._compiled = {
            True: torch.compile(type(self)._velocity_core, **compile_kwargs),
            False: torch.compile(type(self)._commit_core, **compile_kwargs),
        }

    def _velocity_core(self, *args) -> torch.Tensor:
        return self._chunk_core(*args, decode=True)

    def _commit_core(self, *args) -> list[LayerKV]:
        return self._chunk_core(*args, decode=False)

    def forward_chunk(
        self,
        x_chunk: torch.Tensor,
        sigma: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled: torch.Tensor,
        actions: torch.Tensor | None,
        cache: VideoKVCache,
        frame_index: int,
        action_ids_checked: bool = False,
    ) -> torch.Tensor:
        """Velocity (B, c, C, H, W) for frames frame_index .. frame_index + c - 1, attending to
        [sink, cached frames, this chunk] (full attention inside the chunk). The cache is not changed, so
        any number of denoising steps can query it. frame_index must continue the cache (or be anything
        for an empty cache; only offsets matter)."""
        self._check(x_chunk, sigma, encoder_hidden_states, pooled, actions, "x_chunk", action_ids_checked)
        self._check_chunk(x_chunk, cache, frame_index)
        return self._run_chunk(x_chunk, sigma, encoder_hidden_states, pooled, actions, cache, decode=True)

    def commit_chunk(
        self,
        clean_chunk: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled: torch.Tensor,
        actions: torch.Tensor | None,
        cache: VideoKVCache,
        frame_index: int,
        action_ids_checked: bool = False,
    ) -> None:
        """Run the finished chunk (B, c, C, H, W) at sigma 0 and append its keys/values to the cache; then
        evict the oldest frames beyond the cache's window into the EMA sink. Runs under the caller's grad
        mode (wrap in torch.no_grad() for rollouts that do not backpropagate through the cache)."""
        batch, chunk = clean_chunk.shape[:2] if clean_chunk.ndim == 5 else (0, 0)
        sigma = torch.zeros(batch, chunk, device=clean_chunk.device, dtype=torch.float32)
        self._check(clean_chunk, sigma, encoder_hidden_states, pooled, actions, "clean_chunk", action_ids_checked)
        self._check_chunk(clean_chunk, cache, frame_index)
        kvs = self._run_chunk(clean_chunk, sigma, encoder_hidden_states, pooled, actions, cache, decode=False)
        if cache.keys:
            cache.keys = [torch.cat([old, k.to(old.dtype)], dim=2) for old, (k, _) in zip(cache.keys, kvs)]
            cache.values = [torch.cat([old, v.to(old.dtype)], dim=2) for old, (_, v) in zip(cache.values, kvs)]
        else:
            cache.keys, cache.values = [k for k, _ in kvs], [v for _, v in kvs]
        cache.frames = cache.frames + list(range(frame_index, frame_index + chunk))
        self._evict(cache)

    @staticmethod
    def _evict(cache: VideoKVCache) -> None:
        """Drop whole frames beyond `window`, oldest first, folding each into the sink (Reward Forcing's
        EMA-Sink). sink = 0 just drops them. New lists are assigned (never edited in place), so a copy
        of the cache made earlier keeps its own state."""
        excess = cache.num_frames - cache.window
        if excess <= 0:
            return
        n = cache.tokens_per_frame
        for e in range(excess):
            if cache.sink:
                frame = slice(e * n, (e + 1) * n)
                cache.sink_keys = _fold_into_sink(cache, cache.sink_keys, [k[:, :, frame] for k in cache.keys])
                cache.sink_values = _fold_into_sink(cache, cache.sink_values, [v[:, :, frame] for v in cache.values])
            cache.evicted += 1
        cache.keys = [k[:, :, excess * n :] for k in cache.keys]
        cache.values = [v[:, :, excess * n :] for v in cache.values]
        cache.frames = cache.frames[excess:]


def _fold_into_sink(cache: VideoKVCache, sink: list[torch.Tensor], frame: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, fold one evicted frame's tokens (B, heads, N, head_dim) into the sink. The sink has
    `cache.sink` slots of N tokens, filled round-robin (slot = evicted count mod sink): a slot's first
    frame initialises it, later ones update it as decay * slot + (1 - decay) * frame. With sink = 1
    (the default) that is one EMA over every evicted frame, in order."""
    if cache.evicted < cache.sink:  # a fresh slot: the frame itself
        return list(frame) if cache.evicted == 0 else [torch.cat([s, f], dim=2) for s, f in zip(sink, frame)]
    n, slot, decay = cache.tokens_per_frame, cache.evicted % cache.sink, cache.sink_decay
    at = slice(slot * n, (slot + 1) * n)
    return [
        torch.cat([s[:, :, : slot * n], decay * s[:, :, at] + (1.0 - decay) * f, s[:, :, (slot + 1) * n :]], dim=2)
        for s, f in zip(sink, frame)
    ]
