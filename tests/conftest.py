"""Fixtures shared across test folders. Markers (gpu, browser, slow) are registered in pyproject.toml."""

import contextlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_image_root(tmp_path_factory) -> Path:
    """A directory holding one tiny image checkpoint, `tiny-cpu` (16 px, 4 default steps), trained for 4 steps on CPU."""
    from trainer.config import load_config
    from trainer.loop import train

    tmp = tmp_path_factory.mktemp("tiny-image")
    overrides = [f"--run_dir={tmp / 'run'}", f"--export.output_dir={tmp / 'ck' / 'tiny-cpu'}", "--max_steps=4"]
    train(load_config(str(REPO / "configs" / "tiny-cpu.yaml"), [*overrides, "--eval_every=1000", "--sample_every=1000"]))
    return tmp / "ck"


@contextlib.contextmanager
def one_thread():
    """Tiny models run fastest on one thread; two threads fighting other jobs for this box's 2 cores run ~100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torch_one_thread():
    """For modules that run tiny models (in handlers or a served studio): one torch thread while they run."""
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_text_root(tmp_path_factory) -> Path:
    """A directory holding a tiny text teacher, `tiny-text` (48-token canvas, 48 fixed steps), and its CD4LM student,
    `tiny-text-cd4lm` (confidence threshold 0.5, KV cache), each trained for 3 steps on CPU."""
    from trainer.config import load_config
    from trainer.loop import train

    tmp = tmp_path_factory.mktemp("tiny-text")
    teacher, student = tmp / "ck" / "tiny-text", tmp / "ck" / "tiny-text-cd4lm"
    quick = ["--eval_prompts=4"]  # the export's held-out evaluation decodes every prompt: keep it short
    with one_thread():
        train(
            load_config(
                str(REPO / "configs" / "tiny-text-cpu.yaml"),
                [f"--run_dir={tmp / 'teacher'}", f"--export.output_dir={teacher}", *quick],
            )
        )
        overrides = [f"--run_dir={tmp / 'student'}", f"--export.output_dir={student}", f"--teacher={teacher}", *quick]
        train(load_config(str(REPO / "configs" / "tiny-text-cd4lm-cpu.yaml"), overrides))
    return tmp / "ck"


@pytest.fixture(scope="session")
def tiny_video_root(tmp_path_factory) -> Path:
    """A directory holding a tiny video teacher, `tiny-video` (16 px, 4-frame clips, chunks of 2), and its
    Self-Forcing student, `tiny-video-student` (2 steps per chunk), each trained for a few steps on CPU."""
    from trainer.config import load_config
    from trainer.loop import train

    tmp = tmp_path_factory.mktemp("tiny-video")
    teacher, student = tmp / "ck" / "tiny-video", tmp / "ck" / "tiny-video-student"
    with one_thread():
        train(
            load_config(
                str(REPO / "configs" / "tiny-video-cpu.yaml"), [f"--run_dir={tmp / 'teacher'}", f"--export.output_dir={teacher}"]
            )
        )
        overrides = [f"--run_dir={tmp / 'student'}", f"--export.output_dir={student}", f"--teacher={teacher}"]
        train(load_config(str(REPO / "configs" / "tiny-self-forcing-cpu.yaml"), overrides))
    return tmp / "ck"


@pytest.fixture(scope="session")
def text_registry(tiny_text_root):
    """A CPU registry over the tiny text teacher and student only."""
    from engines.registry import Registry

    return Registry([tiny_text_root], device="cpu")


@pytest.fixture(scope="session")
def video_registry(tiny_video_root):
    """A CPU registry over the tiny video teacher and student only."""
    from engines.registry import Registry

    return Registry([tiny_video_root], device="cpu")


@pytest.fixture(scope="session")
def studio_registry(tiny_image_root):
    """A CPU registry over the tiny checkpoint only (never the shipped checkpoints/)."""
    from engines.registry import Registry

    return Registry([tiny_image_root], device="cpu")


@pytest.fixture(scope="session", autouse=True)
def job_data_dir(tmp_path_factory):
    """Studios built by tests keep their job store and runs in a temporary directory, never ~/.distillery."""
    import os

    path = tmp_path_factory.mktemp("distillery-data")
    previous = os.environ.get("DISTILLERY_DATA_DIR")
    os.environ["DISTILLERY_DATA_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("DISTILLERY_DATA_DIR", None)
    else:
        os.environ["DISTILLERY_DATA_DIR"] = previous
