"""scripts/carry_delta.py: a tuned checkpoint travels as an XOR delta against its base and comes back bit for bit."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("carry_delta", REPO / "scripts" / "carry_delta.py")
carry_delta = importlib.util.module_from_spec(spec)
spec.loader.exec_module(carry_delta)


def _model(root, weights: dict) -> None:
    (root / "transformer").mkdir(parents=True)
    (root / "card.json").write_text('{"id": "x"}')
    (root / "transformer" / "config.json").write_text("{}")
    save_file(weights, str(root / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_pack_then_unpack_is_bit_exact(tmp_path) -> None:
    rng = np.random.default_rng(0)
    base = {"a": rng.standard_normal((64, 32)).astype(np.float16), "b": rng.standard_normal(7).astype(np.float32)}
    tuned = {k: (v + 1e-3 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in base.items()}
    tuned["a"][0, 0] = np.float16(np.nan)  # any bit pattern survives
    _model(tmp_path / "base", base)
    _model(tmp_path / "tuned", tuned)
    carry_delta.pack(tmp_path / "tuned", tmp_path / "base", tmp_path / "packed")
    assert not list((tmp_path / "packed").rglob("*.safetensors"))
    carry_delta.unpack(tmp_path / "packed", tmp_path / "base", tmp_path / "back")
    back = load_file(str(tmp_path / "back" / "transformer" / "diffusion_pytorch_model.safetensors"))
    for k, v in tuned.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k].view(np.uint8), v.view(np.uint8))
    assert (tmp_path / "back" / "card.json").read_text() == '{"id": "x"}'
    assert (tmp_path / "back" / "transformer" / "config.json").exists()


def test_mismatched_base_is_refused(tmp_path) -> None:
    _model(tmp_path / "base", {"a": np.zeros((4, 4), np.float16)})
    _model(tmp_path / "tuned", {"a": np.zeros((4, 5), np.float16)})
    with pytest.raises(SystemExit, match="same-shaped"):
        carry_delta.pack(tmp_path / "tuned", tmp_path / "base", tmp_path / "packed")
    _model(tmp_path / "t2", {"a": np.zeros((4, 4), np.float16)})
    (tmp_path / "packed2").mkdir()
    with pytest.raises(SystemExit, match="exists"):
        carry_delta.pack(tmp_path / "t2", tmp_path / "base", tmp_path / "packed2")
