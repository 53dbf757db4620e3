"""Checked loading of checkpoint parts. Weights come only from safetensors (nothing is unpickled),
and every failure names the file and what to do about it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from engines.card import read_json
from engines.errors import CheckpointError

# Classes a checkpoint's config may name, by module: lazily imported, never eval'd from the file.
_DIFFUSERS_MODELS = {
    "SD3Transformer2DModel": "diffusers",
    "UNet2DConditionModel": "diffusers",
    "RefinedUNet2DConditionModel": "engines.refined_unet",
    "VideoDiT": "engines.video_model",
}
_SCHEDULERS = {"FlowMatchEulerDiscreteScheduler"}


def check_safetensors(directory: Path) -> list[Path]:
    """Every *.safetensors file in `directory` opens and its tensors are all present."""
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt*")]
        hint = f" (found {', '.join(pickled)}: pickle files are never loaded; convert them to safetensors)" if pickled else ""
        raise CheckpointError(f"{directory} has no .safetensors weights{hint}")
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key)
            size = file.stat().st_size
            with open(file, "rb") as raw:
                header = int.from_bytes(raw.read(8), "little")
                meta = json.loads(raw.read(header))
            end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
            if 8 + header + end > size:
                raise ValueError(f"file holds {size} bytes but its header needs {8 + header + end}")
        except Exception as err:  # safetensors raises its own error types; all mean the same here
            raise CheckpointError(
                f"{file} is not a readable safetensors file ({err}); it may be truncated: re-export or re-download it"
            ) from err
    return files


def load_diffusers_model(directory: Path, expected_class: str, dtype: torch.dtype = torch.float32):
    """A diffusers ModelMixin from a save_pretrained directory, validated first."""
    directory = Path(directory)
    config = read_json(directory, "config.json")
    class_name = config.get("_class_name", expected_class)
    if class_name not in _DIFFUSERS_MODELS:
        raise CheckpointError(
            f"{directory}/config.json names model class {class_name!r}; supported: {', '.join(sorted(_DIFFUSERS_MODELS))}"
        )
    check_safetensors(directory)
    cls = getattr(importlib.import_module(_DIFFUSERS_MODELS[class_name]), class_name)
    try:
        return cls.from_pretrained(directory, torch_dtype=dtype, use_safetensors=True, low_cpu_mem_usage=False)
    except Exception as err:  # shape mismatches, missing keys: say which checkpoint
        raise CheckpointError(f"cannot load {class_name} from {directory}: {err}") from err


def load_scheduler(directory: Path):
    directory = Path(directory)
    config = read_json(directory, "scheduler_config.json")
    class_name = config.get("_class_name")
    if class_name not in _SCHEDULERS:
        raise CheckpointError(
            f"{directory}/scheduler_config.json names scheduler {class_name!r}; supported: {', '.join(sorted(_SCHEDULERS))}"
        )
    cls = getattr(importlib.import_module("diffusers"), class_name)
    return cls.from_config(config)
