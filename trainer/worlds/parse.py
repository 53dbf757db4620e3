"""Read a prompt back into the shapes world's structured `Condition`, or None when it is outside the world's grammar.

The grammar is the one `shapes.caption_for` writes (its prefixes and suffixes, noun-phrase forms, relations and
pair forms) plus a few obvious variants, over the world's own vocabulary tables, so a synonym added to shapes.py
is understood here at once. Anything else (an unknown word, a clash such as "a red blue circle", a count
without a plural, more objects than a scene holds) gives None rather than a guess: a judge verdict on a misread
prompt would mislead more than no verdict.
"""

from __future__ import annotations

import re
from dataclasses import replace

from trainer.worlds import shapes
from trainer.worlds.shapes import Condition, ObjSpec

Token = tuple[str, object]  # (kind, value), e.g. ("color", "red"), ("rel", "left_of"), ("and", None)

# Sentence frames the world's captions (and people) wrap around the description; stripped before parsing.
PREFIXES = (
    "a picture of",
    "an image of",
    "a drawing of",
    "a photo of",
    "an illustration of",
    "draw",
    "show",
    "show me",
    "render",
    "generate",
    "make",
    "create",
    "please",
    "there is",
    "there are",
)
SUFFIXES = ("on a dark background", "on a black background", "in the scene", "in the picture", "in the image")
RELATION_WORDS = {
    "left_of": ("to the left of", "left of"),
    "right_of": ("to the right of", "right of"),
    "above": ("above", "on top of", "over"),
    "below": ("below", "underneath", "beneath", "under"),
}
# "{a} on the left and {b} on the right": the side of the first phrase names the relation.
SIDES = {"on the left": "left", "on the right": "right", "at the top": "top", "on top": "top", "at the bottom": "bottom"}
SIDE_RELATIONS = {
    ("left", "right"): "left_of",
    ("right", "left"): "right_of",
    ("top", "bottom"): "above",
    ("bottom", "top"): "below",
}
CONNECTORS = ("and", "next to", "together with", "beside", "alongside")
# The canonical wording `describe` writes; also what the parser reads best.
_CANONICAL_RELATION = {"left_of": "to the left of", "right_of": "to the right of", "above": "above", "below": "below"}
_ALLOWED = re.compile(r"^[a-z0-9 ,\-']*$")
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*|,")


def _lexicon() -> dict[tuple[str, ...], Token]:
    """Every word or phrase the grammar knows, keyed by its words; built from the world's tables."""
    words: dict[str, Token] = {}
    for name, (_, synonyms) in shapes.COLORS.items():
        for word in synonyms:
            words[word] = ("color", name)
            words[f"{word}-coloured"] = words[f"{word}-colored"] = ("color", name)
    for name, (_, synonyms) in shapes.SIZES.items():
        for word in synonyms:
            words[word] = ("size", name)
    for name, (singular, plural) in shapes.SHAPES.items():
        words.update({word: ("shape", (name, False)) for word in singular})
        words.update({word: ("shape", (name, True)) for word in plural})
    for count, synonyms in shapes.NUMBER_WORDS.items():
        words.update({word: ("number", count) for word in synonyms})
    words.update({"a": ("article", None), "an": ("article", None), "one": ("article", None), "1": ("article", None)})
    words.update({"exactly": ("exactly", None), "in": ("in", None), "that is": ("that_is", None), "which is": ("that_is", None)})
    words.update({"all": ("all", None), ",": ("comma", None)})
    for relation, phrases in RELATION_WORDS.items():
        words.update({phrase: ("rel", relation) for phrase in phrases})
    words.update({phrase: ("side", side) for phrase, side in SIDES.items()})
    words.update({phrase: ("and" if phrase == "and" else "pair", None) for phrase in CONNECTORS})
    return {tuple(phrase.replace(",", " , ").split()): token for phrase, token in words.items()}


LEXICON = _lexicon()
_LONGEST = max(map(len, LEXICON))


def _strip_frames(words: list[str]) -> list[str]:
    """Drop leading prefixes and trailing suffixes (repeatedly: "show me a picture of ...")."""
    prefixes = sorted((p.split() for p in PREFIXES), key=len, reverse=True)
    suffixes = sorted((s.split() for s in SUFFIXES), key=len, reverse=True)
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if words[: len(p)] == p and len(words) > len(p):
                words, changed = words[len(p) :], True
                break
        for s in suffixes:
            if words[-len(s) :] == s and len(words) > len(s):
                words, changed = words[: -len(s)], True
                break
    return words


def tokens(prompt: str) -> list[Token] | None:
    """The prompt as grammar tokens (longest phrase first), or None if any word is unknown."""
    if not isinstance(prompt, str):
        return None
    text = " ".join(prompt.lower().split()).rstrip(".!?").strip()
    if not text or not _ALLOWED.match(text):
        return None
    words = _strip_frames(_WORD.findall(text.replace("'", "")))
    out: list[Token] = []
    i = 0
    while i < len(words):
        for n in range(min(_LONGEST, len(words) - i), 0, -1):
            token = LEXICON.get(tuple(words[i : i + n]))
            if token is not None:
                out.append(token)
                i += n
                break
        else:
            return None
    return out


def _spec(group: list[Token]) -> ObjSpec | None:
    """One noun phrase: [exactly] [a|number] {size|colour}* shape [in C | that is C | [,] all C]."""
    kinds = [kind for kind, _ in group]
    i = 0
    exactly = kinds[:1] == ["exactly"]
    i += exactly
    count, plural = 1, False
    if i < len(group) and kinds[i] == "number":
        count, plural = int(group[i][1]), True
        i += 1
    elif i < len(group) and kinds[i] == "article":
        i += 1
    elif exactly:
        return None  # "exactly" needs a number
    attributes: dict[str, str] = {}
    while i < len(group) and kinds[i] in ("size", "color"):
        if kinds[i] in attributes:
            return None  # "a red blue circle", "a big small square"
        attributes[kinds[i]] = str(group[i][1])
        i += 1
    if i >= len(group) or kinds[i] != "shape":
        return None
    shape, is_plural = group[i][1]
    if is_plural != plural:
        return None  # "two circle", "circles" without a count
    tail = kinds[i + 1 :]
    if tail:
        if tail not in (["in", "color"], ["that_is", "color"], ["comma", "all", "color"], ["all", "color"]):
            return None
        color = str(group[-1][1])
        if attributes.get("color", color) != color:
            return None  # "a red circle in blue"
        attributes["color"] = color
    return ObjSpec(shape, attributes.get("color"), attributes.get("size"), count)


def _groups(toks: list[Token]) -> tuple[list[list[Token]], str | None] | None:
    """Split the tokens into one or two noun phrases and the relation between them, if any."""
    kinds = [kind for kind, _ in toks]
    sides = [i for i, kind in enumerate(kinds) if kind == "side"]
    if sides:
        # "{a} on the left and {b} on the right"
        if len(sides) != 2 or sides[1] != len(toks) - 1 or kinds[sides[0] + 1 : sides[0] + 2] != ["and"]:
            return None
        relation = SIDE_RELATIONS.get((str(toks[sides[0]][1]), str(toks[sides[1]][1])))
        return ([toks[: sides[0]], toks[sides[0] + 2 : -1]], relation) if relation else None
    relations = [i for i, kind in enumerate(kinds) if kind == "rel"]
    if len(relations) > 1:
        return None
    if relations:
        r = relations[0]
        return [toks[:r], toks[r + 1 :]], str(toks[r][1])
    # A comma separates phrases unless it opens ", all <colour>".
    cuts = [i for i, kind in enumerate(kinds) if kind in ("and", "pair") or (kind == "comma" and kinds[i + 1 : i + 2] != ["all"])]
    if len(cuts) > 1:
        return None
    if cuts:
        return [toks[: cuts[0]], toks[cuts[0] + 1 :]], None
    return [toks], None


def _category(specs: tuple[ObjSpec, ...], relation: str | None) -> str:
    """The GenEval-style category a world caption with these specs would have."""
    if len(specs) == 1:
        spec = specs[0]
        return "counting" if spec.count > 1 else "size" if spec.size else "colors" if spec.color else "single_object"
    if relation:
        return "position"
    if any(spec.count > 1 for spec in specs):
        return "counting"
    return "color_attr" if any(spec.color for spec in specs) else "two_objects"


def parse(prompt: str) -> Condition | None:
    """The structured condition a prompt states, or None when it is outside the world's grammar."""
    toks = tokens(prompt)
    if not toks:
        return None
    split = _groups(toks)
    if split is None:
        return None
    groups, relation = split
    specs = tuple(_spec(group) for group in groups)
    if any(spec is None for spec in specs):
        return None
    if relation and any(spec.count != 1 for spec in specs):
        return None  # the judge relates single objects only
    if sum(spec.count for spec in specs) > shapes.MAX_OBJECTS:
        return None  # no scene of this world holds that many
    return Condition(_category(specs, relation), specs, relation)


def canonical(condition: Condition) -> Condition:
    """One form per meaning: relations as left_of/above, unrelated pairs in a fixed order.

    "a circle right of a square" and "a square left of a circle" become equal, as do "a and b" and "b and a".
    """
    specs, relation = condition.specs, condition.relation
    flipped = {"right_of": "left_of", "below": "above"}
    if relation in flipped and len(specs) == 2:
        specs, relation = (specs[1], specs[0]), flipped[relation]
    elif relation is None and len(specs) > 1:
        specs = tuple(sorted(specs, key=lambda s: (s.shape or "", s.color or "", s.size or "", s.count)))
    return replace(condition, specs=specs, relation=relation)


def _describe_spec(spec: ObjSpec) -> str:
    singular, plural = shapes.SHAPES[spec.shape] if spec.shape else (("shape",), ("shapes",))
    words = " ".join(w for w in (spec.size, spec.color, plural[0] if spec.count > 1 else singular[0]) if w)
    if spec.count > 1:
        return f"{shapes.NUMBER_WORDS[spec.count][0]} {words}"
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def describe(condition: Condition) -> str:
    """The condition in plain words, e.g. 'a red circle to the left of a blue square' (parses back to it)."""
    phrases = [_describe_spec(spec) for spec in condition.specs]
    if condition.relation and len(phrases) == 2:
        return f"{phrases[0]} {_CANONICAL_RELATION[condition.relation]} {phrases[1]}"
    return " and ".join(phrases)
