"""What every text (masked-diffusion LM) method shares: the network presets, tokenizer set-up,
text-world batches made in data-loader workers, judged evaluation with the shipped decoder,
previews and the export of a finished network as a shipped checkpoint (model + tokenizer + card).

The canvas layout is fixed (trainer/text_tokenizer.py): the prompt left-padded to
`max_prompt_tokens`, then exactly `gen_length` answer tokens, [EOS]-padded.
"""

from __future__ import annotations

import functools
import random
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from engines.card import ModelCard
from engines.devices import device_name
from engines.dllm import MaskedDiffusionLM, MaskedDiffusionLMConfig
from engines.text_decoding import DecodeConfig
from trainer.config import ConfigError
from trainer.image_task import write_model_card
from trainer.stages import with_earlier_stages
from trainer.text_tokenizer import count_tokens, encode_examples, load_tokenizer, train_tokenizer
from trainer.worlds import textworld

# name -> MaskedDiffusionLMConfig kwargs (vocab and special ids come from the tokenizer)
TEXT_PRESETS: dict[str, dict[str, Any]] = {
    # ~11 M parameters (~22 MB in fp16): bidirectional, RoPE, SwiGLU
    "mdlm-s": dict(hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1024),
    # for tests and CPU smoke runs
    "mdlm-tiny": dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
}


@dataclass
class TextLayout:
    """The canvas every text method trains and decodes on (saved on the card as `decoding`)."""

    gen_length: int = 48
    max_prompt_tokens: int = 48
    block_length: int = 16
    freeform_weight: float = 0.2  # share of free text (Debian fortunes) among the verifiable tasks
    vocab_size: int = 2048
    tokenizer_texts: int = 20000  # world texts the BPE tokenizer is trained on

    def check(self) -> None:
        if self.gen_length < 1 or self.max_prompt_tokens < 1:
            raise ConfigError("method_config.gen_length and max_prompt_tokens must be >= 1")
        if self.block_length < 1 or self.gen_length % self.block_length:
            raise ConfigError(f"method_config.block_length ({self.block_length}) must divide gen_length ({self.gen_length})")
        if not 0 <= self.freeform_weight < 1:
            raise ConfigError(f"method_config.freeform_weight must be in [0, 1), got {self.freeform_weight}")


def build_text_network(preset: str, tokenizer, context: int) -> MaskedDiffusionLM:
    if preset not in TEXT_PRESETS:
        raise ConfigError(f"unknown text model_preset {preset!r}; known: {', '.join(TEXT_PRESETS)}")
    config = MaskedDiffusionLMConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=context,
        mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TEXT_PRESETS[preset],
    )
    return MaskedDiffusionLM(config)


def tokenizer_for_run(run_dir: Path, layout: TextLayout, seed: int, quotes: list[str] | None):
    """The run's tokenizer: trained once from world texts and kept in the run directory, so a resumed
    run (and its export) use exactly the same vocabulary."""
    path = Path(run_dir) / "tokenizer"
    if (path / "tokenizer.json").is_file():
        return load_tokenizer(path)
    tokenizer = train_tokenizer(textworld.corpus(layout.tokenizer_texts, seed=seed, quotes=quotes), layout.vocab_size)
    tokenizer.save_pretrained(path)
    return tokenizer


def load_quotes(freeform_weight: float) -> list[str] | None:
    """Debian fortunes for free-form text, when asked for (a clear error when the package is missing)."""
    return textworld.fortunes() if freeform_weight > 0 else None


def text_batch_cpu(
    step: int,
    rank: int,
    micro: int,
    *,
    seed: int,
    batch_size: int,
    tokenizer,
    layout: TextLayout,
    quotes: list[str] | None,
) -> dict:
    """The CPU half of a batch, fixed by (seed, rank, step, micro): token canvases with answers."""
    rng = random.Random(f"text/{seed}/{rank}/{step}/{micro}")
    count = functools.partial(count_tokens, tokenizer)  # cuts free text exactly to the answer budget
    examples = [textworld.sample_mixture(rng, quotes, layout.freeform_weight, count_tokens=count) for _ in range(batch_size)]
    input_ids, attention_mask = encode_examples(
        tokenizer, [e.prompt for e in examples], [e.answer for e in examples], layout.gen_length, layout.max_prompt_tokens
    )
    return {"input_ids": input_ids, "attention_mask": attention_mask, "families": [e.family for e in examples]}


def mask_answers(
    input_ids: torch.Tensor, prompt_tokens: int, ratio: torch.Tensor, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each answer-region token independently with its row's probability `ratio` (B,).
    Returns (masked ids, bool mask of the masked positions). The prompt is never masked (SFT-style)."""
    b, length = input_ids.shape
    draw = torch.rand(b, length, generator=generator, device=input_ids.device)
    masked = draw < ratio.view(b, 1)
    masked[:, :prompt_tokens] = False
    return torch.where(masked, torch.full_like(input_ids, mask_id), input_ids), masked


@dataclass(frozen=True)
class TextEval:
    accuracy: dict[str, float]
    outputs: list[str]
    nfe: int


def decode_prompts(
    network, tokenizer, prompts: list[str], layout: TextLayout, decoding: DecodeConfig, device, batch_size: int = 128
) -> tuple[list[str], int]:
    """Decoded answers (text) for prompts, and the network calls it took (summed over batches),
    through the same engine the studio and `bench text` use."""
    from engines.dllm import KIND_OURS
    from engines.text import TextEngine

    card = ModelCard(
        id="in-training",
        modality="text",
        role="teacher",
        method="training",
        default_steps=decoding.steps or layout.gen_length,
        resolution=layout.max_prompt_tokens + layout.gen_length,
        decoding={**asdict(decoding), "max_prompt_tokens": layout.max_prompt_tokens},
    )
    network.eval()
    engine = TextEngine(card, network, tokenizer, KIND_OURS, torch.device(device))
    result = engine.decode_batch(prompts, decoding, batch_size=batch_size)
    return result.texts, result.nfe


def evaluate_text(network, tokenizer, layout: TextLayout, decoding: DecodeConfig, n: int, device) -> TextEval:
    examples = textworld.eval_examples(n)
    outputs, nfe = decode_prompts(network, tokenizer, [e.prompt for e in examples], layout, decoding, device)
    return TextEval(textworld.judge(outputs, examples), outputs, nfe)


def text_preview(prompts: list[str], outputs: list[str], width: int = 900) -> Image.Image:
    """Prompts and decoded answers rendered as an image (the Train tab shows the latest one)."""
    lines: list[tuple[str, tuple[int, int, int]]] = []
    for prompt, output in zip(prompts, outputs):
        lines += [(line, (150, 190, 255)) for line in textwrap.wrap("> " + prompt, 110)]
        lines += [(line, (235, 235, 235)) for line in textwrap.wrap(output or "(empty)", 110)]
        lines.append(("", (0, 0, 0)))
    image = Image.new("RGB", (width, 14 * len(lines) + 16), (24, 26, 32))
    draw = ImageDraw.Draw(image)
    for i, (line, colour) in enumerate(lines):
        draw.text((8, 8 + 14 * i), line, fill=colour)
    return image


class TextMethod:
    """The loop's hooks for masked-diffusion LM methods (see trainer/methods/__init__.py)."""

    primary = "model"
    uses_text_encoder = False  # the run trains and ships its own tokenizer

    def _init_text(self, config, device, layout: TextLayout, tokenizer) -> None:
        self.config, self.device, self.layout, self.tokenizer = config, device, layout, tokenizer
        self.quotes = load_quotes(layout.freeform_weight)

    def data_source(self):
        return functools.partial(
            text_batch_cpu,
            seed=self.config.seed,
            batch_size=self.config.batch_size,
            tokenizer=self.tokenizer,
            layout=self.layout,
            quotes=self.quotes,
        )

    def phases(self, step: int) -> list[str]:
        return [self.primary]

    def decoding(self) -> DecodeConfig:
        """The decoder the export ships with (and training-time evaluation uses)."""
        raise NotImplementedError

    def eval_settings(self) -> dict:
        return {"eval_decoding": asdict(self.decoding())}

    def _evaluate(self, network) -> TextEval:
        return evaluate_text(network, self.tokenizer, self.layout, self.decoding(), self.config.eval_prompts, self.device)

    def evaluate(self, network) -> dict[str, float]:
        result = self._evaluate(network)
        # the loop asks for diversity right after, of the same network at the same step: hand it these outputs once
        self._fresh_eval = (network, result)
        batches = -(-self.config.eval_prompts // 128)  # decode_prompts' batch: every row of a batch shares its calls
        return {**result.accuracy, "nfe": result.nfe / batches}

    def diversity(self, network) -> float:
        """Share of distinct answers over the held-out prompts: a collapsed student says one thing to all.
        Reuses the outputs of the evaluation just run on this network (once); otherwise decodes afresh."""
        fresh, self._fresh_eval = getattr(self, "_fresh_eval", None), None
        outputs = fresh[1] if fresh is not None and fresh[0] is network else self._evaluate(network)
        return len(set(outputs.outputs)) / max(1, len(outputs.outputs))

    def preview(self, network) -> Image.Image:
        examples = textworld.eval_examples(8, seed=11)
        prompts = [e.prompt for e in examples]
        outputs, _ = decode_prompts(network, self.tokenizer, prompts, self.layout, self.decoding(), self.device)
        return text_preview(prompts, outputs)

    def export(self, network, summary: dict, metrics: dict) -> Path:
        config = self.config
        out = Path(config.export.output_dir or Path(config.run_dir) / "model")
        out.mkdir(parents=True, exist_ok=True)
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[config.export.dtype]
        export_net = MaskedDiffusionLM(network.config)
        export_net.load_state_dict(network.state_dict())
        export_net.to(dtype).save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        decoding = self.decoding()
        seconds = round(summary["elapsed_seconds"], 1) if self.device.type == "cuda" else None
        data = {"world": "textworld", "seed": config.seed, "sequences_seen": summary["images_seen"]}
        data, seconds = with_earlier_stages(
            data, seconds, config.init_from, config.export.id, config.run_dir, device_name(self.device)
        )
        card = ModelCard(
            id=config.export.id,
            modality="text",
            role=self.role,
            method=config.method,
            default_steps=decoding.steps or self.layout.gen_length,
            resolution=self.layout.max_prompt_tokens + self.layout.gen_length,  # the canvas, in tokens
            teacher=getattr(self, "teacher_id", None),
            description=config.export.description,
            data=data,
            train_gpu_seconds=seconds,
            device=device_name(self.device),
            metrics={"training_eval": metrics, "source": f"training-time evaluation on {config.eval_prompts} held-out problems"}
            if metrics
            else {},
            decoding={**asdict(decoding), "max_prompt_tokens": self.layout.max_prompt_tokens},
        )
        card.save(out)
        write_model_card(out)
        return out
