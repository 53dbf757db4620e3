"""Plots of an image result file: where every model stands against issue 3's one-step target, and what steps buy.

`image-<slug>-judge-vs-fd.png`: every one-step student (and the teacher at each step count) as judge score against
FD, with the target region shaded (judge within 0.01 of the teacher's best, FD within 1.5x its 50-step FD), and
± one standard error on rows that keep what it takes (from session 25: `fd_se`, `verdicts`).
`image-<slug>-judge-vs-nfe.png`: judge score against network evaluations, one line per model.
Written by `bench image` and `bench rows` beside the result file, from its rows alone."""

from __future__ import annotations

from pathlib import Path

from bench.common import plain_log_ticks, pyplot


def error_bars(row: dict, categories: list[str]) -> tuple[float | None, float | None]:
    """(FD, judge) standard errors of a row, from what rows keep since session 25 (`fd_se`; per-image `verdicts`, one
    per prompt, whose categories are given); None for older rows."""
    from bench.paired import overall_standard_error, unpack_verdicts

    judge = None
    if "verdicts" in row:
        judge = overall_standard_error(unpack_verdicts(row["verdicts"], len(categories)), categories)
    return row.get("fd_se"), judge


def prompt_categories(result: dict) -> list[str]:
    """The category of each held-out prompt of an image result file, in order."""
    from trainer.worlds import shapes

    return [scene.condition.category for scene in shapes.eval_scenes(int(result.get("prompts", 0)))]


ZOOM_FD_MAX = 150.0  # FD beyond this is far from any target: such points are named in the legend, not drawn
ZOOM_JUDGE_MIN = 0.5
MARKERS = "osD^vP*Xh<>p"


def plot_judge_vs_fd(result: dict, path: Path) -> Path | None:
    """One-step students and the teacher's rows, judge against FD (log), around the target region; students far off
    it are named in the legend with their numbers. None without such rows."""
    rows = [r for r in result["rows"] if r.get("fd") is not None and r["fd"] > 0]
    students = sorted((r for r in rows if r["role"] == "student" and r["steps"] == 1), key=lambda r: -r["quality"]["overall"])
    teachers = sorted((r for r in rows if r["role"] == "teacher"), key=lambda r: r["steps"])
    if not students and not teachers:
        return None

    def shown(r: dict) -> bool:
        return r["fd"] <= ZOOM_FD_MAX and r["quality"]["overall"] >= ZOOM_JUDGE_MIN

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9.0, 4.8), dpi=120)
    summary = result.get("summary", {})
    floor, limit = summary.get("one_step_judge_floor"), summary.get("one_step_fd_limit")
    if floor is not None and limit is not None:
        ax.fill_between([1.0, limit], floor, 1.0, color="tab:green", alpha=0.15, label="one-step target (issue 3)")
    near = [r for r in teachers if shown(r)]
    if near:
        ax.plot(
            [r["fd"] for r in near],
            [r["quality"]["overall"] for r in near],
            "--s",
            color="gray",
            markersize=4,
            label="teacher: " + ", ".join(f"{r['steps']}" for r in near) + " steps",
        )
    categories = prompt_categories(result)
    for i, r in enumerate(students):
        label = f"{r['model']}: {r['quality']['overall']:.3f}, FD {r['fd']:.1f}"
        if shown(r):
            fd_se, judge_se = error_bars(r, categories)
            ax.errorbar(
                r["fd"],
                r["quality"]["overall"],
                xerr=fd_se,
                yerr=judge_se,
                fmt=MARKERS[i % len(MARKERS)],
                markersize=6,
                elinewidth=0.8,
                capsize=2,
                label=label,
            )
        else:
            ax.plot([], [], " ", label=label + " (off the chart)")
    drawn = [r["fd"] for r in (*students, *near) if shown(r)] or [ZOOM_FD_MAX / 2]
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    ax.set_xlim(min(drawn) * 0.85, ZOOM_FD_MAX)
    ax.set_ylim(ZOOM_JUDGE_MIN, 1.0)
    ax.set_xlabel("FD against the world's renders (log; lower is better)")
    ax.set_ylabel("judge overall (students at 1 step)")
    ax.set_title(f"one-step students on {result.get('device', '?')}, {result.get('prompts', '?')} held-out prompts", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_judge_vs_nfe(result: dict, path: Path) -> Path | None:
    """Judge against network evaluations per image, one line per model; None without rows."""
    by_model: dict[str, list[dict]] = {}
    for r in result["rows"]:
        by_model.setdefault(r["model"], []).append(r)
    if not by_model:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    colours = plt.get_cmap("tab20").colors  # more models than the default cycle's 10 colours
    for i, (model, mine) in enumerate(by_model.items()):
        mine = sorted(mine, key=lambda r: r["nfe"])
        style = "--s" if mine[0]["role"] == "teacher" else "-o"
        xs, ys = [r["nfe"] for r in mine], [r["quality"]["overall"] for r in mine]
        ax.plot(xs, ys, style, markersize=3, color=colours[i % len(colours)], label=model)
    floor = result.get("summary", {}).get("one_step_judge_floor")
    if floor is not None:
        ax.axhline(floor, color="tab:green", lw=0.8, ls=":", label="one-step judge target")
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("network evaluations per image")
    ax.set_ylabel("judge overall (held-out prompts)")
    ax.set_title(f"{result.get('device', '?')}, {result.get('prompts', '?')} prompts", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot(result: dict, out_dir: Path, slug: str) -> list[Path]:
    """Both plots of a result file into `out_dir`; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        plot_judge_vs_fd(result, out_dir / f"image-{slug}-judge-vs-fd.png"),
        plot_judge_vs_nfe(result, out_dir / f"image-{slug}-judge-vs-nfe.png"),
    ]
    return [p for p in written if p is not None]
