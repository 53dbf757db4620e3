"""`python -m trainer jobs ...`: the Train tab's actions, headless, on the same store."""

from __future__ import annotations

import argparse
import json
import sys

from engines.errors import DistilleryError
from jobs.runner import Runner


def _job_id(target: str | None) -> int:
    if target is None or not target.isdigit():
        raise DistilleryError(f"give a job id (a number from `python -m trainer jobs list`), got {target!r}")
    return int(target)


def _line(job, runner: Runner) -> str:
    loss = next((v for k, v in job.last_metrics.items() if k.startswith("loss")), None)
    eta = runner.progress(job).eta_s
    parts = [f"{job.id:>4}", f"{job.status:<11}", f"{job.last_step:>6}/{job.max_steps:<6}", job.name]
    parts += [f"loss {loss:.4f}" if loss is not None else "", f"eta {eta / 60:.1f} min" if eta is not None else ""]
    parts += [job.run_dir] + ([f"error: {job.error}"] if job.error else [])
    return "  ".join(p for p in parts if p)


def run_jobs(args: argparse.Namespace, overrides: list[str]) -> int:
    try:
        runner = Runner.open(args.data_dir)  # polls: jobs whose process died show as interrupted
        if args.action == "list":
            jobs = runner.store.list()
            if args.json:
                print(json.dumps([job.__dict__ for job in jobs], indent=2, default=str))
            else:
                print("\n".join(_line(job, runner) for job in jobs) or "no jobs")
            return 0
        if args.action == "start":
            run_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("--run_dir=")), None)
            rest = [o for o in overrides if not o.startswith("--run_dir=")]
            job = runner.submit(args.target, rest, name=args.name, run_dir=run_dir)
        elif overrides:
            raise DistilleryError(f"unexpected arguments {' '.join(overrides)}")
        elif args.action == "cancel":
            job = runner.cancel(_job_id(args.target))
            if args.wait:
                job = runner.wait(job.id)
        elif args.action == "resume":
            job = runner.resume(_job_id(args.target))
        elif args.action == "delete":
            job = runner.delete(_job_id(args.target), remove_files=True)
            print(f"deleted job {job.id}")
            return 0
        else:  # publish
            print(runner.publish(_job_id(args.target), args.to))
            return 0
        if args.wait and args.action in ("start", "resume"):
            job = runner.wait(job.id, timeout=float("inf"))
        print(_line(job, runner))
        return 0 if job.status != "failed" else 1
    except (DistilleryError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
