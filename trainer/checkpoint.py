"""Run checkpoints: everything a run needs to continue exactly, written atomically.

Layout: <run_dir>/checkpoints/step-00000100/
    <role>/                   save_pretrained of each trained network (and `ema/`)
    optim-<name>.safetensors  optimiser tensors; optim-<name>.json holds the rest of its state
    state.json                step, images seen, elapsed seconds — written last
A checkpoint is written into a temporary directory and renamed into place, so a crash leaves
either the previous complete checkpoint or the new one, never half of one. Randomness needs no
saving: every step draws from generators seeded by (seed, rank, step).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


def _optimizer_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        rest["state"][str(pid)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
                rest["state"][str(pid)][key] = {"tensor": f"{pid}.{key}"}
            else:
                rest["state"][str(pid)][key] = {"value": value}
    return tensors, rest


def _optimizer_from_files(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state = {}
    for pid, entries in rest["state"].items():
        state[int(pid)] = {k: tensors[v["tensor"]] if "tensor" in v else v["value"] for k, v in entries.items()}
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(
    run_dir: Path,
    step: int,
    networks: dict[str, Any],
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict[str, Any],
    keep: int = 2,
    protect: Path | None = None,
) -> Path:
    """Write checkpoint `step` atomically, then prune all but the newest `keep` (and `protect`,
    the last checkpoint known to be healthy)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, network in networks.items():
        if hasattr(network, "save_pretrained"):
            network.save_pretrained(tmp / name, safe_serialization=True)
        else:  # a plain module (a critic with its GAN head): its state dict, still safetensors
            (tmp / name).mkdir()
            state = {k: v.detach().contiguous().cpu() for k, v in network.state_dict().items()}
            save_file(state, str(tmp / name / "model.safetensors"))
    for name, optimizer in optimizers.items():
        tensors, rest = _optimizer_to_files(optimizer.state_dict())
        save_file(tensors, str(tmp / f"optim-{name}.safetensors"))
        (tmp / f"optim-{name}.json").write_text(json.dumps(rest))
    (tmp / "state.json").write_text(json.dumps({"step": step, **meta}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        if protect is None or old.resolve() != Path(protect).resolve():
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a directory without state.json is incomplete)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "state.json").read_text())


def load_optimizer(checkpoint: Path, name: str, optimizer: torch.optim.Optimizer) -> None:
    tensors = load_file(str(checkpoint / f"optim-{name}.safetensors"))
    rest = json.loads((checkpoint / f"optim-{name}.json").read_text())
    optimizer.load_state_dict(_optimizer_from_files(tensors, rest))


def load_weights(checkpoint: Path, name: str, network: torch.nn.Module) -> None:
    """Copy saved weights of role `name` into an existing network (same architecture)."""
    directory = checkpoint / name
    files = sorted(directory.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    missing, unexpected = network.load_state_dict(state, strict=False)
    # save_pretrained writes tied weights once (an LM head tied to its embedding): a missing key that
    # shares storage with a loaded one was loaded through it.
    current = network.state_dict(keep_vars=True)
    loaded = {current[k].data_ptr() for k in state if k in current}
    missing = [k for k in missing if current[k].data_ptr() not in loaded]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {directory} does not fit the network: missing {missing[:5]}, unexpected {unexpected[:5]}")
