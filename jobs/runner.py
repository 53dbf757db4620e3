"""The runner: each job is its own `python -m trainer train <run_dir>/config.yaml` process.

Progress is read from the run's files (metrics.jsonl, samples/latest.png, train.log), never from the
process's memory, so a restarted studio — or a second one, or the CLI — sees the same picture. Settings
are validated before any process starts. One job runs per GPU; on CPU, one at a time; the rest queue.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jobs.store import (
    ACTIVE,
    CANCELLED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    QUEUED,
    RESUMABLE,
    RUNNING,
    Job,
    JobError,
    JobStore,
    default_data_dir,
)

REPO = Path(__file__).resolve().parents[1]
TEACHERLESS = ("flow_matching",)  # trains from data alone; every other method distils a teacher
MIN_FREE_BYTES = 200 * 2**20  # a run writes checkpoints and samples; refuse to start on a nearly full disk
LOG_NAME = "train.log"


@dataclass
class Progress:
    """What the Train tab and `jobs list` show for one job, read from its run directory."""

    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, in order
    step: int = 0
    eta_s: float | None = None
    sample: Path | None = None


def gpu_count() -> int:
    """GPUs visible to child processes, without importing torch (the studio may run with CUDA hidden)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(glob.glob("/dev/nvidia[0-9]*"))


def model_dir(config: dict[str, Any]) -> Path:
    return Path((config.get("export") or {}).get("output_dir") or Path(config["run_dir"]) / "model")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the trainer may be halfway through writing the last line
            continue
    return records


def estimate_eta(records: list[dict[str, Any]], max_steps: int) -> float | None:
    """Seconds left, from the pace of the last few logged steps (a resumed run's elapsed_s carries on)."""
    timed = [r for r in records if "elapsed_s" in r][-10:]
    if len(timed) < 2 or timed[-1]["step"] <= timed[0]["step"]:
        return None
    pace = (timed[-1]["elapsed_s"] - timed[0]["elapsed_s"]) / (timed[-1]["step"] - timed[0]["step"])
    return max(0.0, (max_steps - timed[-1]["step"]) * pace)


def failure_reason(returncode: int | None, log_path: Path) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the trainer process was killed by {name}; resume continues from the last checkpoint"
    lines: list[str] = []
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        pass
    pattern = re.compile(r"^[\w.]+(Error|Exception|Collapsed|Diverged)\b")
    errors = [line for line in lines if line.startswith("error:") or pattern.match(line)]
    detail = errors[-1] if errors else (lines[-1] if lines else "no output")
    code = "unknown exit status" if returncode is None else f"exit status {returncode}"
    return f"the trainer stopped with {code}: {detail[:500]}"


def process_alive(pid: int | None, marker: str) -> bool:
    """Is `pid` a live (not zombie) process whose command line mentions `marker` (guards against pid reuse)?"""
    if not pid:
        return False
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X") and marker in cmdline
    try:  # no /proc (macOS): fall back to a signal-0 probe
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def check_writable(run_dir: Path) -> None:
    """Create the run directory and write a probe file, so a permission or disk-full error shows now, not mid-run."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".probe-{uuid.uuid4().hex}"
        with probe.open("wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
        free = shutil.disk_usage(run_dir).free
    except OSError as err:
        raise JobError(f"run directory {run_dir} is not writable ({err.strerror or err}); pick another directory") from err
    if free < MIN_FREE_BYTES:
        raise JobError(f"the disk holding {run_dir} has only {free / 2**20:.0f} MiB free; a run needs at least 200 MiB")


class Runner:
    """Starts, watches, stops and publishes jobs in `store`. Safe to call from several threads."""

    def __init__(self, store: JobStore, data_dir: str | Path | None = None, gpus: int | None = None) -> None:
        self.store = store
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.gpus = gpu_count() if gpus is None else gpus
        self._procs: dict[int, subprocess.Popen] = {}  # only the processes this runner started
        self._lock = threading.RLock()
        self.poll()  # a restart: mark jobs whose process died while nobody watched

    @classmethod
    def open(cls, data_dir: str | Path | None = None, gpus: int | None = None) -> Runner:
        data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        return cls(JobStore(data_dir / "jobs.sqlite"), data_dir, gpus)

    # ------------------------------------------------------------------ settings
    def validate(self, config_path: str | Path | None, overrides: list[str], run_dir: str | Path | None = None):
        """The checked TrainConfig for a new job, or JobError saying what is wrong. Starts nothing."""
        from engines.card import load_card
        from engines.errors import CheckpointError
        from trainer.config import ConfigError, build, load_config
        from trainer.methods import method_class

        try:
            config = load_config(config_path, overrides)  # YAML safe load + dataclass checks (e.g. lr > 0)
            cls = method_class(config.method)
            options = method_options_class(cls)
            if options is not None:
                build(options, config.method_config, prefix="method_config.")
        except ConfigError as err:
            raise JobError(f"invalid settings: {err}") from err
        except ImportError as err:
            raise JobError(f"method {config.method!r} cannot be loaded here: {err}") from err
        if config.method not in TEACHERLESS and not config.teacher:
            raise JobError(f"method {config.method!r} distils a teacher: pick a teacher checkpoint")
        if config.teacher:
            teacher = Path(config.teacher).expanduser()
            if not teacher.is_absolute() and not teacher.exists() and (REPO / teacher).exists():
                teacher = REPO / teacher  # shipped configs name checkpoints/ relative to the repository
            try:
                card = load_card(teacher)
            except CheckpointError as err:
                raise JobError(f"teacher {config.teacher!r} does not exist or is not a checkpoint: {err}") from err
            if card.modality != "image":
                raise JobError(f"teacher {card.id!r} is a {card.modality} model; training needs an image teacher")
            config.teacher = str(teacher.resolve())
        if config.device == "cuda" and self.gpus == 0:
            raise JobError("device 'cuda' was asked for but this machine has no visible GPU; use cpu or auto")
        if config.device not in ("auto", "cpu", "cuda"):
            raise JobError(f"unknown device {config.device!r}; use auto, cpu or cuda")
        run_dir = Path(run_dir or self.data_dir / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
        run_dir = run_dir.expanduser().resolve()
        busy = [j for j in self.store.list(ACTIVE) if Path(j.run_dir) == run_dir]
        if busy:
            raise JobError(f"run directory {run_dir} is in use by job {busy[0].id} ({busy[0].status})")
        check_writable(run_dir)
        config.run_dir = str(run_dir)
        return config

    def submit(self, config_path: str | Path | None, overrides: list[str], name: str | None = None, run_dir=None) -> Job:
        """Validate, write <run_dir>/config.yaml, queue the job and start it if a device is free."""
        from trainer.config import to_dict

        config = self.validate(config_path, overrides, run_dir)
        data = to_dict(config)
        try:
            (Path(config.run_dir) / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        except OSError as err:
            raise JobError(f"cannot write {config.run_dir}/config.yaml: {err}") from err
        job = self.store.add(name or config.export.id, data, config.run_dir)
        self.poll()
        return self.store.get(job.id)

    # ------------------------------------------------------------------ processes
    def _slot_for(self, job: Job) -> list[str]:
        device = job.config.get("device", "auto")
        if device == "cpu" or (device == "auto" and self.gpus == 0):
            return ["cpu"]
        return [f"cuda:{i}" for i in range(self.gpus)]

    def _launch(self, job: Job) -> None:
        run_dir = Path(job.run_dir)
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
        if job.slot and job.slot.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = job.slot.split(":", 1)[1]
        try:
            with (run_dir / LOG_NAME).open("ab") as log:
                log.write(f"\n=== job {job.id} started {time.strftime('%Y-%m-%d %H:%M:%S')} on {job.slot} ===\n".encode())
                log.flush()
                # A new session: Ctrl-C on the studio does not reach the job, which keeps training.
                proc = subprocess.Popen(
                    [sys.executable, "-m", "trainer", "train", str(run_dir / "config.yaml")],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        except OSError as err:
            self.store.transition(job.id, FAILED, error=f"could not start the trainer: {err}")
            return
        self._procs[job.id] = proc
        self.store.update(job.id, pid=proc.pid)

    def _settle(self, job: Job) -> None:
        """A running job: update its progress; if its process ended, record how."""
        records = read_metrics(job.run_dir)
        if records:
            last_train = next((r for r in reversed(records) if "elapsed_s" in r), {})
            evals = {k: v for r in records for k, v in r.items() if k.startswith("eval/")}
            self.store.update(job.id, last_step=max(r.get("step", 0) for r in records), last_metrics={**last_train, **evals})
        proc = self._procs.get(job.id)
        if proc is not None:
            returncode = proc.poll()
            if returncode is None:
                return
            del self._procs[job.id]
        elif job.pid is None or process_alive(job.pid, job.run_dir):
            return  # just claimed by another runner (pid not yet written), or still training
        else:
            returncode = None  # another studio started it and is gone: its exit status is lost
        job = self.store.get(job.id)
        card = model_dir(job.config) / "card.json"
        if (returncode in (0, None)) and card.is_file() and job.last_step >= job.max_steps:
            self.store.transition(job.id, FINISHED, pid=None)
        elif job.stop_requested:
            self.store.transition(job.id, CANCELLED, pid=None)
        elif returncode is None or returncode == 0:
            # Nobody saw it exit (the studio was down) or something else stopped it cleanly: resumable.
            self.store.transition(job.id, INTERRUPTED, pid=None, error="the trainer stopped while no studio watched it")
        else:
            self.store.transition(job.id, FAILED, pid=None, error=failure_reason(returncode, Path(job.run_dir) / LOG_NAME))

    def poll(self) -> list[Job]:
        """Update every running job from its process and files, then start queued jobs on free devices."""
        with self._lock:
            for job in self.store.list(RUNNING):
                self._settle(job)
            for job in self.store.list(QUEUED):
                for slot in self._slot_for(job):
                    claimed = self.store.claim(job.id, slot)
                    if claimed is not None:
                        self._launch(claimed)
                        break
            return self.store.list()

    # ------------------------------------------------------------------ actions
    def cancel(self, job_id: int) -> Job:
        """Queued: cancelled now. Running: SIGTERM, the trainer saves a checkpoint and exits; poll() records it."""
        with self._lock:
            job = self.store.get(job_id)
            if job.status == QUEUED:
                return self.store.transition(job_id, CANCELLED)
            if job.status != RUNNING:
                raise JobError(f"job {job_id} is {job.status}; only queued or running jobs can be cancelled")
            self.store.update(job_id, stop_requested=True)
            proc = self._procs.get(job_id)
            if proc is not None or process_alive(job.pid, job.run_dir):
                try:
                    os.kill(job.pid, signal.SIGTERM)
                except (OSError, TypeError):
                    pass
            self._settle(self.store.get(job_id))
            return self.store.get(job_id)

    def wait(self, job_id: int, timeout: float = 600, interval: float = 0.5) -> Job:
        """Poll until the job leaves queued/running (CLI --wait, tests)."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            job = self.store.get(job_id)
            if job.status not in ACTIVE or time.monotonic() > deadline:
                return job
            time.sleep(interval)

    def resume(self, job_id: int) -> Job:
        """Queue a cancelled/failed/interrupted job again; the trainer continues from the run's last checkpoint."""
        with self._lock:
            job = self.store.get(job_id)
            if job.status not in RESUMABLE:
                raise JobError(f"job {job_id} is {job.status}; only {', '.join(RESUMABLE)} jobs can be resumed")
            check_writable(Path(job.run_dir))
            self.store.transition(job_id, QUEUED)
            self.poll()
            return self.store.get(job_id)

    def delete(self, job_id: int, remove_files: bool = False) -> Job:
        """Forget a job that is not queued or running; its run directory goes too if it lies under our runs/."""
        with self._lock:
            job = self.store.delete(job_id)
            run_dir = Path(job.run_dir).resolve()
            if remove_files and (self.data_dir / "runs").resolve() in run_dir.parents:
                shutil.rmtree(run_dir, ignore_errors=True)
            return job

    def publish(self, job_id: int, root: str | Path | None = None) -> Path:
        """Copy a finished job's exported model into `root` (default <data_dir>/published), named by its card id."""
        from engines.card import load_card

        job = self.store.get(job_id)
        if job.status != FINISHED:
            raise JobError(f"job {job_id} is {job.status}; only a finished job has a model to publish")
        source = model_dir(job.config)
        card = load_card(source)
        root = Path(root) if root is not None else self.data_dir / "published"
        dest = root / card.id
        if dest.exists():
            raise JobError(f"{dest} already exists: a model with id {card.id!r} was published before")
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{card.id}-{uuid.uuid4().hex[:6]}"
        shutil.copytree(source, tmp)
        os.replace(tmp, dest)  # a registry scanning `root` never sees half a model
        return dest

    def progress(self, job: Job) -> Progress:
        records = read_metrics(job.run_dir)
        step = max([r.get("step", 0) for r in records], default=job.last_step)
        sample = Path(job.run_dir) / "samples" / "latest.png"
        eta = None if job.status != RUNNING else estimate_eta(records, job.max_steps)
        return Progress(records=records, step=step, eta_s=eta, sample=sample if sample.is_file() else None)


def method_options_class(cls: type):
    """The dataclass that checks `method_config` for a method class: the one `*Config` dataclass in its module."""
    module = sys.modules[cls.__module__]
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == module.__name__ and v.__name__[-6:] == "Config"
    ]
    return found[0] if len(found) == 1 else None


__all__ = ["CANCELLED", "FAILED", "FINISHED", "INTERRUPTED", "QUEUED", "RUNNING", "Job", "JobError", "Progress", "Runner"]
