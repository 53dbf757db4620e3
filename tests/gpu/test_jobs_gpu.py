"""Background jobs on GPUs: one job per GPU, the rest queue, each job's trainer sees only its own card.
Run on a lent machine of one or more GPUs: `python -m pytest -m gpu tests/gpu/test_jobs_gpu.py -s`."""

import json
import time
from pathlib import Path

import pytest
import torch

from jobs.runner import Runner
from jobs.store import FINISHED, QUEUED, RUNNING

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (-m gpu on the lent GPU)"),
]

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny-cpu.yaml"
FAST = ["--device=cuda", "--model_preset=dit-tiny", "--batch_size=4", "--warmup_steps=1", "--log_every=5"]
FAST += ["--checkpoint_every=1000", "--sample_every=1000", "--eval_every=1000", "--eval_prompts=4", "--max_steps=40"]


def test_one_job_per_gpu_and_the_rest_queue(tmp_path):
    gpus = torch.cuda.device_count()
    runner = Runner.open(tmp_path)
    assert runner.gpus == gpus
    jobs = [runner.submit(CONFIG, [*FAST, f"--export.id=gpu-job-{i}"]) for i in range(gpus + 1)]
    assert [j.status for j in jobs] == [RUNNING] * gpus + [QUEUED]
    assert sorted(j.slot for j in jobs[:gpus]) == [f"cuda:{i}" for i in range(gpus)]

    start, most, timeline = time.monotonic(), 0, []
    while time.monotonic() - start < 240:
        listed = runner.poll()
        running = [j for j in listed if j.status == RUNNING]
        slots = [j.slot for j in running]
        assert len(set(slots)) == len(slots) <= gpus, f"two jobs share a GPU or too many run: {slots}"
        most = max(most, len(running))
        state = tuple((j.id, j.status, j.slot) for j in listed)
        if not timeline or timeline[-1][1] != state:
            timeline.append((round(time.monotonic() - start, 1), state))
        if all(j.status == FINISHED for j in listed):
            break
        assert not any(j.status not in (RUNNING, QUEUED, FINISHED) for j in listed), listed
        time.sleep(0.5)
    for seconds, state in timeline:
        print(f"{seconds:6.1f} s  " + "  ".join(f"job {i}: {status} on {slot}" for i, status, slot in state))
    final = runner.store.list()
    assert all(j.status == FINISHED for j in final), final
    assert most == gpus  # every GPU was used at once
    for job in final:  # each trainer ran on the GPU it was given (CUDA_VISIBLE_DEVICES: its only device)
        card = json.loads((Path(job.run_dir) / "model" / "card.json").read_text())
        log = (Path(job.run_dir) / "train.log").read_text()
        assert "NVIDIA" in card["device"] and f"on {job.slot}" in log
