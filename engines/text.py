"""Text engine: a masked-diffusion LM that unmasks a canvas of tokens, streamed after every step.

It drives our shipped models (engines/dllm.py, with the block-wise KV cache) and public masked LMs
loadable with transformers (no cache) through the same decoders (engines/text_decoding.py).
The canvas is [PAD…][BOS] prompt [SEP] | answer region of `gen_length` tokens, all [MASK] at first.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.base import collect
from engines.card import ModelCard
from engines.errors import BackendUnavailable, CheckpointError, InvalidRequest
from engines.requests import TextRequest, resolve_seed
from engines.results import Result, Timings
from engines.text_decoding import DecodeConfig, decode

# What a checkpoint without a Distillery card (a public masked LM) decodes with by default.
EXTERNAL_DECODING = {"gen_length": 64, "block_length": 32, "steps": 64, "max_prompt_tokens": 64, "use_cache": False}
MASK_GLYPH = "[MASK]"
TRUST_REMOTE_CODE_ENV = "DISTILLERY_TRUST_REMOTE_CODE"  # set by `python app.py --trust-remote-code`


@dataclass(frozen=True)
class BatchDecode:
    texts: list[str]
    nfe: int  # network calls, summed over chunks
    run_ms: float
    committed_step: torch.Tensor  # (N, gen_length)


def external_card(path: str | Path) -> ModelCard:
    """A card for a masked-LM directory that has none (a public checkpoint): text, default decoding."""
    from engines.card import read_json

    directory = Path(path)
    config = read_json(directory, "config.json")
    context = int(config.get("max_position_embeddings") or 0)
    if context < 2:
        raise CheckpointError(f"{directory}/config.json has no usable max_position_embeddings; cannot size a canvas")
    decoding = dict(EXTERNAL_DECODING)
    room = min(decoding["gen_length"] + decoding["max_prompt_tokens"], context)
    decoding["gen_length"] = decoding["steps"] = max(1, room // 2)
    decoding["max_prompt_tokens"] = room - decoding["gen_length"]
    decoding["block_length"] = decoding["gen_length"]
    model_id = re.sub(r"[^A-Za-z0-9._-]", "-", directory.resolve().name)[:100] or "external"
    return ModelCard(
        id=model_id,
        modality="text",
        role="teacher",
        method="external",
        default_steps=decoding["steps"],
        resolution=context,
        path=directory,
        description=f"public masked LM loaded from {directory} ({', '.join(config.get('architectures') or ['?'])})",
        decoding=decoding,
    )


class TextEngine:
    """Thread-safe: requests share only read-only weights; each call makes its own canvas."""

    def __init__(self, card: ModelCard, model, tokenizer, kind: str, device: torch.device, load_ms: float = 0.0) -> None:
        self.card, self.model, self.tokenizer, self.kind, self.device = card, model, tokenizer, kind, device
        self.backend = "torch"
        self.load_ms = load_ms
        self._first_call = threading.Event()
        defaults = {**EXTERNAL_DECODING, **card.decoding}
        self.gen_length = int(defaults["gen_length"])
        self.block_length = int(defaults["block_length"])
        self.default_steps = defaults.get("steps")
        self.default_threshold = defaults.get("threshold")
        self.default_use_cache = bool(defaults.get("use_cache")) and self.supports_cache
        self.max_prompt_tokens = int(defaults["max_prompt_tokens"])
        # once an [EOS] is committed, fill the rest with [EOS] at no network cost (a shipped decoding choice)
        self.eos_fill = bool(defaults.get("eos_fill", False))
        self.context = int(getattr(model.config, "max_position_embeddings", self.max_prompt_tokens + self.gen_length))

    @classmethod
    def from_card(cls, card: ModelCard, device: torch.device, text_encoder=None, backend: str = "torch") -> TextEngine:
        from engines.dllm import load_text_model

        if backend != "torch":
            raise BackendUnavailable(
                f"the text engine runs in torch only (asked for {backend!r}); its speed comes from the distilled decoder "
                "and the block-wise KV cache"
            )
        start = time.perf_counter()
        # Public checkpoints that ship modelling code (LLaDA, Dream) run it only when the user opted in.
        trust = card.method == "external" and os.environ.get(TRUST_REMOTE_CODE_ENV, "0") == "1"
        model, tokenizer, kind = load_text_model(str(card.path), device, trust_remote_code=trust)
        return cls(card, model, tokenizer, kind, device, (time.perf_counter() - start) * 1000)

    @property
    def supports_cache(self) -> bool:
        from engines.dllm import KIND_OURS

        return self.kind == KIND_OURS

    # ------------------------------------------------------------------ requests -> decoder settings
    def decode_config(self, request: TextRequest) -> DecodeConfig:
        gen_length = request.gen_length or self.gen_length
        block = request.block_length or (self.block_length if gen_length % self.block_length == 0 else gen_length)
        if gen_length % block:
            raise InvalidRequest(f"block length {block} does not divide the generation length {gen_length}")
        if self.max_prompt_tokens + gen_length > self.context:
            raise InvalidRequest(
                f"generation length {gen_length} is beyond the model's context: {self.context} tokens hold "
                f"{self.max_prompt_tokens} of prompt and at most {self.context - self.max_prompt_tokens} generated"
            )
        use_cache = self.default_use_cache if request.use_cache is None else request.use_cache
        if use_cache and not self.supports_cache:
            raise InvalidRequest(
                f"{self.card.id} has no block-wise KV cache (only Distillery masked-diffusion LMs do); untick it"
            )
        threshold = request.threshold
        if threshold is None and request.steps is None and gen_length == self.gen_length:
            threshold = self.default_threshold
        steps = None
        if threshold is None:
            blocks = gen_length // block
            steps = request.steps or (self.default_steps if gen_length == self.gen_length else None) or gen_length
            if steps % blocks:
                raise InvalidRequest(
                    f"steps ({steps}) must be a multiple of the number of blocks ({blocks} = {gen_length} / {block}); "
                    f"try {max(blocks, steps // blocks * blocks)}"
                )
            if steps > gen_length:
                raise InvalidRequest(
                    f"steps ({steps}) cannot exceed the generation length ({gen_length}): each step commits a token"
                )
        try:
            return DecodeConfig(
                gen_length=gen_length,
                block_length=block,
                steps=steps,
                threshold=threshold,
                remasking=request.remasking,
                use_cache=use_cache,
                eos_fill=self.eos_fill,
            )
        except ValueError as err:
            raise InvalidRequest(str(err)) from err

    def canvas(self, prompts: list[str], gen_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        from engines.text_canvas import PromptTooLong, build_canvas

        try:  # tokenises each prompt once: the canvas builder measures it
            ids, attention = build_canvas(self.tokenizer, prompts, gen_length, self.max_prompt_tokens)
        except PromptTooLong as err:
            raise InvalidRequest(
                f"the prompt is {err.tokens} tokens long; {self.card.id} reads at most {err.budget}. Shorten it."
            ) from err
        return ids.to(self.device), attention.to(self.device)

    def _answer(self, tokens: torch.Tensor) -> tuple[str, tuple[str, ...]]:
        """The decoded answer (up to the first [EOS]) and the canvas as display strings."""
        from engines.text_canvas import decode_answers

        region = tokens[self.max_prompt_tokens :].tolist()
        mask_id = self.tokenizer.mask_token_id
        canvas = tuple(MASK_GLYPH if t == mask_id else self.tokenizer.decode([t]) for t in region)
        return decode_answers(self.tokenizer, tokens.unsqueeze(0).cpu(), self.max_prompt_tokens)[0], canvas

    def _decode(self, ids: torch.Tensor, attention: torch.Tensor, config: DecodeConfig, generator: torch.Generator):
        return decode(
            self.model,
            ids,
            attention,
            self.max_prompt_tokens,
            config,
            generator=generator,
            mask_token_id=self.tokenizer.mask_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )

    # ------------------------------------------------------------------ the engine contract
    @torch.no_grad()
    def stream(self, request: TextRequest) -> Iterator[Result]:
        if not isinstance(request, TextRequest):
            raise InvalidRequest(f"the text engine takes a TextRequest, got {type(request).__name__}")
        config = self.decode_config(request)
        seed = resolve_seed(request.seed)
        ids, attention = self.canvas([request.prompt], config.gen_length)
        load_ms = 0.0 if self._first_call.is_set() else self.load_ms
        self._first_call.set()
        total = config.steps or config.gen_length  # adaptive decoding: an upper bound, usually far fewer
        generator = torch.Generator(device=self.device).manual_seed(seed)
        start = time.perf_counter()
        for state in self._decode(ids, attention, config, generator):
            text, canvas = self._answer(state.tokens[0])
            timings = Timings(load_ms, 0.0, (time.perf_counter() - start) * 1000, state.nfe)
            yield Result(
                [],
                seed,
                state.step,
                state.step if state.done else total,
                timings,
                state.done,
                self.card.id,
                self.backend,
                text=text,
                canvas=canvas,
                committed_step=tuple(state.committed_step[0].tolist()),
            )

    def generate(self, request: TextRequest) -> Result:
        return collect(self.stream(request))

    @torch.no_grad()
    def decode_batch(self, prompts: list[str], config: DecodeConfig, seed: int = 0, batch_size: int = 256) -> BatchDecode:
        """Answers for many prompts (benchmarks, evaluation), in chunks of `batch_size`."""
        from engines.text_canvas import decode_answers

        texts, nfe, committed = [], 0, []
        start = time.perf_counter()
        for first in range(0, len(prompts), batch_size):
            ids, attention = self.canvas(prompts[first : first + batch_size], config.gen_length)
            generator = torch.Generator(device=self.device).manual_seed(seed + first)
            final = None
            for state in self._decode(ids, attention, config, generator):
                final = state
            texts += decode_answers(self.tokenizer, final.tokens.cpu(), self.max_prompt_tokens)
            committed.append(final.committed_step.cpu())
            nfe += final.nfe
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return BatchDecode(texts, nfe, (time.perf_counter() - start) * 1000, torch.cat(committed))

    def unload(self) -> None:
        self.model = None
