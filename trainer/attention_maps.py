"""Cross-attention grounding: teach a UNet's cross-attention where each object of the caption is.

Why: the shapes teacher learned a bag of words. It draws the right shapes and the right colours, but
swaps colours between shapes and places objects left/right at chance, even with a text refiner that
exposes each object's colour and side to a single attention head (configs/shapes-teacher-binding.yaml).
Binding and layout are decided at high noise, where the denoising loss gains little from getting
them right, so the loss never pushes cross-attention to tie "red circle" to the circle's pixels.
TokenCompose (Wang et al. 2024) supervises that tie directly with segmentation masks; the shapes world
gives exact ones for free, and the words that describe each object (`Scene.spans`).

For every cross-attention layer, with A(p, t) the head-averaged attention of pixel p to token t and
a_s(p) = sum over spec s's phrase tokens of A(p, t):
  token loss: (1 - sum_p a_s(p) M_s(p) / sum_p a_s(p))^2 -- the phrase's attention falls inside
      its objects' mask M_s (TokenCompose's L_token);
  pixel loss: BCE(a_s(p), M_s(p)) over all pixels -- object pixels read their own phrase, others
      do not (TokenCompose's L_pixel).
  order loss (position scenes): relu(margin - s (c_1 - c_0)) along the relation's axis, c_s the centroid
      of a_s over the map and s = +1 when spec 0 must lie left of / above spec 1, -1 for right of / below.

Why the order loss: the mask losses ask attention to find objects, which at sigma ~ 1 are not in the
image yet; where they will be is random, so those losses stay high there (0.5 with sigma^16 weights on an
H200) and teach little. Which object lies on which side, though, the caption alone decides: the order of
the two phrases' attention is a target the network can meet at any noise level.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from trainer.worlds import shapes

MAX_SPECS = 2  # a condition describes at most two groups of objects


def phrase_token_masks(offsets: torch.Tensor, spans: list[tuple[tuple[int, int], ...]]) -> torch.Tensor:
    """(B, MAX_SPECS, T) bool: which tokens fall inside each spec's words. `offsets` is a fast
    tokenizer's (B, T, 2) character offset mapping (special and padding tokens are (0, 0))."""
    if offsets.shape[0] != len(spans):
        raise ValueError(f"{offsets.shape[0]} offset rows for {len(spans)} span lists")
    start, end = offsets[..., 0], offsets[..., 1]
    real = end > start
    out = torch.zeros(offsets.shape[0], MAX_SPECS, offsets.shape[1], dtype=torch.bool)
    for i, row in enumerate(spans):
        if len(row) > MAX_SPECS:
            raise ValueError(f"a caption describes at most {MAX_SPECS} groups of objects, got {len(row)} spans")
        for s, (a, b) in enumerate(row):
            out[i, s] = real[i] & (start[i] < b) & (end[i] > a)  # any overlap: "grass-green" is 3 tokens
    return out


def object_specs(scenes: list[shapes.Scene]) -> torch.Tensor:
    """(B, MAX_OBJECTS) long: which condition spec each object slot belongs to (-1: no object).
    Objects are placed spec by spec (`shapes._place`), `count` of each."""
    out = torch.full((len(scenes), shapes.MAX_OBJECTS), -1, dtype=torch.long)
    for i, scene in enumerate(scenes):
        owners = [s for s, spec in enumerate(scene.condition.specs) for _ in range(spec.count)]
        if len(owners) != len(scene.objects):
            raise ValueError(f"scene has {len(scene.objects)} objects but its condition describes {len(owners)}")
        out[i, : len(owners)] = torch.tensor(owners)
    return out


def spec_coverage(coverage: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
    """Per-object coverage (B, MAX_OBJECTS, H, W) -> per-spec coverage (B, MAX_SPECS, H, W): the
    union of the spec's objects (they never overlap, so a sum)."""
    onehot = torch.nn.functional.one_hot(owners.clamp(min=0), MAX_SPECS).to(coverage.dtype)
    onehot = onehot * (owners >= 0).unsqueeze(-1).to(coverage.dtype)  # (B, K, S)
    return torch.einsum("bkhw,bks->bshw", coverage, onehot)


@contextlib.contextmanager
def record_cross_attention(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect every cross-attention layer's head-averaged probabilities (B, pixels, tokens), float32,
    with gradients, during forward passes inside the block.

    The probabilities are recomputed from the layer's own query and key projections of its inputs:
    the layer itself keeps its fused attention kernel, which never materialises them."""
    layers = [m for m in model.modules() if getattr(m, "is_cross_attention", False) and hasattr(m, "to_k")]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no cross-attention layers to ground")
    maps: list[torch.Tensor] = []

    def hook(attn, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states")
        if context is None or hidden.ndim != 3:
            raise ValueError("cross-attention grounding needs (B, pixels, C) inputs and encoder states")
        b, p, _ = hidden.shape
        q = attn.to_q(hidden).float().view(b, p, attn.heads, -1).transpose(1, 2)
        k = attn.to_k(context).float().view(b, context.shape[1], attn.heads, -1).transpose(1, 2)
        with torch.autocast(hidden.device.type, enabled=False):  # scores in float32, as the loss reads them
            probs = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)  # (B, heads, P, T)
        maps.append(probs.mean(1))

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def grounding_losses(
    maps: list[torch.Tensor], phrase_tokens: torch.Tensor, coverage: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token loss, pixel loss), each averaged over layers and, weighted by `weights`, over the
    (image, spec) pairs that have a phrase and an object.

    maps: (B, P, T) per layer with P a square number of pixels; phrase_tokens: (B, S, T) bool;
    coverage: (B, S, H, W) spec coverage in [0, 1] at the image resolution; weights: (B,) per-image
    weights >= 0, or bool (False where classifier-free-guidance dropout removed the caption)."""
    if not maps:
        raise ValueError("no cross-attention maps were recorded")
    if weights.shape != coverage.shape[:1] or (weights < 0).any():
        raise ValueError(f"weights must be {tuple(coverage.shape[:1])} and >= 0, got {tuple(weights.shape)}")
    # float32 throughout: under bf16 autocast 1 - 1e-6 rounds to 1 and the pixel loss's log(1 - a) is -inf
    with torch.autocast(coverage.device.type, enabled=False):
        return _grounding_losses([m.float() for m in maps], phrase_tokens.float(), coverage.float(), weights.float())


def _grounding_losses(
    maps: list[torch.Tensor], phrase: torch.Tensor, coverage: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    valid = (phrase.sum(-1) > 0) & (coverage.flatten(2).sum(-1) > 0)  # (B, S)
    weight = valid.float() * weights[:, None]
    count = weight.sum().clamp(min=1e-6)
    token_total = coverage.new_zeros(())
    pixel_total = coverage.new_zeros(())
    for probs in maps:
        side = int(round(probs.shape[1] ** 0.5))
        if side * side != probs.shape[1]:
            raise ValueError(f"attention over {probs.shape[1]} pixels is not a square map")
        mask = torch.nn.functional.adaptive_avg_pool2d(coverage, side).flatten(2)  # (B, S, P)
        mass = torch.einsum("bpt,bst->bsp", probs, phrase).clamp(1e-6, 1 - 1e-6)  # a_s(p)
        inside = (mass * mask).sum(-1) / mass.sum(-1)
        token_total = token_total + (((1 - inside) ** 2) * weight).sum() / count
        # written out: binary_cross_entropy refuses to run under autocast
        bce = -(mask * mass.log() + (1 - mask) * (1 - mass).log()).mean(-1)
        pixel_total = pixel_total + (bce * weight).sum() / count
    return token_total / len(maps), pixel_total / len(maps)


# relation -> (axis: 0 = x, 1 = y; sign: +1 when spec 0's coordinate must be the smaller one)
RELATION_AXES = {"left_of": (0, 1.0), "right_of": (0, -1.0), "above": (1, 1.0), "below": (1, -1.0)}


def relation_targets(conditions: list[shapes.Condition]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the axis (B,) long and sign (B,) float along which spec 1 must follow spec 0; sign 0
    where the condition relates nothing (its order loss is off)."""
    axis = torch.zeros(len(conditions), dtype=torch.long)
    sign = torch.zeros(len(conditions))
    for i, condition in enumerate(conditions):
        if condition.relation is not None:
            axis[i], sign[i] = RELATION_AXES[condition.relation]
    return axis, sign


def attention_centroids(mass: torch.Tensor) -> torch.Tensor:
    """(B, S, P) non-negative attention mass over a square map of P pixels (row-major) -> (B, S, 2)
    centroids (x, y) in (0, 1)."""
    side = int(round(mass.shape[-1] ** 0.5))
    if side * side != mass.shape[-1]:
        raise ValueError(f"attention over {mass.shape[-1]} pixels is not a square map")
    weights = mass / mass.sum(-1, keepdim=True).clamp(min=1e-9)
    grid = (torch.arange(side, device=mass.device, dtype=mass.dtype) + 0.5) / side
    xs, ys = grid.repeat(side), grid.repeat_interleave(side)  # pixel p = row * side + column
    return torch.stack([(weights * xs).sum(-1), (weights * ys).sum(-1)], -1)


def relation_order_loss(
    maps: list[torch.Tensor],
    phrase_tokens: torch.Tensor,
    axis: torch.Tensor,
    sign: torch.Tensor,
    weights: torch.Tensor,
    margin: float = 0.1,
) -> torch.Tensor:
    """Hinge on the order of the two phrases' attention centroids along each relation's axis, averaged
    over layers and, weighted by `weights` (B,), over the images that relate two phrases (sign != 0).
    Zero once spec 1's centroid follows spec 0's by `margin` (a fraction of the image side)."""
    if not maps:
        raise ValueError("no cross-attention maps were recorded")
    if not (axis.shape == sign.shape == weights.shape == phrase_tokens.shape[:1]):
        raise ValueError(
            f"axis, sign and weights must each be ({phrase_tokens.shape[0]},), got "
            f"{tuple(axis.shape)}, {tuple(sign.shape)}, {tuple(weights.shape)}"
        )
    if (weights < 0).any() or margin < 0:
        raise ValueError("weights and margin must be >= 0")
    with torch.autocast(phrase_tokens.device.type, enabled=False):
        phrase = phrase_tokens.float()
        valid = (sign != 0) & (phrase[:, :2].sum(-1) > 0).all(-1)
        weight = valid.float() * weights.float()
        count = weight.sum().clamp(min=1e-6)
        total = phrase.new_zeros(())
        for probs in maps:
            mass = torch.einsum("bpt,bst->bsp", probs.float(), phrase[:, :2])
            along = attention_centroids(mass).gather(-1, axis.view(-1, 1, 1).expand(-1, 2, 1)).squeeze(-1)  # (B, 2)
            gap = sign.float() * (along[:, 1] - along[:, 0])
            total = total + (torch.relu(margin - gap) * weight).sum() / count
        return total / len(maps)
