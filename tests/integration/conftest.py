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
def tiny_checkpoint(tmp_path_factory, text_encoder):
    """A 4-step tiny student-sized model exported through the trainer: (checkpoint root, run dir)."""
    from trainer.config import load_config
    from trainer.loop import train

    root = tmp_path_factory.mktemp("tiny")
    train(
        load_config(
            None,
            [
                *TINY,
                f"--run_dir={root / 'run'}",
                f"--export.output_dir={root / 'ck' / 'tiny-cpu'}",
                "--export.id=tiny-cpu",
                "--export.default_steps=3",
                "--export.default_guidance=2.0",
            ],
        ),
        text_encoder=text_encoder,
    )
    return root / "ck", root / "run"
