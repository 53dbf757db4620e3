"""The `onnx` backend: the exported denoiser and text encoder run by onnxruntime.

`python -m trainer export <checkpoint> --to onnx` writes `<checkpoint>/onnx/` (see trainer/export.py);
this module only reads it. The graph contract (file and tensor names) lives here, once, so the exporter
and the runtime cannot drift apart. Graph inputs and outputs are float32 whatever the weights' dtype
(an fp16 graph casts inside), so the backend code is the same for every export.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from engines.card import read_json
from engines.denoisers import find_denoiser
from engines.errors import BackendUnavailable, CheckpointError
from engines.text_encoder import TextEmbedding, TextEncoder

ONNX_DIR = "onnx"
DENOISER_FILE = "denoiser.onnx"
TEXT_ENCODER_FILE = "text_encoder.onnx"
PARITY_FILE = "parity.json"

DENOISER_INPUTS = ("sample", "timestep", "encoder_hidden_states", "pooled")
GUIDANCE_INPUT = "guidance"  # only for guidance-embedding networks (time_cond_proj_dim)
DENOISER_OUTPUTS = ("velocity",)
TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUTS = ("states", "pooled")


def export_command(checkpoint: Path | str) -> str:
    return f"python -m trainer export {checkpoint} --to onnx"


def providers(device: torch.device) -> list[str]:
    """CUDA EP when the engine runs on a GPU and this onnxruntime build has it, else CPU.
    (onnxruntime-gpu lists CUDA/TensorRT EPs even on machines without a GPU, so the device decides.)"""
    import onnxruntime as ort

    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: Path, device: torch.device):
    """An inference session for one exported graph; a missing or unreadable file says what to do."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise BackendUnavailable("the onnx backend needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu)") from err
    if not path.is_file():
        raise BackendUnavailable(f"{path} is missing; export it with: {export_command(path.parent.parent)}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers etc. are noise in the studio log
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers(device))
    except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail, …): all mean the file is bad
        raise CheckpointError(
            f"{path} is not a loadable ONNX graph ({type(err).__name__}: {str(err).splitlines()[0][:300]}); "
            f"re-export it with: {export_command(path.parent.parent)}"
        ) from err


def onnx_dir(checkpoint: Path) -> Path:
    """The checkpoint's export directory, checked: present and carrying a passed parity report."""
    directory = Path(checkpoint) / ONNX_DIR
    if not directory.is_dir():
        raise BackendUnavailable(
            f"the onnx backend needs an exported graph, and {checkpoint} has no {ONNX_DIR}/ directory; "
            f"export it with: {export_command(checkpoint)}"
        )
    report = directory / PARITY_FILE
    try:
        passed = json.loads(report.read_text()).get("passed") is True
    except (OSError, ValueError):
        passed = False
    if not passed:  # the exporter never writes a failing artefact; a directory without a passing report is not ours
        raise BackendUnavailable(
            f"{report} is missing or does not record a passed parity check; re-export: {export_command(checkpoint)}"
        )
    return directory


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


@dataclass
class OnnxDenoiser:
    """The exported denoiser: `.config` is the torch network's config (what the engine reads),
    `velocity` has the signature of `engines.denoisers.velocity` minus the model."""

    session: object
    config: SimpleNamespace
    device: torch.device

    @classmethod
    def load(cls, checkpoint: Path, device: torch.device) -> OnnxDenoiser:
        directory = onnx_dir(checkpoint)
        folder, _ = find_denoiser(checkpoint)
        config = SimpleNamespace(**read_json(folder, "config.json"))
        return cls(open_session(directory / DENOISER_FILE, device), config, device)

    @property
    def embeds_guidance(self) -> bool:
        return bool(getattr(self.config, "time_cond_proj_dim", None))

    def velocity(
        self, x: torch.Tensor, t: torch.Tensor, emb: TextEmbedding, guidance: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        if self.embeds_guidance != (guidance is not None):
            raise ValueError("guidance= is required by, and only accepted by, guidance-embedding networks")
        feeds = {
            "sample": _numpy(x),
            "timestep": _numpy(t.expand(x.shape[0])),
            "encoder_hidden_states": _numpy(emb.states),
            "pooled": _numpy(emb.pooled),
        }
        if guidance is not None:
            feeds[GUIDANCE_INPUT] = _numpy(torch.as_tensor(guidance, dtype=torch.float32).expand(x.shape[0]))
        (out,) = self.session.run(list(DENOISER_OUTPUTS), feeds)
        return torch.from_numpy(out).to(x.device, x.dtype)


class OnnxTextEncoder(TextEncoder):
    """The torch encoder's tokenizer, prompt cache and null embedding, with the exported MiniLM graph
    doing the encoding (so the torch weights are not needed at serving time)."""

    def __init__(self, base: TextEncoder, checkpoint: Path, device: torch.device) -> None:  # noqa: D107 - no super(): no torch model
        self.session = open_session(onnx_dir(checkpoint) / TEXT_ENCODER_FILE, device)
        self.tokenizer, self.model = base.tokenizer, None
        self.device, self.max_tokens, self.dim = base.device, base.max_tokens, base.dim
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = base._cache_size
        self._lock = threading.Lock()

    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> TextEmbedding:
        feeds = {name: tokens[name].to("cpu", torch.int64).numpy() for name in TEXT_INPUTS}
        states, pooled = self.session.run(list(TEXT_OUTPUTS), feeds)
        mask = tokens["attention_mask"].bool().to(self.device)
        return TextEmbedding(torch.from_numpy(states).to(self.device), torch.from_numpy(pooled).to(self.device), mask)
