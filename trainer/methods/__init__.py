"""Method registry: name -> lazily imported class. The app and CLI boot without importing them.

A method is a class built as `Method(config: TrainConfig, device, text_encoder)` with:
    role: str                         "teacher" or "student" (written to the exported card)
    networks: dict[str, nn.Module]    trained networks; each gets its own AdamW and checkpoint entry
    ema_roles: tuple[str, ...]        networks with an EMA copy; the first one's EMA is exported
    data_source() -> callable         picklable (step, rank, micro) -> CPU batch (runs in loader workers)
    phases(step) -> list[str]         which networks update this step, in order (each a fresh graph)
    loss(phase, networks, batch, generator) -> (loss, metrics)
    evaluate(network) -> scores        judged evaluation of the exported network (EMA)
    eval_settings() -> dict           what evaluate measured with (logged beside the scores)
    diversity(network) -> float       spread of samples across seeds (students' collapse guard)
    preview(network) -> PIL image     a sample grid or rendered text, saved under the run's samples/
    export(network, summary, metrics) -> Path   the shipped checkpoint with its card
(ImageMethod in trainer/methods/base.py implements these five for every image method.)
optional:
    uses_text_encoder: bool           False for methods that tokenise themselves (text LMs)
    lr_scales: dict[str, float]       per-network multiplier of the scheduled lr
    stochastic_sampling: bool         the exported sampler jumps to x0 and re-noises (few-step students)
    teacher_id: str                   written to the card's `teacher`
    attach_ema(ema: dict[str, nn.Module])   receives the loop's EMA networks (the checkpointed ones) before
                                      training, for a method whose targets follow them (LCM's `target: ema`)
Frozen networks (a teacher) live on the method, not in `networks`. Shared pieces for distillation
(teacher loading, guided estimates, backward simulation) are in trainer/distill.py.
"""

from __future__ import annotations

import importlib

from trainer.config import ConfigError

METHODS: dict[str, str] = {
    "flow_matching": "trainer.methods.flow_matching:FlowMatching",
    "dmd2": "trainer.methods.dmd2:DMD2",
    "lcm": "trainer.methods.lcm:LCM",
    "scm": "trainer.methods.scm:SCM",
    "reflow": "trainer.methods.reflow:Reflow",
    "guidance": "trainer.methods.guidance:GuidanceDistillation",
    "mdlm": "trainer.methods.mdlm:MDLM",  # text: masked diffusion LM teacher
    "cd4lm": "trainer.methods.cd4lm:CD4LM",  # text: consistency-distilled fast decoder
    "video_fm": "trainer.methods.video_fm:VideoFlowMatching",  # video: bidirectional + causal teacher
    "self_forcing": "trainer.methods.self_forcing:SelfForcing",  # video: streaming student
}


def method_class(name: str):
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    module, attr = METHODS[name].split(":")
    return getattr(importlib.import_module(module), attr)
