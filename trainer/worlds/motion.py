"""The motion world: deterministic clips of moving shapes with free-form captions and per-frame actions, and its judge.

A clip holds 1-3 `Mover`s drawn from the shapes world (its shapes, colours, sizes and renderer) on its dark
background. Each mover slides left, right, up or down at one of two speeds and bounces off the walls; it may change
colour or size once. In an interactive clip mover 0 is the player: it ignores physics and moves the way each frame's
action says. The caption is one of many paraphrases of the clip's `Condition` (what the caption states: shapes,
colours, sizes, directions, speeds, changes, who is the player); the rest of the clip (start positions, unstated
attributes, the frame of a change) is free, so a generator is judged only on what it was asked for.

Movers may overlap where their paths cross (frames paint the largest first and the player last, so nothing small
hides for long), but two movers on the same axis keep to separate lanes: riding side by side they would hide each
other for good. Shapes and colours are distinct within a clip.

The judge tracks each stated mover through the frames with the shapes world's detector (blobs of several colours,
i.e. overlapping movers, split by colour first) and scores the clip per category (identity, colour, direction,
speed, action, consistency) against the caption's condition, without knowing how the clip was made. It forgives a
mover it cannot see only where another mover covers the place it should be.

Everything is seeded: `sample_clip(rng, frames)` with the same `random.Random` state gives the same clip and caption;
`trajectory` and `render_clips` are pure functions of the clips.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from trainer.worlds import shapes
from trainer.worlds.shapes import COLOR_NAMES, COLORS, SHAPE_NAMES, SHAPES, SIZE_NAMES, SIZES

RESOLUTION = shapes.RESOLUTION  # 64: frames are the shapes world's square images
ACTIONS = ("none", "up", "down", "left", "right")
DIRECTIONS = ("left", "right", "up", "down")
SPEEDS = {"slowly": 1.0, "quickly": 2.5}  # pixels per frame
PLAYER_SPEED = 2.0  # pixels per frame while an action other than "none" is held
MAX_MOVERS = 3
ACTION_RUN = (4, 12)  # an action is held for this many frames (inclusive) before it changes
MIN_CHANGE_FRAMES = 8  # clips shorter than this never change colour or size (the change would hardly show)
CATEGORIES = ("identity", "color", "direction", "speed", "action", "consistency")

# Unit step per action / direction in image coordinates (y grows downwards).
_UNIT = {"none": (0.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0)}
_RESIZE = {"grow": 1, "shrink": -1}
_COLOR_INDEX = {name: i for i, name in enumerate(COLOR_NAMES)}
_SHAPE_INDEX = {name: i for i, name in enumerate(SHAPE_NAMES)}


@dataclass(frozen=True)
class Change:
    """One change over a clip: from frame `at` on, the mover has colour (kind "color") or size (kind "size") `to`."""

    kind: str
    to: str
    at: int


@dataclass(frozen=True)
class Mover:
    """One moving shape: start centre (x, y) and velocity (vx, vy) in pixels (per frame) at RESOLUTION.

    The player of an interactive clip has zero velocity here: its motion comes from the clip's actions.
    """

    shape: str
    color: str
    size: str
    x: float
    y: float
    vx: float = 0.0
    vy: float = 0.0
    change: Change | None = None

    @property
    def direction(self) -> str | None:
        """'left', 'right', 'up' or 'down' at the start; None when still."""
        if self.vx == self.vy == 0:
            return None
        if abs(self.vx) >= abs(self.vy):
            return "right" if self.vx > 0 else "left"
        return "down" if self.vy > 0 else "up"

    @property
    def speed(self) -> str | None:
        """The SPEEDS name of the velocity's magnitude, None when it is not one of them."""
        magnitude = float(np.hypot(self.vx, self.vy))
        return next((name for name, v in SPEEDS.items() if abs(v - magnitude) < 1e-9), None)


@dataclass(frozen=True)
class MoverSpec:
    """What the caption says about one mover; None = not stated (not judged)."""

    shape: str
    color: str | None = None  # colour at the start
    size: str | None = None  # size at the start
    direction: str | None = None  # None for the player, whose motion the actions state
    speed: str | None = None  # a SPEEDS name
    becomes: str | None = None  # the colour it turns into
    resize: str | None = None  # "grow" or "shrink" (one step of SIZES)
    player: bool = False


@dataclass(frozen=True)
class Condition:
    """The structured meaning of a clip's caption; `movers[i]` describes `Clip.movers[i]`."""

    movers: tuple[MoverSpec, ...]
    interactive: bool = False


@dataclass(frozen=True)
class Clip:
    movers: tuple[Mover, ...]
    actions: tuple[str, ...]  # one per frame, all "none" unless interactive; action t moves the player into frame t
    interactive: bool
    caption: str
    condition: Condition


# ----------------------------------------------------------------------------- validation


def _check_frames(frames: int) -> int:
    if isinstance(frames, bool) or not isinstance(frames, int | np.integer) or frames < 1:
        raise ValueError(f"frames must be a positive integer, got {frames!r}")
    return int(frames)


def _check_split(split: str) -> None:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")


def _check_actions_cover(clip: Clip, frames: int) -> None:
    if clip.interactive and frames > len(clip.actions):
        raise ValueError(
            f"this interactive clip has {len(clip.actions)} actions, so it has no player motion for {frames} frames; "
            f"sample it with frames >= {frames}"
        )


# ----------------------------------------------------------------------------- physics


def _reflect(p: float, v: float, lo: float, hi: float) -> tuple[float, float]:
    """One step of a bouncing coordinate: past a wall, mirror the position and point the velocity away from it."""
    p += v
    if p > hi:
        return 2 * hi - p, -abs(v)
    if p < lo:
        return 2 * lo - p, abs(v)
    return p, v


def trajectory(clip: Clip, frames: int) -> np.ndarray:
    """(frames, movers, 4) float64: centre x, centre y, radius and colour index (into COLOR_NAMES) per frame.

    Frame 0 is the movers' start. A change takes effect at its frame (a mover that grows against a wall is pushed
    back inside). Movers bounce off the walls so they always lie wholly inside the frame; the player moves
    PLAYER_SPEED towards each frame's action and stops at the walls rather than bouncing, so holding an arrow
    against a wall keeps it there, as a player expects.
    """
    frames = _check_frames(frames)
    _check_actions_cover(clip, frames)
    out = np.zeros((frames, len(clip.movers), 4))
    for j, mover in enumerate(clip.movers):
        player = clip.interactive and j == 0
        x, y, vx, vy = mover.x, mover.y, mover.vx, mover.vy
        change = mover.change
        for t in range(frames):
            changed = change is not None and t >= change.at
            color = change.to if changed and change.kind == "color" else mover.color
            r = SIZES[change.to if changed and change.kind == "size" else mover.size][0]
            lo, hi = r, RESOLUTION - r
            if changed and t == change.at:
                x, y = min(max(x, lo), hi), min(max(y, lo), hi)
            if t > 0:
                if player:
                    ux, uy = _UNIT[clip.actions[t]]
                    x = min(max(x + ux * PLAYER_SPEED, lo), hi)
                    y = min(max(y + uy * PLAYER_SPEED, lo), hi)
                else:
                    x, vx = _reflect(x, vx, lo, hi)
                    y, vy = _reflect(y, vy, lo, hi)
            out[t, j] = (x, y, r, _COLOR_INDEX[color])
    return out


def action_ids(clip: Clip, frames: int) -> torch.Tensor:
    """(frames,) int64 index into ACTIONS per frame (all 0, "none", for a clip that is not interactive)."""
    frames = _check_frames(frames)
    _check_actions_cover(clip, frames)
    ids = [ACTIONS.index(a) for a in clip.actions[:frames]]
    return torch.tensor(ids + [0] * (frames - len(ids)), dtype=torch.long)


# ----------------------------------------------------------------------------- sampling


def _boxes_overlap(a: np.ndarray, b: np.ndarray, gap: float = 0.0) -> np.ndarray:
    """Whether the squares [x - r, x + r]^2 of two movers' trajectory rows (..., 4) overlap (closer than `gap`)."""
    reach = a[..., 2] + b[..., 2] + gap
    return (np.abs(a[..., 0] - b[..., 0]) < reach) & (np.abs(a[..., 1] - b[..., 1]) < reach)


def _actions(rng: random.Random, frames: int) -> tuple[str, ...]:
    """Runs of ACTION_RUN frames, each a different action from the last; the first is a move, so it shows."""
    out: list[str] = []
    while len(out) < frames:
        previous = out[-1] if out else "none"
        action = rng.choice([a for a in ACTIONS if a != previous])
        out.extend([action] * rng.randint(*ACTION_RUN))
    return tuple(out[:frames])


def _structure(
    rng: random.Random, frames: int, interactive: bool, n_movers: int | None = None, change_kind: str | None = None
) -> tuple[tuple[Mover, ...], tuple[str, ...], Condition] | None:
    """Movers, actions and condition of one clip, or None when the movers could not be placed well.

    Shapes and colours are distinct within a clip (so the judge knows each mover by its shape, and a colour binds to
    one mover); `change_kind` ("none", "color", "size") forces one mover to change, None samples changes freely.
    """
    n = n_movers or rng.randint(1, MAX_MOVERS)
    shape_names = rng.sample(SHAPE_NAMES, n)
    colors = rng.sample(COLOR_NAMES, n)
    free_colors = [c for c in COLOR_NAMES if c not in colors]
    kinds: list[str | None] = [None] * n
    if frames >= MIN_CHANGE_FRAMES:
        if change_kind is None:
            for i in range(n):
                u = rng.random()
                kinds[i] = "color" if u < 0.12 else "size" if u < 0.24 else None
        elif change_kind != "none":
            kinds[rng.randrange(n)] = change_kind
    movers: list[Mover] = []
    specs: list[MoverSpec] = []
    for i in range(n):
        player = interactive and i == 0
        size = rng.choice(SIZE_NAMES)
        change, becomes, resize = None, None, None
        if kinds[i] == "color":
            becomes = free_colors.pop(rng.randrange(len(free_colors)))
            change = Change("color", becomes, rng.randint(max(1, frames // 4), 3 * frames // 4))
        elif kinds[i] == "size":
            options = [k for k, step in _RESIZE.items() if 0 <= SIZE_NAMES.index(size) + step < len(SIZE_NAMES)]
            resize = rng.choice(options)
            to = SIZE_NAMES[SIZE_NAMES.index(size) + _RESIZE[resize]]
            change = Change("size", to, rng.randint(max(1, frames // 4), 3 * frames // 4))
        direction = speed = None
        vx = vy = 0.0
        if not player:
            direction, speed = rng.choice(DIRECTIONS), rng.choice(tuple(SPEEDS))
            vx, vy = (SPEEDS[speed] * u for u in _UNIT[direction])
        reach = max(SIZES[size][0], SIZES[change.to][0] if change and change.kind == "size" else 0.0)
        for _ in range(200):  # start apart, and in a lane of one's own: see _apart
            x = rng.uniform(SIZES[size][0] + 1, RESOLUTION - SIZES[size][0] - 1)
            y = rng.uniform(SIZES[size][0] + 1, RESOLUTION - SIZES[size][0] - 1)
            if all(_apart((x, y, vx, vy, reach), (m.x, m.y, m.vx, m.vy, _reach(m))) for m in movers):
                break
        else:
            return None
        movers.append(Mover(shape_names[i], colors[i], size, x, y, vx, vy, change))
        specs.append(
            MoverSpec(
                shape=shape_names[i],
                color=colors[i] if becomes or rng.random() < 0.85 else None,
                size=size if rng.random() < 0.35 else None,
                direction=direction,
                speed=speed if speed and rng.random() < 0.8 else None,
                becomes=becomes,
                resize=resize,
                player=player,
            )
        )
    actions = _actions(rng, frames) if interactive else ("none",) * frames
    return tuple(movers), actions, Condition(tuple(specs), interactive)


def _apart(a: tuple[float, ...], b: tuple[float, ...], gap: float = 2.0) -> bool:
    """May movers (x, y, vx, vy, reach) a and b start here? Their boxes must be `gap` apart, and two movers on the
    same axis keep to lanes `gap` apart, so they never overlap: riding side by side, bouncing in step, they would
    hide one another for good. Movers crossing each other's path still overlap, briefly; the player goes anywhere."""
    (xa, ya, vxa, vya, ra), (xb, yb, vxb, vyb, rb) = a, b
    reach = ra + rb + gap
    if abs(xa - xb) < reach and abs(ya - yb) < reach:
        return False
    if vxa and vxb:
        return abs(ya - yb) >= reach
    if vya and vyb:
        return abs(xa - xb) >= reach
    return True


def _reach(mover: Mover) -> float:
    change = mover.change
    return max(SIZES[mover.size][0], SIZES[change.to][0] if change and change.kind == "size" else 0.0)


def _touching_frames(movers: tuple[Mover, ...], actions: tuple[str, ...], interactive: bool, frames: int) -> int:
    """Frames in which two movers' boxes come within 2 px (where anti-aliased edges already join their blobs)."""
    probe = Clip(movers, actions, interactive, "", Condition(()))
    path = trajectory(probe, frames)
    hit = np.zeros(frames, dtype=bool)
    for i in range(len(movers)):
        for j in range(i + 1, len(movers)):
            hit |= _boxes_overlap(path[:, i], path[:, j], gap=2.0)
    return int(hit.sum())


OVERLAP_CHECK_FRAMES = 16  # sampled clips overlap in at most a quarter of their first 16 frames (see sample_clip)


def sample_clip(
    rng: random.Random,
    frames: int,
    split: str = "train",
    interactive: bool = False,
    *,
    n_movers: int | None = None,
    change_kind: str | None = None,
) -> Clip:
    """One clip of `frames` frames with a caption for `split` ('train' or 'eval'); same rng state, same clip.

    Movers may overlap, but a sampled clip starts with them apart and overlaps in at most a quarter of its first
    OVERLAP_CHECK_FRAMES frames: training clips then mostly show every stated mover, and a judge of 16-frame clips
    rarely has to guess. `n_movers` (1-3) and `change_kind` ("none", "color", "size") pin the clip's make-up, as the
    balanced eval set does.
    """
    frames = _check_frames(frames)
    _check_split(split)
    if n_movers is not None and not 1 <= n_movers <= MAX_MOVERS:
        raise ValueError(f"n_movers must be 1-{MAX_MOVERS} or None, got {n_movers!r}")
    if change_kind not in (None, "none", "color", "size"):
        raise ValueError(f"change_kind must be None, 'none', 'color' or 'size', got {change_kind!r}")
    check = min(frames, OVERLAP_CHECK_FRAMES)
    while True:
        made = _structure(rng, frames, interactive, n_movers, change_kind)
        if made is None:
            continue
        movers, actions, condition = made
        if len(movers) > 1 and _touching_frames(movers, actions[:check], interactive, check) > check // 4:
            continue
        for _ in range(50):
            caption = caption_for(condition, rng)
            if is_eval_caption(caption) == (split == "eval"):
                return Clip(movers, actions, interactive, caption, condition)


def is_eval_caption(caption: str) -> bool:
    """Held out for evaluation (never trained on) by the shapes world's rule: crc32 of the caption in one bucket."""
    return shapes.is_eval_caption(caption)


_BALANCE = tuple((n, kind) for n in range(1, MAX_MOVERS + 1) for kind in ("none", "color", "size"))


def eval_clips(n: int, frames: int, seed: int = 2024, interactive: bool = False) -> list[Clip]:
    """A fixed held-out set balanced over mover count (1-3) x change (none, colour, size); same arguments, same clips."""
    frames = _check_frames(frames)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"motion-eval/{seed}/{int(interactive)}")
    clips = []
    for i in range(n):
        n_movers, change_kind = _BALANCE[i % len(_BALANCE)]
        clips.append(sample_clip(rng, frames, "eval", interactive, n_movers=n_movers, change_kind=change_kind))
    return clips


def train_batch(rng: random.Random, batch: int, frames: int, interactive_fraction: float = 0.25) -> list[Clip]:
    """`batch` training clips; each is interactive with probability `interactive_fraction`."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    if not 0.0 <= interactive_fraction <= 1.0:
        raise ValueError(f"interactive_fraction must lie in [0, 1], got {interactive_fraction!r}")
    frames = _check_frames(frames)
    return [sample_clip(rng, frames, "train", rng.random() < interactive_fraction) for _ in range(batch)]


# ----------------------------------------------------------------------------- captions

# participle -> (third person, speeds it may go with: None = speed unstated). Verbs in _IMPLIED state a speed alone.
_VERBS: dict[str, tuple[str, tuple[str | None, ...]]] = {
    "moving": ("moves", (None, "slowly", "quickly")),
    "sliding": ("slides", (None, "slowly", "quickly")),
    "bouncing": ("bounces", (None, "slowly", "quickly")),
    "gliding": ("glides", (None, "slowly", "quickly")),
    "rolling": ("rolls", (None, "slowly", "quickly")),  # circles only
    "travelling": ("travels", (None, "slowly", "quickly")),
    "heading": ("heads", (None, "slowly", "quickly")),
    "drifting": ("drifts", (None, "slowly")),
    "floating": ("floats", (None, "slowly")),
    "creeping": ("creeps", ("slowly",)),
    "crawling": ("crawls", ("slowly",)),
    "inching": ("inches", ("slowly",)),
    "racing": ("races", ("quickly",)),
    "zooming": ("zooms", ("quickly",)),
    "darting": ("darts", ("quickly",)),
    "shooting": ("shoots", ("quickly",)),
}
_IMPLIED = {"creeping": "slowly", "crawling": "slowly", "inching": "slowly"} | dict.fromkeys(
    ("racing", "zooming", "darting", "shooting"), "quickly"
)
_DIRECTION_WORDS = {
    "left": ("left", "to the left", "leftwards", "towards the left"),
    "right": ("right", "to the right", "rightwards", "towards the right"),
    "up": ("up", "upwards", "upward", "towards the top"),
    "down": ("down", "downwards", "downward", "towards the bottom"),
}
_SPEED_AFTER = {  # after the verb or the direction
    "slowly": ("slowly", "gently", "at a slow pace", "unhurriedly", "at a leisurely pace"),
    "quickly": ("quickly", "fast", "rapidly", "swiftly", "at high speed", "at speed"),
}
_SPEED_BEFORE = {"slowly": ("slowly", "gently", "lazily"), "quickly": ("quickly", "rapidly", "swiftly")}
_SPEED_ADJECTIVES = {"slowly": ("slow", "slow-moving", "sluggish"), "quickly": ("fast", "speedy", "fast-moving", "rapid")}
# Change clauses: {c} is the new colour. Participle clauses follow a noun phrase, finite ones a verb.
_TURNS = {
    "participle": (
        "that turns {c}",
        "turning {c}",
        "changing to {c}",
        "which becomes {c}",
        "and turning {c}",
        "that changes colour to {c}",
        "before turning {c}",
    ),
    "finite": ("and turns {c}", "and changes to {c}", "then turns {c}", "and becomes {c}", "before turning {c}", "and goes {c}"),
}
_RESIZES = {
    ("grow", "participle"): ("growing", "that grows", "while growing", "getting bigger", "that grows larger", "and growing"),
    ("grow", "finite"): ("and grows", "and gets bigger", "while growing", "then grows larger", "and expands"),
    ("shrink", "participle"): (
        "shrinking",
        "that shrinks",
        "while shrinking",
        "getting smaller",
        "that shrinks down",
        "and shrinking",
    ),
    ("shrink", "finite"): ("and shrinks", "and gets smaller", "while shrinking", "then shrinks", "and contracts"),
}
_PLAYER_NOUN = (
    "{np} you control",
    "{np} that you control",
    "{np} you steer",
    "{np} steered by you",
    "{np} under your control",
    "{np} controlled by you",
)
_PLAYER_SENTENCE = ("you steer {np}", "you control {np}", "you move {np}", "you drive {np}", "you are {np}")
_JOIN = {
    ("participle", 2): ("{0} and {1}", "{0}, {1}", "{0} with {1}", "{0}, and {1}"),
    ("participle", 3): ("{0}, {1} and {2}", "{0}, {1}, {2}", "{0}, {1}, and {2}", "{0} and {1} with {2}"),
    ("finite", 2): ("{0} and {1}", "{0} while {1}", "{0}; {1}", "{0}, and {1}", "{0} as {1}"),
    ("finite", 3): ("{0}, {1} and {2}", "{0}; {1}; {2}", "{0}, {1}, and {2}", "{0} while {1} and {2}"),
}
_PREFIXES = {
    "participle": ("", "", "", "a clip of ", "a video of ", "an animation of ", "footage of ", "a short clip of "),
    "finite": ("", "", "", "in this clip, ", "in this video, ", "watch as "),
}
_SUFFIXES = ("", "", "", " on a dark background", ".", " against a dark backdrop")


def _noun(rng: random.Random, spec: MoverSpec, speed_adjective: str | None = None) -> str:
    """'a small fast red ball', 'a ball in red', ... (colour and size only where stated)."""
    shape = rng.choice(SHAPES[spec.shape][0])
    color = rng.choice(COLORS[spec.color][1]) if spec.color else None
    size = rng.choice(SIZES[spec.size][1]) if spec.size else None
    if color and rng.random() < 0.2:
        words = " ".join(w for w in (size, speed_adjective, shape, "in", color) if w)
    else:
        words = " ".join(w for w in (size, speed_adjective, color, shape) if w)
    return f"{shapes._article(words)} {words}"


def _change_clause(rng: random.Random, spec: MoverSpec, mood: str, after_comma: bool = False) -> str:
    """' that turns blue', ' and grows', ... ('' without a change); after a comma only clauses that read there."""
    if spec.becomes:
        forms = _TURNS[mood]
    elif spec.resize:
        forms = _RESIZES[spec.resize, mood]
    else:
        return ""
    if after_comma:
        forms = tuple(f for f in forms if not f.startswith(("that ", "and ", "before ")))
    return " " + rng.choice(forms).format(c=rng.choice(COLORS[spec.becomes][1]) if spec.becomes else "")


def _mover_phrase(rng: random.Random, spec: MoverSpec, mood: str) -> str:
    """'a red ball bouncing to the right quickly' (participle) or 'a red ball bounces right quickly' (finite)."""
    verbs = [v for v, (_, speeds) in _VERBS.items() if spec.speed in speeds and (v != "rolling" or spec.shape == "circle")]
    verb = rng.choice(verbs)
    word = verb if mood == "participle" else _VERBS[verb][0]
    direction = rng.choice(_DIRECTION_WORDS[spec.direction])
    predicate, adjective = f"{word} {direction}", None
    if spec.speed and not (_IMPLIED.get(verb) == spec.speed and rng.random() < 0.6):
        form = rng.random()
        if form < 0.2:
            adjective = rng.choice(_SPEED_ADJECTIVES[spec.speed])
        elif form < 0.45:
            predicate = f"{rng.choice(_SPEED_BEFORE[spec.speed])} {word} {direction}"
        elif form < 0.75:
            predicate = f"{word} {direction} {rng.choice(_SPEED_AFTER[spec.speed])}"
        else:  # 'moving quickly to the left': one-word adverbs only
            predicate = f"{word} {rng.choice([a for a in _SPEED_AFTER[spec.speed] if ' ' not in a])} {direction}"
    return f"{_noun(rng, spec, adjective)} {predicate}{_change_clause(rng, spec, mood)}"


def caption_for(condition: Condition, rng: random.Random) -> str:
    """One random paraphrase of the condition: templates, synonyms, word order, verbs and moods vary."""
    mood = rng.choice(("participle", "finite"))
    others = [_mover_phrase(rng, spec, mood) for spec in condition.movers if not spec.player]
    rng.shuffle(others)
    player = next((spec for spec in condition.movers if spec.player), None)
    if player is None:
        parts = others
    else:
        change = _change_clause(rng, player, "participle", after_comma=True)
        if rng.random() < 0.35:  # 'you steer a red ball': a sentence, so the others are sentences too
            mood = "finite"
            others = [_mover_phrase(rng, spec, mood) for spec in condition.movers if not spec.player]
            rng.shuffle(others)
            mine = rng.choice(_PLAYER_SENTENCE).format(np=_noun(rng, player)) + ("," + change if change else "")
        else:
            mine = rng.choice(_PLAYER_NOUN).format(np=_noun(rng, player)) + ("," + change if change else "")
        parts = [mine, *others] if rng.random() < 0.7 else [*others, mine]
    if len(parts) == 1 and player is not None and not parts[0].startswith("you "):
        mood = "participle"  # a lone 'a red ball you control' is a noun phrase: 'a clip of ...', not 'watch as ...'
    body = parts[0] if len(parts) == 1 else rng.choice(_JOIN[mood, len(parts)]).format(*parts)
    return f"{rng.choice(_PREFIXES[mood])}{body}{rng.choice(_SUFFIXES)}"


# ----------------------------------------------------------------------------- rendering

_PAD = 12  # the canvas is padded so every mover's window lies inside it
_WINDOW = 24  # pixels on a side around a mover: covers the largest shape (radius 10.5) at any sub-pixel offset
_PALETTE_RGB = torch.tensor([COLORS[c][0] for c in COLOR_NAMES], dtype=torch.float32) / 255.0


def render_clips(clips: Sequence[Clip], frames: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(B, frames, 3, 64, 64) float32 in [0, 1] on `device` (CPU when None).

    Each frame paints its movers largest first and the player last: a small mover is never hidden whole behind a
    big one, and the player is always in view. Every mover of every frame is one anti-aliased `shapes.shape_masks`
    window of 24 x 24 pixels (not the whole frame), so a batch of 256 16-frame clips is about 12 000 small masks,
    milliseconds on a GPU.
    """
    frames = _check_frames(frames)
    if not clips:
        raise ValueError("render_clips needs at least one clip")
    device = torch.device(device or "cpu")
    b, k = len(clips), max(len(c.movers) for c in clips)
    params = np.zeros((b, frames, k, 5), dtype=np.float32)  # x, y, r, colour, shape
    order_key = np.full((b, frames, k), np.inf)  # painting order: larger radius first, the player last, empty slots out
    counts = np.array([len(c.movers) for c in clips])
    for i, clip in enumerate(clips):
        n = len(clip.movers)
        params[i, :, :n, :4] = trajectory(clip, frames)
        params[i, :, :n, 4] = [_SHAPE_INDEX[m.shape] for m in clip.movers]
        order_key[i, :, :n] = -params[i, :, :n, 2]
        if clip.interactive:
            order_key[i, :, 0] = 1e6
    order = np.argsort(order_key, axis=2, kind="stable")
    params = np.take_along_axis(params, order[..., None], axis=2)
    params_t = torch.from_numpy(params).to(device)
    side = RESOLUTION + 2 * _PAD
    background = torch.tensor(shapes.BACKGROUND, dtype=torch.float32, device=device) / 255.0
    canvas = background.expand(b * frames, side, side, 3).clone()
    palette = _PALETTE_RGB.to(device)
    offsets = torch.arange(_WINDOW, device=device)
    for j in range(k):
        clip_index = torch.from_numpy(np.nonzero(counts > j)[0]).to(device)
        rows = params_t[clip_index, :, j].reshape(-1, 5)  # (clips with a j-th mover) x frames
        frame_index = (clip_index[:, None] * frames + torch.arange(frames, device=device)).reshape(-1)
        x, y, r = rows[:, 0], rows[:, 1], rows[:, 2]
        left, top = torch.floor(x).long() - _WINDOW // 2 + 1, torch.floor(y).long() - _WINDOW // 2 + 1
        left, top = left.clamp(-_PAD, RESOLUTION + _PAD - _WINDOW), top.clamp(-_PAD, RESOLUTION + _PAD - _WINDOW)
        alpha = shapes.shape_masks(rows[:, 4].long(), x - left, y - top, r, _WINDOW).unsqueeze(-1)  # (N, 24, 24, 1)
        ys = (top + _PAD)[:, None, None] + offsets[None, :, None]
        xs = (left + _PAD)[:, None, None] + offsets[None, None, :]
        at = (frame_index[:, None, None], ys, xs)
        canvas[at] = canvas[at] * (1 - alpha) + palette[rows[:, 3].long()][:, None, None, :] * alpha
    video = canvas[:, _PAD : _PAD + RESOLUTION, _PAD : _PAD + RESOLUTION]
    return video.reshape(b, frames, RESOLUTION, RESOLUTION, 3).permute(0, 1, 4, 2, 3).contiguous()


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(B, T, 3, H, W) in [0, 1] -> (B, T, H, W, 3) uint8, the judge's input."""
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"expected a (B, T, 3, H, W) video tensor, got shape {tuple(video.shape)}")
    b, t = video.shape[:2]
    return shapes.to_uint8(video.reshape(b * t, *video.shape[2:])).reshape(b, t, video.shape[3], video.shape[4], 3)


# ----------------------------------------------------------------------------- judge

SIGHTED_FRACTION = 0.5  # a mover must be recognised in at least half of the judged frames
AGREEMENT = 0.9  # colour / size readings that must follow the stated (possibly changing) value
MAX_EXTRA_FRACTION = 0.25  # frames with more blobs than stated movers (hallucinated objects) allowed
MERGED_AREA = 1.2  # a sighting whose blob is this much larger than the mover's usual area is merged with another
REVERSAL = 2.5  # pixels back from the furthest point before the judge calls it a turn (jitter below it is ignored)
WALL_SLACK = 2.5  # pixels beyond the shape's own extent within which a turn counts as a bounce off the wall
MAX_PERPENDICULAR = 3.0  # pixels of drift across the stated axis allowed over the judged frames
MIN_SPEED, SPEED_SPLIT, MAX_SPEED = 0.5, 1.6, 4.0  # median |step| px/frame: slow in [0.5, 1.6), quick in [1.6, 4]
ACTION_STEP = 1.0  # px/frame along the action's direction for a move to count; less (and sideways) for "none"
ACTION_AGREEMENT = 0.85  # judged steps that must follow the actions
MAX_JUMP, JUMP_SLACK, RESIZE_SLACK = 3.5, 1.5, 3.5  # a mover moves at most 3.5 px/frame (+ slack; + more on a resize)
WHOLE_AREA = (0.95, 1.05)  # a suspect blob must have the area of the whole shape, within these factors
MIN_TRACE = 4  # pixels of a colour in a blob that show a mover of that colour touches it
MIN_BODY = 4  # pixels left of a colour's part of a blob after a one-pixel erosion, for it to count as a mover
COVER_FRACTION = 0.5  # an unseen mover is excused when this much of a disc where it should be is covered by another
_SMALLEST_FIT = 0.92  # shapes._fit_shape tries radii from 0.92 x the blob's; detect recognises up to 1.25 x the largest
_LARGEST_RECOGNISED = 1.25 * max(r for r, _ in SIZES.values())


@functools.lru_cache(maxsize=8192)
def _fit_relative(shape: tuple[int, int], alpha: bytes, cx: float, cy: float, radius: float) -> tuple[int, float, float]:
    return shapes._fit_shape(np.frombuffer(alpha, dtype=np.float32).reshape(shape), (0, 0), cx, cy, radius)


def _fit_memo(alpha: np.ndarray, origin: tuple[int, int], cx: float, cy: float, radius: float) -> tuple[int, float, float]:
    """`shapes._fit_shape` memoised on the blob's alpha relative to its window: a mover at a steady sub-pixel phase
    shows the same blob frame after frame, so a clip costs a few template fits per mover rather than one per frame.
    A blob too big for any fit to make it one of the world's shapes (a smear, noise) is not fitted at all."""
    if radius * _SMALLEST_FIT > _LARGEST_RECOGNISED:
        return 0, float("inf"), radius
    return _fit_relative(alpha.shape, alpha.tobytes(), cx - origin[1], cy - origin[0], radius)


_BG = np.array(shapes.BACKGROUND, dtype=np.float32)
_TOWARDS = np.array([COLORS[c][0] for c in COLOR_NAMES], dtype=np.float32) - _BG  # background -> palette colour


def _foreground(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., H, W): pixels that belong to objects, by the shapes world's threshold."""
    return np.linalg.norm(frames.astype(np.float32) - _BG, axis=-1) > shapes.FOREGROUND_DISTANCE


def _owners(frame: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """(H, W) palette index whose blend with the background best explains each foreground pixel (rims included)."""
    offset = frame[foreground].astype(np.float32) - _BG  # (N, 3)
    dots = offset @ _TOWARDS.T  # (N, colours)
    lengths = (_TOWARDS * _TOWARDS).sum(1)
    alpha = np.clip(dots / lengths, 0.0, 1.0)
    residual = (offset * offset).sum(1, keepdims=True) - 2 * alpha * dots + alpha * alpha * lengths  # |offset - alpha t|^2
    owners = np.zeros(foreground.shape, dtype=np.int64)
    owners[foreground] = residual.argmin(1)
    return owners


@dataclass(frozen=True)
class _View:
    """One frame as the judge sees it: objects, and which blobs hold several overlapping movers."""

    detections: tuple[shapes.Detection, ...]
    blob_of: tuple[int, ...]  # the blob (label in `labels`) each detection lies in
    labels: np.ndarray  # (H, W) connected foreground blobs, 0 = background
    mixed: frozenset[int]  # blobs of several palette colours: movers overlapping (a clip's colours are distinct)
    objects: int  # objects in view: a lone blob is one, a mixed blob one per colour (however many pieces it shows)
    traces: dict[int, frozenset[str]]  # per blob, the palette colours of at least MIN_TRACE of its pixels


def _look(frame: np.ndarray) -> _View:
    """`shapes.detect`, with blobs of several colours split by colour first.

    Movers of a clip have distinct colours, so a blob of two colours is two movers that overlap: detected whole it
    is one unrecognisable shape, split it shows the mover on top intact (and the one below, if enough of it shows).
    A frame without such blobs gets exactly `shapes.detect`'s answer.
    """
    from scipy import ndimage

    foreground = _foreground(frame)
    labels, count = ndimage.label(foreground)
    owners = _owners(frame, foreground)
    mixed: dict[int, list[int]] = {}
    traces: dict[int, frozenset[str]] = {}
    for blob in range(1, count + 1):
        colors, pixels = np.unique(owners[labels == blob], return_counts=True)
        traces[blob] = frozenset(COLOR_NAMES[c] for c in colors[pixels >= MIN_TRACE])
        if (pixels >= shapes.MIN_AREA).sum() < 2:
            continue
        # A colour counts if it has a body, not just a seam: where two movers' edges meet, their blend can read as a
        # third palette colour along a one-pixel line.
        bodies = [
            int(c)
            for c in colors[pixels >= shapes.MIN_AREA]
            if ndimage.binary_erosion((labels == blob) & (owners == c)).sum() >= MIN_BODY
        ]
        if 2 <= len(bodies) <= MAX_MOVERS:  # more colours than a clip has movers is a smear or noise, not an overlap
            mixed[blob] = bodies

    def where(d: shapes.Detection) -> int:
        return int(labels[min(int(d.y), RESOLUTION - 1), min(int(d.x), RESOLUTION - 1)])

    if not mixed:
        found = shapes.detect(frame, fit_shape=_fit_memo)
        return _View(tuple(found), tuple(where(d) for d in found), labels, frozenset(), len(found), traces)
    merged = np.isin(labels, list(mixed))
    base = frame.copy()
    base[merged] = shapes.BACKGROUND
    found = shapes.detect(base, fit_shape=_fit_memo)
    blob_of = [where(d) for d in found]
    objects = len(found) + sum(len(colors) for colors in mixed.values())
    for blob, colors in mixed.items():
        for color in colors:
            layer = np.empty_like(frame)
            layer[:] = shapes.BACKGROUND
            part = (labels == blob) & (owners == color)
            layer[part] = frame[part]
            pieces = shapes.detect(layer, fit_shape=_fit_memo)
            found += pieces
            blob_of += [blob] * len(pieces)
    return _View(tuple(found), tuple(blob_of), labels, frozenset(mixed), objects, traces)


def _check_video(frames_uint8: np.ndarray, clips: Sequence[Clip], min_frames: int = 2) -> None:
    if not isinstance(frames_uint8, np.ndarray):
        raise ValueError(f"expected a numpy array of frames, got {type(frames_uint8).__name__}; use motion.to_uint8(video)")
    if frames_uint8.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frames_uint8.dtype}; use motion.to_uint8(video) on [0, 1] tensors")
    if frames_uint8.ndim != 5 or frames_uint8.shape[2:] != (RESOLUTION, RESOLUTION, 3):
        raise ValueError(f"expected frames of shape (B, T, {RESOLUTION}, {RESOLUTION}, 3), got {frames_uint8.shape}")
    if len(clips) != frames_uint8.shape[0]:
        raise ValueError(f"{frames_uint8.shape[0]} clips of frames but {len(clips)} clips to judge them against")
    if frames_uint8.shape[1] < min_frames:
        raise ValueError(f"the judge needs at least {min_frames} frames a clip to see motion, got {frames_uint8.shape[1]}")
    if not all(isinstance(c, Clip) for c in clips):
        raise ValueError("clips must be motion.Clip objects (from sample_clip / eval_clips)")


@dataclass
class _Track:
    """One stated mover followed through the judged frames (index 0 = the first judged frame)."""

    xy: np.ndarray  # (T, 2) blob centroid, nan where unseen
    seen: np.ndarray  # (T,) a recognised blob of the mover's shape is there
    clean: np.ndarray  # (T,) seen, and the blob shows the mover alone and whole, so it can be measured
    colors: list[str | None]
    sizes: list[str | None]

    def values(self, what: list[str | None]) -> list[str]:
        """Readings (colours or sizes) of the clean sightings; of all sightings when fewer than 3 are clean (a blob
        split by colour still reads its mover's colour and, mostly, size)."""
        use = self.clean if self.clean.sum() >= 3 else self.seen
        return [v for v, ok in zip(what, use) if ok and v is not None]


@functools.cache
def _whole_area(shape: str, size: str, color: str) -> tuple[int, int]:
    """Fewest and most pixels the shapes world's detector finds in one lone (shape, size, colour) over sub-pixel
    placements: a blob outside that range is a mover partly hidden or merged with another."""
    r = SIZES[size][0]
    offsets = torch.tensor([(ox, oy) for ox in (0.0, 0.25, 0.5, 0.75) for oy in (0.0, 0.3, 0.6)])
    n = len(offsets)
    alpha = shapes.shape_masks(
        torch.full((n,), _SHAPE_INDEX[shape]), 16 + offsets[:, 0], 16 + offsets[:, 1], torch.full((n,), r), 32
    )
    rgb = np.array(COLORS[color][0], dtype=np.float32)
    pixels = np.round(_BG + (rgb - _BG) * alpha.numpy()[..., None])
    areas = (np.linalg.norm(pixels - _BG, axis=-1) > shapes.FOREGROUND_DISTANCE).sum((1, 2))
    return int(areas.min()), int(areas.max())


def _track(spec: MoverSpec, views: list[_View], crowd: int) -> _Track:
    """Per frame, the recognised blob of the spec's shape (the one of a stated colour, else nearest the last one).

    A sighting is *clean* (measured for motion, colour and size) unless its blob is much larger than the mover's
    usual one at that size. A *suspect* sighting (from a blob split by colour, or in a frame with fewer objects than
    the caption's `crowd` movers) must show the whole shape (`_whole_area`) and read the size of the mover's nearest
    unsuspect sightings: a mover partly hidden under another, or two touching movers read as one shape, would
    mislead (their centre is off).
    """
    t = len(views)
    xy = np.full((t, 2), np.nan)
    colors: list[str | None] = [None] * t
    sizes: list[str | None] = [None] * t
    areas = np.zeros(t)
    suspect = np.zeros(t, dtype=bool)
    allowed = {spec.color, spec.becomes} - {None}
    last: tuple[float, float] | None = None
    for i, view in enumerate(views):
        candidates = [k for k, d in enumerate(view.detections) if d.shape == spec.shape]
        if not candidates:
            continue
        ranks = [
            (bool(allowed) and d.color not in allowed, 0.0 if last is None else float(np.hypot(d.x - last[0], d.y - last[1])))
            for d in (view.detections[k] for k in candidates)
        ]
        k = candidates[min(range(len(candidates)), key=ranks.__getitem__)]
        d = view.detections[k]
        xy[i], colors[i], sizes[i], areas[i], last = (d.x, d.y), d.color, d.size, d.area, (d.x, d.y)
        suspect[i] = view.blob_of[k] in view.mixed or view.objects < crowd
    seen = ~np.isnan(xy[:, 0])
    clean = seen.copy()
    for size in set(sizes) - {None}:
        same = np.array([s == size for s in sizes])
        if (same & ~suspect).any():
            clean[same & ~suspect] = areas[same & ~suspect] <= MERGED_AREA * np.median(areas[same & ~suspect])
    for i in np.nonzero(seen & suspect)[0]:
        low, high = _whole_area(spec.shape, sizes[i], colors[i])
        clean[i] = WHOLE_AREA[0] * low <= areas[i] <= WHOLE_AREA[1] * high
    calm = np.nonzero(seen & ~suspect)[0]
    if len(calm):
        for i in np.nonzero(seen & suspect)[0]:
            before, after = calm[calm < i], calm[calm > i]
            clean[i] &= sizes[i] in {sizes[j] for j in (*before[-1:], *after[:1])}
    return _Track(xy, seen, clean, colors, sizes)


def _two_phase(values: list[str], pairs: list[tuple[str, str | None]], need_both: bool) -> bool:
    """Do the readings follow `a`* then `b`* for one of the (a, b) pairs (b None: `a` throughout)?

    `need_both`: the change must show (at least 2 readings of each), as in a whole clip; a window of a long clip may
    fall wholly before or after it.
    """
    n = len(values)
    if n == 0:
        return False
    best = 0
    for a, b in pairs:
        if b is None:
            best = max(best, sum(v == a for v in values))
            continue
        before = np.cumsum([0] + [v == a for v in values])
        after = np.cumsum([0] + [v == b for v in reversed(values)])[::-1]
        splits = range(2, n - 1) if need_both else range(n + 1)
        best = max([best] + [int(before[k] + after[k]) for k in splits])
    return best >= AGREEMENT * n


def _size_pairs(spec: MoverSpec) -> list[tuple[str, str | None]]:
    starts = [spec.size] if spec.size else list(SIZE_NAMES)
    if not spec.resize:
        return [(s, None) for s in starts]
    step = _RESIZE[spec.resize]
    return [(s, SIZE_NAMES[SIZE_NAMES.index(s) + step]) for s in starts if 0 <= SIZE_NAMES.index(s) + step < len(SIZE_NAMES)]


def _edge_reach(shape: str, radius: float, side: str) -> float:
    """How far a blob's centroid sits from the wall when the shape touches it (a triangle's centroid is low)."""
    if shape != "triangle":
        return radius
    return 4 * radius / 3 if side == "up" else 2 * radius / 3 if side == "down" else radius


def _wall_gap(x: float, y: float, side: str) -> float:
    return {"left": x, "right": RESOLUTION - x, "up": y, "down": RESOLUTION - y}[side]


def _at_wall(spec: MoverSpec, track: _Track, index: int, side: str, slack: float) -> bool:
    """Is the mover (seen at frame `index`) against the wall on `side`? At its size then or just after: a mover that
    grows by a wall is turned by the wall of its new size."""
    radius = max(SIZES[s][0] for s in track.sizes[index : index + 3] if s is not None)
    x, y = track.xy[index]
    return _wall_gap(x, y, side) <= _edge_reach(spec.shape, radius, side) + slack


def _steps(track: _Track, axis: int) -> np.ndarray:
    """|displacement| along `axis` between consecutive clean sightings of the same size (a resize moves a centroid)."""
    ok = track.clean[1:] & track.clean[:-1] & np.array([a == b for a, b in zip(track.sizes[1:], track.sizes[:-1])])
    return np.abs(np.diff(track.xy[:, axis]))[ok]


def _direction_ok(spec: MoverSpec, track: _Track, window: bool) -> bool:
    """On the stated axis, moving, little sideways drift, and turning only at walls (a bounce).

    A whole clip starts out the stated way (or bounces off the wall it starts against); a window of a long clip may
    catch the mover going either way, since bounces flip the sign.
    """
    axis = 0 if spec.direction in ("left", "right") else 1
    frames = np.nonzero(track.clean)[0]
    if len(frames) < 3:
        return False
    if np.ptp(track.xy[frames, 1 - axis]) > MAX_PERPENDICULAR:
        return False
    steps = _steps(track, axis)
    if len(steps) < 2 or np.median(steps) < MIN_SPEED:
        return False
    sides = ("left", "right") if axis == 0 else ("up", "down")
    speed = float(np.median(steps))

    def bounced(extreme: int, side: str) -> bool:
        """A turn at a wall; or near enough that the mover reached it while unseen just before or after."""
        i = int(np.searchsorted(frames, extreme))
        unseen = max(extreme - frames[max(i - 1, 0)] - 1, frames[min(i + 1, len(frames) - 1)] - extreme - 1)
        return _at_wall(spec, track, extreme, side, WALL_SLACK + (speed * (unseen + 1) / 2 if unseen > 0 else 0.0))

    def turns_only_at_walls(sign: float) -> bool:
        extreme = frames[0]  # the furthest point reached the current way
        for f in frames[1:]:
            travel = sign * (track.xy[f, axis] - track.xy[extreme, axis])
            if travel > 0:
                extreme = f
            elif travel <= -REVERSAL:  # turned back: only a wall may turn it
                if not bounced(extreme, sides[int(sign > 0)]):
                    return False
                sign, extreme = -sign, f
        return True

    if window:  # either way to start with, but a consistent bouncing path from there
        return turns_only_at_walls(1.0) or turns_only_at_walls(-1.0)
    return turns_only_at_walls(_UNIT[spec.direction][axis])


def _speed_ok(spec: MoverSpec, track: _Track) -> bool:
    steps = _steps(track, 0 if spec.direction in ("left", "right") else 1)
    if len(steps) < 2:
        return False
    m = float(np.median(steps))
    return MIN_SPEED <= m < SPEED_SPLIT if spec.speed == "slowly" else SPEED_SPLIT <= m <= MAX_SPEED


def _action_ok(spec: MoverSpec, track: _Track, actions: Sequence[str]) -> bool:
    """Each judged step t-1 -> t follows action t: still for "none"; else ~PLAYER_SPEED its way, or held at a wall."""
    judged = right = 0
    for t in range(1, len(actions)):
        if not (track.clean[t] and track.clean[t - 1]) or track.sizes[t] != track.sizes[t - 1]:
            continue
        judged += 1
        dx, dy = track.xy[t] - track.xy[t - 1]
        ux, uy = _UNIT[actions[t]]
        if actions[t] == "none":
            right += np.hypot(dx, dy) <= ACTION_STEP
            continue
        along, across = dx * ux + dy * uy, abs(dx * uy - dy * ux)
        moved = ACTION_STEP <= along <= MAX_SPEED and across <= ACTION_STEP
        held = np.hypot(dx, dy) <= 1.5 * ACTION_STEP and _at_wall(spec, track, t - 1, actions[t], PLAYER_SPEED + 0.5)
        right += moved or held
    return judged >= max(2, SIGHTED_FRACTION * (len(actions) - 1)) and right >= ACTION_AGREEMENT * judged


def _covered(view: _View, others: tuple[set[str], set[str]], x: float, y: float, radius: float) -> bool:
    """Is the disc at (x, y) at least half covered by blobs of other movers: blobs split by colour, holding another
    stated mover's shape (`others[0]`), or with a trace of another mover's colour (`others[1]`)?"""
    shapes_, colors = others
    covering = set(view.mixed) | {b for d, b in zip(view.detections, view.blob_of) if d.shape in shapes_ and b > 0}
    covering |= {b for b, traced in view.traces.items() if traced & colors}
    if not covering:
        return False
    rows, cols = np.ogrid[:RESOLUTION, :RESOLUTION]
    disc = (rows + 0.5 - y) ** 2 + (cols + 0.5 - x) ** 2 <= radius * radius
    return bool(disc.any()) and np.isin(view.labels[disc], list(covering)).mean() >= COVER_FRACTION


def _fold(p: float, lo: float, hi: float, bounce: bool) -> float:
    """Where a coordinate carried on past [lo, hi] ends up: mirrored by the walls (a mover) or held (the player)."""
    if hi <= lo:
        return lo
    if not bounce:
        return min(max(p, lo), hi)
    q = (p - lo) % (2 * (hi - lo))
    return lo + (q if q <= hi - lo else 2 * (hi - lo) - q)


def _carried(spec: MoverSpec, track: _Track, frames: np.ndarray, start: int, t: int) -> list[tuple[float, float]]:
    """Where the mover may be at frame t, carried on from its clean sighting at `start` (bouncing off walls): at the
    velocity of its step next to `start` on t's side (at its usual speed), or at its median velocity around there."""
    i = int(np.searchsorted(frames, start))
    pair = frames[i - 1 : i + 1] if t > start else frames[i : i + 2]
    velocities = []
    if len(pair) == 2:
        step = (track.xy[pair[1]] - track.xy[pair[0]]) / (pair[1] - pair[0])
        both = track.clean[1:] & track.clean[:-1]
        usual = np.median(np.hypot(*np.diff(track.xy, axis=0)[both].T)) if both.any() else np.hypot(*step)
        velocities.append(step / max(float(np.hypot(*step)), 1e-9) * usual)
    near = np.sort(frames[np.argsort(np.abs(frames - start), kind="stable")[:4]])
    if len(near) >= 2:
        velocities.append(np.median(np.diff(track.xy[near], axis=0) / np.diff(near)[:, None], axis=0))
    r = SIZES[track.sizes[start] or "medium"][0]
    reach = {side: _edge_reach(spec.shape, r, side) for side in DIRECTIONS}
    places = []
    for velocity in velocities or [np.zeros(2)]:
        x, y = track.xy[start] + velocity * (t - start)
        places.append(
            (
                _fold(x, reach["left"], RESOLUTION - reach["right"], not spec.player),
                _fold(y, reach["up"], RESOLUTION - reach["down"], not spec.player),
            )
        )
    return places


def _hidden(spec: MoverSpec, track: _Track, views: list[_View], others: tuple[set[str], set[str]]) -> np.ndarray:
    """(T,) frames where the mover is not cleanly seen but plausibly hidden by another mover.

    Some place it could be (on the line between the clean sightings around, or carried on from either at its speed,
    bouncing off walls) must be at least half covered by another mover's blob (`_covered`; `others`: the other
    movers' shapes and colours). A mover that vanishes, or is drawn as a wrong shape on its own, is not hidden.
    """
    frames = np.nonzero(track.clean)[0]
    hidden = np.zeros(len(views), dtype=bool)
    if len(frames) == 0:
        return hidden
    radius = max(2.0, 0.5 * min(SIZES[s][0] for s in set(track.sizes) - {None}))
    for t in np.nonzero(~track.clean)[0]:
        before, after = frames[frames < t], frames[frames > t]
        places = [place for f in (*before[-1:], *after[:1]) for place in _carried(spec, track, frames, f, t)]
        if len(before) and len(after):
            a, b = before[-1], after[0]
            places.append(tuple(track.xy[a] + (track.xy[b] - track.xy[a]) * (t - a) / (b - a)))
        hidden[t] = any(_covered(views[t], others, x, y, radius) for x, y in places)
    return hidden


def _consistent(track: _Track, hidden: np.ndarray) -> bool:
    """Seen cleanly at least twice, never jumping (no swaps, no shuffled frames), never gone unless hidden."""
    frames = np.nonzero(track.clean)[0]
    if len(frames) < 2 or not (track.seen | hidden).all():
        return False
    for a, b in zip(frames[:-1], frames[1:]):
        limit = MAX_JUMP * (b - a) + JUMP_SLACK + (RESIZE_SLACK if track.sizes[a] != track.sizes[b] else 0.0)
        if np.hypot(*(track.xy[b] - track.xy[a])) > limit:
            return False
    return True


def _clip_scores_one(clip: Clip, views: list[_View], actions: Sequence[str], window: bool) -> dict[str, float]:
    """1.0 / 0.0 per category that applies to this clip (all its stated movers pass), plus its 'overall' mean."""
    specs = clip.condition.movers
    extra = np.mean([v.objects > len(specs) for v in views])
    verdicts: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
    tracks = [_track(spec, views, len(specs)) for spec in specs]
    for i, (spec, track) in enumerate(zip(specs, tracks)):
        other_shapes = {s.shape for s in specs} - {spec.shape}
        other_colors = {
            c for j, s in enumerate(specs) if j != i for c in (s.color, s.becomes, *tracks[j].values(tracks[j].colors))
        }
        hidden = _hidden(spec, track, views, (other_shapes, other_colors - {None, spec.color, spec.becomes}))
        visible = len(views) - int((hidden & ~track.seen).sum())
        identity = track.seen.sum() >= max(1.0, SIGHTED_FRACTION * visible) and extra <= MAX_EXTRA_FRACTION
        if spec.size or spec.resize:
            identity = identity and _two_phase(track.values(track.sizes), _size_pairs(spec), need_both=not window)
        verdicts["identity"].append(bool(identity))
        if spec.color:
            pairs = [(spec.color, spec.becomes)]
            verdicts["color"].append(_two_phase(track.values(track.colors), pairs, need_both=not window and bool(spec.becomes)))
        # In a window of a long clip a mover may spend every frame partly under another (crossing paths, the player
        # on top): always there, never measurable. Its motion is then not judged rather than failed, so the world's
        # own late windows score as its early ones. Whole clips are sampled so that this does not happen.
        occluded = window and bool((track.seen | hidden).all()) and track.clean.sum() < 3
        if spec.direction and not occluded:
            verdicts["direction"].append(_direction_ok(spec, track, window))
        if spec.speed and not occluded:
            verdicts["speed"].append(_speed_ok(spec, track))
        if spec.player and not occluded:
            verdicts["action"].append(_action_ok(spec, track, actions))
        verdicts["consistency"].append(occluded or _consistent(track, hidden))
    scores = {c: float(all(v)) for c, v in verdicts.items() if v}
    scores["overall"] = float(np.mean(list(scores.values())))
    return scores


def _flicker(frames: np.ndarray, foreground: np.ndarray) -> float:
    """Mean |change| (in [0, 1]) of pixels at least 6 px from any object in both of two consecutive frames.

    Objects move at most a few pixels a frame, so in the world's own clips these pixels are exactly background and
    the score is 0; shimmering backgrounds raise it. A frame pair with almost no background (under 1/8 of the
    frame, e.g. noise) is scored over all its pixels.
    """
    if frames.shape[1] < 2:
        return 0.0
    mask = torch.from_numpy(foreground).float().flatten(0, 1).unsqueeze(1)
    near = torch.nn.functional.max_pool2d(mask, (13, 1), stride=1, padding=(6, 0))  # a 13 x 13 dilation, separably
    near = torch.nn.functional.max_pool2d(near, (1, 13), stride=1, padding=(0, 6)).squeeze(1).bool().numpy()
    near = near.reshape(foreground.shape)
    quiet = ~near[:, 1:] & ~near[:, :-1]  # (B, T-1, H, W)
    change = np.abs(frames[:, 1:].astype(np.float32) - frames[:, :-1].astype(np.float32)).mean(-1) / 255.0
    count = quiet.sum((-1, -2))
    enough = count >= quiet.shape[-1] * quiet.shape[-2] / 8
    over_quiet = (change * quiet).sum((-1, -2)) / np.maximum(count, 1)
    return float(np.where(enough, over_quiet, change.mean((-1, -2))).mean())


def _score(frames: np.ndarray, clips: Sequence[Clip], start: int, stop: int, window: bool) -> tuple[dict[str, np.ndarray], float]:
    part = frames[:, start:stop]
    per_clip: dict[str, list[float]] = {c: [] for c in (*CATEGORIES, "overall")}
    for clip, video in zip(clips, part):
        actions = clip.actions[start:stop] if clip.interactive else ("none",) * (stop - start)
        scores = _clip_scores_one(clip, [_look(f) for f in video], actions, window)
        for c in per_clip:
            per_clip[c].append(scores.get(c, np.nan))
    return {c: np.array(v) for c, v in per_clip.items()}, _flicker(part, _foreground(part))


def _summary(per_clip: dict[str, np.ndarray], flicker: float) -> dict[str, float]:
    out = {c: float(np.nanmean(v)) for c, v in per_clip.items() if c in CATEGORIES and not np.isnan(v).all()}
    out["overall"] = float(np.mean(per_clip["overall"]))
    out["flicker"] = flicker
    return out


def clip_scores(frames_uint8: np.ndarray, clips: Sequence[Clip]) -> dict[str, np.ndarray]:
    """Per-clip verdicts: category -> (B,) of 1.0 / 0.0, nan where the category does not apply; 'overall' per clip
    is the mean of the categories that apply (a reward for reward-weighted training)."""
    _check_video(frames_uint8, clips)
    for clip in clips:
        _check_actions_cover(clip, frames_uint8.shape[1])
    return _score(frames_uint8, clips, 0, frames_uint8.shape[1], window=False)[0]


def judge_clips(frames_uint8: np.ndarray, clips: Sequence[Clip]) -> dict[str, float]:
    """Fraction of clips that pass each category, over the clips it applies to; 'overall' and 'flicker'.

    `frames_uint8`: (B, T, 64, 64, 3) uint8 (see `to_uint8`). A mover passes
      identity     recognised (its shape) in >= half the frames where another mover does not hide it, stated size
                   (and resize) followed, and at most a quarter of the frames hold more objects than the caption;
      color        >= 90% of its colour readings follow the stated colour, then the stated new one (both seen);
      direction    moves on the stated axis (<= 3 px sideways), starts the stated way, turns only at walls;
      speed        median |step| on its axis in [0.5, 1.6) px/frame for "slowly", [1.6, 4] for "quickly";
      action       the player (interactive clips): >= 85% of its steps follow the frame's action;
      consistency  no jump faster than 3.5 px/frame, and wherever it is unseen something covers where it should be.
    Motion is measured only on sightings of a mover alone and whole (not partly under another). A clip passes a
    category when all its movers that the category applies to pass. A category no clip states (e.g. action without
    interactive clips) is left out. Clips are judged over the frames they were sampled for (a stated change must
    show). 'overall' is the mean over clips of the mean of their
    applicable categories; 'flicker' (lower is better, not in overall) is the mean change of background pixels.
    """
    return clip_verdicts(frames_uint8, clips)[0]


def clip_verdicts(frames_uint8: np.ndarray, clips: Sequence[Clip]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """`judge_clips`'s summary and the per-clip verdicts it averages (as `clip_scores`), from one judging pass:
    two models' per-clip scores on the same clips give the gap between them a standard error."""
    _check_video(frames_uint8, clips)
    for clip in clips:
        _check_actions_cover(clip, frames_uint8.shape[1])
    per_clip, flicker = _score(frames_uint8, clips, 0, frames_uint8.shape[1], window=False)
    return _summary(per_clip, flicker), per_clip


def judge_window(frames_uint8: np.ndarray, clips: Sequence[Clip], start: int, stop: int) -> dict[str, float]:
    """`judge_clips` over frames [start, stop) of long clips, so drift = window(0, 16) - window(200, 216).

    Bounces flip signs, so direction is judged by axis, motion and turning only at walls, not by sign; a stated
    change may fall before, inside or after the window; actions are the clip's actions of those frames.
    """
    return window_verdicts(frames_uint8, clips, start, stop)[0]


def window_verdicts(
    frames_uint8: np.ndarray, clips: Sequence[Clip], start: int, stop: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """`judge_window`'s summary and the per-clip verdicts it averages (category -> (B,), nan where it does not
    apply; 'overall' per clip): paired per-clip scores of two windows give drift a standard error."""
    _check_video(frames_uint8, clips)
    total = frames_uint8.shape[1]
    if not (isinstance(start, int | np.integer) and isinstance(stop, int | np.integer) and 0 <= start < stop <= total):
        raise ValueError(f"need integers 0 <= start < stop <= {total} (the clips' frames), got start={start!r} stop={stop!r}")
    if stop - start < 2:
        raise ValueError(f"a window needs at least 2 frames to see motion, got [{start}, {stop})")
    for clip in clips:
        _check_actions_cover(clip, stop)
    per_clip, flicker = _score(frames_uint8, clips, int(start), int(stop), window=True)
    return _summary(per_clip, flicker), per_clip


def frame_scores(frames_uint8: np.ndarray, clips: Sequence[Clip]) -> np.ndarray:
    """(B, T) in [0, 1]: per frame, the fraction of the clip's stated movers found with their shape and a stated
    colour (before or after a stated change). Cheap to plot over time; frames where movers overlap score below 1."""
    _check_video(frames_uint8, clips, min_frames=1)
    out = np.zeros(frames_uint8.shape[:2])
    for i, (clip, video) in enumerate(zip(clips, frames_uint8)):
        specs = clip.condition.movers
        for t, frame in enumerate(video):
            found = _look(frame).detections
            hits = sum(
                any(d.shape == s.shape and (s.color is None or d.color in (s.color, s.becomes)) for d in found) for s in specs
            )
            out[i, t] = hits / len(specs)
    return out


def mover_speeds(frames_uint8: np.ndarray, clips: Sequence[Clip]) -> list[tuple[str, float]]:
    """(stated speed, measured px/frame) for every mover whose caption states a speed: the median |step| on its
    stated axis between clean sightings, as the `speed` check reads it; nan when fewer than two steps are measurable.

    The `speed` category only says pass or fail; this says which way a model misses (too slow, too fast, static), which
    is what a distilled student's mode-seeking tends to get wrong (Reward Forcing, sec. 3.3).
    """
    _check_video(frames_uint8, clips)
    out: list[tuple[str, float]] = []
    for clip, video in zip(clips, frames_uint8):
        specs = clip.condition.movers
        views = [_look(f) for f in video]
        for spec in specs:
            if not (spec.speed and spec.direction):
                continue
            steps = _steps(_track(spec, views, len(specs)), 0 if spec.direction in ("left", "right") else 1)
            out.append((spec.speed, float(np.median(steps)) if len(steps) >= 2 else float("nan")))
    return out


def objects_per_frame(frames_uint8: np.ndarray) -> np.ndarray:
    """(B, T) int: objects the judge sees in each frame (a blob of several colours counts one per colour), to compare
    with how many movers the caption names: a student that merges movers into one shows up here first."""
    if frames_uint8.ndim != 5 or frames_uint8.shape[-1] != 3 or frames_uint8.dtype != np.uint8:
        raise ValueError(f"expected (B, T, H, W, 3) uint8 frames, got {frames_uint8.shape} {frames_uint8.dtype}")
    return np.array([[_look(f).objects for f in video] for video in frames_uint8], dtype=np.int64).reshape(frames_uint8.shape[:2])


def objects_vs_named(frames_uint8: np.ndarray, clips: Sequence[Clip]) -> float:
    """Mean over clips of (median objects seen per frame) / (movers the caption names): 1 for the world's own clips,
    below 1 for a model that drops or merges movers (the shipped Self-Forcing students drew one where captions named
    two or three), above 1 for one that draws extra pieces."""
    _check_video(frames_uint8, clips)
    seen = np.median(objects_per_frame(frames_uint8), axis=1)
    return float(np.mean(seen / np.array([len(c.condition.movers) for c in clips])))


REWARD_CATEGORIES = ("direction", "speed", "action")  # the motion checks: what a mode-seeking student loses first


def motion_rewards(frames_uint8: np.ndarray, clips: Sequence[Clip], categories: Sequence[str] = REWARD_CATEGORIES) -> np.ndarray:
    """(B,) in [0, 1]: per clip, the mean of the judge's verdicts in `categories` that apply to it (Re-DMD's reward).

    A clip none of them applies to (e.g. only an unstated-speed mover and `("speed",)`) gets its overall score, so
    every clip is rewarded for what it can be judged on. `categories` may name "overall".
    """
    unknown = sorted(set(categories) - {*CATEGORIES, "overall"})
    if not categories or unknown:
        raise ValueError(f"reward categories must be among {', '.join((*CATEGORIES, 'overall'))}, got {list(categories)}")
    per_clip = clip_scores(frames_uint8, clips)
    picked = np.stack([per_clip[c] for c in categories])  # (categories, B), nan where one does not apply
    applies = ~np.isnan(picked)
    means = np.where(applies, picked, 0.0).sum(0) / np.maximum(applies.sum(0), 1)
    return np.where(applies.any(0), means, per_clip["overall"]).astype(np.float32)
