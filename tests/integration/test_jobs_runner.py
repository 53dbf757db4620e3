"""Background jobs end to end on CPU: real trainer processes, stopped cleanly, killed hard, resumed, published."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs.runner import Runner, read_metrics
from jobs.store import CANCELLED, FAILED, FINISHED, RUNNING, JobStore

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny-cpu.yaml"
FAST = [
    "--model_preset=dit-tiny",
    "--batch_size=4",
    "--warmup_steps=1",
    "--log_every=1",
    "--checkpoint_every=2",
    "--sample_every=2",
    "--eval_every=1000",
    "--eval_prompts=4",
]


def wait_for(condition, runner: Runner, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runner.poll()
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out; log:\n{tail(runner)}")


def tail(runner: Runner) -> str:
    return "\n".join((Path(j.run_dir) / "train.log").read_text()[-2000:] for j in runner.store.list())


def checkpoints(run_dir: str) -> list[str]:
    root = Path(run_dir) / "checkpoints"
    return sorted(p.name for p in root.glob("step-*")) if root.is_dir() else []


def test_cancel_resume_kill_resume_finish_publish(tmp_path):
    """One job through every stop: SIGTERM (cancelled, checkpoint), resume, SIGKILL (failed, with why), resume, finish."""
    runner = Runner.open(tmp_path, gpus=0)
    job = runner.submit(CONFIG, [*FAST, "--max_steps=6", "--export.id=job-student"], name="job-student")
    assert job.status == RUNNING and (Path(job.run_dir) / "config.yaml").is_file()
    queued = runner.submit(CONFIG, [*FAST, "--max_steps=6"])  # one job at a time on CPU: the second waits
    assert queued.status == "queued"
    runner.cancel(queued.id)
    wait_for(lambda: read_metrics(job.run_dir), runner)  # in the loop: SIGTERM now means "save and stop"
    runner.cancel(job.id)
    job = runner.wait(job.id, timeout=120)
    assert job.status == CANCELLED, tail(runner)
    stopped_at = job.last_step
    assert 1 <= stopped_at < 6 and checkpoints(job.run_dir)[-1] == f"step-{stopped_at:08d}"  # a clean stop saves

    job = runner.resume(job.id)
    assert job.status == RUNNING
    wait_for(lambda: any(int(c[5:]) > stopped_at for c in checkpoints(job.run_dir)), runner)
    restarted = Runner(JobStore(tmp_path / "jobs.sqlite"), tmp_path, gpus=0)  # a second studio: the process is alive
    assert restarted.store.get(job.id).status == RUNNING

    os.kill(runner.store.get(job.id).pid, signal.SIGKILL)
    job = wait_for(lambda: (j := runner.store.get(job.id)).status == FAILED and j, runner)
    assert "SIGKILL" in job.error
    last = checkpoints(job.run_dir)[-1]

    job = restarted.resume(job.id)
    job = restarted.wait(job.id, timeout=120)
    assert job.status == FINISHED, tail(restarted)
    log = (Path(job.run_dir) / "train.log").read_text()
    assert f"resumed from {Path(job.run_dir) / 'checkpoints' / f'step-{stopped_at:08d}'}" in log
    assert f"resumed from {Path(job.run_dir) / 'checkpoints' / last}" in log
    assert [r["step"] for r in read_metrics(job.run_dir) if "loss" in r] == [1, 2, 3, 4, 5, 6]  # no step lost or repeated
    assert job.last_step == 6 and (Path(job.run_dir) / "model" / "card.json").is_file()
    assert runner.progress(job).sample is not None

    published = runner.publish(job.id)
    assert (published / "card.json").is_file() and published.name == "job-student"
    from engines.registry import Registry

    assert Registry([published.parent], device="cpu").card("job-student").role == "teacher"  # flow_matching trains a teacher

    command = [sys.executable, "-m", "trainer", "jobs", "list", "--data-dir", str(tmp_path)]
    listed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert "finished" in listed.stdout and "job-student" in listed.stdout
