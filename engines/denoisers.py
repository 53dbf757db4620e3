"""The image denoisers Distillery runs, behind one call: `velocity(model, x, t, text)`.

A checkpoint keeps its network where diffusers pipelines keep it: `unet/` for a
`UNet2DConditionModel` (the SD 1.x/2.x layout; also our subclass with a text refiner,
engines/refined_unet.py), `transformer/` for an `SD3Transformer2DModel` (the SD3 layout).
Both predict the flow-matching velocity from the scheduler's timestep (1000 * sigma) and the text
encoder's token states plus pooled vector.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engines.checkpoints import load_diffusers_model
from engines.errors import CheckpointError
from engines.text_encoder import TextEmbedding

# subfolder -> model class, in the order a checkpoint is searched.
DENOISER_FOLDERS: dict[str, str] = {"unet": "UNet2DConditionModel", "transformer": "SD3Transformer2DModel"}


def denoiser_folder(model) -> str:
    """The subfolder a network is saved under, from its class (subclasses share their base's folder)."""
    import diffusers

    for folder, class_name in DENOISER_FOLDERS.items():
        if isinstance(model, getattr(diffusers, class_name)):
            return folder
    name = type(model).__name__
    raise CheckpointError(f"{name} is not an image denoiser; supported: {', '.join(DENOISER_FOLDERS.values())}")


def find_denoiser(checkpoint: Path) -> tuple[Path, str]:
    """(subfolder path, expected class) of the denoiser inside a checkpoint directory."""
    checkpoint = Path(checkpoint)
    for folder, class_name in DENOISER_FOLDERS.items():
        if (checkpoint / folder).is_dir():
            return checkpoint / folder, class_name
    raise CheckpointError(
        f"{checkpoint} has no denoiser: expected a subfolder named {' or '.join(map(repr, DENOISER_FOLDERS))} "
        "(save the network there with save_pretrained)"
    )


def load_denoiser(checkpoint: Path, dtype: torch.dtype = torch.float32):
    folder, class_name = find_denoiser(checkpoint)
    return load_diffusers_model(folder, class_name, dtype=dtype)


def unwrap(model):
    """The diffusers model inside torch.compile / DistributedDataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


GUIDANCE_EMBEDDING_DIM = 256


def embeds_guidance(model) -> bool:
    """True for guidance-distilled networks: the CFG scale is an input (UNet `time_cond_proj_dim`,
    as in LCM's w-conditioning), so one evaluation replaces the two of classifier-free guidance."""
    return bool(getattr(unwrap(model).config, "time_cond_proj_dim", None))


def guidance_embedding(scale: torch.Tensor, dim: int = GUIDANCE_EMBEDDING_DIM) -> torch.Tensor:
    """Sinusoidal embedding of the guidance scale w (B,) -> (B, dim), of w - 1 so that 'no guidance'
    (w = 1) embeds near the zero vector a fresh projection starts from."""
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half, device=scale.device) / (half - 1))
    angles = (scale.float() - 1.0)[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles) - 1.0], dim=1)


def velocity(
    model, x: torch.Tensor, t: torch.Tensor, emb: TextEmbedding, guidance: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Predicted velocity (eps - x0) at scheduler timestep t (B,), computed in the model's dtype.
    `model` may be wrapped (compiled, DDP): the wrapper is called, the class read from inside.
    `guidance` is required by, and only accepted by, guidance-embedding networks."""
    dtype = next(model.parameters()).dtype
    states, pooled, t = emb.states.to(dtype), emb.pooled.to(dtype), t.to(dtype)
    inner = unwrap(model)
    if embeds_guidance(inner) != (guidance is not None):
        raise ValueError(
            "this network takes the guidance scale as an input; pass guidance="
            if guidance is None
            else "guidance= is only for guidance-distilled networks (time_cond_proj_dim); use CFG for this one"
        )
    if type(inner).__name__ == "SD3Transformer2DModel":
        out = model(
            hidden_states=x.to(dtype), encoder_hidden_states=states, pooled_projections=pooled, timestep=t, return_dict=False
        )
    else:  # UNet2DConditionModel: the pooled vector enters through its projection class embedding
        cond = None
        if guidance is not None:
            # a tensor scale stays a traced tensor (the ONNX export's `guidance` input), not a baked constant
            scale = guidance if torch.is_tensor(guidance) else torch.as_tensor(guidance)
            scale = scale.to(x.device, torch.float32).expand(x.shape[0])
            cond = guidance_embedding(scale, int(inner.config.time_cond_proj_dim)).to(dtype)
        out = model(x.to(dtype), t, encoder_hidden_states=states, class_labels=pooled, timestep_cond=cond, return_dict=False)
    return out[0].to(x.dtype)
