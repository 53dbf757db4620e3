"""Public diffusers pipelines through our registry and PipelineEngine, on tiny random pipelines built here.

Each layout (SD-Turbo, SDXL-Turbo, LCM-LoRA on SD, SANA-Sprint, FLUX.1-schnell) is built from tiny configs,
saved with `save_pretrained` (safetensors), added to a Registry and generated with our engine; the images
must equal what diffusers' own pipeline, loaded from the same directory, returns for the same prompt, seeds
and steps. Both sides run the same diffusers code on the CPU in one process (fp32, and fp16 / bf16 as the
engine loads them on CUDA), so equality is exact (uint8), not approximate. Nothing is downloaded: tokenizers
are built from vocabularies written here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.layouts import clip_tokenizer  # every byte a token: pads and truncates to 77 as CLIP's does
from engines.errors import BackendUnavailable, CheckpointError, InvalidRequest
from engines.pipelines import PipelineEngine
from engines.registry import Registry
from engines.requests import ImageRequest

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PROMPT = "a red circle left of a blue square"
SEED = 3


# ------------------------------------------------------------------------------------------ tokenizers
WORDS = sorted(set(PROMPT.split()) | {"a", "photo", "of", "cat"})


def t5_tokenizer():
    """A T5 tokenizer on a tiny unigram vocabulary (transformers builds its `tokenizers` object in-process)."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [(f"▁{w}", -1.0) for w in WORDS]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def gemma_tokenizer():
    """A Gemma tokenizer on a tiny BPE vocabulary (unknown words fall back to <unk>)."""
    from transformers import GemmaTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    letters = sorted({c for w in WORDS for c in w} | {"▁"})
    vocab = {token: i for i, token in enumerate(specials + letters)}
    return GemmaTokenizerFast(vocab=vocab, merges=[])


# ------------------------------------------------------------------------------------------ tiny pipelines
def tiny_clip(vocab_size: int, hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection or hidden,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    torch.manual_seed(0)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def tiny_kl_vae(blocks: tuple[int, ...] = (4, 8), latent_channels: int = 4, **extra):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=blocks,
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(blocks),
        up_block_types=["UpDecoderBlock2D"] * len(blocks),
        latent_channels=latent_channels,
        norm_num_groups=min(blocks),
        layers_per_block=1,
        **extra,
    ).eval()


def tiny_unet(cross_attention_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        **extra,
    ).eval()


def sd_components(tmp: Path) -> dict:
    tokenizer = clip_tokenizer()
    return {
        "unet": tiny_unet(8),
        "vae": tiny_kl_vae(),
        "text_encoder": tiny_clip(len(tokenizer), 8),
        "tokenizer": tokenizer,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def build_sd(target: Path, components: dict, scheduler) -> Path:
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(**components, scheduler=scheduler).save_pretrained(target, safe_serialization=True)
    return target


def build_sdxl_turbo(target: Path, tmp: Path) -> Path:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer = clip_tokenizer()
    unet = tiny_unet(
        16,  # the two text encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=8 + 6 * 4,  # pooled text (projection 8) + 6 size/crop ids
        transformer_layers_per_block=1,
    )
    # SDXL-Turbo's scheduler: ancestral Euler with trailing timesteps (it draws fresh noise from the generators)
    scheduler = EulerAncestralDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, timestep_spacing="trailing"
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_kl_vae(),
        text_encoder=tiny_clip(len(tokenizer), 8),
        text_encoder_2=tiny_clip(len(tokenizer), 8, projection=8),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )
    pipe.save_pretrained(target, safe_serialization=True)
    return target


def build_sana_sprint(target: Path) -> Path:
    from diffusers import AutoencoderDC, SanaSprintPipeline, SanaTransformer2DModel, SCMScheduler
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = gemma_tokenizer()
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=16,  # x2 (two DC-AE blocks) = 32 px: SANA needs a multiple of 32
        qk_norm="rms_norm_across_heads",
        guidance_embeds=True,
    ).eval()
    torch.manual_seed(0)
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=[1, 1],
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    ).eval()
    torch.manual_seed(0)
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=4,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    pipe = SanaSprintPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=SCMScheduler()
    )
    pipe.save_pretrained(target, safe_serialization=True)
    return target


def build_flux_schnell(target: Path, tmp: Path) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    clip = clip_tokenizer()
    t5 = t5_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=8,
        axes_dims_rope=[2, 2, 4],
        guidance_embeds=False,  # schnell: timestep-distilled, no guidance input
    ).eval()
    torch.manual_seed(0)
    t5_model = T5EncoderModel(
        T5Config(vocab_size=len(t5), d_model=16, d_kv=4, d_ff=16, num_layers=1, num_heads=2, decoder_start_token_id=0)
    ).eval()
    # one VAE block: scale factor 1, so the 128-latent default FLUX size is 128 px here
    vae = tiny_kl_vae(
        (4,), latent_channels=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        vae=vae,
        text_encoder=tiny_clip(len(clip), 8),
        tokenizer=clip,
        text_encoder_2=t5_model,
        tokenizer_2=t5,
        transformer=transformer,
    )
    pipe.save_pretrained(target, safe_serialization=True)
    return target


def build_lcm_lora(target: Path, unet) -> Path:
    """A random LoRA on the tiny UNet's attention projections, saved as diffusers saves LoRAs (safetensors)."""
    import copy

    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = copy.deepcopy(unet)
    torch.manual_seed(1)
    # init_lora_weights=False: random A and B, so the LoRA changes the output (B is zero by default)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionPipeline.save_lora_weights(target, unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True)
    return target


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    tmp = tmp_path_factory.mktemp("public-pipelines")
    components = sd_components(tmp)
    sd_scheduler = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)  # SD's
    return {
        # SD-Turbo: Euler with trailing timesteps; SD base: DDIM with leading ones (a teacher)
        "sd-turbo": build_sd(tmp / "sd-turbo", components, EulerDiscreteScheduler(timestep_spacing="trailing", **sd_scheduler)),
        "sd-base": build_sd(
            tmp / "sd-base", components, DDIMScheduler(timestep_spacing="leading", clip_sample=False, **sd_scheduler)
        ),
        "lcm-lora": build_lcm_lora(tmp / "lcm-lora", components["unet"]),
        "sdxl-turbo": build_sdxl_turbo(tmp / "sdxl-turbo", tmp),
        "sana-sprint": build_sana_sprint(tmp / "sana-sprint"),
        "flux-schnell": build_flux_schnell(tmp / "flux-schnell", tmp),
    }


@pytest.fixture(scope="module")
def registry(built, tmp_path_factory) -> Registry:
    registry = Registry([tmp_path_factory.mktemp("no-checkpoints")], device="cpu", cache_size=8)
    for name in ("sd-turbo", "sd-base", "sdxl-turbo", "sana-sprint", "flux-schnell"):
        registry.add(built[name])
    registry.add(built["sd-base"], lora=built["lcm-lora"])
    return registry


def reference(directory: Path, class_name: str, steps: int, guidance: float, batch: int = 1, seed: int = SEED, **extra):
    """diffusers' own pipeline from the same directory (fp32 on the CPU, as our engine there): uint8 arrays."""
    import diffusers

    pipe = getattr(diffusers, class_name).from_pretrained(directory)
    pipe.set_progress_bar_config(disable=True)
    lora = extra.pop("lora", None)
    if lora is not None:
        pipe.load_lora_weights(lora)
        pipe.fuse_lora()
    if extra.pop("lcm", False):
        pipe.scheduler = diffusers.LCMScheduler.from_config(pipe.scheduler.config)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    out = pipe([PROMPT] * batch, num_inference_steps=steps, guidance_scale=guidance, generator=generators, **extra)
    return [np.asarray(image) for image in out.images]


def ours(registry: Registry, model_id: str, steps: int, guidance: float | None = None, batch: int = 1, seed: int = SEED):
    result = registry.engine(model_id).generate(ImageRequest(PROMPT, seed=seed, steps=steps, guidance=guidance, batch=batch))
    assert result.final and result.total_steps == steps and len(result.images) == batch
    return [np.asarray(image) for image in result.images]


def sana_size(steps: int) -> dict:
    # SanaSprintPipeline defaults to 1024 px with aspect-ratio binning; our engine asks for the model's own size
    return {
        "height": 32,
        "width": 32,
        "use_resolution_binning": False,
        **({} if steps == 2 else {"intermediate_timesteps": None}),
    }


# ------------------------------------------------------------------------------------------ tests
EXPECTED_CARDS = {
    # id: (method, role, default steps, default guidance, resolution, pipeline class)
    "sd-turbo": ("sd-turbo-class", "student", 1, 0.0, 16, "StableDiffusionPipeline"),
    "sd-base": ("stable-diffusion", "teacher", 50, 7.5, 16, "StableDiffusionPipeline"),
    "sd-base-lcm-lora": ("lcm-lora", "student", 4, 1.0, 16, "StableDiffusionPipeline"),
    "sdxl-turbo": ("sdxl-turbo-class", "student", 1, 0.0, 16, "StableDiffusionXLPipeline"),
    "sana-sprint": ("sana-sprint", "student", 2, 4.5, 32, "SanaSprintPipeline"),
    "flux-schnell": ("flux-schnell-class", "student", 4, 0.0, 128, "FluxPipeline"),
}


def test_cards_come_from_the_pipeline_configs(registry, built):
    assert {c.id for c in registry.cards("image")} == set(EXPECTED_CARDS) and registry.problems == {}
    for model_id, (method, role, steps, guidance, resolution, class_name) in EXPECTED_CARDS.items():
        card = registry.card(model_id)
        got = (card.method, card.role, card.default_steps, card.default_guidance, card.resolution, card.pipeline["class"])
        assert got == (method, role, steps, guidance, resolution, class_name), model_id
        assert card.engine == "pipeline" and card.modality == "image"
    assert registry.card("sd-base-lcm-lora").pipeline["lora"] == str(built["lcm-lora"])
    assert registry.card("sd-base-lcm-lora").teacher == "sd-base"
    assert registry.card("sd-base").pipeline["lora"] is None


@pytest.mark.parametrize(
    ("model_id", "class_name", "steps", "guidance", "batch"),
    [
        ("sd-turbo", "StableDiffusionPipeline", 1, None, 2),  # the card's guidance (0) and a batch
        ("sd-turbo", "StableDiffusionPipeline", 2, 2.0, 2),  # classifier-free guidance
        ("sd-base", "StableDiffusionPipeline", 3, None, 1),
        ("sdxl-turbo", "StableDiffusionXLPipeline", 1, None, 1),
        ("sdxl-turbo", "StableDiffusionXLPipeline", 3, None, 1),  # ancestral: draws noise from the generators each step
        ("sana-sprint", "SanaSprintPipeline", 2, None, 1),  # SCM with its intermediate timestep
        ("sana-sprint", "SanaSprintPipeline", 1, None, 1),
        ("flux-schnell", "FluxPipeline", 1, None, 1),
        ("flux-schnell", "FluxPipeline", 2, None, 1),
    ],
)
def test_output_equals_diffusers_own_pipeline(registry, built, model_id, class_name, steps, guidance, batch):
    card = registry.card(model_id)
    extra = sana_size(steps) if class_name == "SanaSprintPipeline" else {}  # others: diffusers' default size = the card's
    expected = reference(
        built[model_id], class_name, steps, card.default_guidance if guidance is None else guidance, batch, **extra
    )
    got = ours(registry, model_id, steps, guidance, batch)
    assert [image.shape for image in got] == [(card.resolution, card.resolution, 3)] * batch
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    if batch > 1:  # image i comes from seed + i, so the second image is not the first again
        assert not np.array_equal(got[0], got[1])


@pytest.mark.parametrize("steps", [4, 2])
def test_lcm_lora_equals_diffusers_with_the_lora_fused(registry, built, steps):
    expected = reference(built["sd-base"], "StableDiffusionPipeline", steps, 1.0, lora=built["lcm-lora"], lcm=True)
    got = ours(registry, "sd-base-lcm-lora", steps)
    assert np.array_equal(got[0], expected[0])
    # the LoRA matters: the base with the same LCM sampling differs, and the base model itself is untouched
    without = reference(built["sd-base"], "StableDiffusionPipeline", steps, 1.0, lcm=True)
    assert np.abs(got[0].astype(int) - without[0].astype(int)).mean() > 1  # ~4 levels on average with this LoRA
    base = reference(built["sd-base"], "StableDiffusionPipeline", 2, 7.5)
    assert np.array_equal(ours(registry, "sd-base", 2)[0], base[0])


def test_stream_previews_each_step_then_the_pipeline_output(registry):
    engine = registry.engine("sd-base")
    request = ImageRequest(PROMPT, seed=SEED, steps=3)
    results = list(engine.stream(request))
    assert [(r.step, r.total_steps, r.final) for r in results] == [(1, 3, False), (2, 3, False), (3, 3, True)]
    assert [r.timings.nfe for r in results] == [2, 4, 6]  # guidance 7.5: two network calls a step
    assert all(r.images[0].size == (16, 16) and r.seed == SEED and r.model_id == "sd-base" for r in results)
    assert results[-1].timings.encode_ms > 0 and results[-1].timings.run_ms > 0
    final = np.asarray(results[-1].images[0])
    assert np.array_equal(np.asarray(engine.generate(request).images[0]), final)  # generate = stream collected
    assert not np.array_equal(np.asarray(results[0].images[0]), final)  # a preview is an estimate, not the result


def test_a_stream_stopped_early_frees_the_engine(registry):
    engine = registry.engine("sd-turbo")
    stream = engine.stream(ImageRequest(PROMPT, seed=1, steps=3))
    assert next(stream).step == 1
    stream.close()  # the consumer goes away: the pipeline is interrupted and the lock released
    assert engine.generate(ImageRequest(PROMPT, seed=1, steps=1)).final


def test_sample_prompts_matches_generate(registry):
    engine = registry.engine("sd-turbo")
    images = engine.sample_prompts([PROMPT, "a photo of a cat"], [4, 9], steps=1)
    assert images.shape == (2, 3, 16, 16) and -1 <= images.min() and images.max() <= 1
    single = ours(registry, "sd-turbo", 1, seed=4)[0]
    assert np.abs(((images[0].permute(1, 2, 0).numpy() + 1) * 127.5) - single).max() <= 1  # pil rounding vs float


def test_pipelines_bring_their_own_text_encoders(registry):
    assert registry._text_encoders == {}  # no MiniLM was made for any pipeline
    assert isinstance(registry.engine("sd-turbo"), PipelineEngine)


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("compiled", "runs on a CUDA GPU only"),
        ("onnx", "covers Distillery checkpoints only, not public diffusers pipelines"),
        ("tensorrt", "choose one of: torch, compiled, onnx"),
    ],
)
def test_other_backends_are_refused_with_the_reason(registry, backend, message):
    with pytest.raises(BackendUnavailable, match=message):
        registry.engine("sd-turbo", backend)


def broken_copy(built, tmp_path, name="sd-turbo") -> Path:
    target = tmp_path / f"{name}-copy"
    shutil.copytree(built[name], target)
    return target


def edit_index(directory: Path, **changes) -> None:
    index = json.loads((directory / "model_index.json").read_text())
    (directory / "model_index.json").write_text(json.dumps(index | changes))


def test_unsupported_class_lists_the_supported_ones(built, tmp_path):
    target = broken_copy(built, tmp_path)
    edit_index(target, _class_name="StableDiffusionImg2ImgPipeline")
    supported = "supported: StableDiffusionPipeline, StableDiffusionXLPipeline, SanaSprintPipeline, FluxPipeline"
    with pytest.raises(CheckpointError, match=f"'StableDiffusionImg2ImgPipeline', which Distillery does not serve; {supported}"):
        Registry([], device="cpu").add(target)


def test_components_from_other_code_are_refused(built, tmp_path):
    target = broken_copy(built, tmp_path)
    edit_index(target, unet=["my_package.models", "MyUNet"])
    with pytest.raises(CheckpointError, match="only \\[library, class\\] pairs from diffusers or transformers"):
        Registry([], device="cpu").add(target)


def test_diffusers_pipeline_packages_count_as_diffusers(built, tmp_path):
    target = broken_copy(built, tmp_path)  # SD 1.x lists its safety checker from diffusers' stable_diffusion package
    edit_index(target, safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"])
    with pytest.raises(CheckpointError, match="has no safety_checker/ folder"):  # accepted, then found missing
        Registry([], device="cpu").add(target)


def test_missing_component_folder(built, tmp_path):
    target = broken_copy(built, tmp_path)
    shutil.rmtree(target / "vae")
    with pytest.raises(CheckpointError, match="has no vae/ folder, but model_index.json lists it"):
        Registry([], device="cpu").add(target)


def test_pickled_weights_are_refused(built, tmp_path):
    from safetensors.torch import load_file

    target = broken_copy(built, tmp_path)
    weights = target / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), target / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(CheckpointError, match="found diffusion_pytorch_model.bin: pickle files are never loaded"):
        Registry([], device="cpu").add(target)


def test_truncated_weights_are_refused(built, tmp_path):
    target = broken_copy(built, tmp_path)
    weights = target / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(CheckpointError, match="it may be truncated"):
        Registry([], device="cpu").add(target)


def test_a_bad_pipeline_in_a_scanned_root_is_reported_not_fatal(built, tmp_path):
    good, bad = broken_copy(built, tmp_path, "sd-base"), broken_copy(built, tmp_path)
    shutil.rmtree(bad / "unet")
    registry = Registry([tmp_path], device="cpu")
    assert [c.id for c in registry.cards()] == [good.name]
    assert "has no unet/ folder" in registry.problems[str(bad)]


def test_a_card_json_names_the_pipeline_engine(built, tmp_path):
    """A pipeline directory may carry our card.json (its own defaults); its `engine` field routes it."""
    from engines.card import ModelCard

    target = broken_copy(built, tmp_path)
    card = ModelCard(id="my-turbo", modality="image", role="student", method="sd-turbo-class", default_steps=2,
                     resolution=16, default_guidance=0.0, engine="pipeline")  # fmt: skip
    card.save(target)
    registry = Registry([tmp_path], device="cpu")
    assert np.array_equal(ours(registry, "my-turbo", 2)[0], reference(target, "StableDiffusionPipeline", 2, 0.0)[0])
    ModelCard(**{**card.to_json(), "id": "elsewhere", "engine": "no-such-engine"}).save(target)
    registry.refresh()
    with pytest.raises(BackendUnavailable, match="names engine 'no-such-engine', which is unknown; known: image, pipeline"):
        registry.engine("elsewhere")


def test_a_hub_cache_snapshot_is_named_after_its_repository(built, tmp_path):
    snapshot = tmp_path / "models--stabilityai--sd-turbo" / "snapshots" / "0123abcd"
    shutil.copytree(built["sd-turbo"], snapshot)
    assert Registry([], device="cpu").add(snapshot).id == "sd-turbo"


def test_hub_ids_are_not_available_offline(built):
    registry = Registry([], device="cpu")
    with pytest.raises(
        CheckpointError, match="'stabilityai/sd-turbo' looks like a Hugging Face hub id, but it is not available offline"
    ):
        registry.add("stabilityai/sd-turbo")
    with pytest.raises(CheckpointError, match="'latent-consistency/lcm-lora-sdv1-5' .* not available offline"):
        registry.add(built["sd-base"], lora="latent-consistency/lcm-lora-sdv1-5")


def test_bad_lora_paths(built, tmp_path):
    registry = Registry([], device="cpu")
    with pytest.raises(CheckpointError, match="no LoRA directory at"):
        registry.add(built["sd-base"], lora=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty has no .safetensors weights"):
        registry.add(built["sd-base"], lora=tmp_path / "empty")
    with pytest.raises(CheckpointError, match="is a file; give the directory that holds it"):
        registry.add(built["sd-base"], lora=built["lcm-lora"] / "pytorch_lora_weights.safetensors")
    with pytest.raises(CheckpointError, match="applies to StableDiffusionPipeline, StableDiffusionXLPipeline only"):
        registry.add(built["sana-sprint"], lora=built["lcm-lora"])
    with pytest.raises(CheckpointError, match="a LoRA applies to a diffusers pipeline"):
        registry.add(built["lcm-lora"], lora=built["lcm-lora"])
    assert registry.cards() == []


@pytest.mark.parametrize("window_ms", [0.0, 5.0])  # dynamic batching off (engine.stream) and on (engine.stream_many)
def test_studio_image_tab_generates_with_a_pipeline(registry, window_ms):
    from studio.app import StudioSettings
    from studio.image_tab import ImageHandlers, model_choices

    assert "sd-base-lcm-lora" in [model_id for _, model_id in model_choices(registry)]
    handlers = ImageHandlers(registry, StudioSettings(device="cpu", batch_window_ms=window_ms))
    try:
        outputs = list(handlers.generate(PROMPT, "sd-base-lcm-lora", 5, None, None, 2))
    finally:
        if handlers.batcher is not None:
            handlers.batcher.close()
    assert len(outputs) == 4  # the card's 4 steps: three previews, then the result
    preview, gallery, originals, info = outputs[-1]
    assert [caption for _, caption in gallery] == ["seed 5", "seed 6"]
    assert [image.size for image, _ in originals] == [(16, 16)] * 2
    assert np.array_equal(np.asarray(originals[0][0]), ours(registry, "sd-base-lcm-lora", 4, seed=5)[0])
    facts = ["**steps** 4", "**NFE** 4", "`sd-base-lcm-lora` (student, lcm-lora)", "**backend** torch"]
    assert [fact for fact in facts if fact not in info] == []


def test_stream_many_runs_requests_together_as_one_diffusers_call(registry, built):
    import diffusers

    requests = [ImageRequest(PROMPT, seed=10, batch=2), ImageRequest("a photo of a cat", seed=20)]
    results = list(registry.engine("sd-turbo").stream_many(requests))[-1]
    assert [(r.seed, len(r.images), r.final) for r in results] == [(10, 2, True), (20, 1, True)]
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(built["sd-turbo"])
    generators = [torch.Generator().manual_seed(s) for s in (10, 11, 20)]
    expected = pipe([PROMPT, PROMPT, "a photo of a cat"], num_inference_steps=1, guidance_scale=0.0, generator=generators).images
    got = results[0].images + results[1].images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, expected))
    with pytest.raises(InvalidRequest, match="must share steps and guidance"):
        next(registry.engine("sd-turbo").stream_many([ImageRequest(PROMPT, steps=1), ImageRequest(PROMPT, steps=2)]))


@pytest.mark.parametrize(
    ("model_id", "class_name", "dtype"),
    [
        ("sd-turbo", "StableDiffusionPipeline", torch.float16),
        ("sdxl-turbo", "StableDiffusionXLPipeline", torch.float16),  # its VAE decodes upcast to fp32 (force_upcast)
        ("sana-sprint", "SanaSprintPipeline", torch.bfloat16),
        ("flux-schnell", "FluxPipeline", torch.bfloat16),
    ],
)
def test_half_precision_as_on_cuda(registry, built, model_id, class_name, dtype):
    """On CUDA the engine loads pipelines in fp16 (bf16 for SANA / FLUX): previews must decode in that dtype
    (and SDXL's VAE go back to fp16 after its fp32 decode) and the output stay diffusers'. CPU runs the same code."""
    import diffusers

    def load():
        return getattr(diffusers, class_name).from_pretrained(built[model_id], dtype=dtype)

    engine = PipelineEngine(registry.card(model_id), load(), torch.device("cpu"))
    results = list(engine.stream(ImageRequest(PROMPT, seed=SEED, steps=2)))
    assert [r.final for r in results] == [False, True] and engine.pipe.vae.dtype == dtype
    extra = sana_size(2) if class_name == "SanaSprintPipeline" else {}
    guidance = registry.card(model_id).default_guidance
    expected = load()(
        PROMPT, num_inference_steps=2, guidance_scale=guidance, generator=[torch.Generator().manual_seed(SEED)], **extra
    )
    assert np.array_equal(np.asarray(results[-1].images[0]), np.asarray(expected.images[0]))


def test_previews_pass_the_safety_checker_the_output_passes(registry, monkeypatch):
    engine = registry.engine("sd-base")

    def flag_everything(images, device, dtype):  # what StableDiffusionSafetyChecker does to a flagged image
        return torch.zeros_like(images), [True] * len(images)

    monkeypatch.setattr(engine.pipe, "run_safety_checker", flag_everything)
    results = list(engine.stream(ImageRequest(PROMPT, seed=SEED, steps=3)))
    assert len(results) == 3 and all(np.asarray(r.images[0]).max() == 0 for r in results)  # black, previews too


@pytest.mark.parametrize("model_id", ["sd-turbo", "sdxl-turbo", "sana-sprint", "flux-schnell", "sd-base-lcm-lora"])
def test_previews_decode_as_the_pipeline_does(registry, model_id):
    """At the last step the scheduler's clean estimate is the final sample, so a preview made there must be
    the pipeline's own output: this checks each family's preview decode against diffusers' final decode."""
    engine = registry.engine(model_id)
    steps, previews = 2, []

    def at_last_step(pipe, i, t, tensors):
        if i == steps - 1:
            previews.extend(engine._preview(tensors["latents"]))
        return {}

    with engine._lock:
        out = engine._call([PROMPT], [SEED], steps, engine.card.default_guidance, callback_on_step_end=at_last_step)
    # <= 1/255: Euler-type steps reach the final sample as x + (0 - sigma) * d, the estimate as x - sigma * d
    assert np.abs(np.asarray(previews[0]).astype(int) - np.asarray(out.images[0])).max() <= 1


def test_app_pairs_each_lora_with_the_model_before_it(built):
    import app

    args = app.parse_args(["--model", str(built["sd-base"]), "--lora", str(built["lcm-lora"]), "--model", str(built["sd-turbo"])])
    registry = Registry([], device="cpu")
    app.add_models(registry, args)
    assert sorted(c.id for c in registry.cards()) == ["sd-base", "sd-base-lcm-lora", "sd-turbo"]
    with pytest.raises(SystemExit):
        app.parse_args(["--lora", str(built["lcm-lora"])])  # no model to apply it to
    with pytest.raises(SystemExit, match="--lora .*no LoRA directory at"):
        app.add_models(registry, app.parse_args(["--model", str(built["sd-base"]), "--lora", "/nonexistent/lora"]))


# ------------------------------------------------------------------------------------------ the real-time path
@pytest.mark.parametrize("model_id", ["sd-turbo", "sd-base"])
def test_the_engines_realtime_path_gives_the_pipelines_images(registry, model_id):
    """The compiled backend serves SD-class pipelines through engines/realtime.py (compiled on the GPU:
    tests/gpu/test_pipelines_gpu.py). Here, eager on CPU, it must give the torch backend's images exactly,
    previews at every step but the last, NFE with CFG, and the same sample_prompts."""
    from engines.pipelines import _load_torch
    from engines.realtime import RealtimeSD

    card = registry.card(model_id)
    pipe = _load_torch(card, torch.device("cpu"))
    engine = PipelineEngine(card, pipe, torch.device("cpu"), backend="compiled", realtime=RealtimeSD(pipe))
    reference_engine = registry.engine(model_id)
    try:
        for steps, guidance in ((1, 0.0), (3, 2.0)):
            request = ImageRequest(PROMPT, seed=SEED, steps=steps, guidance=guidance, batch=2)
            states, want = list(engine.stream(request)), reference_engine.generate(request)
            assert [s.final for s in states] == [False] * (steps - 1) + [True]
            assert states[-1].backend == "compiled" and states[-1].timings.nfe == want.timings.nfe
            for got, expected in zip(states[-1].images, want.images):
                np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
        a = engine.sample_prompts([PROMPT, "a cross"], [1, 2], steps=2)
        b = reference_engine.sample_prompts([PROMPT, "a cross"], [1, 2], steps=2)
        assert a.shape == b.shape and float((a - b).abs().max()) <= 1 / 127.5 + 1e-6  # one uint8 level at most
    finally:
        engine.unload()
    with pytest.raises(RuntimeError, match="was unloaded"):
        engine.generate(ImageRequest(PROMPT, seed=SEED, steps=1))


def test_a_pipeline_with_a_safety_checker_keeps_its_own_call(registry):
    from engines.pipelines import _load_torch, _serves_realtime
    from engines.realtime import RealtimeSD

    pipe = _load_torch(registry.card("sd-turbo"), torch.device("cpu"))
    assert _serves_realtime(pipe)
    object.__setattr__(pipe, "safety_checker", object())  # as an SD 1.x checkpoint carries one
    assert not _serves_realtime(pipe)
    with pytest.raises(BackendUnavailable, match="safety checker, which the real-time path does not run"):
        RealtimeSD(pipe)
