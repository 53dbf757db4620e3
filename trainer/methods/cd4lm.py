"""CD4LM student: discrete-space consistency distillation (DSCD) of a masked diffusion LM.

Liang et al. 2026 (CD4LM). The student starts as a copy of the teacher and learns to be
*trajectory-invariant*: from a heavily masked state it must predict what the teacher predicts from
a lighter-masked state of the same sequence, so it can take long jumps (commit many tokens per step)
at inference. Paired teacher-subset masking, per sequence:
    r_S ~ U(r_min, r_max)               student mask ratio -> mask set M_S
    r_T = r_S * u,  u ~ U(u_min, u_max)  teacher mask set M_T: a random subset of M_S
    target_i = softmax(teacher(z_T)_i / tau)   for i in M_T   (what the better-informed teacher believes)
             = one-hot(x_i)                     for i in M_S \\ M_T (visible to the teacher: the data)
    L = sum_{i in M_S} CE(target_i, student(z_S)_i) / |M_S|  (+ gt_weight * CE to the data on M_T)
Block-structured pairs (`block_fraction` of them): the decoder the student ships with is semi-autoregressive,
so the states it meets have every earlier block committed, the current block partly masked and every later
block fully masked. I.i.d. masks over the whole answer almost never look like that; for these pairs a block k
is drawn, blocks before it are clean for both models, blocks after it masked for both, and the ratios above
apply inside block k only.
The student ships with confidence-adaptive decoding (commit every token above a threshold, at
least one per step) and the block-wise KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engines.text_decoding import DecodeConfig
from trainer.config import ConfigError, TrainConfig, build
from trainer.text_task import TextLayout, TextMethod


@dataclass
class CD4LMConfig:
    min_student_ratio: float = 0.2
    max_student_ratio: float = 1.0
    min_teacher_fraction: float = 0.0  # u: r_T = r_S * u; 0 lets the teacher see the whole answer region
    max_teacher_fraction: float = 0.8
    temperature: float = 1.0  # tau on the teacher's logits
    gt_weight: float = 0.5  # extra cross-entropy to the data on M_T (keeps the student honest where the teacher errs)
    threshold: float = 0.9  # the shipped confidence-adaptive decoder's threshold
    use_cache: bool = True  # the shipped decoder's block-wise KV cache
    eos_fill: bool = True  # the shipped decoder stops calling the network once a row has committed [EOS]
    freeform_weight: float = 0.2
    block_fraction: float = 0.0  # share of pairs made block-structured, as the semi-AR decoder's states are

    def check(self) -> None:
        if not 0 < self.min_student_ratio <= self.max_student_ratio <= 1:
            raise ConfigError("method_config: need 0 < min_student_ratio <= max_student_ratio <= 1")
        if not 0 <= self.min_teacher_fraction <= self.max_teacher_fraction < 1:
            raise ConfigError("method_config: need 0 <= min_teacher_fraction <= max_teacher_fraction < 1")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"method_config.threshold must be in (0, 1], got {self.threshold}")
        if not 0 <= self.block_fraction <= 1:
            raise ConfigError(f"method_config.block_fraction must be in [0, 1], got {self.block_fraction}")
        if self.temperature <= 0 or self.gt_weight < 0:
            raise ConfigError("method_config: temperature must be > 0 and gt_weight >= 0")


def paired_masks(
    batch: int,
    length: int,
    prompt_tokens: int,
    args: CD4LMConfig,
    generator: torch.Generator,
    device,
    block_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DSCD's paired teacher-subset masking: (student mask M_S, teacher mask M_T), both (B, L) bool,
    answer region only, with M_T a subset of M_S (one uniform draw per token nests them). With
    `block_length` and args.block_fraction > 0, that share of rows is block-structured (module docstring)."""
    a = args
    r_s = a.min_student_ratio + (a.max_student_ratio - a.min_student_ratio) * torch.rand(
        batch, generator=generator, device=device
    )
    u = a.min_teacher_fraction + (a.max_teacher_fraction - a.min_teacher_fraction) * torch.rand(
        batch, generator=generator, device=device
    )
    draw = torch.rand(batch, length, generator=generator, device=device)
    in_answer = torch.zeros(batch, length, dtype=torch.bool, device=device)
    in_answer[:, prompt_tokens:] = True
    m_s, m_t = in_answer & (draw < r_s.view(batch, 1)), in_answer & (draw < (r_s * u).view(batch, 1))
    if not block_length or a.block_fraction <= 0:
        return m_s, m_t  # no extra draws: runs without block pairs stay as they were
    blocks = (length - prompt_tokens) // block_length
    current = torch.randint(blocks, (batch, 1), generator=generator, device=device)
    structured = (torch.rand(batch, 1, generator=generator, device=device) < a.block_fraction) & in_answer
    block_of = ((torch.arange(length, device=device) - prompt_tokens) // block_length).view(1, length)
    before, after = structured & (block_of < current), structured & (block_of > current)
    return (m_s & ~before) | after, (m_t & ~before) | after


class CD4LM(TextMethod):
    role = "student"

    def __init__(self, config: TrainConfig, device: torch.device, text_encoder=None) -> None:
        from engines.card import load_card
        from engines.dllm import load_text_model

        self.args: CD4LMConfig = build(CD4LMConfig, config.method_config, prefix="method_config.")
        self.args.check()
        if not config.teacher:
            raise ConfigError(
                "cd4lm distils a teacher: set `teacher` to a text checkpoint directory (e.g. checkpoints/text-teacher)"
            )
        card = load_card(config.teacher)
        if card.modality != "text":
            raise ConfigError(
                f"teacher {config.teacher} is a {card.modality} model; cd4lm needs a text (masked diffusion LM) teacher"
            )
        decoding = card.decoding
        layout = TextLayout(
            gen_length=decoding["gen_length"],
            max_prompt_tokens=decoding["max_prompt_tokens"],
            block_length=decoding["block_length"],
            freeform_weight=self.args.freeform_weight,
        )
        layout.check()
        teacher, tokenizer, _ = load_text_model(config.teacher, torch.device("cpu"), dtype=torch.float32)
        self.teacher = teacher.float().to(device).eval().requires_grad_(False)
        self.teacher_id = card.id
        self._init_text(config, device, layout, tokenizer)  # the student shares the teacher's vocabulary
        student, _, _ = load_text_model(config.init_from or config.teacher, torch.device("cpu"), dtype=torch.float32)
        self.networks = {"model": student.float()}
        self.ema_roles = ("model",)

    def decoding(self) -> DecodeConfig:
        return DecodeConfig(
            gen_length=self.layout.gen_length,
            block_length=self.layout.block_length,
            steps=None,
            threshold=self.args.threshold,
            use_cache=self.args.use_cache,
            eos_fill=self.args.eos_fill,
        )

    def loss(self, phase: str, networks: dict, batch: dict, generator: torch.Generator):
        a = self.args
        ids = batch["input_ids"].to(self.device, non_blocking=True)
        attention = batch["attention_mask"].to(self.device, non_blocking=True)
        b, length = ids.shape
        p = self.layout.max_prompt_tokens
        mask_id = self.tokenizer.mask_token_id
        m_s, m_t = paired_masks(b, length, p, a, generator, self.device, self.layout.block_length)
        z_s = torch.where(m_s, torch.full_like(ids, mask_id), ids)
        z_t = torch.where(m_t, torch.full_like(ids, mask_id), ids)
        with torch.no_grad():
            teacher_probs = torch.softmax(
                self.teacher(input_ids=z_t, attention_mask=attention).logits.float() / a.temperature, -1
            )
        logits = networks["model"](input_ids=z_s, attention_mask=attention).logits.float()
        log_probs = torch.log_softmax(logits, -1)
        data = torch.nn.functional.one_hot(ids, log_probs.shape[-1]).float()
        target = torch.where(m_t.unsqueeze(-1), teacher_probs, data)
        per_token = -(target * log_probs).sum(-1)  # (B, L)
        count = m_s.sum().clamp(min=1)
        distill = (per_token * m_s).sum() / count
        gt = -(log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * m_t).sum() / m_t.sum().clamp(min=1)
        loss = distill + a.gt_weight * gt
        with torch.no_grad():
            agree = ((logits.argmax(-1) == teacher_probs.argmax(-1)) & m_t).sum() / m_t.sum().clamp(min=1)
        return loss, {
            "loss": loss.detach(),
            "loss_distill": distill.detach(),
            "loss_gt": gt.detach(),
            "teacher_agreement": agree.detach(),
        }
