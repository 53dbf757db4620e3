"""The job store: explicit transitions, restart bookkeeping, two processes writing one database."""

import multiprocessing
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.runner import Runner
from jobs.store import CANCELLED, FAILED, FINISHED, INTERRUPTED, QUEUED, RUNNING, JobError, JobStore

REPO = Path(__file__).resolve().parents[2]


def test_transitions_follow_the_lifecycle(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.add("a", {"max_steps": 4, "run_dir": str(tmp_path / "run")}, str(tmp_path / "run"))
    assert job.status == QUEUED and job.created > 0
    assert store.claim(job.id, "cpu").status == RUNNING
    other = store.add("b", {"max_steps": 4}, str(tmp_path / "b"))
    assert store.claim(other.id, "cpu") is None  # the CPU slot is taken: b stays queued
    store.update(job.id, pid=123, last_step=2, last_metrics={"loss": 0.5})
    job = store.transition(job.id, FAILED, error="killed by SIGKILL")
    assert (job.status, job.last_step, job.last_metrics, job.error) == (FAILED, 2, {"loss": 0.5}, "killed by SIGKILL")
    job = store.transition(job.id, QUEUED)  # resume clears the failure
    assert (job.error, job.pid, job.stop_requested) == (None, None, False)
    store.claim(job.id, "cpu")
    assert store.transition(job.id, FINISHED).finished is not None

    with pytest.raises(JobError, match="finished; it cannot become running"):
        store.transition(job.id, RUNNING)
    with pytest.raises(JobError, match="cannot become interrupted"):
        store.transition(other.id, INTERRUPTED)  # only a running job can be interrupted
    with pytest.raises(JobError, match="use transition"):
        store.update(other.id, status=RUNNING)
    with pytest.raises(JobError, match="no job 99"):
        store.get(99)
    with pytest.raises(JobError, match="cancel it before deleting"):
        store.delete(other.id)
    store.transition(other.id, CANCELLED)
    store.delete(other.id)
    assert [j.id for j in JobStore(tmp_path / "jobs.sqlite").list()] == [job.id]  # a new store object sees the same rows


def _writer(path: str, name: str, count: int) -> None:
    store = JobStore(path)
    for i in range(count):
        job = store.add(f"{name}-{i}", {"i": i}, f"/tmp/{name}-{i}")
        store.update(job.id, last_step=i, last_metrics={"writer": name})
        store.transition(job.id, CANCELLED)


def test_two_processes_write_one_store(tmp_path):
    path = str(tmp_path / "jobs.sqlite")
    JobStore(path)
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, like two studios
    procs = [ctx.Process(target=_writer, args=(path, name, 40)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    jobs = JobStore(path).list()
    assert len(jobs) == 80 and len({j.id for j in jobs}) == 80
    assert all(j.status == CANCELLED and j.last_metrics["writer"] == j.name.split("-")[0] for j in jobs)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_restart_marks_a_dead_job_interrupted_and_keeps_a_live_one_running(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path / "live")])
    try:
        for name, pid, slot in (("dead", dead.pid, "cuda:0"), ("live", live.pid, "cuda:1")):
            job = store.add(name, {"max_steps": 4, "run_dir": str(tmp_path / name)}, str(tmp_path / name))
            store.claim(job.id, slot)
            store.update(job.id, pid=pid)
        runner = Runner(JobStore(tmp_path / "jobs.sqlite"), tmp_path, gpus=2)  # the studio starts again
        status = {j.name: j.status for j in runner.store.list()}
        assert status == {"dead": INTERRUPTED, "live": RUNNING}
        assert runner.store.list()[0].error and "no studio watched" in runner.store.list()[0].error
    finally:
        live.kill()
        live.wait()
    runner.poll()
    assert {j.name: j.status for j in runner.store.list()} == {"dead": INTERRUPTED, "live": INTERRUPTED}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--lr=-0.001"], "lr must be > 0"),
        (["--method=bogus"], "unknown method 'bogus'"),
        (["--method=dmd2", "--teacher=no/such/teacher"], "teacher 'no/such/teacher' does not exist"),
        (["--method=dmd2"], "distils a teacher"),
        (["--method=dmd2", "--teacher=checkpoints/shapes-teacher", "--method_config.student_steps=[0]"], "student_steps"),
        (["--device=tpu"], "unknown device"),
    ],
)
def test_bad_settings_are_refused_before_a_process_starts(tmp_path, overrides, message):
    runner = Runner.open(tmp_path, gpus=0)
    with pytest.raises(JobError, match=message):
        runner.submit(REPO / "configs" / "tiny-cpu.yaml", overrides)
    assert runner.store.list() == []


def test_an_unwritable_run_dir_is_refused(tmp_path):
    runner = Runner.open(tmp_path, gpus=0)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(JobError, match="is not writable"):
        runner.submit(REPO / "configs" / "tiny-cpu.yaml", [], run_dir=blocker / "run")
    with pytest.raises(JobError, match="no visible GPU"):
        runner.submit(REPO / "configs" / "tiny-cpu.yaml", ["--device=cuda"])
    assert runner.store.list() == []


def test_a_nearly_full_disk_is_refused(tmp_path, monkeypatch):
    import shutil

    from jobs import runner as runner_module

    runner = Runner.open(tmp_path, gpus=0)
    full = shutil.disk_usage(tmp_path)._replace(free=10 * 2**20)
    monkeypatch.setattr(runner_module.shutil, "disk_usage", lambda _path: full)
    with pytest.raises(JobError, match="has only 10 MiB free"):
        runner.submit(REPO / "configs" / "tiny-cpu.yaml", [])
    assert runner.store.list() == []


def test_cli_twin_lists_and_refuses_bad_settings(tmp_path):
    def cli(*args):
        command = [sys.executable, "-m", "trainer", "jobs", *args, "--data-dir", str(tmp_path)]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True)

    bad = cli("start", "configs/tiny-cpu.yaml", "--lr=-1")
    assert bad.returncode == 2 and "lr must be > 0" in bad.stderr
    listed = cli("list")
    assert listed.returncode == 0 and "no jobs" in listed.stdout
    assert "no job 7" in cli("cancel", "7").stderr
