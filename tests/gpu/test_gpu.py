"""The same contracts on the GPU. Run on the lent machine: `python -m pytest -m gpu tests/gpu`."""

import numpy as np
import pytest
import torch

from engines.registry import Registry
from engines.requests import ImageRequest
from trainer import checkpoint as ckpt
from trainer.config import load_config
from trainer.loop import StopFlag, train

# Deselected by the README's test command (-m "not gpu"); run on the lent GPU with -m gpu.
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (-m gpu on the lent GPU)"),
]


ARGS = [
    "--model_preset=dit-tiny",
    "--batch_size=8",
    "--device=cuda",
    "--mixed_precision=bf16",
    "--sample_every=1000",
    "--eval_every=1000",
    "--checkpoint_every=1000",
    "--max_steps=6",
    "--warmup_steps=1",
]


def test_engine_on_cuda_is_deterministic_and_streams(tmp_path):
    train(
        load_config(
            None, [*ARGS, f"--run_dir={tmp_path / 'run'}", f"--export.output_dir={tmp_path / 'ck' / 'tiny'}", "--export.id=tiny"]
        )
    )
    engine = Registry([tmp_path / "ck"], device="cuda").engine("tiny")
    assert engine.denoiser.dtype.is_floating_point and engine.device.type == "cuda"
    request = ImageRequest("a red circle to the left of a blue square", seed=3, steps=8, batch=4)
    states = list(engine.stream(request))
    assert [s.step for s in states] == list(range(1, 9)) and states[-1].final
    again = engine.generate(request)
    assert np.array_equal(np.stack([np.asarray(i) for i in states[-1].images]), np.stack([np.asarray(i) for i in again.images]))


def test_training_resumes_on_cuda(tmp_path):
    args = ARGS
    train(load_config(None, [*args, f"--run_dir={tmp_path / 'a'}"]))
    stop = StopFlag()
    train(load_config(None, [*args, f"--run_dir={tmp_path / 'b'}"]), stop=stop, on_step=lambda s: stop.set() if s == 3 else None)
    train(load_config(None, [*args, f"--run_dir={tmp_path / 'b'}"]))
    from safetensors.torch import load_file

    a = load_file(str(ckpt.latest_checkpoint(tmp_path / "a") / "model" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(ckpt.latest_checkpoint(tmp_path / "b") / "model" / "diffusion_pytorch_model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
