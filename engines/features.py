"""A feature network for Fréchet distances on shapes-world images, and the distance itself.

No Inception weights can be downloaded here, so we train and ship our own feature extractor: a
small CNN attribute classifier (which colour-shape pairs are present, how many objects, which
sizes; colour and shape presence alone as helpers) trained on world renders by
`python -m trainer.train_features`. Its penultimate activations, after global pooling, are the
features; FD = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2).

The network is a transformers `PreTrainedModel`, so a checkpoint is a plain `save_pretrained`
directory (config.json + model.safetensors) and loads only from safetensors. The label names
live in its config, so this module knows nothing of the world that trained it (engines import
nothing of the trainer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from engines.card import read_json
from engines.checkpoints import check_safetensors
from engines.errors import CheckpointError

MODEL_TYPE = "distillery-shapes-features"
CARD_FILE = "features.json"  # not card.json: the registry serves every card.json it finds as an engine


class ShapesFeatureConfig(PretrainedConfig):
    """The constructor arguments of `ShapesFeatureNet`, saved as config.json.

    Every argument has a default because transformers builds a default config to diff against;
    the empty name lists make a network without heads, which `ShapesFeatureNet` refuses.
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        image_size: int = 64,
        channels: list[int] | tuple[int, ...] = (32, 48, 96, 128),
        feature_dim: int = 128,
        color_names: list[str] | tuple[str, ...] = (),
        shape_names: list[str] | tuple[str, ...] = (),
        size_names: list[str] | tuple[str, ...] = (),
        max_objects: int = 4,
        **kwargs,
    ) -> None:
        self.image_size = int(image_size)
        self.channels = [int(c) for c in channels]
        self.feature_dim = int(feature_dim)
        self.color_names = list(color_names)
        self.shape_names = list(shape_names)
        self.size_names = list(size_names)
        self.max_objects = int(max_objects)
        super().__init__(**kwargs)

    @property
    def pair_names(self) -> list[str]:
        """Names of the multi-label presence outputs, colour-major: 'red circle', 'red square', ..."""
        return [f"{c} {s}" for c in self.color_names for s in self.shape_names]


@dataclass
class FeatureOutput:
    features: torch.Tensor  # (B, feature_dim): penultimate activations, the FD features
    pair_logits: torch.Tensor  # (B, colours * shapes): presence of each (colour, shape) pair, multi-label
    count_logits: torch.Tensor  # (B, max_objects + 1): number of objects, 0..max_objects
    size_logits: torch.Tensor  # (B, sizes): presence of each size, multi-label
    color_logits: torch.Tensor  # (B, colours): presence of each colour (a helper head, see the class)
    shape_logits: torch.Tensor  # (B, shapes): presence of each shape kind (a helper head)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class ShapesFeatureNet(PreTrainedModel):
    """(B, 3, S, S) in [-1, 1] -> FeatureOutput.

    Conv-BN-SiLU stages each halve the resolution (64 -> 32 -> 16 -> 8 -> 4); all but the last add
    a second conv at that resolution. The last map is pooled two ways, mean (how much: counts) and
    max (whether anywhere: presence), and projected to `feature_dim` features, from which linear
    heads read the labels. With mean pooling alone the pair head sat at its prior ("nothing
    present") for a whole 800-step run: a conjunction of colour and shape is hard to find from
    scratch. Max pooling and the colour and shape presence helper heads (each alone is easy) each
    got it moving within ~100 steps, together fastest. BatchNorm: once trained the network is only
    used in eval mode, where it is a fixed affine map.
    """

    config_class = ShapesFeatureConfig
    base_model_prefix = "shapes_features"
    main_input_name = "pixel_values"

    def __init__(self, config: ShapesFeatureConfig) -> None:
        super().__init__(config)
        if not (config.color_names and config.shape_names and config.size_names):
            raise ValueError("ShapesFeatureConfig needs color_names, shape_names and size_names (the heads' labels)")
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(config.channels):
            layers.append(_conv(cin, cout, 2))
            if i < len(config.channels) - 1:  # at 4x4 a second conv adds parameters, not reach
                layers.append(_conv(cout, cout, 1))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Linear(2 * cin, config.feature_dim), nn.SiLU())
        dim = config.feature_dim
        self.pair_head = nn.Linear(dim, len(config.color_names) * len(config.shape_names))
        self.count_head = nn.Linear(dim, config.max_objects + 1)
        self.size_head = nn.Linear(dim, len(config.size_names))
        self.color_head = nn.Linear(dim, len(config.color_names))
        self.shape_head = nn.Linear(dim, len(config.shape_names))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=(1 / module.in_features) ** 0.5)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.config.image_size, self.config.image_size)

    def check_input(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            raise ValueError(
                f"the feature network takes images of shape (B, {c}, {h}, {w}) in [-1, 1], got {tuple(pixel_values.shape)}; "
                f"resize other resolutions with engines.features.resize_for_features"
            )

    def forward(self, pixel_values: torch.Tensor) -> FeatureOutput:
        self.check_input(pixel_values)
        h = self.body(pixel_values)
        features = self.project(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))
        return FeatureOutput(
            features,
            self.pair_head(features),
            self.count_head(features),
            self.size_head(features),
            self.color_head(features),
            self.shape_head(features),
        )


def load_feature_network(directory: str | Path, device: torch.device | str = "cpu") -> ShapesFeatureNet:
    """The shipped feature network from a save_pretrained directory, checked first, in eval mode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"no feature network at {directory}: train one with `python -m trainer.train_features --out {directory}`"
        )
    config = read_json(directory, "config.json")
    if config.get("model_type") != MODEL_TYPE:
        raise CheckpointError(
            f"{directory}/config.json has model_type {config.get('model_type')!r}, not {MODEL_TYPE!r}: not a feature network"
        )
    check_safetensors(directory)  # missing or truncated weights fail here, naming the file
    try:
        model = ShapesFeatureNet.from_pretrained(directory, use_safetensors=True)
    except Exception as err:  # shape mismatches, missing keys: say which checkpoint
        raise CheckpointError(f"cannot load the feature network from {directory}: {err}") from err
    return model.to(device).eval()


def resize_for_features(images: torch.Tensor, size: int = 64) -> torch.Tensor:
    """(B, 3, h, w) -> (B, 3, size, size). Smaller images are upsampled by pixel replication
    ('nearest', as the judged evaluation does), larger ones area-averaged (as training renders are)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    mode = "nearest" if images.shape[-1] < size else "area"
    return nn.functional.interpolate(images.float(), size=(size, size), mode=mode)


def as_model_input(images: np.ndarray | torch.Tensor, size: int = 64) -> torch.Tensor:
    """uint8 (B, H, W, 3) arrays (`shapes.to_uint8`'s layout) or float (B, 3, H, W) tensors in
    [-1, 1] (what engines return) -> float32 (B, 3, H, W) in [-1, 1]; the size is not changed."""
    expected = f"a uint8 numpy array (B, {size}, {size}, 3) or a float tensor (B, 3, {size}, {size}) in [-1, 1]"
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected {expected}; got a {images.dtype} array of shape {images.shape}")
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    if isinstance(images, torch.Tensor):
        if not images.is_floating_point() or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected {expected}; got a {images.dtype} tensor of shape {tuple(images.shape)}")
        return images.float()
    raise TypeError(f"expected {expected}; got {type(images).__name__}")


@torch.no_grad()
def fid_features(model: ShapesFeatureNet, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """(N, feature_dim) float64 features of N images at the network's resolution (see `as_model_input`
    for the accepted layouts). Always in eval mode: batch statistics would make features depend on
    the batch they were computed in."""
    x = as_model_input(images, model.config.image_size)
    model.check_input(x)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [model(x[i : i + batch_size].to(device)).features.double().cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.feature_dim))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) in float64 of (N, D) features, N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"expected (N, D) features with N >= 2, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features hold NaN or inf: the images fed to the feature network were not finite")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D), in float64.

    sqrtm(S_a S_b) of a product of PSD matrices has real non-negative eigenvalues in theory;
    in practice a near-singular product gives NaNs or a small imaginary part. Then, as in the
    reference FID code, eps is added to both diagonals and the real part is kept.
    """
    from scipy import linalg

    mu_a, sigma_a = feature_statistics(feats_a)
    mu_b, sigma_b = feature_statistics(feats_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    product = sigma_a @ sigma_b
    covmean = linalg.sqrtm(product)
    # sqrtm's own error estimate is deprecated; this is the same quantity.
    scale = max(np.linalg.norm(product), 1e-300)
    if not np.isfinite(covmean).all() or np.linalg.norm(covmean @ covmean - product) / scale > 1e-3:
        offset = np.eye(len(mu_a)) * eps
        covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    covmean = covmean.real
    diff = mu_a - mu_b
    distance = float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean))
    return max(distance, 0.0)  # tiny negative values are rounding, FD(a, a) = 0
