"""Serving export: `python -m trainer export <checkpoint> --to onnx|tensorrt`.

Declarative, as in StreamDiffusion's builder: each exported submodule is a `GraphSpec` (a torch module
with float32 I/O, tensor names, dynamic axes, seeded sample inputs, the shapes its parity is checked
at). The export runs into a temporary directory beside the checkpoint, checks every graph against
eager torch (float32, CPU: the model users actually trained) and only then renames the directory to
`<checkpoint>/onnx/` — a failing or interrupted export leaves nothing behind.

Parity rule: a graph passes when max|onnx - torch| <= atol + rtol * max|torch| over every checked
shape. fp32: atol 1e-4, rtol 1e-3 (onnxruntime's fused kernels reorder float sums: ~1e-6 relative
in practice, so this leaves room for other hardware); fp16: atol 1e-2, rtol 1e-2 (half precision
has ~1e-3 relative rounding per op and the UNet is ~40 ops deep).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engines import denoisers
from engines.card import load_card
from engines.errors import BackendUnavailable, DistilleryError
from engines.onnx_backend import (
    DENOISER_FILE,
    DENOISER_INPUTS,
    DENOISER_OUTPUTS,
    GUIDANCE_INPUT,
    ONNX_DIR,
    PARITY_FILE,
    TEXT_ENCODER_FILE,
    TEXT_INPUTS,
    TEXT_OUTPUTS,
)
from engines.text_encoder import TextEmbedding, TextEncoder, pool

DEFAULT_OPSET = 17
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB; leave room for the graph itself
PARITY_BATCHES = (1, 3)
PARITY_PROMPTS = ("a red circle to the left of a blue square", "three yellow triangles", "a large white cross")


class ExportError(DistilleryError):
    """An export could not be produced, or failed its parity check (and was not written)."""


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def limit(self, reference_max: float) -> float:
        return self.atol + self.rtol * reference_max


TOLERANCES: dict[str, Tolerance] = {"fp32": Tolerance(1e-4, 1e-3), "fp16": Tolerance(1e-2, 1e-2)}
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------- graph modules
class DenoiserGraph(torch.nn.Module):
    """The denoiser behind `engines.denoisers.velocity` (the same call the torch backend makes), float32 in and out."""

    def __init__(self, network: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.network, self.dtype = network, dtype  # loaded in `dtype` (from_pretrained keeps fp32-only modules right)
        self.eval()  # the exporter restores the wrapper's train flag on its children: it must be False (dropout)

    def forward(self, sample, timestep, encoder_hidden_states, pooled, guidance=None):
        emb = TextEmbedding(encoder_hidden_states, pooled, encoder_hidden_states.new_ones(encoder_hidden_states.shape[:2]))
        return denoisers.velocity(self.network, sample, timestep, emb, guidance).float()


class TextEncoderGraph(torch.nn.Module):
    """MiniLM token states (zeroed at padding) and the pooled vector: `TextEncoder.encode_tokens` as a graph."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model.to(dtype)
        self.eval()  # the exporter restores the wrapper's train flag on its children: it must be False (dropout)

    def forward(self, input_ids, attention_mask):
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        return pool(states, attention_mask.bool())


@dataclass
class GraphSpec:
    name: str  # file name inside onnx/
    module: torch.nn.Module  # in the export dtype
    reference: torch.nn.Module  # the same graph in float32: what parity is measured against
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    make_inputs: Callable[[int, int], tuple[torch.Tensor, ...]]  # (batch, resolution) -> seeded inputs
    shapes: list[tuple[int, int]]  # (batch, resolution) pairs checked


@dataclass
class GraphParity:
    name: str
    checks: list[dict] = field(default_factory=list)  # one per shape: batch, resolution, max_abs_error, limit, passed

    @property
    def max_abs_error(self) -> float:
        return max(c["max_abs_error"] for c in self.checks)

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)


# ---------------------------------------------------------------------------------------- specs
def parity_resolutions(network) -> tuple[int, int]:
    """The native resolution and a second one the graph must also serve (half, or double when half
    would not divide by the UNet's down-sampling factor)."""
    native = int(network.config.sample_size)
    levels = len(getattr(network.config, "block_out_channels", (0,)))  # a UNet halves resolution levels - 1 times
    factor = 2 ** (levels - 1) * int(getattr(network.config, "patch_size", 1) or 1)
    half = native // 2
    return native, half if half >= factor and half % factor == 0 else native * 2


def denoiser_spec(checkpoint: Path, dtype: str) -> GraphSpec:
    network = denoisers.load_denoiser(checkpoint, dtype=torch.float32).eval()
    reference = DenoiserGraph(network, torch.float32)
    low = DTYPES[dtype]
    module = reference if dtype == "fp32" else DenoiserGraph(denoisers.load_denoiser(checkpoint, low).eval(), low)
    config = network.config
    guided = denoisers.embeds_guidance(network)
    width = int(getattr(config, "cross_attention_dim", None) or config.joint_attention_dim)
    pooled_dim = int(getattr(config, "projection_class_embeddings_input_dim", None) or config.pooled_projection_dim)
    channels = int(config.in_channels)

    def make_inputs(batch: int, res: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(1000 * batch + res)
        x = torch.randn(batch, channels, res, res, generator=g)
        t = torch.rand(batch, generator=g) * 1000
        states = torch.randn(batch, 40, width, generator=g) * 0.5
        pooled = torch.nn.functional.normalize(torch.randn(batch, pooled_dim, generator=g), dim=-1)
        extra = (1 + 3 * torch.rand(batch, generator=g),) if guided else ()
        return (x, t, states, pooled, *extra)

    inputs = DENOISER_INPUTS + ((GUIDANCE_INPUT,) if guided else ())
    axes = {"sample": {0: "batch", 2: "height", 3: "width"}, "velocity": {0: "batch", 2: "height", 3: "width"}}
    axes |= {name: {0: "batch"} for name in inputs if name != "sample"}
    axes["encoder_hidden_states"][1] = "tokens"
    shapes = [(b, r) for r in parity_resolutions(network) for b in PARITY_BATCHES]
    return GraphSpec(DENOISER_FILE, module, reference, inputs, DENOISER_OUTPUTS, axes, make_inputs, shapes)


def text_encoder_spec(checkpoint: Path, dtype: str) -> GraphSpec:
    from transformers import AutoModel

    card = load_card(checkpoint)
    source = card.text_encoder.get("path") or card.text_encoder.get("package")
    encoder = TextEncoder(source, device="cpu", max_tokens=int(card.text_encoder.get("max_tokens", 40)))
    directory = encoder.tokenizer.name_or_path
    # Eager attention traces to plain MatMul/Softmax; SDPA's mask helpers do not trace cleanly.
    load = lambda: AutoModel.from_pretrained(directory, use_safetensors=True, attn_implementation="eager").eval()  # noqa: E731
    reference = TextEncoderGraph(load(), torch.float32)
    module = reference if dtype == "fp32" else TextEncoderGraph(load(), DTYPES[dtype])

    def make_inputs(batch: int, _res: int) -> tuple[torch.Tensor, ...]:
        tokens = encoder.tokenize([PARITY_PROMPTS[i % len(PARITY_PROMPTS)] for i in range(batch)])
        return tokens["input_ids"], tokens["attention_mask"]

    axes = {name: {0: "batch", 1: "tokens"} for name in (*TEXT_INPUTS, "states")} | {"pooled": {0: "batch"}}
    shapes = [(b, 0) for b in PARITY_BATCHES]
    return GraphSpec(TEXT_ENCODER_FILE, module, reference, TEXT_INPUTS, TEXT_OUTPUTS, axes, make_inputs, shapes)


# ---------------------------------------------------------------------------------------- stages
def export_graph(spec: GraphSpec, directory: Path, opset: int) -> Path:
    path = directory / spec.name
    example = spec.make_inputs(*spec.shapes[0])
    try:
        with torch.no_grad():
            torch.onnx.export(
                spec.module,
                example,
                str(path),
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                dynamic_axes=spec.dynamic_axes,
                opset_version=opset,
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, and robust on diffusers' UNet
            )
    except Exception as err:
        raise ExportError(f"torch.onnx.export failed for {spec.name}: {type(err).__name__}: {err}") from err
    weight_bytes = sum(p.numel() * p.element_size() for p in spec.module.parameters())
    if weight_bytes > EXTERNAL_DATA_BYTES:  # over protobuf's 2 GiB limit: weights go beside the graph
        import onnx

        model = onnx.load(str(path))
        for stale in directory.glob("*"):  # the exporter may have spilled tensors into many loose files
            # (never a graph, another graph's external data or the parity report)
            if not stale.name.endswith((".onnx", ".onnx.data")) and stale.name != PARITY_FILE:
                stale.unlink()
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{spec.name}.data")
    return path


def check_parity(spec: GraphSpec, path: Path, tolerance: Tolerance) -> GraphParity:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec.reference.eval()
    result = GraphParity(spec.name)
    for batch, res in spec.shapes:
        inputs = spec.make_inputs(batch, res)
        with torch.no_grad():
            expected = spec.reference(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(list(spec.output_names), {n: t.numpy() for n, t in zip(spec.input_names, inputs)})
        error = max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected))
        scale = max(float(e.abs().max()) for e in expected)
        limit = tolerance.limit(scale)
        check = dict(batch=batch, max_abs_error=error, max_abs_reference=scale, limit=limit, passed=error <= limit)
        result.checks.append(check | ({"resolution": res} if res else {}))
    return result


def export_onnx(checkpoint: Path | str, opset: int = DEFAULT_OPSET, dtype: str = "fp32") -> dict:
    """Export, check, and only then publish `<checkpoint>/onnx/`. Returns the parity report."""
    checkpoint = Path(checkpoint)
    if dtype not in TOLERANCES:
        raise ExportError(f"unknown dtype {dtype!r}; choose one of: {', '.join(TOLERANCES)}")
    load_card(checkpoint)  # a readable card first: a clear error before any slow work
    tolerance = TOLERANCES[dtype]
    staging = Path(tempfile.mkdtemp(prefix=f".{ONNX_DIR}-", dir=checkpoint))
    try:
        start = time.perf_counter()
        results = []
        for make_spec in (denoiser_spec, text_encoder_spec):
            spec = make_spec(checkpoint, dtype)
            results.append(check_parity(spec, export_graph(spec, staging, opset), tolerance))
            if not results[-1].passed:
                break  # refuse now: the next graph's export would be wasted
        report = {
            "checkpoint": str(checkpoint),
            "dtype": dtype,
            "opset": opset,
            "torch": torch.__version__,
            "tolerance": asdict(tolerance) | {"rule": "max_abs_error <= atol + rtol * max_abs_reference"},
            "graphs": {r.name: {"max_abs_error": r.max_abs_error, "passed": r.passed, "checks": r.checks} for r in results},
            "passed": all(r.passed for r in results),
            "export_s": round(time.perf_counter() - start, 2),
        }
        if not report["passed"]:
            failed = [
                f"{r.name} (max abs error {r.max_abs_error:.3g}, limit {min(c['limit'] for c in r.checks):.3g})"
                for r in results
                if not r.passed
            ]
            raise ExportError(
                f"parity check failed for {', '.join(failed)} vs eager torch at {dtype}; nothing was written to "
                f"{checkpoint / ONNX_DIR}. Try --dtype fp32 or another --opset."
            )
        (staging / PARITY_FILE).write_text(json.dumps(report, indent=2) + "\n")
        publish(staging, checkpoint / ONNX_DIR)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, target: Path) -> None:
    """Swap the checked export into place; an older export is removed only after the new one is in."""
    old = target.with_name(f".{target.name}-old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.chmod(0o755)  # mkdtemp makes it private; the export is as readable as the checkpoint
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------- tensorrt
def export_tensorrt(checkpoint: Path | str, opset: int = DEFAULT_OPSET, max_batch: int = 8) -> dict:
    """A TensorRT engine (fp16, optimisation profile for batch 1..max_batch and 0.5x..2x the native
    resolution) built from the ONNX export, written as `<checkpoint>/onnx/denoiser.plan`.
    Untested here: no machine we have imports tensorrt; the test is skipped where it is missing."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendUnavailable(
            "--to tensorrt needs the tensorrt Python package, which is not importable here "
            "(pip install tensorrt on a machine with an NVIDIA GPU and matching CUDA); --to onnx works without it"
        ) from err
    checkpoint = Path(checkpoint)
    directory = checkpoint / ONNX_DIR
    if not (directory / DENOISER_FILE).is_file():
        export_onnx(checkpoint, opset=opset)
    network_config = denoisers.load_denoiser(checkpoint).config
    native, channels = int(network_config.sample_size), int(network_config.in_channels)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(directory / DENOISER_FILE)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {directory / DENOISER_FILE}: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    low, high = max(8, native // 2), native * 2
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        lo, opt, hi = [1, *shape[1:]], [1, *shape[1:]], [max_batch, *shape[1:]]
        if tensor.name == "sample":
            lo, opt, hi = [1, channels, low, low], [1, channels, native, native], [max_batch, channels, high, high]
        elif tensor.name == "encoder_hidden_states":
            lo[1] = opt[1] = hi[1] = 40 if shape[1] == -1 else shape[1]
        profile.set_shape(tensor.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError("TensorRT failed to build an engine; see the log above")
    (directory / "denoiser.plan").write_bytes(bytes(plan))
    return {"plan": str(directory / "denoiser.plan"), "max_batch": max_batch, "resolutions": [low, high]}
