"""The one module that talks to torch.cuda: device choice, synchronisation, device names."""

from __future__ import annotations

import re

import torch

from engines.errors import BackendUnavailable


def cuda_available() -> bool:
    return torch.cuda.is_available()


def pick_device(preference: str = "auto") -> torch.device:
    """`auto` takes CUDA when present, else CPU; `cuda`/`cpu` force a choice (and say why one cannot)."""
    preference = (preference or "auto").lower()
    if preference == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if preference.startswith("cuda"):
        if not cuda_available():
            raise BackendUnavailable("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
        return torch.device(preference)
    if preference == "cpu":
        return torch.device("cpu")
    raise BackendUnavailable(f"unknown device {preference!r}; use auto, cpu or cuda")


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work so host timers measure it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def empty_cache(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device | str) -> str:
    """Human name of the device: the GPU model, or the CPU's."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def device_slug(device: torch.device | str) -> str:
    """Short slug for result file names: cpu, h100, h200, a100, … (else a cleaned GPU name)."""
    return name_slug(device_name(device)) if torch.device(device).type == "cuda" else "cpu"


def name_slug(name: str) -> str:
    """The slug of a device's name as result files record it ('NVIDIA H200' -> h200, 'CPU: ...' -> cpu)."""
    if name.startswith("CPU"):
        return "cpu"
    match = re.search(r"\b([A-Z]\d{2,4}|RTX\s?\d{4})\b", name)
    return (match.group(1) if match else name).lower().replace(" ", "")
