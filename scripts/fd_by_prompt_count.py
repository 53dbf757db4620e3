"""How a Fréchet distance and issue 3's FD ratio move with the number of prompts they are measured on.

    PYTHONPATH=. python scripts/fd_by_prompt_count.py RESULT.json [RESULT.json ...] --model shapes-dmd2 [--steps 1]
        [--teacher shapes-teacher --teacher-steps 50] [--out DIR]

Each RESULT.json is one `bench image` run on the same device with its own `--prompts` (the held-out sets nest: the
first 560 of `shapes.eval_scenes(2240)` are `shapes.eval_scenes(560)`, image i from seed i). FD estimated from N
images is biased upwards by about k / N (Chong & Forsyth 2020, "Effectively Unbiased FID"), and k differs between
models, so a ratio of two FDs measured on few prompts is pulled towards 1. This script lists, per prompt count, the
renders' own FD (other scenes against these), the teacher's and the model's FDs with their jackknife errors and the
ratio, and fits FD(N) = FD_inf + k / N to each series by least squares, giving FD_inf, the ratio of the FD_infs,
and each fit's largest residual. It writes fd-by-prompt-count.json and .md to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.paired import fd_ratio


def _row(result: dict, model: str, steps: int, where: str) -> dict:
    for row in result["rows"]:
        if row["model"] == model and row["steps"] == steps:
            return row
    raise SystemExit(f"{where} has no row of {model} at {steps} steps")


def fit(counts: list[int], fds: list[float]) -> dict[str, float]:
    """Least squares FD = fd_inf + k / N over the series; with its largest absolute residual."""
    if len(counts) < 2 or len(set(counts)) < 2:
        raise ValueError("a fit of FD against 1/N needs at least two different prompt counts")
    x = 1.0 / np.asarray(counts, dtype=np.float64)
    y = np.asarray(fds, dtype=np.float64)
    k, fd_inf = np.polyfit(x, y, 1)
    return {"fd_inf": float(fd_inf), "k": float(k), "max_residual": float(np.abs(y - (fd_inf + k * x)).max())}


def table(files: list[Path], model: str, steps: int, teacher: str, teacher_steps: int) -> dict:
    series = []
    for path in files:
        result = json.loads(path.read_text())
        if result.get("suite") != "image":
            raise SystemExit(f"{path} is not a `bench image` result")
        base, student = _row(result, teacher, teacher_steps, str(path)), _row(result, model, steps, str(path))
        ratio, ratio_se = fd_ratio(student, base)
        series.append(
            {
                "prompts": int(result["prompts"]),
                "device": result["device"],
                "renders_fd": result.get("fd_real_vs_real"),
                "teacher_fd": base["fd"],
                "teacher_fd_se": base.get("fd_se"),
                "fd": student["fd"],
                "fd_se": student.get("fd_se"),
                "ratio": ratio,
                "ratio_se": ratio_se,
                "judge": student["quality"]["overall"],
                "teacher_judge": base["quality"]["overall"],
            }
        )
    devices = {entry["device"] for entry in series}
    if len(devices) != 1:
        raise SystemExit(f"the result files come from different devices ({sorted(devices)}): FDs compare on one")
    series.sort(key=lambda entry: entry["prompts"])
    counts = [entry["prompts"] for entry in series]
    teacher_fit, model_fit = fit(counts, [e["teacher_fd"] for e in series]), fit(counts, [e["fd"] for e in series])
    return {
        "model": model,
        "steps": steps,
        "teacher": teacher,
        "teacher_steps": teacher_steps,
        "device": devices.pop(),
        "series": series,
        "teacher_fit": teacher_fit,
        "model_fit": model_fit,
        "ratio_inf": model_fit["fd_inf"] / teacher_fit["fd_inf"],
    }


def markdown(report: dict) -> str:
    head = (
        f"FD of `{report['model']}` at {report['steps']} step(s) and of `{report['teacher']}` at {report['teacher_steps']} "
        f"steps by prompt count ({report['device']}; ± the 40-group jackknife's standard error)"
    )
    rows = [
        "| prompts | renders of other scenes | teacher FD | model FD | model / teacher | model judge | teacher judge |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    pm = lambda value, se: f"{value:.2f}" + (f" ± {se:.2f}" if se is not None else "")  # noqa: E731
    for e in report["series"]:
        renders = f"{e['renders_fd']:.2f}" if e["renders_fd"] is not None else "-"
        rows.append(
            f"| {e['prompts']} | {renders} | {pm(e['teacher_fd'], e['teacher_fd_se'])} | {pm(e['fd'], e['fd_se'])} | "
            f"{pm(e['ratio'], e['ratio_se'])} | {e['judge']:.3f} | {e['teacher_judge']:.3f} |"
        )
    t, m = report["teacher_fit"], report["model_fit"]
    fits = (
        f"Fit FD = FD_inf + k / N: teacher FD_inf {t['fd_inf']:.2f} (k {t['k']:.0f}, largest residual {t['max_residual']:.2f}); "
        f"model FD_inf {m['fd_inf']:.2f} (k {m['k']:.0f}, largest residual {m['max_residual']:.2f}); "
        f"ratio of the FD_infs {report['ratio_inf']:.2f}."
    )
    return "\n".join([head, "", *rows, "", fits, ""])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="bench image result files, one per prompt count")
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--teacher", default="shapes-teacher")
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="write fd-by-prompt-count.json and .md here")
    args = parser.parse_args(argv)
    try:
        report = table(args.results, args.model, args.steps, args.teacher, args.teacher_steps)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    text = markdown(report)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fd-by-prompt-count.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "fd-by-prompt-count.md").write_text(text)
    return report


if __name__ == "__main__":
    main()
