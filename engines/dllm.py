"""A masked diffusion language model (LLaDA / MDLM formulation) as a transformers `PreTrainedModel`.

The network is a bidirectional (non-causal) pre-norm transformer: RMSNorm, rotary position embeddings,
SwiGLU MLP, torch SDPA attention with a key-padding mask, input and output embeddings tied. It predicts
the clean token at every position of a partly masked canvas; the decoders in `engines/text_decoding.py`
turn those predictions into text.

Block-wise KV cache (Fast-dLLM's "dual cache"): `forward(..., return_kv=True)` returns every layer's
rotated keys and values; a later call can pass the keys/values of the positions OUTSIDE the current
block as `context` and run only the block's tokens. Queries then cover the block only, so a step costs
O(block) projections/MLP and O(block x canvas) attention instead of O(canvas) and O(canvas^2).

`load_text_model` loads this model or any transformers masked LM (BERT/RoBERTa/ModernBERT style, whose
tokenizer has a mask token) from a local directory or the offline Hugging Face cache, safetensors only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.utils import ModelOutput

from engines.card import read_json
from engines.checkpoints import check_safetensors
from engines.errors import CheckpointError

MODEL_TYPE = "distillery_mdlm"
KIND_OURS = "distillery_mdlm"  # our model: supports the block-wise KV cache
KIND_MASKED_LM = "masked_lm"  # any other transformers masked LM: same decoders, no KV cache

# Per layer: (keys, values) of shape (B, heads, L, head_dim), keys already rotated.
LayerKV = tuple[torch.Tensor, torch.Tensor]
# Per layer: (keys, values, key_mask (B, Lc) bool, True = attend) of positions outside the queried tokens.
LayerContext = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class MaskedDiffusionLMConfig(PreTrainedConfig):
    """Hyper-parameters of `MaskedDiffusionLM`. The defaults make a ~11 M parameter model (vocab 2048)."""

    model_type = MODEL_TYPE
    # transformers utilities read the standard names; ours are shorter.
    attribute_map = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads"}

    vocab_size: int = 2048
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 6
    intermediate_size: int = 1024
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    dropout: float = 0.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    mask_token_id: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    sep_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MaskedDiffusionLMConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"MaskedDiffusionLMConfig.hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"MaskedDiffusionLMConfig: head size hidden_size/num_heads={self.hidden_size // self.num_heads} must be even "
                "(rotary embeddings rotate pairs of channels)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MaskedDiffusionLMConfig.dropout must be in [0, 1), got {self.dropout}")
        for name in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"MaskedDiffusionLMConfig.{name}={value} is outside the vocabulary [0, {self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class MaskedDiffusionOutput(ModelOutput):
    """logits (B, L, V); kv: per layer (keys, values) (B, heads, L, head_dim) when `return_kv`, else None."""

    logits: torch.Tensor | None = None
    kv: tuple[LayerKV, ...] | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, 1, L, head_dim) for the rotate-half convention. Computed per call (cheap:
    L x head_dim/2) rather than kept in a buffer, so loading on the meta device never loses it."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    angles = position_ids.float()[..., None] * inv_freq  # (B, L, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, config: MaskedDiffusionLMConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj.residual_output = True  # scaled init (MaskedDiffusionLM._init_weights)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor | None,
        context: LayerContext | None,
    ) -> tuple[torch.Tensor, LayerKV]:
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values, mask = k, v, key_mask
        if context is not None:
            ctx_k, ctx_v, ctx_mask = context
            keys, values = torch.cat([ctx_k, k], dim=2), torch.cat([ctx_v, v], dim=2)
            own = key_mask if key_mask is not None else torch.ones(batch, length, dtype=torch.bool, device=x.device)
            mask = torch.cat([ctx_mask.to(torch.bool), own], dim=1)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, Lk): broadcast over heads and queries
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1)), (k, v)


class SwiGLU(nn.Module):
    def __init__(self, config: MaskedDiffusionLMConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.down_proj.residual_output = True  # scaled init (MaskedDiffusionLM._init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: MaskedDiffusionLMConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, key_mask, context) -> tuple[torch.Tensor, LayerKV]:
        attended, kv = self.attn(self.attn_norm(x), cos, sin, key_mask, context)
        x = x + self.dropout(attended)
        return x + self.dropout(self.mlp(self.mlp_norm(x))), kv


class MaskedDiffusionLM(PreTrainedModel):
    """Bidirectional transformer predicting clean tokens at every position of a masked canvas.

    Always uses torch SDPA (`_supports_sdpa` only tells transformers not to fall back to eager)."""

    config_class = MaskedDiffusionLMConfig
    config: MaskedDiffusionLMConfig
    base_model_prefix = "mdlm"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}  # transformers v5: {target: source}
    supports_kv_context = True  # the decoders check this before using the block-wise KV cache

    def __init__(self, config: MaskedDiffusionLMConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if getattr(module, "residual_output", False):
            # GPT-2's residual scaling: each residual branch's output projection starts smaller, so the
            # residual stream's variance does not grow with depth at initialisation.
            std = self.config.initializer_range / (2 * self.config.num_layers) ** 0.5
            init.normal_(module.weight, mean=0.0, std=std)
        else:
            super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        context: tuple[LayerContext, ...] | None = None,
        return_kv: bool = False,
    ) -> MaskedDiffusionOutput:
        """Logits for every position of `input_ids` (B, L).

        attention_mask (B, L), True/1 at real tokens: keys at False positions are ignored ([PAD]).
        position_ids (B, L): default 0..L-1 (the canvas index; left padding is masked, so relative
        distances between real tokens are the same as with pad-skipping positions).
        context: per layer (keys, values, key_mask) of OTHER positions of the same sequence, computed
        earlier with `return_kv=True` (already rotated); the queries of `input_ids` attend to the context
        keys and their own. `position_ids` is then required: only the caller knows where the tokens sit.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        batch, length = input_ids.shape
        device = input_ids.device
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}"
                )
            attention_mask = attention_mask.to(device=device, dtype=torch.bool)
        if context is not None:
            if position_ids is None:
                raise ValueError("position_ids are required with `context`: they say where the queried tokens sit")
            if len(context) != len(self.layers):
                raise ValueError(f"context has {len(context)} layers, the model has {len(self.layers)}")
        if position_ids is None:
            position_ids = torch.arange(length, device=device).expand(batch, length)
            top = length - 1
        elif position_ids.shape != input_ids.shape:
            raise ValueError(f"position_ids shape {tuple(position_ids.shape)} must match input_ids {tuple(input_ids.shape)}")
        else:  # explicit positions: checked on the host, except inside torch.compile (no graph break per call)
            top = -1 if torch.compiler.is_compiling() else int(position_ids.max())
        if top >= self.config.max_position_embeddings:
            raise ValueError(
                f"position {top} is beyond the model's context of {self.config.max_position_embeddings} tokens "
                "(max_position_embeddings): shorten the prompt or the generation length"
            )
        if attention_mask is not None and context is None:
            # A row with no real key would give NaN from softmax over nothing; let it attend everywhere instead.
            attention_mask = attention_mask | ~attention_mask.any(dim=1, keepdim=True)

        x = self.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        kv = []
        for i, layer in enumerate(self.layers):
            x, layer_kv = layer(x, cos, sin, attention_mask, None if context is None else context[i])
            if return_kv:
                kv.append(layer_kv)
        logits = self.lm_head(self.norm(x))
        return MaskedDiffusionOutput(logits=logits, kv=tuple(kv) if return_kv else None)


def context_outside(kv: tuple[LayerKV, ...], attention_mask: torch.Tensor, start: int, end: int) -> tuple[LayerContext, ...]:
    """The dual cache for block [start, end): every layer's keys/values of the positions before and after it.

    An approximation, by design (Fast-dLLM): attention is bidirectional, so the cached keys of the prompt,
    the finished blocks and the masked suffix were computed when the block still held the tokens it held
    then; they do not see the tokens committed inside the block afterwards. The decoders therefore
    recompute this cache (one full-canvas call) at the start of every block, where it is exact."""
    mask = attention_mask.to(torch.bool)
    keep_mask = torch.cat([mask[:, :start], mask[:, end:]], dim=1)
    return tuple(
        (torch.cat([k[:, :, :start], k[:, :, end:]], dim=2), torch.cat([v[:, :, :start], v[:, :, end:]], dim=2), keep_mask)
        for k, v in kv
    )


def register_auto_classes() -> None:
    """Make AutoConfig / AutoModelForMaskedLM resolve model_type "distillery_mdlm" (idempotent)."""
    AutoConfig.register(MODEL_TYPE, MaskedDiffusionLMConfig, exist_ok=True)
    AutoModelForMaskedLM.register(MaskedDiffusionLMConfig, MaskedDiffusionLM, exist_ok=True)


register_auto_classes()


def _looks_like_path(path_or_id: str) -> bool:
    """A hub id is "name" or "owner/name"; anything else (absolute, ./, ~, deeper) is meant as a directory."""
    return path_or_id.startswith(("/", ".", "~")) or path_or_id.count("/") > 1 or "\\" in path_or_id


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_text_model(
    path_or_id: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, object, str]:
    """(model in eval mode on `device`, tokenizer, kind) from a checkpoint directory or a cached hub id.

    kind is KIND_OURS ("distillery_mdlm", supports the KV cache) or KIND_MASKED_LM (any transformers
    masked LM, run by the same decoders without the cache). Weights come only from safetensors.
    dtype defaults to bfloat16 on CUDA and float32 elsewhere. Checkpoints that ship their own modelling
    code (config.json "auto_map", e.g. LLaDA, Dream) run it only with trust_remote_code=True.
    Every failure is a CheckpointError that says what is wrong and what to do.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-load progress bar is noise in the studio's log
    device = torch.device(device)
    dtype = dtype or _default_dtype(device)
    source = str(path_or_id)
    directory = Path(source).expanduser()
    if directory.exists():
        if not directory.is_dir():
            raise CheckpointError(f"{directory} is a file; a text model is a directory holding config.json and safetensors")
        config = read_json(directory, "config.json")
        check_safetensors(directory)
        where = str(directory)
    elif _looks_like_path(source):
        raise CheckpointError(f"text model directory {directory} does not exist")
    else:
        try:  # a hub id: only the local Hugging Face cache, never the network
            config = AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=trust_remote_code).to_dict()
        except OSError as err:
            raise CheckpointError(
                f"{source!r} is not a local directory and is not available offline in the Hugging Face cache; "
                "download it on a machine with network access (huggingface-cli download) or pass a checkpoint directory"
            ) from err
        except ValueError as err:  # e.g. a model type this transformers does not know
            raise CheckpointError(f"cannot read the config of {source!r}: {err}") from err
        where = source

    if config.get("auto_map") and not trust_remote_code and config.get("model_type") != MODEL_TYPE:
        raise CheckpointError(
            f"{where} ships its own modelling code (config.json auto_map: {sorted(config['auto_map'])}); "
            "load it with trust_remote_code=True only if you trust that code (studio: `python app.py --trust-remote-code` "
            "or DISTILLERY_TRUST_REMOTE_CODE=1)"
        )
    options = {"local_files_only": True, "use_safetensors": True, "dtype": dtype, "output_loading_info": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot load the tokenizer of {where} ({err}); a text model must ship its tokenizer files"
        ) from err
    if tokenizer.mask_token_id is None:
        raise CheckpointError(
            f"the tokenizer of {where} has no mask token: masked-diffusion decoding needs one (set tokenizer.mask_token)"
        )
    try:
        if config.get("model_type") == MODEL_TYPE:
            (model, info), kind = MaskedDiffusionLM.from_pretrained(where, **options), KIND_OURS
        else:
            try:
                model, info = AutoModelForMaskedLM.from_pretrained(where, trust_remote_code=trust_remote_code, **options)
            except ValueError:
                if not trust_remote_code:
                    raise
                # LLaDA / Dream register their network under AutoModel only; its forward still returns .logits.
                model, info = AutoModel.from_pretrained(where, trust_remote_code=True, **options)
            kind = KIND_MASKED_LM
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot load the text model from {where}: {err}") from err
    if info["missing_keys"]:  # transformers would only warn and start these weights at random
        missing = sorted(info["missing_keys"])
        names = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise CheckpointError(
            f"{where} lacks weights for {len(missing)} parameters ({names}); "
            "the checkpoint does not match its config.json: re-export it"
        )
    model_mask = getattr(model.config, "mask_token_id", None)
    if kind == KIND_OURS and model_mask is not None and model_mask != tokenizer.mask_token_id:
        raise CheckpointError(
            f"{where}: config.json says mask_token_id={model_mask} but the tokenizer's mask token has id "
            f"{tokenizer.mask_token_id}; the checkpoint's tokenizer and model do not belong together"
        )
    return model.to(device).eval(), tokenizer, kind


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
