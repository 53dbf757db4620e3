"""`python -m bench paired FILE --base MODEL [--steps N]`: how far each model's judge score is from a base model's,
image by image, with its standard error.

Why: every row of an image result file judged the same held-out prompts with the same seeds, so two rows can be
compared prompt by prompt. Session 25's one-step variants read 0.700-0.739 overall, and whether those gaps are more
than the draw of 560 prompts decides which runs are worth repeating: the paired standard error of a difference is
about 0.02 here (about 130 of 560 prompts change verdict between two students), so only gaps of 0.04 and more
stand out. Rows keep their per-image verdicts for this (`verdicts`: bit i is image i, as hex; rows measured before
session 25 have none and are skipped with a note).

The overall score is the mean over categories of each category's pass rate, so its difference is the mean over
categories of the per-category differences, and its variance sums each category's (sample variance of the
per-image differences) / (its images) / (categories)^2.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.worlds import shapes


def pack_verdicts(accepted: np.ndarray) -> str:
    """Per-image verdicts (bool, in prompt order) as a hex string, bit i (most significant first) = image i."""
    return np.packbits(np.asarray(accepted, dtype=bool)).tobytes().hex()


def unpack_verdicts(packed: str, count: int) -> np.ndarray:
    """The `count` verdicts `pack_verdicts` wrote."""
    try:
        raw = bytes.fromhex(packed)
    except (TypeError, ValueError) as err:
        raise ValueError(f"verdicts must be a hex string, got {str(packed)[:20]!r}") from err
    if len(raw) != math.ceil(count / 8):
        raise ValueError(f"verdicts hold {len(raw) * 8} bits, not the {count} images of this file's prompts")
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:count].astype(bool)


@dataclass
class PairedDifference:
    difference: float  # overall score of b minus a's (mean over categories)
    standard_error: float
    changed: int  # images whose verdict differs between the two
    images: int

    @property
    def z(self) -> float:
        return self.difference / self.standard_error if self.standard_error > 0 else 0.0


def overall_score(accepted: np.ndarray, categories: list[str]) -> float:
    """The judge's overall from per-image verdicts: the mean over categories of each one's pass rate."""
    labels, accepted = np.asarray(categories), np.asarray(accepted, dtype=float)
    return float(np.mean([accepted[labels == c].mean() for c in dict.fromkeys(categories)]))


def paired_difference(a: np.ndarray, b: np.ndarray, categories: list[str]) -> PairedDifference:
    """b's overall judge score minus a's, from the per-image verdicts of the same prompts and seeds."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (len(a) == len(b) == len(categories)):
        raise ValueError(f"{len(a)} and {len(b)} verdicts for {len(categories)} prompts")
    labels = np.asarray(categories)
    present = list(dict.fromkeys(categories))
    difference, variance = 0.0, 0.0
    for category in present:
        d = (b - a)[labels == category]
        difference += d.mean() / len(present)
        if len(d) > 1:
            variance += d.var(ddof=1) / len(d) / len(present) ** 2
    return PairedDifference(float(difference), math.sqrt(variance), int((a != b).sum()), len(a))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench paired", description=__doc__.split("\n\n")[0])
    parser.add_argument("result", type=Path, help="an image result file (bench/results/image-<device>.json)")
    parser.add_argument("--base", required=True, help="the model every other row is compared with")
    parser.add_argument("--steps", type=int, default=1, help="the step count to compare at (default 1)")
    return parser.parse_args(argv)


def compare(result: dict, base: str, steps: int) -> tuple[list[tuple[str, PairedDifference]], list[str]]:
    """(model, difference from `base`) for every row at `steps` with verdicts, and the models skipped for lack of
    them."""
    if result.get("suite") != "image":
        raise SystemExit(f"`bench paired` compares image result rows, not {result.get('suite')!r} ones")
    count = int(result["prompts"])
    categories = [scene.condition.category for scene in shapes.eval_scenes(count)]
    rows = {r["model"]: r for r in result["rows"] if r["steps"] == steps}
    if base not in rows:
        raise SystemExit(f"no row of {base} at {steps} steps in this file (models there: {', '.join(rows) or 'none'})")
    if "verdicts" not in rows[base]:
        raise SystemExit(f"the row of {base} at {steps} steps keeps no per-image verdicts (measured before session 25)")
    reference = unpack_verdicts(rows[base]["verdicts"], count)
    compared, skipped = [], []
    for model, row in rows.items():
        if model == base:
            continue
        if "verdicts" not in row:
            skipped.append(model)
            continue
        compared.append((model, paired_difference(reference, unpack_verdicts(row["verdicts"], count), categories)))
    return compared, skipped


def main(argv: list[str] | None = None) -> list[tuple[str, PairedDifference]]:
    args = parse(argv)
    try:
        result = json.loads(args.result.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"cannot read result file {args.result}: {err}") from err
    compared, skipped = compare(result, args.base, args.steps)
    print(f"judge overall at {args.steps} step(s), minus {args.base}'s, paired over {result['prompts']} prompts:")
    for model, d in sorted(compared, key=lambda item: -item[1].difference):
        print(f"  {model:45s} {d.difference:+.4f} ± {d.standard_error:.4f} (z {d.z:+.2f}; {d.changed} verdicts differ)")
    if skipped:
        print(f"  no per-image verdicts (rows from before session 25): {', '.join(skipped)}")
    return compared
