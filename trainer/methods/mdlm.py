"""Masked diffusion LM teacher (LLaDA / MDLM formulation).

Nie et al. 2025 (LLaDA), Sahoo et al. 2024 (MDLM): draw a masking ratio t ~ U(eps, 1) per sequence,
replace each answer token by [MASK] with probability t, and train a bidirectional transformer to
recover them:
    L = E_t [ (1 / t) * sum_{masked i} -log p_theta(x_i | x_t) ] / gen_length,
an upper bound on the negative log-likelihood. The prompt stays clean (supervised fine-tuning
form), so the model learns p(answer | prompt). Trailing [EOS] fill is trained like any token, so
the decoder learns where an answer ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engines.text_decoding import DecodeConfig
from trainer.config import TrainConfig, build
from trainer.text_task import TextLayout, TextMethod, build_text_network, mask_answers, tokenizer_for_run

_LAYOUT_FIELDS = set(TextLayout.__dataclass_fields__)


@dataclass
class MDLMConfig(TextLayout):
    min_mask_ratio: float = 1e-3  # t ~ U(min, 1); 1/t weights stay bounded
    eval_steps: int | None = None  # the shipped decoder's fixed steps; None = one token per step (gen_length)


class MDLM(TextMethod):
    role = "teacher"

    def __init__(self, config: TrainConfig, device: torch.device, text_encoder=None) -> None:
        args: MDLMConfig = build(MDLMConfig, config.method_config, prefix="method_config.")
        args.check()
        self.args = args
        layout = TextLayout(**{k: getattr(args, k) for k in _LAYOUT_FIELDS})
        self._init_text(config, device, layout, None)
        if config.init_from:  # continue a shipped model: its weights and its vocabulary
            from engines.dllm import load_text_model

            network, tokenizer, _ = load_text_model(config.init_from, torch.device("cpu"), dtype=torch.float32)
            if not (Path(config.run_dir) / "tokenizer" / "tokenizer.json").is_file():
                tokenizer.save_pretrained(Path(config.run_dir) / "tokenizer")
            self.tokenizer = tokenizer_for_run(config.run_dir, layout, config.seed, self.quotes)
        else:
            self.tokenizer = tokenizer_for_run(config.run_dir, layout, config.seed, self.quotes)
            network = build_text_network(config.model_preset, self.tokenizer, layout.max_prompt_tokens + layout.gen_length)
        self.networks = {"model": network}
        self.ema_roles = ("model",)

    def decoding(self) -> DecodeConfig:
        return DecodeConfig(
            gen_length=self.layout.gen_length,
            block_length=self.layout.block_length,
            steps=self.args.eval_steps or self.layout.gen_length,
        )

    def loss(self, phase: str, networks: dict, batch: dict, generator: torch.Generator):
        ids = batch["input_ids"].to(self.device, non_blocking=True)
        attention = batch["attention_mask"].to(self.device, non_blocking=True)
        b = ids.shape[0]
        t = self.args.min_mask_ratio + (1 - self.args.min_mask_ratio) * torch.rand(b, generator=generator, device=self.device)
        noisy, masked = mask_answers(ids, self.layout.max_prompt_tokens, t, self.tokenizer.mask_token_id, generator)
        logits = networks["model"](input_ids=noisy, attention_mask=attention).logits
        ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none")  # (B, L)
        loss = (ce * masked / t.view(b, 1)).sum() / (b * self.layout.gen_length)
        with torch.no_grad():
            hits = (logits.argmax(-1) == ids) & masked
            accuracy = hits.sum() / masked.sum().clamp(min=1)
        return loss, {"loss": loss.detach(), "masked_token_accuracy": accuracy.detach()}
