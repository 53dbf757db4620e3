"""The training loop end to end on CPU: resume repeats exactly, nothing is lost, export loads."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from engines.registry import Registry
from engines.requests import ImageRequest
from trainer import checkpoint as ckpt
from trainer.config import load_config
from trainer.loop import StopFlag, lr_at, train


def logged(run) -> list[dict]:
    """The run's metric lines that carry losses (evaluation lines left out)."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line]


def weights(run_dir, role="model"):
    latest = ckpt.latest_checkpoint(run_dir)
    return load_file(str(latest / role / "diffusion_pytorch_model.safetensors"))


def test_three_steps_then_resume_matches_an_unbroken_run(tmp_path, text_encoder, tiny_args):
    straight = tmp_path / "straight"
    train(load_config(None, [*tiny_args, f"--run_dir={straight}", "--max_steps=5"]), text_encoder=text_encoder)

    broken = tmp_path / "broken"
    stop = StopFlag()
    summary = train(
        load_config(None, [*tiny_args, f"--run_dir={broken}", "--max_steps=5"]),
        stop=stop,
        on_step=lambda step: stop.set() if step == 3 else None,
        text_encoder=text_encoder,
    )
    assert summary["step"] == 3 and not summary["finished"] and "model" not in summary
    assert ckpt.load_state(ckpt.latest_checkpoint(broken))["step"] == 3
    summary = train(load_config(None, [*tiny_args, f"--run_dir={broken}", "--max_steps=5"]), text_encoder=text_encoder)
    assert summary["finished"] and summary["step"] == 5

    for role in ("model", "ema-model"):
        a, b = weights(straight, role), weights(broken, role)
        assert a.keys() == b.keys()
        assert all((a[k] == b[k]).all() for k in a), f"{role} differs after resume"
    # The log holds each step once, in order: lines of the interrupted run past the checkpoint are dropped.
    assert [r["step"] for r in logged(broken)] == [1, 2, 3, 4, 5]


def test_a_log_line_holds_the_means_of_its_window_not_its_last_step(tmp_path, text_encoder, tiny_args):
    def records(log_every: int) -> list[dict]:
        run = tmp_path / f"every-{log_every}"
        train(load_config(None, [*tiny_args, f"--run_dir={run}", f"--log_every={log_every}"]), text_encoder=text_encoder)
        return logged(run)

    each, pairs = records(1), records(2)
    assert [r["step"] for r in each] == [1, 2, 3, 4] and [r["step"] for r in pairs] == [2, 4]
    assert each[0]["loss"] != each[1]["loss"]  # else a last-step log would pass too
    for line, window in zip(pairs, (each[0:2], each[2:4])):
        for key in ("loss", "grad_norm/model"):
            assert abs(line[key] - sum(r[key] for r in window) / 2) < 1e-6, key


def test_a_run_resumed_mid_window_logs_the_same_means_as_an_unbroken_one(tmp_path, text_encoder, tiny_args):
    """Issue 3: the resumed run's next logged losses equal an uninterrupted run's, with log lines that average
    two steps and a stop after step 3, mid-window (the checkpoint keeps the open window)."""
    args = [*tiny_args, "--max_steps=5", "--log_every=2"]
    train(load_config(None, [*args, f"--run_dir={tmp_path / 'straight'}"]), text_encoder=text_encoder)
    stop = StopFlag()
    broken = tmp_path / "broken"
    train(
        load_config(None, [*args, f"--run_dir={broken}"]),
        stop=stop,
        on_step=lambda step: stop.set() if step == 3 else None,
        text_encoder=text_encoder,
    )
    assert [r["step"] for r in logged(broken)] == [2]  # step 3 waits in the open window, saved with the checkpoint
    train(load_config(None, [*args, f"--run_dir={broken}"]), text_encoder=text_encoder)
    straight, resumed = logged(tmp_path / "straight"), logged(broken)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == [2, 4, 5]
    for a, b in zip(straight, resumed):
        assert a["loss"] == b["loss"] and a["grad_norm/model"] == b["grad_norm/model"], a["step"]


def test_run_writes_checkpoints_atomically_and_keeps_the_newest(tmp_path, text_encoder, tiny_args):
    run = tmp_path / "run"
    train(
        load_config(
            None,
            [
                *tiny_args,
                f"--run_dir={run}",
                "--checkpoint_every=1",
                "--keep_checkpoints=2",
                "--max_steps=4",
                "--sample_every=2",
                "--eval_every=4",
                "--eval_prompts=7",
            ],
        ),
        text_encoder=text_encoder,
    )
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-00000003", "step-00000004"]  # no temporary leftovers, two kept
    assert (run / "samples" / "latest.png").is_file() and (run / "samples" / "step-00000002.png").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/overall" in r]
    assert evals and all(0 <= r["eval/free_colour_bits"] <= 3 for r in evals)  # colour diversity beside the judge
    assert all(0 <= r["eval/free_size_bits"] <= 1.585 for r in evals)  # and size diversity
    assert all(r["loss"] == r["loss"] for r in records if "loss" in r)  # finite, not NaN


def test_exported_model_loads_through_the_registry_and_generates(tiny_checkpoint):
    root, _ = tiny_checkpoint
    registry = Registry([root], device="cpu")
    card = registry.card("tiny-cpu")
    assert card.role == "teacher" and card.default_steps == 4 and card.resolution == 16
    assert (card.path / "README.md").read_text().startswith("# tiny-cpu")
    result = registry.engine("tiny-cpu").generate(ImageRequest("a red circle", seed=1, batch=2))
    assert len(result.images) == 2 and result.images[0].size == (16, 16)
    assert result.timings.nfe == 8  # 4 steps with guidance 2.0: two evaluations per step


def test_cli_rejects_a_bad_config_before_training(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: -0.1\n")
    proc = subprocess.run([sys.executable, "-m", "trainer", "train", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "lr must be > 0" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_init_from_starts_at_an_exported_checkpoint(tiny_checkpoint, text_encoder, tmp_path):
    import torch

    from engines.registry import Registry as _Registry
    from trainer.methods.flow_matching import FlowMatching

    root, _ = tiny_checkpoint
    exported = _Registry([root], device="cpu").engine("tiny-cpu").denoiser
    config = load_config(None, ["--model_preset=dit-tiny", f"--init_from={root / 'tiny-cpu'}", f"--run_dir={tmp_path}"])
    method = FlowMatching(config, torch.device("cpu"), text_encoder)
    started = method.networks["model"].state_dict()
    assert all(torch.equal(started[k], v) for k, v in exported.state_dict().items())
    assert method.role == "teacher"


def test_a_time_clocked_decay_ends_at_the_budget_and_a_resume_carries_it_on(tmp_path, text_encoder, tiny_args, monkeypatch):
    """lr_clock "time": a run its one-minute budget stops after 6 of 1000 steps still takes the cosine to min_lr
    (each step costs 10 s of a fake clock); a run stopped at step 3 resumes the decay where it stood."""
    import trainer.loop as loop

    now = [0.0]
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def tick(_step: int) -> None:
        now[0] += 10.0

    args = [*tiny_args, "--max_steps=1000", "--warmup_steps=0", "--max_minutes=1", "--lr_clock=time", "--eval_prompts=7"]
    config = load_config(None, [*args, f"--run_dir={tmp_path / 'timed'}"])
    summary = train(config, text_encoder=text_encoder, on_step=tick)
    assert summary["step"] == 6 and summary["finished"] and "model" in summary
    lrs = [r["lr"] for r in logged(tmp_path / "timed")]
    assert lrs == pytest.approx([lr_at(config, k, k / 6) for k in range(6)])
    assert lrs[0] == pytest.approx(config.lr) and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] < config.lr * (config.min_lr_ratio + 0.1)  # near the floor at the budget's end
    assert lr_at(config, 5) > 0.99 * config.lr  # the step clock alone would barely have begun to decay

    broken = tmp_path / "broken"
    stop = StopFlag()
    now[0] = 0.0
    train(
        load_config(None, [*args, f"--run_dir={broken}"]),
        stop=stop,
        on_step=lambda step: (tick(step), stop.set() if step == 3 else None),
        text_encoder=text_encoder,
    )
    assert ckpt.load_state(ckpt.latest_checkpoint(broken))["lr_progress"] == pytest.approx(2 / 6)
    now[0] = 0.0  # a new process: a fresh budget carries the decay from 2/6 to the end
    summary = train(load_config(None, [*args, f"--run_dir={broken}"]), text_encoder=text_encoder, on_step=tick)
    assert summary["step"] == 9 and summary["finished"]
    resumed = [r["lr"] for r in logged(broken)][3:]
    assert resumed == pytest.approx([lr_at(config, 3 + k, 2 / 6 + (4 / 6) * k / 6) for k in range(6)])
    assert resumed[0] == pytest.approx(lrs[2])  # no jump back to the full lr
