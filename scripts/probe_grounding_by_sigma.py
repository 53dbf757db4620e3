"""How well an image teacher's cross-attention is grounded, by noise level, on 48 training scenes of the
shapes world's position category: the grounding losses (trainer/attention_maps.py) and how often the two
phrases' attention centroids are ordered like their objects along the axis that separates them (0.5 is
chance). On CPU, about a minute.
Usage: PYTHONPATH=. python scripts/probe_grounding_by_sigma.py [CHECKPOINT]"""

import sys

import torch

from engines.denoisers import velocity as denoiser_velocity
from engines.text_encoder import TextEncoder
from trainer.attention_maps import attention_centroids, grounding_losses, record_cross_attention, spec_coverage
from trainer.image_task import render_batch, world_batch_cpu
from trainer.networks import load_network

SIGMAS = (0.98, 0.9, 0.75, 0.5, 0.25, 0.1)


def order_agreement(probs: torch.Tensor, phrase: torch.Tensor, cover: torch.Tensor) -> float:
    """Share of images whose two phrases' attention centroids lie in the same order as their objects,
    along the axis on which the objects are further apart. probs (B, P, T), phrase (B, 2, T), cover (B, 2, H, W)."""
    side = int(round(probs.shape[1] ** 0.5))
    ax, ay = attention_centroids(torch.einsum("bpt,bst->bsp", probs, phrase.float())).unbind(-1)
    ox, oy = attention_centroids(torch.nn.functional.adaptive_avg_pool2d(cover, side).flatten(2)).unbind(-1)
    horizontal = (ox[:, 0] - ox[:, 1]).abs() > (oy[:, 0] - oy[:, 1]).abs()
    along_x = (ax[:, 0] - ax[:, 1]) * (ox[:, 0] - ox[:, 1])
    along_y = (ay[:, 0] - ay[:, 1]) * (oy[:, 0] - oy[:, 1])
    return (torch.where(horizontal, along_x, along_y) > 0).float().mean().item()


def main(checkpoint: str) -> None:
    torch.manual_seed(0)
    encoder = TextEncoder(device="cpu")
    network = load_network(checkpoint).eval()
    batch = world_batch_cpu(0, 0, 0, seed=7, batch_size=48, tokenizer=encoder.tokenizer, category_weights={"position": 1})
    x0, cover = render_batch(batch, 64, torch.device("cpu"), coverage=True)
    cover = spec_coverage(cover, batch["object_specs"])  # (B, 2, 64, 64): each phrase's object
    phrase = batch["phrase_tokens"]
    emb = encoder.encode_tokens(batch["tokens"])
    noise = torch.randn_like(x0)
    for sigma in SIGMAS:
        with torch.no_grad(), record_cross_attention(network) as maps:
            denoiser_velocity(network, (1 - sigma) * x0 + sigma * noise, torch.full((len(x0),), sigma * 1000), emb)
            token, pixel = grounding_losses(maps, phrase, cover, torch.ones(len(x0)))
            agree = [order_agreement(probs, phrase, cover) for probs in maps]
        print(
            f"sigma {sigma:.2f}: token loss {token.item():.3f} pixel loss {pixel.item():.3f} "
            f"centroid order agrees {sum(agree) / len(agree):.2f} (per layer {[round(a, 2) for a in agree]})",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "checkpoints/shapes-teacher")
