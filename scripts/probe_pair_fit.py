"""Does a one-step student fit the teacher pairs it was trained on better than fresh noise?

DMD2's regression loss trained the shipped student on 4096 (noise, teacher ODE endpoint) pairs, drawn from the
run's seed (`trainer.ode_pairs`: pair i is training caption i of the pair stream, from the engines' noise of seed
i). This probe takes the first N of those captions and draws them twice: from the training pairs' own noise
(seen in training) and from fresh noise (seeds offset by `--fresh-offset`, never seen). For each it makes the
teacher's ODE endpoint (the pair recipe: 25 Euler steps with the card's CFG) and the student's one-step image,
then prints the judge's pass rate of both and the student's regression distance to the teacher (0.5 mean
squared, DMD2's `regression_loss`).

- Seen >> fresh, on distance or judge: the student memorised its pairs; more pairs are the lever.
- Seen ~ fresh, both far from the teacher: the student does not fit even the mappings it was shown.

`--regress-steps K` then runs the capacity test: it makes the whole pair set (`--pair-count`, DMD2's recipe), fine-tunes
the student on DMD's regression loss alone for K Adam steps, and scores both noises again. If the seen distance
falls well below the fresh one, the network can draw the one-step maps it is shown and the shortfall is how they
generalise; if both stay where they were, one evaluation of this network cannot draw the teacher's map (capacity or
optimisation), whatever the data.

On a 2-core CPU about 20 minutes per 64 captions (two teacher ODEs of 50 evaluations each per caption):

    PYTHONPATH=. python scripts/probe_pair_fit.py checkpoints/shapes-dmd2 --captions 128
    PYTHONPATH=. python scripts/probe_pair_fit.py checkpoints/shapes-dmd2 --captions 1024 --device cuda --chunk 512 \\
        --judge-workers 12 --regress-steps 3000 --out $OUT/pair-fit.json --save runs/exports/shapes-dmd2-regfit

On an H100 the 4096 pairs take about 94 s and the float32 regression 0.22 s a step (session 28: 3000 steps in 653 s).
Session 28's answer for the shipped student: the seen distance fell nearly 13x and the seen judge rose to 0.866, while
the fresh judge fell to 0.55 (bench/results/device/pair-fit-h100/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from engines.card import load_card
from engines.devices import device_name
from engines.errors import CheckpointError
from engines.image import initial_noise
from engines.text_encoder import TextEncoder
from trainer import distill
from trainer.image_task import export_checkpoint
from trainer.judge_pool import JudgePool
from trainer.methods.dmd2 import DMD2Config, regression_loss
from trainer.networks import load_network
from trainer.ode_pairs import PAIR_STREAM, PairRecipe, PairSet, make_pair_set, teacher_pairs
from trainer.stages import with_earlier_stages
from trainer.worlds import shapes


@dataclass(frozen=True)
class Fit:
    noise: str  # "seen" (the training pairs' noise) or "fresh"
    teacher_pass: float
    student_pass: float
    both_pass: float  # share where teacher and student are both accepted
    categories: dict[str, tuple[float, float]]  # category -> (teacher pass, student pass)
    student_verdicts: np.ndarray  # (N,) bool, per caption: paired across noises by caption
    distances: np.ndarray  # (N,) each caption's 0.5 mean squared distance of the student to the teacher

    @property
    def distance(self) -> float:
        """The student's regression distance to the teacher's endpoints (DMD2's `regression_loss`, on clamped images)."""
        return float(self.distances.mean())

    def __str__(self) -> str:
        cats = ", ".join(f"{c} {t:.2f}/{s:.2f}" for c, (t, s) in self.categories.items())
        return (
            f"{self.noise:5s} noise: teacher {self.teacher_pass:.3f}, student {self.student_pass:.3f} "
            f"(both {self.both_pass:.3f}), distance {self.distance:.4f}; teacher/student by category: {cats}"
        )


def pair_scenes(count: int, seed: int = 0) -> list[shapes.Scene]:
    """The first `count` captions of a run's pair set, in `make_pair_set`'s order (its scenes, to judge)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = shapes.step_rng(seed, PAIR_STREAM, 0)
    return [shapes.sample_scene(rng) for _ in range(count)]


def pair_seeds(count: int, run_seed: int = 0, offset: int = 0) -> list[int]:
    """Pair i's noise seed in a set of `set_size` pairs is run_seed * set_size + i; with run seed 0 it is i
    whatever the set's size, so the first captions' noise is known without the set. Fresh seeds add `offset`."""
    if run_seed != 0:
        raise ValueError("pair seeds depend on the set's size for a run seed other than 0: probe run seed 0 runs")
    return [offset + i for i in range(count)]


def _chunks(scenes: list, seeds: list[int], chunk: int, side: int, device: torch.device):
    """(captions, noise) for `chunk` scenes at a time: the engines' own starting noise of their seeds."""
    if len(scenes) != len(seeds):
        raise ValueError(f"{len(scenes)} scenes but {len(seeds)} seeds")  # at the call, not at the first chunk
    return (
        ([scene.caption for scene in scenes[i : i + chunk]], initial_noise(seeds[i : i + chunk], (3, side, side), device)[0])
        for i in range(0, len(scenes), chunk)
    )


@torch.no_grad()
def teacher_endpoints(
    teacher: distill.Teacher, encoder: TextEncoder, scenes: list, seeds: list[int], steps: int = 25, chunk: int = 32
) -> torch.Tensor:
    """(N, 3, H, W) float32 on the CPU: the pair recipe's teacher ODE endpoints (the card's CFG) for these captions
    and seeds, clamped as the pair set keeps them."""
    device = next(teacher.network.parameters()).device
    out = []
    for captions, noise in _chunks(scenes, seeds, chunk, teacher.card.resolution, device):
        cond, null = encoder.encode(captions), encoder.null(len(captions))
        x0 = teacher_pairs(teacher.network, teacher.scheduler_shift, noise, steps, cond, null, teacher.card.default_guidance)
        out.append(x0.clamp(-1, 1).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def one_step_images(student: torch.nn.Module, encoder: TextEncoder, scenes: list, seeds: list[int], chunk: int = 32):
    """(N, 3, H, W) float32 on the CPU: the student's one-step images from the engines' noise of these seeds."""
    device = next(student.parameters()).device
    out = []
    for captions, noise in _chunks(scenes, seeds, chunk, int(student.config.sample_size), device):
        x0 = distill.predict_x0(student, noise, torch.ones(len(captions), device=device), encoder.encode(captions))
        out.append(x0.clamp(-1, 1).float().cpu())
    return torch.cat(out)


def verdicts(images: torch.Tensor, scenes: list, pool: JudgePool | None = None) -> np.ndarray:
    """(N,) bool: the judge's verdicts on model-space images ([-1, 1]) for their scenes, over `pool`'s workers."""
    pixels = shapes.to_uint8((images + 1) / 2)  # model space [-1, 1] -> the judge's [0, 1]
    return (pool or JudgePool(0))(shapes.judge_rewards, pixels, [scene.condition for scene in scenes]) > 0.5


def score(
    label: str,
    teacher_images: torch.Tensor,
    student_images: torch.Tensor,
    scenes: list,
    pool: JudgePool | None = None,
    teacher_verdicts: np.ndarray | None = None,
) -> Fit:
    """The judge on both image sets (the teacher's verdicts may be passed in, judged once) and the student's
    regression distance to the teacher's images."""
    if not len(teacher_images) == len(student_images) == len(scenes):
        raise ValueError(f"{len(teacher_images)} teacher images, {len(student_images)} student images, {len(scenes)} scenes")
    t_ok = verdicts(teacher_images, scenes, pool) if teacher_verdicts is None else teacher_verdicts
    s_ok = verdicts(student_images, scenes, pool)
    categories = [scene.condition.category for scene in scenes]
    t_cat, s_cat = shapes.category_scores(t_ok, categories), shapes.category_scores(s_ok, categories)
    return Fit(
        label,
        float(t_ok.mean()),
        float(s_ok.mean()),
        float((t_ok & s_ok).mean()),
        {c: (t_cat[c], s_cat[c]) for c in t_cat if c != "overall"},
        s_ok,
        0.5 * (student_images - teacher_images).pow(2).flatten(1).mean(1).numpy(),
    )


def regress(
    student: torch.nn.Module, pairs: PairSet, encoder: TextEncoder, steps: int, batch_size: int, lr: float, seed: int = 0
) -> list[dict]:
    """The capacity test: Adam on DMD's regression loss alone over the whole pair set (no DMD, GAN or EMA), in
    float32. A network that can draw the one-step map drives the distance on the pairs it sees towards 0; the
    fresh-noise distance says how much of that generalises. Returns the loss every tenth of the steps."""
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"regress needs steps >= 1, batch_size >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    device = next(student.parameters()).device
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    rng = torch.Generator().manual_seed(seed)
    history, running = [], []
    student.train()
    for step in range(1, steps + 1):
        batch = pairs.batch(pairs.draw(batch_size, rng), device)
        emb = encoder.encode_tokens(batch["tokens"])
        x0 = distill.predict_x0(student, batch["noise"], torch.ones(batch_size, device=device), emb)
        loss = regression_loss(x0, batch["samples"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running.append(loss.item())
        if step % max(1, steps // 10) == 0 or step == steps:
            history.append({"step": step, "loss": round(float(np.mean(running)), 6)})
            running = []
            print(f"regress step {step}: loss {history[-1]['loss']}", flush=True)
    student.eval()
    return history


def save_fine_tune(
    student: torch.nn.Module, parent: Path, directory: Path, regress: dict, pairs: dict, gpu_seconds: float | None, device
) -> Path:
    """Export the regression fine-tune as a student checkpoint: the parent's card with this stage reported as the
    trainer reports a further one (`trainer.stages.with_earlier_stages`: every stage listed, their costs summed;
    `gpu_seconds` None off the GPU, as in the trainer), the parent's sampler, and no metrics (`bench image` measures
    it). `pairs` is the pair set's card entry."""
    card = load_card(parent)
    data = {
        "world": card.data.get("world", "shapes"),
        "images_seen": regress["steps"] * regress["batch"],
        "init_from": str(parent),
        "ode_pairs": pairs,
        "stage": f"scripts/probe_pair_fit.py --regress-steps {regress['steps']}: DMD2's regression loss alone (Adam, "
        f"lr {regress['lr']}, batch {regress['batch']}, float32), final loss {regress['history'][-1]['loss']}",
    }
    data, seconds = with_earlier_stages(data, gpu_seconds, str(parent), directory.name, str(directory), device_name(device))
    card = dataclasses.replace(
        card,
        id=directory.name,
        path=None,
        data=data,
        train_gpu_seconds=seconds,
        device=device_name(device),
        metrics={},
        description=f"{card.id} fine-tuned on DMD2's regression loss alone for {regress['steps']} steps "
        f"({pairs['count']} teacher ODE pairs): the pair-fit probe's capacity test, exported to be benched.",
    )
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(parent / "scheduler")  # the parent's shift and sampling
    return export_checkpoint(student, directory, card, scheduler=scheduler)


def paired_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of a - b over paired per-caption values (0/1 verdicts, distances), with its standard error."""
    d = a.astype(float) - b.astype(float)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("student", type=Path, help="a one-step student checkpoint (trained on run seed 0's pairs)")
    parser.add_argument("--teacher", type=Path, default=Path("checkpoints/shapes-teacher"))
    parser.add_argument("--captions", type=int, default=64, help="the first N captions of the pair set")
    parser.add_argument("--pair-count", type=int, default=DMD2Config.regression_pairs, help="pairs in the run's set")
    parser.add_argument("--fresh-offset", type=int, default=1_000_000, help="fresh noise seeds: offset + i")
    parser.add_argument("--steps", type=int, default=25, help="the teacher ODE's steps (the pair recipe's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the teacher ODE at 2048 captions: GPU seconds)")
    parser.add_argument("--chunk", type=int, default=32, help="captions per batch")
    parser.add_argument(
        "--regress-steps",
        type=int,
        default=0,
        help="then the capacity test: this many Adam steps of "
        "regression alone on the whole pair set (made here), and the fit again (0: off)",
    )
    parser.add_argument("--regress-batch", type=int, default=128)
    parser.add_argument("--regress-lr", type=float, default=1e-4)
    parser.add_argument("--judge-workers", type=int, default=0, help="judge on this many processes (0: in this one)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        help="with --regress-steps: export the fine-tuned student here as a checkpoint (its id: the folder's name), "
        "so `bench image` can score it like any student",
    )
    args = parser.parse_args(argv)
    if args.captions < 2:
        raise SystemExit(f"--captions must be >= 2, got {args.captions}")
    if args.regress_steps and args.captions > args.pair_count:
        raise SystemExit(f"--captions {args.captions} is more than the {args.pair_count} pairs the capacity test makes")
    if args.fresh_offset < args.pair_count:
        raise SystemExit(f"--fresh-offset {args.fresh_offset} would reuse the training pairs' seeds (0 to {args.pair_count - 1})")
    if args.judge_workers < 0:
        raise SystemExit(f"--judge-workers must be >= 0, got {args.judge_workers}")
    if args.regress_steps < 0 or args.regress_batch < 1 or args.regress_lr <= 0:
        raise SystemExit("--regress-steps must be >= 0, --regress-batch >= 1 and --regress-lr > 0")
    if not (args.student / "card.json").is_file():
        raise SystemExit(f"{args.student} is not a checkpoint directory (no card.json)")
    if args.save is not None and not args.regress_steps:
        raise SystemExit("--save exports the regression fine-tune: it needs --regress-steps")
    if args.save is not None:  # refused before the minutes of work whose result it would write
        if args.save.is_file() or (args.save.is_dir() and any(args.save.iterdir())):
            raise SystemExit(f"--save {args.save} exists and is not empty: name a new folder (nothing is overwritten)")
        try:
            dataclasses.replace(load_card(args.student), id=args.save.name, path=None)
        except CheckpointError as err:
            raise SystemExit(f"--save {args.save}: the folder's name is the checkpoint's id, and {err}") from err
    torch.manual_seed(0)
    device = torch.device(args.device)
    torch.set_float32_matmul_precision("high")  # TF32 on a GPU: the probe's float32 teacher ODE at the pair set's size
    teacher = distill.load_teacher(str(args.teacher), device, "probe")
    student = load_network(args.student).to(device).eval()
    encoder = TextEncoder(device=args.device)
    scenes = pair_scenes(args.captions)
    seen_seeds, fresh_seeds = pair_seeds(args.captions), pair_seeds(args.captions, offset=args.fresh_offset)
    pairs = None
    if args.regress_steps:
        guidance = teacher.card.default_guidance
        recipe = PairRecipe.for_teacher(teacher, encoder, steps=args.steps, guidance=guidance, count=args.pair_count, seed=0)
        pairs = make_pair_set(recipe, teacher.network, encoder, device, chunk=max(args.chunk, 256))
        print(f"{len(pairs)} pairs in {pairs.seconds:.0f} s", flush=True)
        seen_teacher = pairs.samples[: args.captions].float()
    else:
        seen_teacher = teacher_endpoints(teacher, encoder, scenes, seen_seeds, args.steps, args.chunk)
    fresh_teacher = teacher_endpoints(teacher, encoder, scenes, fresh_seeds, args.steps, args.chunk)

    pool = JudgePool(args.judge_workers)
    teacher_ok = {"seen": verdicts(seen_teacher, scenes, pool), "fresh": verdicts(fresh_teacher, scenes, pool)}

    def both(when: str) -> list[Fit]:
        fits = [
            score(label, images, one_step_images(student, encoder, scenes, seeds, args.chunk), scenes, pool, teacher_ok[label])
            for label, images, seeds in (("seen", seen_teacher, seen_seeds), ("fresh", fresh_teacher, fresh_seeds))
        ]
        gap, se = paired_gap(fits[0].student_verdicts, fits[1].student_verdicts)
        print(f"{args.student.name} {when}, on the first {args.captions} pair captions (run seed 0):")
        for f in fits:
            print(f"  {f}")
        print(f"  student pass, seen minus fresh noise (paired by caption): {gap:+.3f} +- {se:.3f}")
        gap, se = paired_gap(fits[0].distances, fits[1].distances)
        print(f"  student distance, seen minus fresh noise (paired by caption): {gap:+.5f} +- {se:.5f}", flush=True)
        return fits

    result = {"student": str(args.student), "captions": args.captions, "teacher_steps": args.steps, "before": both("as shipped")}
    if pairs is not None:
        started = time.perf_counter()
        history = regress(student, pairs, encoder, args.regress_steps, args.regress_batch, args.regress_lr)
        result |= {
            "regress": {
                "steps": args.regress_steps,
                "batch": args.regress_batch,
                "lr": args.regress_lr,
                "pairs": len(pairs),
                "seconds": round(time.perf_counter() - started, 1),
                "history": history,
            },
            "after": both(f"after {args.regress_steps} regression steps on {len(pairs)} pairs"),
        }
        if args.save is not None:
            gpu_seconds = pairs.seconds + result["regress"]["seconds"] if device.type == "cuda" else None
            save_fine_tune(student, args.student, args.save, result["regress"], pairs.card_entry(), gpu_seconds, device)
    if args.out is not None:

        def plain(f: Fit) -> dict:
            kept = {k: v for k, v in dataclasses.asdict(f).items() if k not in ("student_verdicts", "distances")}
            return kept | {"distance": f.distance}

        serial = {k: [plain(f) for f in v] if k in ("before", "after") else v for k, v in result.items()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(serial, indent=1))
    return result


if __name__ == "__main__":
    main()
