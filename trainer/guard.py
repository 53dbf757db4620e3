"""Collapse guard: stop a run whose samples fall off a cliff, keeping the last healthy checkpoint.

DMD-family and adversarial students are known to collapse on new teachers: samples turn into
solid colours or one mode (diversity vanishes) and the judge score drops. Each evaluation feeds
the guard the judge's overall score and a diversity measure (how much images of one prompt differ
across seeds); the guard compares them with the first and best values it has seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class TrainingCollapsed(RuntimeError):
    """Samples collapsed: training stopped; the message names the last good checkpoint."""


@dataclass
class CollapseGuard:
    diversity_ratio: float = 0.35  # collapse if diversity < ratio x its first measured value
    judge_drop: float = 0.25  # collapse if the judge's overall falls this far below its best
    first_diversity: float | None = None
    best_judge: float = 0.0
    best_step: int = 0
    history: list[tuple[int, float, float]] = field(default_factory=list)

    def check(self, step: int, judge: float, diversity: float) -> str | None:
        """None while healthy, else a sentence saying what fell and from where."""
        self.history.append((step, judge, diversity))
        if self.first_diversity is None:
            self.first_diversity = diversity
        problems = []
        if diversity < self.diversity_ratio * self.first_diversity:
            problems.append(f"sample diversity fell to {diversity:.4f} from {self.first_diversity:.4f}")
        if judge < self.best_judge - self.judge_drop:
            problems.append(f"the judge's overall fell to {judge:.3f} from {self.best_judge:.3f} at step {self.best_step}")
        if not problems:
            if judge >= self.best_judge:
                self.best_judge, self.best_step = judge, step
            return None
        return f"samples collapsed at step {step}: " + "; ".join(problems)


def diversity(images: torch.Tensor, per_prompt: int) -> float:
    """Mean over prompts of the per-pixel standard deviation across seeds.

    `images`: (P * per_prompt, C, H, W), grouped by prompt. Solid colours or one repeated image
    give ~0; an untrained generator's noise gives a lot.
    """
    if images.shape[0] % per_prompt or per_prompt < 2:
        raise ValueError(f"{images.shape[0]} images do not split into groups of {per_prompt} >= 2 seeds")
    groups = images.float().reshape(-1, per_prompt, *images.shape[1:])
    return float(groups.std(dim=1).mean())
