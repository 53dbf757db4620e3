"""Integration fixtures: the real packaged text encoder (loaded once) and a tiny trained checkpoint."""

import pytest

from engines.text_encoder import TextEncoder


@pytest.fixture(scope="session")
def text_encoder():
    return TextEncoder(device="cpu")


TINY = [
    "--model_preset=dit-tiny",
    "--batch_size=4",
    "--device=cpu",
    "--sample_every=1000",
    "--eval_every=1000",
    "--log_every=1",
    "--checkpoint_every=1000",
    "--warmup_steps=1",
    "--max_steps=4",
]


@pytest.fixture(scope="session")
def tiny_args() -> list[str]:
    """Overrides for a 4-step, ~35 k-parameter CPU run."""
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_image_root):
    """(checkpoint root holding `tiny-cpu`, its run directory): the session's one tiny trained model."""
    return tiny_image_root, tiny_image_root.parent / "run"


@pytest.fixture()
def dmd2_args(tiny_image_root, tmp_path):
    def make(name: str, *extra: str) -> list[str]:
        """Overrides of configs/tiny-cpu.yaml for a 5-step DMD2 run of the tiny teacher in tmp_path/name."""
        return [
            "--method=dmd2",
            f"--teacher={tiny_image_root / 'tiny-cpu'}",
            "--method_config.critic_updates=2",
            "--batch_size=4",
            "--log_every=1",
            "--sample_every=1000",
            "--eval_every=1000",
            "--checkpoint_every=1000",
            "--warmup_steps=1",
            "--max_steps=5",
            f"--run_dir={tmp_path / name}",
            f"--export.output_dir={tmp_path / name / 'model'}",
            *extra,
        ]

    return make
