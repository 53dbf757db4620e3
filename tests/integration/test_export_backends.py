"""Serving export and backends on CPU: `python -m trainer export --to onnx` on the tiny checkpoint (parity
report, dynamic batch and resolution, refusal on parity failure), the `onnx` engine against eager torch
for the same seed, and every way a backend can be unavailable."""

import importlib.util
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engines import denoisers
from engines.errors import BackendUnavailable, CheckpointError
from engines.onnx_backend import DENOISER_FILE, ONNX_DIR, PARITY_FILE, TEXT_ENCODER_FILE
from engines.registry import Registry
from engines.requests import ImageRequest
from trainer.__main__ import main as trainer_main
from trainer.export import DEFAULT_OPSET, TOLERANCES, Tolerance, check_parity, denoiser_spec, export_graph

MODEL = "tiny-cpu"
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def copy_checkpoint(root, tmp_path):
    target = tmp_path / "ck"
    shutil.copytree(root / MODEL, target / MODEL)
    return target


def pixels(result):
    return np.stack([np.asarray(im) for im in result.images]).astype(int)


@pytest.fixture(scope="module")
def exported(tiny_image_root, tmp_path_factory):
    """A copy of tiny-cpu exported through the CLI: (root, checkpoint dir)."""
    root = copy_checkpoint(tiny_image_root, tmp_path_factory.mktemp("export"))
    assert trainer_main(["export", str(root / MODEL), "--to", "onnx"]) == 0
    return root, root / MODEL


@pytest.fixture(scope="module")
def registry(exported):
    """One CPU registry over the exported copy, shared so the text encoder and sessions load once."""
    return Registry([exported[0]], device="cpu", cache_size=2)


def test_export_writes_both_graphs_and_a_passing_parity_report(exported):
    _, checkpoint = exported
    directory = checkpoint / ONNX_DIR
    assert sorted(p.name for p in directory.iterdir()) == sorted([DENOISER_FILE, TEXT_ENCODER_FILE, PARITY_FILE])
    report = json.loads((directory / PARITY_FILE).read_text())
    assert report["passed"] is True and report["dtype"] == "fp32"
    denoiser = report["graphs"][DENOISER_FILE]
    assert {(c["batch"], c["resolution"]) for c in denoiser["checks"]} == {(1, 16), (3, 16), (1, 8), (3, 8)}
    assert {c["batch"] for c in report["graphs"][TEXT_ENCODER_FILE]["checks"]} == {1, 3}
    for graph in report["graphs"].values():
        assert all(c["passed"] and c["max_abs_error"] <= c["limit"] for c in graph["checks"])
        assert graph["max_abs_error"] < 1e-4  # fp32 ONNX vs eager torch: float reordering only
    assert not [p for p in checkpoint.iterdir() if p.name.startswith(".")]  # no staging directory left


def test_graphs_take_any_batch_and_resolution(exported, text_encoder):
    _, checkpoint = exported
    network = denoisers.load_denoiser(checkpoint).eval()
    session = ort.InferenceSession(str(checkpoint / ONNX_DIR / DENOISER_FILE), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    for batch, res in [(1, 16), (3, 16), (2, 32)]:  # 32 px was not among the parity shapes
        x, t = torch.randn(batch, 3, res, res, generator=g), torch.rand(batch, generator=g) * 1000
        emb = text_encoder.encode(["a red circle", "two blue squares", "a cross"][:batch])
        (got,) = session.run(
            ["velocity"],
            {
                "sample": x.numpy(),
                "timestep": t.numpy(),
                "encoder_hidden_states": emb.states.numpy(),
                "pooled": emb.pooled.numpy(),
            },  # noqa: E501
        )
        with torch.no_grad():
            expected = denoisers.velocity(network, x, t, emb)
        assert got.shape == (batch, 3, res, res)
        assert np.abs(got - expected.numpy()).max() < 1e-4

    text = ort.InferenceSession(str(checkpoint / ONNX_DIR / TEXT_ENCODER_FILE), providers=["CPUExecutionProvider"])
    for prompts in (["a red circle"], ["a red circle", "three yellow triangles", "a large white cross"]):
        tokens = text_encoder.tokenize(prompts)
        states, pooled = text.run(["states", "pooled"], {k: tokens[k].numpy() for k in ("input_ids", "attention_mask")})
        expected = text_encoder.encode_tokens(tokens)
        assert np.abs(states - expected.states.numpy()).max() < 1e-4
        assert np.abs(pooled - expected.pooled.numpy()).max() < 1e-4


def test_onnx_engine_matches_torch_for_the_same_seed(registry):
    eager, onnx = registry.engine(MODEL), registry.engine(MODEL, backend="onnx")
    assert registry.loaded() == [(MODEL, "torch"), (MODEL, "onnx")]  # cached per (id, backend)
    assert registry.engine(MODEL, backend="onnx") is onnx
    prompts, seeds = ["a red circle", "three yellow triangles"], [0, 1]
    for steps, guidance in [(4, 2.0), (2, 1.0)]:  # with CFG (batched cond + null) and without
        a = eager.sample_prompts(prompts, seeds, steps=steps, guidance=guidance)
        b = onnx.sample_prompts(prompts, seeds, steps=steps, guidance=guidance)
        assert (a - b).abs().max().item() < 1e-3
    request = ImageRequest("a blue square", seed=3, steps=4, batch=2)
    torch_result, onnx_result = eager.generate(request), onnx.generate(request)
    assert np.abs(pixels(torch_result) - pixels(onnx_result)).max() <= 1  # uint8 rounding at most
    assert (torch_result.backend, onnx_result.backend) == ("torch", "onnx")
    states = list(onnx.stream(request))
    assert [s.backend for s in states] == ["onnx"] * 4 and np.array_equal(pixels(states[-1]), pixels(onnx_result))


def test_image_tab_runs_the_chosen_backend_and_says_so(registry):
    from studio.app import StudioSettings
    from studio.image_tab import ImageHandlers

    handlers = ImageHandlers(registry, StudioSettings(device="cpu"))
    *_, (_, gallery, _, info) = handlers.generate("a red circle", MODEL, 1, 2, 1.0, 1, "onnx")
    assert len(gallery) == 1 and "**backend** onnx" in info
    *_, (_, _, _, info) = handlers.generate("a red circle", MODEL, 1, 2, 1.0, 1)  # default: torch
    assert "**backend** torch" in info


def test_missing_export_names_the_command(tiny_image_root):
    with pytest.raises(BackendUnavailable, match=r"no onnx/ directory; export it with: python -m trainer export \S+ --to onnx"):
        Registry([tiny_image_root], device="cpu").engine(MODEL, backend="onnx")


def test_corrupted_graph_is_a_clear_error(exported, tmp_path):
    root = tmp_path / "ck"
    shutil.copytree(exported[0], root)
    graph = root / MODEL / ONNX_DIR / DENOISER_FILE
    graph.write_bytes(graph.read_bytes()[:1000])  # truncated, as an interrupted copy leaves it
    expected = r"denoiser.onnx is not a loadable ONNX graph .*re-export it with: python -m trainer"
    with pytest.raises(CheckpointError, match=expected):
        Registry([root], device="cpu").engine(MODEL, backend="onnx")


def test_failed_parity_writes_nothing_and_exits_non_zero(tiny_image_root, tmp_path, monkeypatch, capsys):
    checkpoint = copy_checkpoint(tiny_image_root, tmp_path) / MODEL
    monkeypatch.setitem(TOLERANCES, "fp32", Tolerance(atol=-1.0, rtol=0.0))  # no graph can pass a negative limit
    assert trainer_main(["export", str(checkpoint), "--to", "onnx"]) != 0
    assert "parity check failed for denoiser.onnx" in capsys.readouterr().err
    assert not (checkpoint / ONNX_DIR).exists()
    assert not [p for p in checkpoint.iterdir() if p.name.startswith(".")]  # staging removed too


def test_failed_re_export_keeps_the_previous_export(exported, tmp_path, monkeypatch):
    root = tmp_path / "ck"
    shutil.copytree(exported[0], root)
    report = root / MODEL / ONNX_DIR / PARITY_FILE
    before = report.read_text()
    monkeypatch.setitem(TOLERANCES, "fp32", Tolerance(atol=-1.0, rtol=0.0))
    assert trainer_main(["export", str(root / MODEL), "--to", "onnx"]) != 0
    assert report.read_text() == before and (root / MODEL / ONNX_DIR / DENOISER_FILE).is_file()


def test_transformer_denoiser_exports_with_dynamic_resolution(tmp_path):
    """The SD3 layout (`transformer/`) goes through the same spec and passes parity at both resolutions."""
    from engines.card import ModelCard
    from trainer.image_task import export_checkpoint
    from trainer.networks import build_network

    torch.manual_seed(0)
    card = ModelCard(id="dit", modality="image", role="student", method="random", default_steps=1, resolution=16)
    export_checkpoint(build_network("dit-tiny"), tmp_path / "dit", card, dtype="float32")
    spec = denoiser_spec(tmp_path / "dit", "fp32")
    result = check_parity(spec, export_graph(spec, tmp_path, DEFAULT_OPSET), TOLERANCES["fp32"])
    assert result.passed and {c["resolution"] for c in result.checks} == {16, 8}, result.checks


def test_positioned_refined_unet_exports_with_dynamic_resolution(tmp_path):
    """A UNet with the text refiner and absolute position features (the shipped image models' layout):
    the graph builds its position grid from the input's size, so parity holds at the second resolution
    too (a traced constant grid would fail to broadcast there)."""
    from engines.card import ModelCard
    from engines.refined_unet import PositionedConv2d
    from trainer.image_task import export_checkpoint
    from trainer.networks import add_unet_conditioning, build_network

    torch.manual_seed(0)
    unet = add_unet_conditioning(build_network("unet-tiny"), 1, 16, 2, position_frequencies=4)
    assert isinstance(unet.conv_in, PositionedConv2d)
    torch.nn.init.normal_(unet.conv_in.position.weight, std=0.5)  # trained features are not zero
    card = ModelCard(id="pos", modality="image", role="student", method="random", default_steps=1, resolution=16)
    export_checkpoint(unet, tmp_path / "pos", card, dtype="float32")
    spec = denoiser_spec(tmp_path / "pos", "fp32")
    result = check_parity(spec, export_graph(spec, tmp_path, DEFAULT_OPSET), TOLERANCES["fp32"])
    assert result.passed and {c["resolution"] for c in result.checks} == {16, 8}, result.checks


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is importable here; the build test covers it")
def test_tensorrt_unavailable_says_so_and_exits_non_zero(tiny_image_root, capsys):
    assert trainer_main(["export", str(tiny_image_root / MODEL), "--to", "tensorrt"]) != 0
    assert "tensorrt Python package, which is not importable here" in capsys.readouterr().err
    assert not (tiny_image_root / MODEL / ONNX_DIR).exists()


@pytest.mark.skipif(
    not HAS_TENSORRT, reason="tensorrt is not importable here (no machine of this project has it): the engine build is untested"
)
def test_tensorrt_build(tiny_image_root, tmp_path):  # pragma: no cover - no machine here has tensorrt
    checkpoint = copy_checkpoint(tiny_image_root, tmp_path) / MODEL
    assert trainer_main(["export", str(checkpoint), "--to", "tensorrt"]) == 0
    assert (checkpoint / ONNX_DIR / "denoiser.plan").stat().st_size > 0


def test_unknown_and_unavailable_backends_are_clear(tiny_image_root):
    registry = Registry([tiny_image_root], device="cpu")
    with pytest.raises(BackendUnavailable, match="'tensorrt' is not available; choose one of: torch, compiled, onnx"):
        registry.engine(MODEL, backend="tensorrt")
    with pytest.raises(BackendUnavailable, match="compiled backend .* runs on a CUDA GPU only"):
        registry.engine(MODEL, backend="compiled")
    assert registry.loaded() == []  # nothing half-loaded was cached


def test_guidance_embedding_network_exports_its_guidance_input(tmp_path):
    """Guidance-distilled UNets (time_cond_proj_dim) take the scale as a graph input; their export passes parity too."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=384,
        attention_head_dim=4,
        norm_num_groups=4,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=384,
        time_cond_proj_dim=denoisers.GUIDANCE_EMBEDDING_DIM,
    )
    unet.save_pretrained(tmp_path / "guided" / "unet")
    spec = denoiser_spec(tmp_path / "guided", "fp32")
    assert spec.input_names == ("sample", "timestep", "encoder_hidden_states", "pooled", "guidance")
    path = export_graph(spec, tmp_path, DEFAULT_OPSET)
    result = check_parity(spec, path, TOLERANCES["fp32"])
    assert result.passed, result.checks
    x, t, states, pooled, _ = spec.make_inputs(2, 8)
    feeds = {"sample": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": states.numpy(), "pooled": pooled.numpy()}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    low, high = (session.run(None, feeds | {"guidance": np.full(2, w, np.float32)})[0] for w in (1.0, 6.0))
    assert np.abs(low - high).max() > 1e-4  # the scale is a live input, not a constant baked in by the trace


@pytest.mark.slow
def test_shipped_student_exports_and_matches_torch(tmp_path):
    """checkpoints/shapes-dmd2 (64 px, 1 step): export with parity, then the onnx engine equals eager torch."""
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes-dmd2"
    root = tmp_path / "ck"
    shutil.copytree(shipped, root / "shapes-dmd2", ignore=shutil.ignore_patterns(ONNX_DIR))
    assert trainer_main(["export", str(root / "shapes-dmd2"), "--to", "onnx"]) == 0
    registry = Registry([root], device="cpu")
    request = ImageRequest("a red circle to the left of a blue square", seed=0, batch=2)
    a, b = registry.engine("shapes-dmd2").generate(request), registry.engine("shapes-dmd2", backend="onnx").generate(request)
    assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_graphs_over_the_protobuf_limit_keep_their_weights_beside_them(tiny_image_root, tmp_path, monkeypatch):
    """Models over 2 GB go out as ONNX external data: forced here by lowering the threshold to 0 bytes."""
    import trainer.export

    monkeypatch.setattr(trainer.export, "EXTERNAL_DATA_BYTES", 0)
    root = copy_checkpoint(tiny_image_root, tmp_path)
    assert trainer_main(["export", str(root / MODEL), "--to", "onnx"]) == 0
    directory = root / MODEL / ONNX_DIR
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted([DENOISER_FILE, f"{DENOISER_FILE}.data", TEXT_ENCODER_FILE, f"{TEXT_ENCODER_FILE}.data", PARITY_FILE])
    assert (directory / DENOISER_FILE).stat().st_size < (directory / f"{DENOISER_FILE}.data").stat().st_size
    registry = Registry([root], device="cpu", cache_size=2)
    request = ImageRequest("a red circle", seed=4, steps=2)
    onnx, eager = registry.engine(MODEL, "onnx").generate(request), registry.engine(MODEL, "torch").generate(request)
    assert np.abs(pixels(onnx) - pixels(eager)).max() <= 2  # the same graph, its weights read from the .data file
