"""Damaged checkpoint parts get clear errors; nothing is unpickled."""

import json

import pytest
import torch
from safetensors.torch import save_file

from engines.checkpoints import check_safetensors, load_diffusers_model, load_scheduler
from engines.errors import CheckpointError


def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_diffusers_model(tmp_path, "SD3Transformer2DModel")


def test_unknown_model_class_is_not_imported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "os.system"}))
    with pytest.raises(CheckpointError, match="names model class 'os.system'"):
        load_diffusers_model(tmp_path, "SD3Transformer2DModel")


def test_truncated_safetensors_is_reported(tmp_path):
    save_file({"w": torch.randn(64, 64)}, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="may be truncated"):
        check_safetensors(tmp_path)


def test_pickle_weights_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pickle files are never loaded"):
        check_safetensors(tmp_path)


def test_scheduler_config_is_checked(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler"}))
    with pytest.raises(CheckpointError, match="supported: FlowMatchEulerDiscreteScheduler"):
        load_scheduler(tmp_path)
