"""A fixed set of (noise, teacher sample) pairs, made once by the teacher's ODE and kept on disk.

Several methods need the teacher's deterministic coupling of noise to images: reflow straightens it
(Liu et al. 2022), InstaFlow distils it to one step, and DMD (Yin et al. 2023, sec. 3.3) adds a
regression loss on it so a one-step generator keeps the teacher's modes, which distribution
matching alone lets go of (mode-seeking: `bench image`'s `free_colour_bits`). Making pairs afresh
every step costs the teacher's whole ODE per step; the papers make a set once. So does this module.

Pair i is what the teacher engine itself draws for caption i from seed i: its noise is the engines'
own seeded noise (`engines.image.initial_noise` for images, `engines.video_sampling.clip_noise` for
clips), so only the seed is stored, and its sample is the engines' own Euler sampler (`steps` steps,
the teacher's CFG or embedded guidance; whole bidirectional clips for video). Captions (and, for
clips, per-frame actions) come from the world's training distribution, their own stream
(`PAIR_STREAM`), never the held-out prompts. The set is one safetensors file (seeds, tokens, actions,
samples in float16) with the recipe in its metadata: a run that resumes reuses it only if the recipe
matches, else it stops with a clear error rather than train on pairs of another teacher.

Users: reflow's `pair_set`, DMD2's `regression_weight` (images), Self-Forcing's `ode_init` stage (clips).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engines.denoisers import embeds_guidance, velocity
from engines.image import initial_noise
from engines.samplers import flow_match_sample
from engines.text_encoder import TextEmbedding, TextEncoder
from engines.video_sampling import clip_noise
from trainer.config import ConfigError
from trainer.image_task import new_scheduler
from trainer.worlds import motion, shapes

PAIR_STREAM = -1  # the step_rng rank of the pairs' captions: apart from every training rank's batches
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
    frames: int = 0  # 0: images of the shapes world; > 0: clips of that many frames of the motion world
    interactive_fraction: float = 0.0  # clips only: the share driven by per-frame actions

    def __post_init__(self) -> None:
        if self.steps < 1 or self.count < 1 or self.resolution < 1 or self.max_tokens < 1:
            raise ConfigError(f"a pair set needs steps, count, resolution and max_tokens >= 1, got {self}")
        if self.guidance < 0:
            raise ConfigError(f"a pair set's guidance must be >= 0, got {self.guidance}")
        if self.frames < 0 or not 0 <= self.interactive_fraction <= 1:
            raise ConfigError(f"a pair set needs frames >= 0 and 0 <= interactive_fraction <= 1, got {self}")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        r = self.resolution
        return (self.frames, 3, r, r) if self.frames else (3, r, r)

    @classmethod
    def for_teacher(
        cls,
        teacher,
        text_encoder: TextEncoder,
        *,
        steps: int,
        guidance: float,
        count: int,
        seed: int,
        frames: int = 0,
        interactive_fraction: float = 0.0,
    ) -> PairRecipe:
        """The recipe of a set drawn by `teacher` (a trainer.distill.Teacher) at its own shift and resolution."""
        return cls(
            teacher=teacher.id,
            steps=steps,
            guidance=float(guidance),
            shift=teacher.scheduler_shift,
            resolution=int(teacher.card.resolution),
            count=count,
            seed=seed,
            max_tokens=text_encoder.max_tokens,
            frames=frames,
            interactive_fraction=interactive_fraction,
        )

    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "recipe": json.dumps(asdict(self), sort_keys=True)}


@dataclass
class PairSet:
    recipe: PairRecipe
    seeds: torch.Tensor  # (N,) int64: pair i's noise is initial_noise([seeds[i]])
    tokens: dict[str, torch.Tensor]  # input_ids, attention_mask: (N, max_tokens) int64
    samples: torch.Tensor  # (N, *recipe.sample_shape) float16 in [-1, 1]: the teacher's ODE solution from that noise
    actions: torch.Tensor | None = None  # clips: (N, frames) int64 action ids (0, "none", where not interactive)
    seconds: float = 0.0  # wall time it took to make (a run that trained on it reports it in its training cost)

    def card_entry(self) -> dict:
        """What a model card says of the pairs its run trained on."""
        r = self.recipe
        entry = {"count": r.count, "teacher": r.teacher, "steps": r.steps, "guidance": r.guidance}
        if r.frames:
            entry["frames"] = r.frames
        return entry | {"made_in_s": round(self.seconds, 1)}

    def __len__(self) -> int:
        return int(self.seeds.shape[0])

    def draw(self, b: int, rng: torch.Generator) -> torch.Tensor:
        """b pair indices, uniform with replacement, from the step's generator (a resumed run repeats)."""
        return torch.randint(len(self), (b,), generator=rng, device=rng.device).cpu()

    def batch(self, indices: torch.Tensor, device: torch.device) -> dict:
        """Those pairs on `device`: noise and samples (b, *sample_shape) float32, tokens, actions (clips)."""
        seeds = [int(s) for s in self.seeds[indices]]
        return {
            "noise": pair_noise(self.recipe, seeds, device),
            "tokens": {k: v[indices] for k, v in self.tokens.items()},
            "samples": self.samples[indices].to(device, torch.float32),
            "actions": None if self.actions is None else self.actions[indices].to(device),
        }


def pair_noise(recipe: PairRecipe, seeds: list[int], device: torch.device) -> torch.Tensor:
    """The engines' own starting noise for those seeds: what the teacher's samples were drawn from."""
    if recipe.frames:
        return clip_noise(seeds, recipe.frames, recipe.sample_shape[1:], device)[0]
    return initial_noise(seeds, recipe.sample_shape, device)[0]


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
    """Draw the set: captions (and actions) from the world's training distribution, then the teacher's
    ODE `chunk` pairs at a time (images) or whole clips, bidirectionally, 32 at a time."""
    started = time.perf_counter()
    rng = shapes.step_rng(recipe.seed, PAIR_STREAM, 0)
    seeds = torch.arange(recipe.count, dtype=torch.int64) + recipe.seed * recipe.count
    if recipe.frames:
        clips = motion.train_batch(rng, recipe.count, recipe.frames, interactive_fraction=recipe.interactive_fraction)
        captions = [c.caption for c in clips]
        actions = torch.stack([motion.action_ids(c, recipe.frames) for c in clips])
    else:
        captions = [shapes.sample_scene(rng).caption for _ in range(recipe.count)]
        actions = None
    tokens = text_encoder.tokenize(captions)
    if tokens["input_ids"].shape[1] != recipe.max_tokens:
        raise ConfigError(f"the text encoder pads to {tokens['input_ids'].shape[1]} tokens; the recipe says {recipe.max_tokens}")
    print(f"ode pairs: {recipe.count} pairs from {recipe.teacher} ({recipe.steps} steps, guidance {recipe.guidance})", flush=True)
    if recipe.frames:
        from trainer.video_task import sample_for_clips

        scheduler = new_scheduler(recipe.shift)
        made = sample_for_clips(
            network, text_encoder, clips, recipe.frames, recipe.steps, recipe.guidance, scheduler, False, [int(s) for s in seeds]
        )
        samples = made.clamp(-1, 1).to("cpu", torch.float16)
    else:
        samples = torch.empty((recipe.count, *recipe.sample_shape), dtype=torch.float16)
        for start in range(0, recipe.count, chunk):
            part = slice(start, min(start + chunk, recipe.count))
            noise = pair_noise(recipe, [int(s) for s in seeds[part]], device)
            cond = text_encoder.encode_tokens({k: v[part] for k, v in tokens.items()})
            null = text_encoder.null(part.stop - part.start)
            x0 = teacher_pairs(network, recipe.shift, noise, recipe.steps, cond, null, recipe.guidance)
            samples[part] = x0.clamp(-1, 1).to("cpu", torch.float16)
    tokens = {k: v.to(torch.int64) for k, v in tokens.items()}
    return PairSet(recipe, seeds, tokens, samples, actions, seconds=time.perf_counter() - started)


def save_pair_set(pairs: PairSet, path: Path) -> Path:
    """One safetensors file, written atomically (ranks of a multi-GPU run may race to write the same set)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"seeds": pairs.seeds, "samples": pairs.samples.contiguous()}
    tensors |= {f"tokens.{k}": v.contiguous() for k, v in pairs.tokens.items()}
    if pairs.actions is not None:
        tensors["actions"] = pairs.actions.contiguous()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=pairs.recipe.metadata() | {"seconds": f"{pairs.seconds:.3f}"})
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
    n = recipe.count
    expected = {"seeds": (n,), "samples": (n, *recipe.sample_shape)} | ({"actions": (n, recipe.frames)} if recipe.frames else {})
    fits = all(k in tensors and tuple(tensors[k].shape) == s for k, s in expected.items())
    fits = fits and set(tokens) >= {"input_ids", "attention_mask"}
    fits = fits and all(tuple(v.shape) == (n, recipe.max_tokens) for v in tokens.values())
    if not fits:
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        raise ConfigError(f"pair set {path} does not match its recipe ({recipe}): tensors {found}")
    try:
        seconds = float(metadata.get("seconds", 0.0))
    except ValueError as err:
        raise ConfigError(f"pair set {path} has a damaged 'seconds' entry: {metadata['seconds']!r}") from err
    return PairSet(recipe, tensors["seeds"], tokens, tensors["samples"], tensors.get("actions"), seconds)


def run_pair_set(
    config,
    teacher,
    text_encoder: TextEncoder,
    device: torch.device,
    *,
    steps: int,
    guidance: float,
    count: int,
    frames: int = 0,
    interactive_fraction: float = 0.0,
) -> PairSet:
    """A training run's pair set: `teacher` (a trainer.distill.Teacher) draws it, the run's seed picks the
    captions, and it lives in <run_dir>/ode-pairs.safetensors."""
    recipe = PairRecipe.for_teacher(
        teacher,
        text_encoder,
        steps=steps,
        guidance=guidance,
        count=count,
        seed=config.seed,
        frames=frames,
        interactive_fraction=interactive_fraction,
    )
    cache = shared_pair_path(Path(config.pair_cache), recipe, teacher.network) if config.pair_cache else None
    path = Path(config.run_dir) / "ode-pairs.safetensors"
    return ode_pair_set(path, recipe, teacher.network, text_encoder, device, cache=cache)


def network_digest(network: torch.nn.Module) -> str:
    """sha256 over a network's parameters and buffers (names, dtypes, shapes, bytes): the weights that drew a set.
    A recipe names its teacher by card id, and a retrained teacher keeps its id."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def shared_pair_path(cache: Path, recipe: PairRecipe, network: torch.nn.Module) -> Path:
    """Where runs share the set of this recipe drawn by these weights."""
    key = hashlib.sha256(f"{recipe.metadata()['recipe']}|{network_digest(network)}".encode()).hexdigest()[:20]
    return Path(cache) / f"{recipe.teacher}-{key}.safetensors"


def ode_pair_set(
    path: Path, recipe: PairRecipe, network, text_encoder: TextEncoder, device: torch.device, cache: Path | None = None
) -> PairSet:
    """The set at `path` when it was made by this recipe; made (and saved there) when absent. A set of
    another recipe is refused, not overwritten: it may be what a run being resumed trained on. With `cache`
    (`shared_pair_path`), a set another run made there is copied in instead of made, and a set made here is
    left there for the next run. Its making time travels with it: each run's card counts it (`made_in_s`),
    as the cost of making the model from nothing."""
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
    if cache is not None and Path(cache).exists():
        pairs = load_pair_set(cache)
        if pairs.recipe != recipe:  # the name holds a digest of the recipe: only a damaged cache gets here
            raise ConfigError(f"shared pair set {cache} holds pairs made by {pairs.recipe}, not {recipe}: delete it")
        save_pair_set(pairs, path)  # the run's own copy: a resume needs no cache
        print(f"ode pairs: {len(pairs)} pairs from the shared set {cache} (made in {pairs.seconds:.1f} s)", flush=True)
        return pairs
    pairs = make_pair_set(recipe, network, text_encoder, device)
    save_pair_set(pairs, path)
    if cache is not None:
        save_pair_set(pairs, cache)
    return pairs
