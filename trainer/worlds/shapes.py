"""The shapes world: deterministic compositional scenes with free-form captions, and its judge.

A scene holds 1-4 flat shapes on a dark background. Its *condition* is the structured meaning of
the caption (which shapes, colours, sizes, counts, relations); the caption is one of many
paraphrases of it. The judge recovers objects from any 64x64 image and checks them against the
condition per GenEval-style category, so it can score a generator without knowing how it works.

Everything is seeded: `sample(rng)` with the same `random.Random` state gives the same scene
and caption; `render` is a pure function of the scenes.
"""

from __future__ import annotations

import itertools
import math
import random
import string
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

RESOLUTION = 64
MAX_OBJECTS = 4
BACKGROUND = (28, 30, 36)

# name -> (RGB, caption synonyms). Chosen far apart in RGB so a judge can tell them apart.
COLORS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "red": ((225, 35, 35), ("red", "crimson", "scarlet")),
    "orange": ((250, 145, 25), ("orange", "tangerine", "amber")),
    "yellow": ((245, 230, 50), ("yellow", "golden", "lemon")),
    "green": ((40, 185, 65), ("green", "emerald", "grass-green")),
    "blue": ((40, 90, 245), ("blue", "azure", "cobalt")),
    "purple": ((150, 60, 215), ("purple", "violet", "plum")),
    "pink": ((250, 135, 205), ("pink", "rose", "bubblegum")),
    "white": ((240, 240, 240), ("white", "ivory", "snow-white")),
}
# name -> (singular synonyms, plural synonyms), index-aligned.
SHAPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "circle": (("circle", "ball", "disc", "dot"), ("circles", "balls", "discs", "dots")),
    "square": (("square", "box", "block", "tile"), ("squares", "boxes", "blocks", "tiles")),
    "triangle": (("triangle", "wedge"), ("triangles", "wedges")),
    "diamond": (("diamond", "rhombus", "lozenge"), ("diamonds", "rhombuses", "lozenges")),
    "cross": (("cross", "plus sign", "plus"), ("crosses", "plus signs", "pluses")),
}
# name -> (radius in pixels at 64x64, synonyms). Every shape fills the box [-r, r]^2.
SIZES: dict[str, tuple[float, tuple[str, ...]]] = {
    "small": (5.0, ("small", "tiny", "little")),
    "medium": (7.5, ("medium", "medium-sized", "mid-sized")),
    "large": (10.5, ("large", "big", "huge")),
}
RELATIONS = ("left_of", "right_of", "above", "below")
CATEGORIES = ("single_object", "two_objects", "counting", "colors", "size", "position", "color_attr")
NUMBER_WORDS = {2: ("two", "2", "a pair of"), 3: ("three", "3"), 4: ("four", "4")}

COLOR_NAMES = tuple(COLORS)
SHAPE_NAMES = tuple(SHAPES)
SIZE_NAMES = tuple(SIZES)
EVAL_BUCKET = 16  # captions whose crc32 % 16 == 0 are held out for evaluation, never trained on


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    x: float  # centre, pixels at RESOLUTION
    y: float


@dataclass(frozen=True)
class ObjSpec:
    """What the caption says about one group of objects; None = not constrained."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    count: int = 1


@dataclass(frozen=True)
class Condition:
    category: str
    specs: tuple[ObjSpec, ...]
    relation: str | None = None  # between specs[0] and specs[1]: "left_of" = specs[0] is left of specs[1]


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    condition: Condition
    caption: str = field(default="")
    # per condition spec, the (start, end) characters of the caption that describe it (caption_with_spans)
    spans: tuple[tuple[int, int], ...] = field(default=())


# ----------------------------------------------------------------------------- sampling


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(rng: random.Random, spec: ObjSpec, with_article: bool = True) -> str:
    """A noun phrase for one object: '{a} {size} {colour} {shape}' and paraphrases."""
    shape = rng.choice(SHAPES[spec.shape][0])
    color = rng.choice(COLORS[spec.color][1]) if spec.color else None
    size = rng.choice(SIZES[spec.size][1]) if spec.size else None
    forms = [" ".join(w for w in (size, color, shape) if w)]
    if color:
        forms.append(" ".join(w for w in (size, shape) if w) + f" in {color}")
        forms.append(" ".join(w for w in (size, f"{color}-coloured", shape) if w))
        forms.append(" ".join(w for w in (size, shape) if w) + f" that is {color}")
    words = rng.choice(forms)
    return f"{_article(words)} {words}" if with_article else words


def _plural_phrase(rng: random.Random, spec: ObjSpec) -> str:
    idx = rng.randrange(len(SHAPES[spec.shape][1]))
    shapes = SHAPES[spec.shape][1][idx]
    number = rng.choice(NUMBER_WORDS[spec.count])
    color = rng.choice(COLORS[spec.color][1]) if spec.color else None
    size = rng.choice(SIZES[spec.size][1]) if spec.size else None
    forms = [" ".join(w for w in (number, size, color, shapes) if w)]
    if color:
        forms.append(" ".join(w for w in (number, size, shapes) if w) + f", all {color}")
        forms.append("exactly " + " ".join(w for w in (number, size, color, shapes) if w))
    else:
        forms.append("exactly " + " ".join(w for w in (number, size, shapes) if w))
    return rng.choice(forms)


_PREFIXES = ("", "", "", "a picture of ", "an image of ", "a drawing of ", "draw ", "show ", "render ", "there is ")
_SUFFIXES = ("", "", "", " on a dark background", " in the scene", ".")
_RELATION_FORMS = {
    "left_of": ("{a} to the left of {b}", "{a} left of {b}", "{b} to the right of {a}", "{a} on the left and {b} on the right"),
    "right_of": ("{a} to the right of {b}", "{a} right of {b}", "{b} to the left of {a}", "{b} on the left and {a} on the right"),
    "above": ("{a} above {b}", "{a} on top of {b}", "{b} below {a}", "{b} underneath {a}"),
    "below": ("{a} below {b}", "{a} underneath {b}", "{b} above {a}", "{b} on top of {a}"),
}
_PAIR_FORMS = ("{a} and {b}", "{a} and {b}", "{a} next to {b}", "{a} together with {b}", "{a}, {b}")


def caption_for(condition: Condition, rng: random.Random) -> str:
    """One random paraphrase of the condition."""
    return caption_with_spans(condition, rng)[0]


def _words(phrase: str) -> tuple[int, int]:
    """The span of a noun phrase without its leading article."""
    for article in ("a ", "an "):
        if phrase.startswith(article):
            return len(article), len(phrase)
    return 0, len(phrase)


def _fill(template: str, **phrases: str) -> tuple[str, dict[str, tuple[int, int]]]:
    """template.format(**phrases), and where each phrase's words landed in the result."""
    out, spans = "", {}
    for literal, name, _, _ in string.Formatter().parse(template):
        out += literal
        if name:
            start, end = _words(phrases[name])
            spans[name] = (len(out) + start, len(out) + end)
            out += phrases[name]
    return out, spans


def caption_with_spans(condition: Condition, rng: random.Random) -> tuple[str, tuple[tuple[int, int], ...]]:
    """One random paraphrase of the condition and, per spec, the character span of the words that
    describe it ("red circle" in "a red circle left of a blue square"): what a caption says about
    each object, which a teacher's cross-attention can be taught to read (trainer/attention_maps.py).
    Draws from `rng` exactly as `caption_for` always has, so datasets and held-out sets are unchanged."""
    specs = condition.specs
    if condition.category == "counting":
        body, spans = _fill("{a}", a=_plural_phrase(rng, specs[0]))
    elif len(specs) == 1:
        body, spans = _fill("{a}", a=_phrase(rng, specs[0]))
    elif condition.relation:
        template = rng.choice(_RELATION_FORMS[condition.relation])
        body, spans = _fill(template, a=_phrase(rng, specs[0]), b=_phrase(rng, specs[1]))
    else:
        a, b = _phrase(rng, specs[0]), _phrase(rng, specs[1])
        swapped = rng.random() < 0.5
        template = rng.choice(_PAIR_FORMS)
        if swapped:  # the second spec is named first
            body, filled = _fill(template, a=b, b=a)
            spans = {"a": filled["b"], "b": filled["a"]}
        else:
            body, spans = _fill(template, a=a, b=b)
    prefix = rng.choice(_PREFIXES)
    if prefix == "there is " and condition.category == "counting":
        prefix = "there are "
    caption = f"{prefix}{body}{rng.choice(_SUFFIXES)}"
    shift = len(prefix)
    return caption, tuple((spans[k][0] + shift, spans[k][1] + shift) for k in "ab"[: len(specs)])


def _condition(rng: random.Random, category: str) -> Condition:
    shape = lambda: rng.choice(SHAPE_NAMES)
    color = lambda: rng.choice(COLOR_NAMES)
    if category == "single_object":
        return Condition(category, (ObjSpec(shape()),))
    if category == "colors":
        return Condition(category, (ObjSpec(shape(), color()),))
    if category == "size":
        return Condition(category, (ObjSpec(shape(), color() if rng.random() < 0.5 else None, rng.choice(SIZE_NAMES)),))
    if category == "counting":
        return Condition(category, (ObjSpec(shape(), color() if rng.random() < 0.5 else None, count=rng.randint(2, 4)),))
    a, b = rng.sample(SHAPE_NAMES, 2)
    if category == "two_objects":
        return Condition(category, (ObjSpec(a), ObjSpec(b)))
    ca, cb = rng.sample(COLOR_NAMES, 2)
    if category == "color_attr":
        return Condition(category, (ObjSpec(a, ca), ObjSpec(b, cb)))
    if category == "position":
        return Condition(category, (ObjSpec(a, ca), ObjSpec(b, cb)), rng.choice(RELATIONS))
    raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")


def _relation_holds(a: Obj, b: Obj, relation: str, margin: float) -> bool:
    dx, dy = b.x - a.x, b.y - a.y  # image y grows downwards
    return {
        "left_of": dx >= margin,
        "right_of": -dx >= margin,
        "above": dy >= margin,
        "below": -dy >= margin,
    }[relation]


def _place(rng: random.Random, condition: Condition) -> tuple[Obj, ...] | None:
    """Fill the condition's unconstrained attributes and place objects without overlap."""
    objs: list[Obj] = []
    gap = 3.0
    for spec in condition.specs:
        for _ in range(spec.count):
            size = spec.size or rng.choice(SIZE_NAMES)
            if condition.category == "counting" and spec.count == 4 and not spec.size:
                size = rng.choice(SIZE_NAMES[:2])  # four large shapes rarely fit: keep counting scenes readable
            r = SIZES[size][0]
            for _ in range(200):
                x, y = rng.uniform(r + 2, RESOLUTION - r - 2), rng.uniform(r + 2, RESOLUTION - r - 2)
                candidate = Obj(spec.shape or rng.choice(SHAPE_NAMES), spec.color or rng.choice(COLOR_NAMES), size, x, y)
                clear = all(
                    abs(o.x - x) >= SIZES[o.size][0] + r + gap or abs(o.y - y) >= SIZES[o.size][0] + r + gap for o in objs
                )
                if clear and (
                    condition.relation is None
                    or len(objs) != 1
                    or _relation_holds(objs[0], candidate, condition.relation, margin=12.0)
                ):
                    objs.append(candidate)
                    break
            else:
                return None
    return tuple(objs)


def sample_scene(rng: random.Random, category: str | None = None, split: str = "train") -> Scene:
    """One scene of `category` (random if None), captioned for `split` ('train' or 'eval')."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    while True:
        condition = _condition(rng, category or rng.choice(CATEGORIES))
        objects = _place(rng, condition)
        if objects is None:
            continue
        for _ in range(50):
            caption, spans = caption_with_spans(condition, rng)
            if is_eval_caption(caption) == (split == "eval"):
                return Scene(objects, condition, caption, spans)


def is_eval_caption(caption: str) -> bool:
    return zlib.crc32(caption.encode()) % EVAL_BUCKET == 0


def eval_scenes(n: int, seed: int = 2024) -> list[Scene]:
    """A fixed, category-balanced held-out set: the same `n` and `seed` give the same scenes."""
    rng = random.Random(seed)
    return [sample_scene(rng, CATEGORIES[i % len(CATEGORIES)], split="eval") for i in range(n)]


def step_rng(seed: int, rank: int, step: int) -> random.Random:
    """The per-(seed, rank, step) stream that makes a resumed run repeat exactly."""
    return random.Random(f"{seed}/{rank}/{step}")


# ----------------------------------------------------------------------------- rendering

_SHAPE_INDEX = {name: i for i, name in enumerate(SHAPE_NAMES)}


def _inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test of one shape kind in unit coordinates (u, v in [-1, 1] span the object's box)."""
    au, av = u.abs(), v.abs()
    if shape == 0:  # circle
        return u * u + v * v <= 1.0
    if shape == 1:  # square
        return (au <= 1.0) & (av <= 1.0)
    if shape == 2:  # triangle, apex up
        return (v <= 1.0) & (au <= (v + 1.0) / 2.0)
    if shape == 3:  # diamond
        return au + av <= 1.0
    return ((au <= 1 / 3) & (av <= 1.0)) | ((av <= 1 / 3) & (au <= 1.0))  # cross


def shape_masks(
    shape_ids: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    r: torch.Tensor,
    size: int | tuple[int, int],
    origin: tuple[int, int] = (0, 0),
    supersample: int = 4,
) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of N shapes over a pixel window: (N,) -> (N, h, w).

    The window starts at pixel `origin` (row, col) and spans `size` pixels; coordinates are
    absolute, so a window of a larger image renders exactly that crop of it.
    """
    h, w = (size, size) if isinstance(size, int) else size
    device = x.device
    rows = origin[0] + (torch.arange(h * supersample, device=device, dtype=torch.float32) + 0.5) / supersample
    cols = origin[1] + (torch.arange(w * supersample, device=device, dtype=torch.float32) + 0.5) / supersample
    # u varies along columns only and v along rows only: the inside-tests broadcast (N, 1, w) against (N, h, 1), so
    # only their result is full size. The judge fits 135 templates per blob, and materialising u and v first made it
    # ~20x slower (16 noisy clips: 22 s against ~1 s on the 2-core CPU); the same float operations on the same values
    # give the same coverage bit for bit
    u = (cols[None, None, :] - x[:, None, None]) / r[:, None, None]
    v = (rows[None, :, None] - y[:, None, None]) / r[:, None, None]
    inside = torch.zeros((len(x), v.shape[1], u.shape[2]), device=device)
    for shape in range(len(SHAPE_NAMES)):
        pick = (shape_ids == shape).nonzero().squeeze(1)
        if len(pick):
            inside[pick] = _inside(shape, u[pick], v[pick]).float()
    return torch.nn.functional.avg_pool2d(inside.unsqueeze(1), supersample).squeeze(1)


_RGB = {name: np.array(rgb, dtype=np.float32) / 255.0 for name, (rgb, _) in COLORS.items()}


def scene_tensors(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Pack scenes into padded (B, MAX_OBJECTS) parameter tensors (cheap; done on the CPU)."""
    b = len(scenes)
    active = np.zeros((b, MAX_OBJECTS), dtype=bool)
    shape = np.zeros((b, MAX_OBJECTS), dtype=np.int64)
    rgb = np.zeros((b, MAX_OBJECTS, 3), dtype=np.float32)
    xyr = np.ones((3, b, MAX_OBJECTS), dtype=np.float32)
    for i, scene in enumerate(scenes):
        for j, obj in enumerate(scene.objects):
            active[i, j] = True
            shape[i, j] = _SHAPE_INDEX[obj.shape]
            rgb[i, j] = _RGB[obj.color]
            xyr[:, i, j] = (obj.x, obj.y, SIZES[obj.size][0])
    return {
        "active": torch.from_numpy(active),
        "shape": torch.from_numpy(shape),
        "rgb": torch.from_numpy(rgb),
        "x": torch.from_numpy(xyr[0]),
        "y": torch.from_numpy(xyr[1]),
        "r": torch.from_numpy(xyr[2]),
    }


def object_coverage(params: dict[str, torch.Tensor], resolution: int = RESOLUTION) -> torch.Tensor:
    """Each object slot's anti-aliased coverage (B, MAX_OBJECTS, H, W) in [0, 1]; empty slots are 0."""
    b, k = params["shape"].shape
    active = params["active"].reshape(-1).nonzero().squeeze(1)  # inactive slots cost nothing
    cover = torch.zeros(b * k, resolution, resolution, device=params["x"].device)
    cover[active] = shape_masks(
        params["shape"].reshape(-1)[active],
        params["x"].reshape(-1)[active],
        params["y"].reshape(-1)[active],
        params["r"].reshape(-1)[active],
        resolution,
    )
    return cover.view(b, k, resolution, resolution)


def render_tensors(
    params: dict[str, torch.Tensor], resolution: int = RESOLUTION, cover: torch.Tensor | None = None
) -> torch.Tensor:
    """Render packed scenes to (B, 3, H, W) in [0, 1] on the parameters' device (`cover`: their
    `object_coverage`, when the caller already has it)."""
    cover = object_coverage(params, resolution) if cover is None else cover
    b, k = cover.shape[:2]
    background = torch.tensor(BACKGROUND, device=cover.device, dtype=torch.float32).view(1, 3, 1, 1) / 255.0
    image = background.expand(b, 3, resolution, resolution).clone()
    for j in range(k):  # objects never overlap, so painting order does not matter
        alpha = cover[:, j : j + 1]
        image = image * (1 - alpha) + params["rgb"][:, j, :, None, None] * alpha
    return image


def render(scenes: list[Scene], device: torch.device | str = "cpu") -> torch.Tensor:
    params = {k: v.to(device) for k, v in scene_tensors(scenes).items()}
    return render_tensors(params)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ----------------------------------------------------------------------------- judge


@dataclass(frozen=True)
class Detection:
    shape: str | None  # None when no template fits well
    color: str
    size: str
    x: float
    y: float
    area: int


_PALETTE = np.array([COLORS[c][0] for c in COLOR_NAMES], dtype=np.float32)
_BG = np.array(BACKGROUND, dtype=np.float32)
_SIZE_RADII = np.array([SIZES[s][0] for s in SIZE_NAMES], dtype=np.float32)
MIN_AREA = 12  # pixels at 64x64; smaller blobs are noise, not objects (a small triangle covers ~60)
MAX_FIT_ERROR = 0.4  # |alpha - template| summed over the union, normalised; above it no shape fits
MAX_COLOR_SPREAD = 60.0  # median RGB distance of a blob's core from its palette colour
FOREGROUND_DISTANCE = 60.0  # RGB distance from BACKGROUND above which a pixel belongs to an object
# (alpha, origin (row, col), centre x, centre y, radius) -> (shape index, fit error, fitted radius)
FitShape = Callable[[np.ndarray, tuple[int, int], float, float, float], tuple[int, float, float]]


def _fit_shape(alpha: np.ndarray, origin: tuple[int, int], cx: float, cy: float, radius: float) -> tuple[int, float, float]:
    """Best (shape, error, radius): soft templates around the blob's box, a few sub-pixel fits each."""
    offsets = torch.tensor([-0.5, 0.0, 0.5])
    scales = torch.tensor([0.92, 1.0, 1.08])
    dx, dy, ds = torch.meshgrid(offsets, offsets, scales, indexing="ij")
    fits = dx.numel()
    ids = torch.arange(len(SHAPE_NAMES)).repeat_interleave(fits)
    xs = (cx + dx.reshape(-1)).repeat(len(SHAPE_NAMES))
    ys = (cy + dy.reshape(-1)).repeat(len(SHAPE_NAMES))
    rs = (radius * ds.reshape(-1)).repeat(len(SHAPE_NAMES))
    templates = shape_masks(ids, xs, ys, rs, alpha.shape, origin).numpy()
    target = alpha[None]
    error = np.abs(templates - target).sum(axis=(1, 2)) / np.maximum(np.maximum(templates, target).sum(axis=(1, 2)), 1e-6)
    error = error.reshape(len(SHAPE_NAMES), fits)
    best_fit = error.argmin(axis=1)
    shape = int(error.min(axis=1).argmin())
    return shape, float(error[shape, best_fit[shape]]), float(rs[shape * fits + best_fit[shape]])


def detect(image: np.ndarray, fit_shape: FitShape = _fit_shape) -> list[Detection]:
    """Objects in one (H, W, 3) uint8 image: connected non-background blobs, classified.

    Colour is the palette entry nearest the blob's core; shape is the template whose
    anti-aliased coverage best explains the blob's alpha (how far each pixel moved from the
    background towards the blob's colour); size is the nearest of the world's radii.
    `fit_shape` is the template fit (`_fit_shape`'s signature); the motion world's judge passes a
    memoised one, since a moving object's blob repeats from frame to frame.
    """
    from scipy import ndimage

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    scale = image.shape[0] / RESOLUTION
    pixels = image.astype(np.float32)
    offset = pixels - _BG
    foreground = np.linalg.norm(offset, axis=-1) > FOREGROUND_DISTANCE
    labels, _ = ndimage.label(foreground)
    found: list[Detection] = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[box] == index
        area = int(mask.sum())
        if area < MIN_AREA * scale * scale:
            continue
        core = ndimage.binary_erosion(mask)
        core = core if core.sum() >= 4 else mask
        median = np.median(pixels[box][core], axis=0)
        color_index = int(np.argmin(np.linalg.norm(_PALETTE - median, axis=1)))
        # Alpha over a window one pixel wider than the blob, other blobs masked out.
        y0, y1 = max(box[0].start - 1, 0), min(box[0].stop + 1, image.shape[0])
        x0, x1 = max(box[1].start - 1, 0), min(box[1].stop + 1, image.shape[1])
        own = ndimage.binary_dilation(labels[y0:y1, x0:x1] == index)
        direction = median - _BG
        alpha = np.clip(offset[y0:y1, x0:x1] @ direction / max(float(direction @ direction), 1.0), 0.0, 1.0) * own
        h, w = mask.shape
        cy, cx = box[0].start + h / 2, box[1].start + w / 2
        shape, error, radius = fit_shape(alpha.astype(np.float32), (y0, x0), cx, cy, (h + w) / 4)
        size = SIZE_NAMES[int(np.argmin(np.abs(_SIZE_RADII - radius / scale)))]
        # A blob is an object only if it is one flat colour of the palette, of a size the world
        # draws, and a template explains it; smeared or noisy blobs are counted but match nothing.
        spread = float(np.median(np.linalg.norm(pixels[box][core] - _PALETTE[color_index], axis=1)))
        recognised = error <= MAX_FIT_ERROR and spread <= MAX_COLOR_SPREAD and radius / scale <= 1.25 * _SIZE_RADII.max()
        ys, xs = np.nonzero(mask)
        found.append(
            Detection(
                SHAPE_NAMES[shape] if recognised else None,
                COLOR_NAMES[color_index],
                size,
                (box[1].start + xs.mean() + 0.5) / scale,
                (box[0].start + ys.mean() + 0.5) / scale,
                area,
            )
        )
    return found


def _fits(det: Detection, spec: ObjSpec) -> bool:
    return (
        det.shape is not None
        and (spec.shape is None or det.shape == spec.shape)
        and (spec.color is None or det.color == spec.color)
        and (spec.size is None or det.size == spec.size)
    )


def matches(detections: list[Detection], condition: Condition, margin: float = 3.0) -> bool:
    """True when the detected objects are exactly what the condition asks for."""
    slots = [spec for spec in condition.specs for _ in range(spec.count)]
    if len(detections) != len(slots):
        return False
    for order in itertools.permutations(detections):
        if all(_fits(det, spec) for det, spec in zip(order, slots)):
            if condition.relation is None:
                return True
            a, b = order[0], order[1]  # relation specs always have count 1
            if _relation_holds(Obj("", "", "", a.x, a.y), Obj("", "", "", b.x, b.y), condition.relation, margin):
                return True
    return False


def judge_rewards(images: np.ndarray, conditions: Sequence[Condition]) -> np.ndarray:
    """(B,) float32: 1 where `matches` accepts the (B, H, W, 3) uint8 image for its condition, else 0 (the reward of
    reward-weighted DMD; module-level so trainer/judge_pool.py's workers can run it)."""
    return verdicts(images, list(conditions)).astype(np.float32)


def verdicts(
    images: np.ndarray | list, conditions: list[Condition], detections: list[list[Detection]] | None = None
) -> np.ndarray:
    """(B,) bool: whether the judge accepts each image for its condition, the per-image verdicts `judge` averages
    (kept per image, two models' verdicts on the same prompts and seeds compare image by image: bench/paired.py)."""
    if len(images) != len(conditions):
        raise ValueError(f"{len(images)} images but {len(conditions)} conditions")
    _check_detections(images, detections)
    detections = detect_all(images) if detections is None else detections
    return np.array([matches(found, condition) for found, condition in zip(detections, conditions)], dtype=bool)


def detect_all(images: np.ndarray | list) -> list[list[Detection]]:
    """`detect` on each of (B, H, W, 3) uint8 images or a list of PIL images / arrays, for scoring
    one batch several ways (`judge`, `free_shares`) from one detection pass."""
    return [detect(np.asarray(im.convert("RGB") if hasattr(im, "convert") else im, dtype=np.uint8)) for im in images]


def render_detections(detections: list[list[Detection]]) -> tuple[np.ndarray, int]:
    """Clean renders (N, 64, 64, 3) uint8 of what the detector found in N 64-px images, and how many found
    objects had no fitting shape (drawn as circles). Splits a model's distance from the world into what it
    draws (these renders against the scenes asked for) and how it draws it (its images against these)."""
    scenes, shapeless = [], 0
    empty = Condition("single_object", ())
    for found in detections:
        objects = []
        for d in found[:MAX_OBJECTS]:
            shapeless += d.shape is None
            objects.append(Obj(d.shape or "circle", d.color, d.size, d.x, d.y))
        scenes.append(Scene(tuple(objects), empty))
    return to_uint8(render(scenes)), shapeless


def corrected_scene(found: list[Detection], condition: Condition) -> Scene | None:
    """The clean scene nearest to what the detector found that its caption asks for, or None when the object count is
    off (no object can be matched to a slot).

    Each detection is matched to one of the condition's slots (the matching that agrees on the most named shapes,
    colours and sizes) and redrawn at its own place with the slot's named attributes, keeping its own colour and
    size where the caption leaves them free. A shapeless blob becomes the asked shape; a wrong colour or size is
    corrected. So the scene keeps the image's layout and free choices and fixes only what the caption names. A
    relation the layout breaks stays broken: the places are the image's.

    Why (session 26): one-step students fail mostly on shapes the detector cannot read, with the object count right;
    a regression onto this scene's render is a pull towards a clean render of the student's own picture, which a
    student cannot satisfy with patterns no shape makes (as it can a classifier's loss: trainer/judge_proxy.py)."""
    slots = [spec for spec in condition.specs for _ in range(spec.count)]
    if not slots or len(found) != len(slots):
        return None

    def agreement(order: tuple[Detection, ...]) -> int:
        return sum(
            (det.shape is not None and det.shape == spec.shape)
            + (spec.color is None or det.color == spec.color)
            + (spec.size is None or det.size == spec.size)
            for det, spec in zip(order, slots)
        )

    best = max(itertools.permutations(found), key=agreement)  # the first of equals: the detector's order
    objects = tuple(
        Obj(spec.shape or det.shape or "circle", spec.color or det.color, spec.size or det.size, det.x, det.y)
        for det, spec in zip(best, slots)
    )
    return Scene(objects, condition)


PROJECTION = np.dtype([("target", np.uint8, (RESOLUTION, RESOLUTION, 3)), ("valid", np.bool_)])


def projected_targets(images: np.ndarray, conditions: Sequence[Condition], rejected_only: bool = False) -> np.ndarray:
    """(B,) `PROJECTION` records for (B, H, W, 3) uint8 images: the render of each image's `corrected_scene` at the
    world's resolution, and whether it has one (`valid`; where not, the target is the background). With
    `rejected_only`, images the judge accepts have none either: the pull is spent on the failures rather than on
    sharpening what already reads right. Module-level, so trainer/judge_pool.py's workers can run it (DMD2's
    `projection_weight`)."""
    if len(images) != len(conditions):
        raise ValueError(f"{len(images)} images but {len(conditions)} conditions")
    out = np.zeros(len(images), dtype=PROJECTION)
    out["target"] = np.array(BACKGROUND, dtype=np.uint8)
    scenes = [
        None if rejected_only and matches(found, condition) else corrected_scene(found, condition)
        for found, condition in zip(detect_all(images), conditions)
    ]
    valid = [i for i, scene in enumerate(scenes) if scene is not None]
    if valid:
        out["target"][valid] = to_uint8(render([scenes[i] for i in valid]))
        out["valid"][valid] = True
    return out


def _check_detections(images, detections: list[list[Detection]] | None) -> None:
    if detections is not None and len(detections) != len(images):
        raise ValueError(f"{len(detections)} detection lists for {len(images)} images")


def judge(
    images: np.ndarray | list, conditions: list[Condition], detections: list[list[Detection]] | None = None
) -> dict[str, float]:
    """GenEval-style accuracy per category and overall (the mean over categories present).

    `images`: (B, H, W, 3) uint8 array or a list of PIL images / arrays; `detections`: their
    `detect_all`, when the caller already has it.
    """
    return category_scores(verdicts(images, conditions, detections), [c.category for c in conditions])


def category_scores(accepted: np.ndarray | Sequence[bool], categories: Sequence[str]) -> dict[str, float]:
    """Per category the share of accepted images, and `overall`, the mean over the categories present: the judge's
    scores from per-image verdicts (`verdicts`), so a caller that keeps the verdicts does not match images twice."""
    accepted, labels = np.asarray(accepted, dtype=float), np.asarray(categories)
    if len(accepted) != len(labels):
        raise ValueError(f"{len(accepted)} verdicts for {len(labels)} categories")
    present = list(dict.fromkeys(categories))
    ordered = [c for c in CATEGORIES if c in present] + [c for c in present if c not in CATEGORIES]
    scores = {c: float(accepted[labels == c].mean()) for c in ordered}
    scores["overall"] = float(np.mean(list(scores.values()))) if scores else 0.0
    return scores


# ----------------------------------------------------------------------------- diversity


FREE_ATTRIBUTES = ("color", "size")  # what captions may leave free and a detector reads back


def leaves_free(condition: Condition, attribute: str = "color") -> bool:
    """True when no phrase of the caption names this attribute ('color' or 'size') of its objects."""
    if attribute not in FREE_ATTRIBUTES:
        raise ValueError(f"attribute must be one of {', '.join(FREE_ATTRIBUTES)}, got {attribute!r}")
    return all(getattr(spec, attribute) is None for spec in condition.specs)


def free_shares(
    images: np.ndarray | list,
    conditions: list[Condition],
    attribute: str = "color",
    detections: list[list[Detection]] | None = None,
) -> dict[str, float]:
    """Share of each value of `attribute` ('color' or 'size') among the objects the detector finds in images
    whose captions leave that attribute free, most common first ({} when no caption leaves it free or
    nothing is found there). `detections`: the images' `detect_all`, when the caller already has it.

    Why: the judge checks only what a caption asks for, so a mode-seeking student can raise its score while
    narrowing what a caption leaves free: a GAN-headed DMD2 painted 38 % of free objects yellow, and the
    shipped DMD2 student draws a fifth of its objects small where the teacher and the world draw two fifths."""
    if len(images) != len(conditions):
        raise ValueError(f"{len(images)} images but {len(conditions)} conditions")
    _check_detections(images, detections)
    free = [i for i, condition in enumerate(conditions) if leaves_free(condition, attribute)]
    if detections is None:
        detections = dict(zip(free, detect_all([images[i] for i in free])))
    else:
        detections = dict(enumerate(detections))
    counts = Counter(getattr(d, attribute) for i in free for d in detections[i])
    total = sum(counts.values())
    return {value: n / total for value, n in counts.most_common()} if total else {}


FAILURE_REASONS = ("pass", "count", "shape", "color", "size", "relation or binding")


def failure_reason(found: list[Detection], condition: Condition) -> str:
    """The first reason, in FAILURE_REASONS order, that an image whose detections are `found` fails its condition
    ('pass' when it does not): the object count is off; or the count is right and an asked-for shape, colour or
    size is missing from what the detector reads; or every asked object is there and the relation (or a binding of
    attributes to objects) is what fails.

    Why: pass rates alone do not say whether a student is short on layout (counts, sides) or on drawing (objects
    whose shape the detector cannot read), and the remedies differ (session 20: a one-step student's two-object
    images failed mostly on unreadable shapes)."""
    if matches(found, condition):
        return "pass"
    if len(found) != sum(spec.count for spec in condition.specs):
        return "count"
    for attribute in ("shape", "color", "size"):
        asked = Counter(
            getattr(spec, attribute) for spec in condition.specs for _ in range(spec.count) if getattr(spec, attribute)
        )
        if asked - Counter(getattr(det, attribute) for det in found):  # an asked value no detection supplies
            return attribute
    return "relation or binding"


def failure_shares(
    images: np.ndarray | list, conditions: list[Condition], detections: list[list[Detection]] | None = None
) -> dict[str, dict[str, float]]:
    """category -> reason -> share of that category's images failing first for that reason (`failure_reason`).
    `detections`: the images' `detect_all`, when the caller already has it."""
    if len(images) != len(conditions):
        raise ValueError(f"{len(images)} images but {len(conditions)} conditions")
    _check_detections(images, detections)
    found_all = detections if detections is not None else detect_all(images)
    counts: dict[str, Counter] = {}
    for found, condition in zip(found_all, conditions):
        counts.setdefault(condition.category, Counter())[failure_reason(found, condition)] += 1
    return {
        category: {reason: counts[category][reason] / sum(counts[category].values()) for reason in FAILURE_REASONS}
        for category in CATEGORIES
        if category in counts
    }


def entropy_bits(shares: dict[str, float]) -> float:
    """Entropy of a distribution in bits: 0 for one value; 3 for all 8 colours equally often, 1.58 for 3 sizes."""
    return sum(p * math.log2(1 / p) for p in shares.values() if p > 0)
