"""Masked-diffusion decoding (LLaDA's sampler, Fast-dLLM's threshold decoding and dual KV cache).

Canvas layout: (B, L) tokens whose first `prompt_tokens` positions hold the left-padded prompt and whose
last `gen_length` positions (the answer region) start as [MASK]. The answer region is decoded in blocks,
left to right (semi-autoregressive); within a block, each step runs the network, predicts every masked
position of the block and commits some of them:

- fixed steps (`threshold=None`, LLaDA `generate`): each block gets `steps // num_blocks` steps and
  commits its masked tokens as evenly as possible over them (`num_transfer_tokens`); `low_confidence`
  commits the positions whose predicted token is most probable, `random` commits random positions.
- confidence-adaptive (`threshold=t`, Fast-dLLM / CD4LM): commit every masked position of the block whose
  confidence exceeds t, and always at least the most confident one, so every step makes progress; the
  block ends when it has no masks left. Easy spans finish in one step, hard ones get more.

Pure torch, batch-capable, deterministic given a `torch.Generator` (drawn on the generator's device, so the
same seed gives the same draws whichever device runs the network). `decode` is a generator that yields the
canvas after every step, so a UI can stream it.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

REMASKING = ("low_confidence", "random")


def _positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"DecodeConfig.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode. `steps` is the total over all blocks (fixed mode); with a `threshold` the number of
    steps is adaptive and `steps` is unused (normalised to None). `eos_fill`: once an [EOS] is committed,
    the masked positions after it are committed as [EOS] at once (the model is trained to pad answers with
    [EOS]), so later blocks cost no network calls; it needs `eos_token_id` in `decode`."""

    gen_length: int = 48
    block_length: int = 16
    steps: int | None = 48
    threshold: float | None = None
    remasking: str = "low_confidence"
    use_cache: bool = False
    temperature: float = 0.0
    eos_fill: bool = False

    def __post_init__(self) -> None:
        _positive_int(self.gen_length, "gen_length")
        _positive_int(self.block_length, "block_length")
        if self.gen_length % self.block_length:
            divisors = [d for d in range(1, self.gen_length + 1) if self.gen_length % d == 0]
            raise ValueError(
                f"DecodeConfig.block_length={self.block_length} must divide gen_length={self.gen_length}; "
                f"choose one of {divisors}"
            )
        if self.remasking not in REMASKING:
            raise ValueError(f"DecodeConfig.remasking={self.remasking!r} is unknown; choose one of {', '.join(REMASKING)}")
        if self.threshold is not None:
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float) or not 0 < self.threshold <= 1:
                raise ValueError(f"DecodeConfig.threshold must be in (0, 1], got {self.threshold!r}")
            if self.remasking != "low_confidence":
                raise ValueError(
                    "DecodeConfig.remasking='random' has no confidence to compare with a threshold; "
                    "use remasking='low_confidence' with threshold, or threshold=None with random remasking"
                )
            object.__setattr__(self, "steps", None)  # adaptive: the threshold decides the number of steps
        else:
            if self.steps is None:
                raise ValueError("DecodeConfig.steps is required when threshold is None (fixed-step decoding)")
            _positive_int(self.steps, "steps")
            if self.steps % self.num_blocks:
                raise ValueError(
                    f"DecodeConfig.steps={self.steps} must be a multiple of the number of blocks "
                    f"(gen_length/block_length = {self.num_blocks})"
                )
            if self.steps > self.gen_length:
                raise ValueError(
                    f"DecodeConfig.steps={self.steps} must not exceed gen_length={self.gen_length}: "
                    "every step commits at least one token"
                )
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, int | float) or not 0 <= self.temperature:
            raise ValueError(f"DecodeConfig.temperature must be a number >= 0 (0 = greedy), got {self.temperature!r}")
        if self.temperature == float("inf"):
            raise ValueError("DecodeConfig.temperature must be finite")
        for name in ("use_cache", "eos_fill"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DecodeConfig.{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int | None:
        return None if self.steps is None else self.steps // self.num_blocks


@dataclass
class DecodeState:
    """The canvas after a step. committed_step (B, gen_length): the step that committed each answer token
    (0: given in the input, -1: still masked). step counts decoding steps, nfe network calls (a full-canvas
    call and a cached block call count 1 each)."""

    tokens: torch.Tensor
    committed_step: torch.Tensor
    step: int
    nfe: int
    done: bool


def num_transfer_tokens(block_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) tokens to commit per step: each row's masked count split as evenly as possible, the
    remainder going to the first steps (LLaDA's get_num_transfer_tokens)."""
    count = block_masked.sum(dim=1, keepdim=True)
    schedule = (count // steps).expand(-1, steps).clone()
    schedule += torch.arange(steps, device=block_masked.device) < (count % steps)
    return schedule


def _model_device(model) -> torch.device | None:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return None


def _select_top(confidence: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: the `count[b]` highest-confidence positions of each row (ties: lowest index first)."""
    order = confidence.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks < count[:, None]


def _random(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _predict(
    logits: torch.Tensor, suppress: list[int], config: DecodeConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted tokens, confidence) for (B, N, V) logits. Greedy at temperature 0, else Gumbel-max
    sampling from softmax(logits / temperature). Confidence is the predicted token's probability under the
    untempered distribution (LLaDA), or uniform noise for random remasking."""
    logits = logits.float()
    logits[..., suppress] = float("-inf")  # never commit [MASK] or [PAD]
    if config.temperature > 0:
        uniform = _random(logits.shape, generator, logits.device).clamp_(min=1e-20, max=1.0 - 1e-7)
        tokens = (logits / config.temperature - torch.log(-torch.log(uniform))).argmax(dim=-1)
    else:
        tokens = logits.argmax(dim=-1)
    if config.remasking == "random":
        return tokens, _random(tokens.shape, generator, logits.device)
    probs = logits.softmax(dim=-1)
    return tokens, probs.gather(-1, tokens[..., None]).squeeze(-1)


def _check_inputs(model, input_ids, attention_mask, prompt_tokens, config, generator, mask_token_id) -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, prompt_tokens + gen_length), got {tuple(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    if isinstance(prompt_tokens, bool) or not isinstance(prompt_tokens, int) or prompt_tokens < 0:
        raise ValueError(f"prompt_tokens must be an integer >= 0, got {prompt_tokens!r}")
    length = input_ids.shape[1]
    if prompt_tokens + config.gen_length != length:
        raise ValueError(
            f"the canvas has {length} tokens but prompt_tokens={prompt_tokens} + gen_length={config.gen_length} = "
            f"{prompt_tokens + config.gen_length}; build the canvas with the same gen_length"
        )
    model_config = getattr(model, "config", None)
    context = getattr(model_config, "max_position_embeddings", None)
    if isinstance(context, int) and length > context:
        raise ValueError(
            f"the canvas ({prompt_tokens} prompt + {config.gen_length} generated = {length} tokens) is beyond the model's "
            f"context of {context} tokens; shorten the prompt or the generation length"
        )
    vocab = getattr(model_config, "vocab_size", None)
    if isinstance(vocab, int) and not 0 <= mask_token_id < vocab:
        raise ValueError(f"mask_token_id={mask_token_id} is outside the model's vocabulary [0, {vocab})")
    if config.use_cache and not getattr(model, "supports_kv_context", False):
        raise ValueError(
            f"use_cache=True needs a model that accepts a KV `context` (MaskedDiffusionLM); {type(model).__name__} "
            "does not: decode it with use_cache=False"
        )
    if generator is None and (config.temperature > 0 or config.remasking == "random"):
        raise ValueError("temperature > 0 and remasking='random' draw random numbers: pass a torch.Generator (seeded)")


class _Network:
    """Calls the model for one block: full canvas, or (cached) the block's tokens against the dual cache."""

    def __init__(self, model, attention_mask: torch.Tensor, use_cache: bool) -> None:
        self.model = model
        self.attention_mask = attention_mask
        self.use_cache = use_cache
        self.ours = bool(getattr(model, "supports_kv_context", False))
        self.context = None

    def full(self, tokens: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if self.use_cache:
            from engines.dllm import context_outside

            out = self.model(input_ids=tokens, attention_mask=self.attention_mask, return_kv=True)
            # Refreshed at every block start: there the cache is exact (see context_outside's note).
            self.context = context_outside(out.kv, self.attention_mask, start, end)
            return out.logits[:, start:end]
        # Other masked LMs (BERT and co.) expect an integer mask.
        mask = self.attention_mask if self.ours else self.attention_mask.long()
        return self.model(input_ids=tokens, attention_mask=mask).logits[:, start:end]

    def block(self, tokens: torch.Tensor, start: int, end: int) -> torch.Tensor:
        batch = tokens.shape[0]
        positions = torch.arange(start, end, device=tokens.device).expand(batch, -1)
        out = self.model(
            input_ids=tokens[:, start:end],
            attention_mask=self.attention_mask[:, start:end],
            position_ids=positions,
            context=self.context,
        )
        return out.logits


@torch.no_grad()
def decode(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_tokens: int,
    config: DecodeConfig,
    generator: torch.Generator | None = None,
    *,
    mask_token_id: int,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
    suppress_token_ids: Sequence[int] = (),
) -> Iterator[DecodeState]:
    """Decode the answer region of `input_ids` (B, prompt_tokens + gen_length); yields a DecodeState after
    every step and a final one with done=True.

    model: our MaskedDiffusionLM (the only one that may use_cache) or any masked LM called as
    model(input_ids=..., attention_mask=...).logits. Answer positions that are not [MASK] in the input are
    kept (committed_step 0). [MASK], [PAD] (pad_token_id, default model.config.pad_token_id) and
    `suppress_token_ids` are never committed. `eos_token_id` is needed by config.eos_fill.
    """
    _check_inputs(model, input_ids, attention_mask, prompt_tokens, config, generator, mask_token_id)
    if config.eos_fill and eos_token_id is None:
        raise ValueError("DecodeConfig.eos_fill=True needs eos_token_id")
    device = _model_device(model) or input_ids.device
    tokens = input_ids.to(device).clone()
    attention_mask = attention_mask.to(device=device, dtype=torch.bool)
    if pad_token_id is None:
        pad_token_id = getattr(getattr(model, "config", None), "pad_token_id", None)
    suppress = sorted({mask_token_id, *suppress_token_ids} | ({pad_token_id} if pad_token_id is not None else set()))
    if eos_token_id is not None and eos_token_id in suppress:
        raise ValueError(f"eos_token_id={eos_token_id} is also a suppressed token ([MASK], [PAD] or suppress_token_ids)")

    answer = slice(prompt_tokens, tokens.shape[1])
    committed = torch.where(tokens[:, answer] == mask_token_id, -1, 0)
    network = _Network(model, attention_mask, config.use_cache)
    step = nfe = 0
    block_length = config.block_length

    def state(done: bool) -> DecodeState:
        return DecodeState(tokens.clone(), committed.clone(), step, nfe, done)

    for b in range(config.num_blocks):
        start, end = prompt_tokens + b * block_length, prompt_tokens + (b + 1) * block_length
        local = slice(b * block_length, (b + 1) * block_length)  # the block within the answer region
        masked = tokens[:, start:end] == mask_token_id
        if not masked.any():
            continue  # already decoded (given in the input, or filled with [EOS])
        schedule = None if config.threshold is not None else num_transfer_tokens(masked, config.steps_per_block)
        i = 0
        while masked.any() and (schedule is None or i < schedule.shape[1]):
            logits = network.full(tokens, start, end) if i == 0 or not config.use_cache else network.block(tokens, start, end)
            nfe += 1
            step += 1
            predicted, confidence = _predict(logits, suppress, config, generator)
            confidence = torch.where(masked, confidence, float("-inf"))
            if schedule is not None:
                commit = _select_top(confidence, torch.minimum(schedule[:, i], masked.sum(dim=1))) & masked
            else:
                # Every confident position, plus each unfinished row's most confident one (progress guaranteed).
                best = _select_top(confidence, masked.any(dim=1).long())
                commit = masked & ((confidence > config.threshold) | best)
            tokens[:, start:end] = torch.where(commit, predicted, tokens[:, start:end])
            committed[:, local] = torch.where(commit, step, committed[:, local])
            if config.eos_fill:
                _fill_after_eos(tokens, committed, answer, mask_token_id, eos_token_id, step)
            masked = tokens[:, start:end] == mask_token_id
            i += 1
            yield state(False)
    yield state(True)


def _fill_after_eos(
    tokens: torch.Tensor, committed: torch.Tensor, answer: slice, mask_token_id: int, eos_token_id: int, step: int
) -> None:
    """Commit [EOS] at every masked answer position after the first committed [EOS] (in place)."""
    region = tokens[:, answer]
    is_eos = region == eos_token_id
    positions = torch.arange(region.shape[1], device=region.device)
    first = torch.where(is_eos, positions, region.shape[1]).min(dim=1, keepdim=True).values
    fill = (positions > first) & (region == mask_token_id)
    tokens[:, answer] = torch.where(fill, eos_token_id, region)
    committed.copy_(torch.where(fill, step, committed))


def decode_final(*args, **kwargs) -> DecodeState:
    """Run `decode` to the end and return its final state (what evaluations and benchmarks need)."""
    return collections.deque(decode(*args, **kwargs), maxlen=1)[0]
