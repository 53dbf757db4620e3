"""What every image method shares: world batches made in data-loader workers, the trained
network's resolution, and one phase per step unless a method needs more."""

from __future__ import annotations

import functools

from engines.denoisers import unwrap
from trainer.image_task import world_batch_cpu


class ImageMethod:
    primary = "model"  # the trained network whose EMA is exported
    make_batch = staticmethod(world_batch_cpu)  # picklable (step, rank, micro, **kw) -> CPU batch

    @property
    def resolution(self) -> int:
        return int(unwrap(self.networks[self.primary]).config.sample_size)

    def data_source(self):
        """Picklable (step, rank, micro) -> CPU batch, run in data-loader workers."""
        return functools.partial(
            type(self).make_batch,
            seed=self.config.seed,
            batch_size=self.config.batch_size,
            tokenizer=self.text_encoder.tokenizer,
            max_tokens=self.text_encoder.max_tokens,
        )

    def phases(self, step: int) -> list[str]:
        return [self.primary]


class DistillationMethod(ImageMethod):
    """An image method that distils a frozen teacher into a student."""

    role = "student"

    def _init_distillation(self, config, device, text_encoder, args_class) -> None:
        """Config, parsed method_config, the frozen teacher and the CFG scale of its guided estimates."""
        from trainer import distill
        from trainer.config import build

        self.config, self.device, self.text_encoder = config, device, text_encoder
        self.args = build(args_class, config.method_config, prefix="method_config.")
        self.teacher = distill.load_teacher(config.teacher, device, config.method)
        self.teacher_id = self.teacher.id
        guidance = getattr(self.args, "teacher_guidance", None)
        self.guidance = guidance if guidance is not None else (self.teacher.card.default_guidance or 1.0)
