"""A fixed set of (noise, teacher sample) pairs, made once by the teacher's ODE and kept on disk.

Several methods need the teacher's deterministic coupling of noise to images: reflow straightens it
(Liu et al. 2022), InstaFlow distils it to one step, and DMD (Yin et al. 2023, sec. 3.3) adds a
regression loss on it so a one-step generator keeps the teacher's modes, which distribution
matching alone lets go of (mode-seeking: `bench image`'s `free_colour_bits`). Making pairs afresh
every step costs the teacher's whole ODE per step; the papers make a set once. So does this module.

Pair i is what the teacher engine itself draws for caption i from seed i: its noise is
`engines.image.initial_noise([seeds[i]])`, so only the seed is stored, and its image is the
engines' own Euler sampler (`pair_steps` steps, the teacher's CFG or embedded guidance). Captions
come from the world's training distribution, their own stream (`PAIR_STREAM`), never the held-out
prompts. The set is one safetensors file (seeds, tokens, images in float16) with the recipe in its
metadata: a run that resumes reuses it only if the recipe matches, else it stops with a clear error
rather than train on pairs of another teacher.
"""

from __future__ import annotations

import collections
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engines.denoisers import embeds_guidance, velocity
from engines.image import initial_noise
from engines.samplers import flow_match_sample
from engines.text_encoder import TextEmbedding, TextEncoder
from trainer.config import ConfigError
from trainer.image_task import new_scheduler
from trainer.worlds import shapes

PAIR_STREAM = -1  # world_rng rank of the pairs' captions: apart from every training rank's batches
FORMAT = "distillery-ode-pairs/1"


@dataclass(frozen=True)
class PairRecipe:
    """What makes a pair set: who drew it, how, and which captions and seeds. Two sets with the same
    recipe hold the same pairs."""

    teacher: str  # the pair model's card id
    steps: int  # Euler steps of its ODE
    guidance: float
    shift: float  # its sampler's timestep shift
    resolution: int
    count: int
    seed: int  # the captions' stream; pair i's noise comes from seed `seed * count + i`
    max_tokens: int

    def __post_init__(self) -> None:
        if self.steps < 1 or self.count < 1 or self.resolution < 1 or self.max_tokens < 1:
            raise ConfigError(f"a pair set needs steps, count, resolution and max_tokens >= 1, got {self}")
        if self.guidance < 0:
            raise ConfigError(f"a pair set's guidance must be >= 0, got {self.guidance}")

    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "recipe": json.dumps(asdict(self), sort_keys=True)}


@dataclass
class PairSet:
    recipe: PairRecipe
    seeds: torch.Tensor  # (N,) int64: pair i's noise is initial_noise([seeds[i]])
    tokens: dict[str, torch.Tensor]  # input_ids, attention_mask: (N, max_tokens) int64
    images: torch.Tensor  # (N, 3, R, R) float16 in [-1, 1]: the teacher's ODE solution from that noise

    def __len__(self) -> int:
        return int(self.seeds.shape[0])

    def draw(self, b: int, rng: torch.Generator) -> torch.Tensor:
        """b pair indices, uniform with replacement, from the step's generator (a resumed run repeats)."""
        return torch.randint(len(self), (b,), generator=rng, device=rng.device).cpu()

    def batch(self, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(noise (b, 3, R, R) float32, tokens, images (b, 3, R, R) float32) of those pairs, on `device`."""
        r = self.recipe.resolution
        noise, _ = initial_noise([int(s) for s in self.seeds[indices]], (3, r, r), device)
        tokens = {k: v[indices] for k, v in self.tokens.items()}
        return noise, tokens, self.images[indices].to(device, torch.float32)


@torch.no_grad()
def teacher_pairs(
    network, shift: float, noise: torch.Tensor, steps: int, cond: TextEmbedding, null: TextEmbedding, guidance: float
) -> torch.Tensor:
    """x0 = the network's Euler ODE solution from `noise` (the engines' own sampler, with CFG or
    embedded guidance): the coupling reflow straightens and DMD's regression loss keeps."""
    embedded = embeds_guidance(network)
    model = lambda x, t, emb, *g: velocity(network, x, t, emb, *g)  # noqa: E731
    states = flow_match_sample(model, new_scheduler(shift), noise, steps, cond, null, guidance, None, embedded)
    return collections.deque(states, maxlen=1)[0].x


def make_pair_set(recipe: PairRecipe, network, text_encoder: TextEncoder, device: torch.device, chunk: int = 256) -> PairSet:
    """Draw the set: captions from the world's training distribution, then the ODE `chunk` pairs at a time."""
    rng = shapes.step_rng(recipe.seed, PAIR_STREAM, 0)
    captions = [shapes.sample_scene(rng).caption for _ in range(recipe.count)]
    seeds = torch.arange(recipe.count, dtype=torch.int64) + recipe.seed * recipe.count
    tokens = text_encoder.tokenize(captions)
    if tokens["input_ids"].shape[1] != recipe.max_tokens:
        raise ConfigError(f"the text encoder pads to {tokens['input_ids'].shape[1]} tokens; the recipe says {recipe.max_tokens}")
    r = recipe.resolution
    images = torch.empty((recipe.count, 3, r, r), dtype=torch.float16)
    done = 0
    print(f"ode pairs: {recipe.count} pairs from {recipe.teacher} ({recipe.steps} steps, guidance {recipe.guidance})", flush=True)
    while done < recipe.count:
        part = slice(done, min(done + chunk, recipe.count))
        n = part.stop - part.start
        noise, _ = initial_noise([int(s) for s in seeds[part]], (3, r, r), device)
        cond = text_encoder.encode_tokens({k: v[part] for k, v in tokens.items()})
        x0 = teacher_pairs(network, recipe.shift, noise, recipe.steps, cond, text_encoder.null(n), recipe.guidance)
        images[part] = x0.clamp(-1, 1).to("cpu", torch.float16)
        done = part.stop
    return PairSet(recipe, seeds, {k: v.to(torch.int64) for k, v in tokens.items()}, images)


def save_pair_set(pairs: PairSet, path: Path) -> Path:
    """One safetensors file, written atomically (ranks of a multi-GPU run may race to write the same set)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens = {f"tokens.{k}": v.contiguous() for k, v in pairs.tokens.items()}
    tensors = {"seeds": pairs.seeds, "images": pairs.images.contiguous()} | tokens
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=pairs.recipe.metadata())
    os.replace(tmp, path)
    return path


def load_pair_set(path: Path) -> PairSet:
    """A saved set, checked: safetensors only, the format tag, and tensors that agree with the recipe."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"pair set {path} cannot be read ({err}); delete it to make it again") from err
    if metadata.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a Distillery pair set (format {metadata.get('format')!r}, expected {FORMAT!r})")
    try:
        recipe = PairRecipe(**json.loads(metadata["recipe"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"pair set {path} has a damaged recipe: {err}") from err
    tokens = {k.removeprefix("tokens."): v for k, v in tensors.items() if k.startswith("tokens.")}
    n, r = recipe.count, recipe.resolution
    expected = {"seeds": (n,), "images": (n, 3, r, r)}
    shapes_ok = all(k in tensors and tuple(tensors[k].shape) == s for k, s in expected.items())
    shapes_ok = shapes_ok and set(tokens) >= {"input_ids", "attention_mask"}
    shapes_ok = shapes_ok and all(tuple(v.shape) == (n, recipe.max_tokens) for v in tokens.values())
    if not shapes_ok:
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        raise ConfigError(f"pair set {path} does not match its recipe ({recipe}): tensors {found}")
    return PairSet(recipe, tensors["seeds"], tokens, tensors["images"])


def ode_pair_set(path: Path, recipe: PairRecipe, network, text_encoder: TextEncoder, device: torch.device) -> PairSet:
    """The set at `path` when it was made by this recipe; made (and saved there) when absent. A set of
    another recipe is refused, not overwritten: it may be what a run being resumed trained on."""
    path = Path(path)
    if path.exists():
        pairs = load_pair_set(path)
        if pairs.recipe != recipe:
            raise ConfigError(
                f"{path} holds pairs made by {pairs.recipe}, but this run asks for {recipe}: delete the file (or use "
                "another run_dir) to make a new set"
            )
        print(f"ode pairs: reusing {len(pairs)} pairs from {path}", flush=True)
        return pairs
    pairs = make_pair_set(recipe, network, text_encoder, device)
    save_pair_set(pairs, path)
    return pairs
