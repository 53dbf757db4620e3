"""Fixtures shared across test folders. Markers (gpu, browser, slow) are registered in pyproject.toml."""

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
