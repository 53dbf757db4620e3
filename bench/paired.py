"""`python -m bench paired FILE --base MODEL [--steps N]`: how far each model's judge score and FD are from a base
model's, prompt by prompt, with their standard errors, and each FD over the teacher's at 50 steps (issue 3's limit).

Why: every row of an image result file judged the same held-out prompts with the same seeds, so two rows can be
compared prompt by prompt. Session 25's one-step variants read 0.700-0.739 overall, and whether those gaps are more
than the draw of 560 prompts decides which runs are worth repeating: the paired standard error of a difference is
about 0.02 here (about 130 of 560 prompts change verdict between two students), so only gaps of 0.04 and more
stand out. Rows keep their per-image verdicts for this (`verdicts`: bit i is image i, as hex) and their FD with each
of 40 groups of prompts left out (`fd_jackknife`), which pair up between rows of one file because the prompts and
the reference renders are the same. Rows measured before session 25 have neither and are skipped with a note.

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

from engines.features import frechet_distance
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


JACKKNIFE_GROUPS = 40  # prompt i in group i mod 40: with 560 prompts, 14 each, every category twice (7 cycle)


def fd_jackknife(generated: np.ndarray, reference: np.ndarray, groups: int = JACKKNIFE_GROUPS) -> list[float]:
    """FD of `generated` features against the `reference` features of the same prompts, measured again with each
    group of prompts left out (prompt i is in group i mod `groups`). Rows of one result file share their prompts and
    reference, so their lists pair up group by group: `jackknife_se` of a difference or ratio of two rows' lists is
    that statistic's standard error. Not the bootstrap: sets drawn with replacement repeat images, and with 128-d
    features on 560 images that raised an FD of 35.7 to 51.6 on average (scripts/probe_fd_spread.py)."""
    n = len(reference)
    if len(generated) != n:
        raise ValueError(f"{len(generated)} generated features for {n} reference ones")
    if groups < 2 or n < 2:
        raise ValueError(f"a jackknife needs 2 groups and 2 prompts at least, got {groups} and {n}")
    groups = min(groups, n)  # fewer prompts than groups (small test runs): leave one prompt out at a time
    group = np.arange(n) % groups
    return [frechet_distance(generated[group != g], reference[group != g]) for g in range(groups)]


def jackknife_se(left_out: np.ndarray | list[float]) -> float:
    """The grouped jackknife's standard error from a statistic's leave-one-group-out values:
    sqrt((G - 1) / G * sum (value - mean)^2)."""
    values = np.asarray(left_out, dtype=float)
    g = len(values)
    return float(np.sqrt((g - 1) / g * ((values - values.mean()) ** 2).sum()))


@dataclass
class PairedDifference:
    difference: float  # overall score of b minus a's (mean over categories)
    standard_error: float
    changed: int  # images whose verdict differs between the two
    images: int

    @property
    def z(self) -> float:
        return self.difference / self.standard_error if self.standard_error > 0 else 0.0


def overall_standard_error(values: np.ndarray, categories: list[str]) -> float:
    """The standard error of an overall score (the mean over categories of per-category means) of per-image values:
    one row's verdicts (for error bars), or two rows' per-image differences (`paired_difference`, sharper)."""
    labels, values = np.asarray(categories), np.asarray(values, dtype=float)
    present = list(dict.fromkeys(categories))
    sizes = {c: int((labels == c).sum()) for c in present}
    variance = sum(values[labels == c].var(ddof=1) / sizes[c] for c in present if sizes[c] > 1) / len(present) ** 2
    return float(math.sqrt(variance))


def fd_ratio(row: dict, teacher: dict) -> tuple[float, float | None]:
    """A result row's FD over the teacher row's (issue 3's limit: 1.5), with the jackknife's standard error when both
    rows keep their leave-one-group-out FDs (None otherwise)."""
    ratio = row["fd"] / teacher["fd"]
    if "fd_jackknife" not in row or "fd_jackknife" not in teacher:
        return ratio, None
    return ratio, jackknife_se(np.asarray(row["fd_jackknife"], dtype=float) / np.asarray(teacher["fd_jackknife"], dtype=float))


def paired_difference(a: np.ndarray, b: np.ndarray, categories: list[str]) -> PairedDifference:
    """b's overall judge score minus a's, from the per-image verdicts of the same prompts and seeds."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (len(a) == len(b) == len(categories)):
        raise ValueError(f"{len(a)} and {len(b)} verdicts for {len(categories)} prompts")
    difference = shapes.category_scores(b, categories)["overall"] - shapes.category_scores(a, categories)["overall"]
    return PairedDifference(difference, overall_standard_error(b - a, categories), int((a != b).sum()), len(a))


@dataclass
class Comparison:
    """One row against the base row (and the teacher's FD), from what both rows keep."""

    model: str
    judge: PairedDifference | None = None  # None: the base itself, or a row without verdicts
    fd_difference: float | None = None  # this row's FD minus the base's
    fd_difference_se: float | None = None
    fd_ratio: float | None = None  # this row's FD over the teacher's at --teacher-steps (issue 3's limit: 1.5)
    fd_ratio_se: float | None = None


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench paired", description=__doc__.split("\n\n")[0])
    parser.add_argument("result", type=Path, help="an image result file (bench/results/image-<device>.json)")
    parser.add_argument("--base", required=True, help="the model every other row is compared with")
    parser.add_argument("--steps", type=int, default=1, help="the step count to compare at (default 1)")
    parser.add_argument("--teacher-steps", type=int, default=50, help="the base's teacher row whose FD the others are divided by")
    return parser.parse_args(argv)


def compare(result: dict, base: str, steps: int, teacher_steps: int = 50) -> tuple[list[Comparison], list[str]]:
    """Every row at `steps` against `base`'s (itself included, first; the base's teacher left out), and the models
    that keep neither verdicts nor jackknife FDs (rows measured before session 25)."""
    if result.get("suite") != "image":
        raise SystemExit(f"`bench paired` compares image result rows, not {result.get('suite')!r} ones")
    count = int(result["prompts"])
    categories = [scene.condition.category for scene in shapes.eval_scenes(count)]
    rows = {r["model"]: r for r in result["rows"] if r["steps"] == steps}
    if base not in rows:
        raise SystemExit(f"no row of {base} at {steps} steps in this file (models there: {', '.join(rows) or 'none'})")
    reference = rows[base]
    if "verdicts" not in reference and "fd_jackknife" not in reference:
        raise SystemExit(f"the row of {base} at {steps} steps keeps no per-image verdicts (measured before session 25)")
    teacher = next((r for r in result["rows"] if r["model"] == reference.get("teacher") and r["steps"] == teacher_steps), None)
    compared, skipped = [], []
    # the base's teacher is what the FD ratios divide by; at a student's step counts it is no student to compare
    others = ((m, r) for m, r in rows.items() if m not in (base, reference.get("teacher")))
    for model, row in [(base, reference), *others]:
        if "verdicts" not in row and "fd_jackknife" not in row:
            skipped.append(model)
            continue
        c = Comparison(model)
        if model != base and "verdicts" in row and "verdicts" in reference:
            a, b = (unpack_verdicts(r["verdicts"], count) for r in (reference, row))
            c.judge = paired_difference(a, b, categories)
        if "fd_jackknife" in row:
            mine = np.asarray(row["fd_jackknife"], dtype=float)
            if model != base and "fd_jackknife" in reference:
                c.fd_difference = row["fd"] - reference["fd"]
                c.fd_difference_se = jackknife_se(mine - np.asarray(reference["fd_jackknife"], dtype=float))
            if teacher is not None and "fd_jackknife" in teacher:
                c.fd_ratio, c.fd_ratio_se = fd_ratio(row, teacher)
        compared.append(c)
    return compared, skipped


def describe(c: Comparison) -> str:
    parts = []
    if c.judge is not None:
        d = c.judge
        parts.append(f"judge {d.difference:+.4f} ± {d.standard_error:.4f} (z {d.z:+.2f}; {d.changed} verdicts differ)")
    if c.fd_difference is not None:
        parts.append(f"FD {c.fd_difference:+.2f} ± {c.fd_difference_se:.2f}")
    if c.fd_ratio is not None:
        parts.append(f"FD / teacher's {c.fd_ratio:.3f} ± {c.fd_ratio_se:.3f}")
    return f"  {c.model:45s} " + ("; ".join(parts) or "(the base)")


def main(argv: list[str] | None = None) -> list[Comparison]:
    args = parse(argv)
    try:
        result = json.loads(args.result.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"cannot read result file {args.result}: {err}") from err
    compared, skipped = compare(result, args.base, args.steps, args.teacher_steps)
    print(
        f"at {args.steps} step(s), minus {args.base}'s, paired over {result['prompts']} prompts (judge: stratified "
        f"standard error; FD: {JACKKNIFE_GROUPS}-group jackknife; teacher at {args.teacher_steps} steps):"
    )
    for c in compared:
        print(describe(c))
    if skipped:
        print(f"  no per-image verdicts (rows from before session 25): {', '.join(skipped)}")
    return compared
