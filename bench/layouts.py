"""Public model layouts built from config in code, with random weights.

Speed does not depend on weights and nothing can be downloaded here, so the serving benchmark times
the published architectures (SD-Turbo: SD 2.1 UNet, OpenCLIP-H text encoder, SD VAE; SANA-Sprint
1.6B with its DC-AE f32c32 decoder; TAESD) initialised at random. `scale="tiny"` keeps each layout
but shrinks its widths and depths, so the same code paths run on a CPU in tests.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    AutoencoderTiny,
    EulerDiscreteScheduler,
    SanaTransformer2DModel,
    SCMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SCALES = ("tiny", "real")


def _check(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")


def clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer without merges: every byte is a token (the byte-level alphabet, with and
    without CLIP's end-of-word mark). Prompts still pad and truncate to 77 tokens exactly as CLIP's
    own tokenizer does, which is all a timing or a parity test needs."""
    symbols = sorted(ByteLevel.alphabet())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def sd_turbo(scale: str, dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """The SD-Turbo layout at 512x512 (latents 64x64): SD 2.1's UNet (865 M), OpenCLIP ViT-H's text
    tower as a CLIPTextModel (340 M), SD's KL autoencoder (84 M), Euler with trailing timesteps."""
    _check(scale)
    real = scale == "real"
    unet = UNet2DConditionModel(
        sample_size=64 if real else 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
        if real
        else ("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
        if real
        else ("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280) if real else (32, 64),
        layers_per_block=2 if real else 1,
        attention_head_dim=(5, 10, 20, 20) if real else (2, 4),
        cross_attention_dim=1024 if real else 32,
        use_linear_projection=True,
        norm_num_groups=32,
    )
    tokenizer = clip_tokenizer()
    # the real text tower has CLIP's 49408-token vocabulary; the tiny one just covers the byte tokenizer's ids
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    ids = {} if real else ids
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=1024 if real else 32,
            intermediate_size=4096 if real else 64,
            num_attention_heads=16 if real else 4,
            num_hidden_layers=23 if real else 2,
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=512 if real else 32,
            **ids,
        )
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512) if real else (32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2 if real else 1,
        norm_num_groups=32,
        sample_size=512 if real else 64,
        scaling_factor=0.18215,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="epsilon",
        timestep_spacing="trailing",
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=dtype)


def tiny_autoencoder(scale: str, dtype: torch.dtype = torch.float32) -> AutoencoderTiny:
    """TAESD's layout (diffusers' AutoencoderTiny defaults are TAESD's); `tiny` narrows it for tests."""
    _check(scale)
    if scale == "real":
        return AutoencoderTiny().to(dtype=dtype)
    return AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8)).to(dtype=dtype)


def sana_sprint(scale: str, dtype: torch.dtype = torch.bfloat16) -> tuple[SanaTransformer2DModel, AutoencoderDC, SCMScheduler]:
    """SANA-Sprint 1.6B at 1024x1024: SanaTransformer2DModel's defaults are the 1.6B model (20 blocks,
    2240 wide, linear attention) with SANA-Sprint's guidance embedding and QK norm; DC-AE f32c32 (the
    AutoencoderDC defaults with SANA 1.0's interpolate/conv sampling) decodes 32x32x32 latents."""
    _check(scale)
    real = scale == "real"
    transformer = SanaTransformer2DModel(
        guidance_embeds=True,
        qk_norm="rms_norm_across_heads",
        **(
            {}
            if real
            else dict(
                num_attention_heads=2,
                attention_head_dim=8,
                num_layers=2,
                num_cross_attention_heads=2,
                cross_attention_head_dim=8,
                cross_attention_dim=16,
                caption_channels=16,
                sample_size=4,
            )
        ),
    )
    vae = AutoencoderDC(
        encoder_block_types=("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock", "EfficientViTBlock"),
        upsample_block_type="interpolate",
        downsample_block_type="Conv",
        scaling_factor=0.41407,
        **(
            {}
            if real
            else dict(
                attention_head_dim=8,
                encoder_block_out_channels=(8, 8, 8, 8, 32, 32),
                decoder_block_out_channels=(8, 8, 8, 8, 32, 32),
                encoder_layers_per_block=(1,) * 6,
                decoder_layers_per_block=(1,) * 6,
            )
        ),
    )
    scheduler = SCMScheduler(num_train_timesteps=1000, prediction_type="trigflow", sigma_data=0.5)
    return transformer.to(dtype=dtype), vae.to(dtype=dtype), scheduler


def sana_sprint_pipeline(scale: str, dtype: torch.dtype = torch.bfloat16):
    """`sana_sprint` as a SanaSprintPipeline without its Gemma text encoder: callers pass cached caption
    embeddings (`cached_caption_call`)."""
    from diffusers import SanaSprintPipeline

    transformer, vae, scheduler = sana_sprint(scale, dtype)
    pipe = SanaSprintPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cached_caption_call(embeds: torch.Tensor, px: int) -> dict:
    """SanaSprintPipeline keyword arguments for one step at px x px from cached caption embeddings (B, T, C)."""
    mask = torch.ones(embeds.shape[:2], device=embeds.device, dtype=torch.long)
    return dict(
        prompt_embeds=embeds,
        prompt_attention_mask=mask,
        num_inference_steps=1,
        intermediate_timesteps=None,  # SCM's intermediate step is for 2-step sampling only
        guidance_scale=4.5,
        height=px,
        width=px,
        output_type="pt",
        use_resolution_binning=False,
    )
