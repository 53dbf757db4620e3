"""The text world: verifiable short tasks for a diffusion language model, free text from fortunes, and a judge.

Four judged families, each a prompt and a short worked answer ending in "#### <final>" (GSM8K's convention):

    arithmetic  "Tom has 12 apples. He buys 7 more and gives away 5. How many apples does he have now?"
                -> "12 + 7 = 19. 19 - 5 = 14. #### 14"
    sorting     "Sort these numbers from smallest to largest: 41, 7, 23, 15" -> "7, 15, 23, 41 #### 7, 15, 23, 41"
    reversal    "Reverse the letters: p l a n e" -> "e n a l p #### e n a l p"
    logic       "Ann is taller than Bob. Bob is taller than Cy. Is Cy taller than Ann?" -> "Ann > Bob > Cy. #### no"

Arithmetic problems take 2-3 operations (+, -, and one-digit *), state numbers of at most 50 and never go
negative or past 999, and come from several story schemas with many names, objects and phrasings, so the same
computation is asked in many words. A fifth family, "freeform", continues a quote from Debian's `fortunes`
package; it is trained on but never judged (its final is "").

Everything is seeded: `sample_example(rng)` with the same `random.Random` state gives the same example. Prompts
whose crc32 % 16 == 0 are held out for evaluation (as in shapes.py), so `split="eval"` examples are never trained on.
Prompts and answers stay short enough for a 48-token prompt and a 48-token answer canvas of the BPE tokenizer in
trainer/text_tokenizer.py (tests/test_textworld.py checks this over thousands of samples).
"""

from __future__ import annotations

import functools
import os
import random
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

FAMILIES = ("arithmetic", "sorting", "reversal", "logic")
FREEFORM = "freeform"
EVAL_BUCKET = 16  # prompts whose crc32 % 16 == 0 are held out for evaluation, never trained on
FORTUNES_DIR = Path("/usr/share/games/fortunes")  # Debian's `fortunes` package
FORTUNES_ENV = "DISTILLERY_FORTUNES_DIR"
MAX_QUOTE_CHARS = 300
MAX_QUOTE_DIGITS = 4  # every digit is its own token: number-heavy quotes (dates, tables) blow the answer budget
# Token budgets of the 48 + 48 canvas (trainer/text_tokenizer.py): [BOS] and [SEP] take 2 of the prompt's 48,
# one [EOS] at least 1 of the answer's 48.
PROMPT_TOKENS = 46
ANSWER_TOKENS = 47
# Without a token counter, texts are kept short by characters: judged prompts within 160 characters stay under
# 46 tokens, and a freeform continuation is cut at a cost of 95 (characters, plus 2 more for each capital or symbol
# other than . , ': those split into short BPE pieces); at a 2048 vocabulary that stays under 47 tokens. Pass
# `count_tokens` to make the freeform cut exact.
MAX_PROMPT_CHARS = 160
FREEFORM_ANSWER_COST = 95
FREEFORM_PROMPT_CHARS = 60
FREEFORM_PROMPT_WORDS = (3, 8)
MAX_RESULT = 999
MAX_OPERAND = 50


@dataclass(frozen=True)
class TextExample:
    family: str  # one of FAMILIES, or "freeform"
    prompt: str
    answer: str  # worked solution ending in "#### <final>" ("freeform": the continuation, no "####")
    final: str  # what the judge compares against ("" for freeform: not judged)


# ----------------------------------------------------------------------------- vocabulary

# (name, subject pronoun, object pronoun)
_PEOPLE = tuple(
    [(n, "he", "him") for n in "Tom Sam Ben Leo Max Omar Ravi Jack Luis Hugo Ali Noah Kenji Ivan Theo Owen Paul".split()]
    + [(n, "she", "her") for n in "Mia Ann Lily Emma Zoe Nina Sara Aisha Rosa Yuki Maya Lucy Ella Grace Hana Chloe".split()]
)
# (singular, plural)
_OBJECTS = tuple(
    tuple(pair.split("/"))
    for pair in (
        "apple/apples, marble/marbles, sticker/stickers, pencil/pencils, book/books, cookie/cookies, card/cards, "
        "shell/shells, stamp/stamps, coin/coins, balloon/balloons, bead/beads, egg/eggs, flower/flowers, "
        "candy/candies, crayon/crayons, button/buttons, rock/rocks, orange/oranges, cupcake/cupcakes, toy car/toy cars, "
        "feather/feathers, ribbon/ribbons, puzzle/puzzles, comic/comics, lemon/lemons, plum/plums, seashell/seashells"
    ).split(", ")
)
_PACKS = ("bags", "boxes", "packs", "jars", "baskets", "bundles")
_ITEMS = tuple(
    tuple(pair.split("/"))
    for pair in (
        "notebook/notebooks, pen/pens, sandwich/sandwiches, ticket/tickets, cupcake/cupcakes, comic book/comic books, "
        "toy car/toy cars, pencil/pencils, juice box/juice boxes, muffin/muffins, poster/posters, kite/kites, "
        "candle/candles, mug/mugs"
    ).split(", ")
)
# (place, group plural, group singular, things)
_GRIDS = (
    ("garden", "rows", "row", "flowers"),
    ("orchard", "rows", "row", "trees"),
    ("bakery", "trays", "tray", "muffins"),
    ("library", "shelves", "shelf", "books"),
    ("parking lot", "rows", "row", "cars"),
    ("classroom", "rows", "row", "desks"),
    ("farm", "pens", "pen", "sheep"),
    ("box", "layers", "layer", "chocolates"),
    ("hall", "rows", "row", "chairs"),
    ("greenhouse", "shelves", "shelf", "plants"),
)
# (third person verb, base verb, unit)
_ACTIVITIES = (
    ("reads", "read", "pages"),
    ("runs", "run", "miles"),
    ("bakes", "bake", "cookies"),
    ("writes", "write", "lines"),
    ("saves", "save", "dollars"),
    ("swims", "swim", "laps"),
    ("picks", "pick", "apples"),
    ("solves", "solve", "puzzles"),
    ("folds", "fold", "paper cranes"),
    ("paints", "paint", "pictures"),
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WORDS = tuple(
    dict.fromkeys(
        "red blue green cat dog fox bird fish tree lake sun moon star rain snow wind road door book cup hat "
        "ship train car bike bread milk tea cake rice egg apple pear plum lemon king queen frog bear lion wolf "
        "owl duck goat horse sheep cow mouse river hill cloud stone sand leaf rose milk salt gold iron glass "
        "paper chair table lamp clock bell drum song dance jump run walk swim sing read write open close big "
        "small fast slow warm cold old new happy quiet loud dark light soft hard".split()
    )
)
_SPELL_WORDS = tuple(w for w in _WORDS if 3 <= len(w) <= 8) + tuple(
    "plane house garden window orange purple yellow pencil rabbit monkey turtle planet rocket silver castle "
    "button candle basket forest island letter number bottle".split()
)
# (comparative, opposite comparative, superlative, opposite superlative)
_ORDERS = (
    ("taller", "shorter", "tallest", "shortest"),
    ("older", "younger", "oldest", "youngest"),
    ("faster", "slower", "fastest", "slowest"),
    ("heavier", "lighter", "heaviest", "lightest"),
    ("stronger", "weaker", "strongest", "weakest"),
)
_NONCE = tuple("zorp blick wug dax fep toma lorb quim snib vorn glip treb".split())
_NUMBER_LIST_ASC = (
    "Sort these numbers from smallest to largest: {}",
    "Put these numbers in increasing order: {}",
    "Arrange in ascending order: {}",
    "Order from least to greatest: {}",
    "Sort in ascending order: {}",
    "List these numbers from smallest to biggest: {}",
)
_NUMBER_LIST_DESC = (
    "Sort these numbers from largest to smallest: {}",
    "Put these numbers in decreasing order: {}",
    "Arrange in descending order: {}",
    "Order from greatest to least: {}",
    "Sort in descending order: {}",
    "List these numbers from biggest to smallest: {}",
)
_REVERSE_LETTERS = ("Reverse the letters: {}", "Write these letters backwards: {}", "Spell backwards: {}", "Reverse: {}")
_REVERSE_WORDS = (
    "Reverse the words: {}",
    "Reverse the order of these words: {}",
    "Write these words in reverse order: {}",
    "Say these words backwards: {}",
)


# ----------------------------------------------------------------------------- arithmetic

Step = tuple[int, str, int, int]  # (a, op, b, a op b)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _apply(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _inventory(rng: random.Random) -> tuple[str, list[Step]]:
    """Someone's stock of one object changes through 2-3 events."""
    name, he, him = rng.choice(_PEOPLE)
    one, many = rng.choice(_OBJECTS)
    friend = rng.choice([p for p in _PEOPLE if p[0] != name])[0]
    cur = rng.randint(5, MAX_OPERAND)
    start = rng.choice(
        (
            f"{name} has {cur} {many}.",
            f"{name} starts with {cur} {many}.",
            f"{name} collected {cur} {many}.",
            f"There are {cur} {many} in {name}'s bag.",
            f"{name} owns {cur} {many}.",
        )
    )
    sentences, steps, target, scaled = [start], [], rng.choice((2, 3)), False
    while len(steps) < target:
        subject = rng.choice((name, _cap(he)))
        kinds = ["add", "sub", "sub"] + (["group"] if target - len(steps) >= 2 else [])
        kinds += ["scale"] if cur <= 150 and not scaled else []  # at most once: "doubles" twice reads oddly
        kind = rng.choice(kinds)
        if kind == "sub" and cur < 2:
            kind = "add"
        if kind == "add":
            n = rng.randint(2, MAX_OPERAND)
            sentence = rng.choice(
                (
                    f"{subject} buys {n} more.",
                    f"{subject} finds {n} more.",
                    f"{friend} gives {him} {n} more.",
                    f"Then {he} gets {n} more from {friend}.",
                    f"{subject} picks up {n} more {many}.",
                    f"Later {he} wins {n} {many}.",
                )
            )
            step = (cur, "+", n, cur + n)
        elif kind == "sub":
            n = rng.randint(1, min(cur, MAX_OPERAND))
            sentence = rng.choice(
                (
                    f"{subject} gives away {n}.",
                    f"{subject} gives {n} to {friend}.",
                    f"{subject} loses {n} of them.",
                    f"{subject} sells {n} {many}.",
                    f"Then {he} uses {n} {many}.",
                    f"{friend} takes {n} of them.",
                )
            )
            step = (cur, "-", n, cur - n)
        elif kind == "group":
            k, m = rng.randint(2, 9), rng.randint(2, 12)
            pack = rng.choice(_PACKS)
            sentence = rng.choice(
                (
                    f"{subject} buys {k} {pack} with {m} {many} in each.",
                    f"{subject} gets {k} {pack} of {many}, and each holds {m}.",
                    f"{friend} gives {him} {k} {pack} with {m} {many} in each one.",
                )
            )
            step = (cur, "+", k * m, cur + k * m)
        else:
            k = rng.choice((2, 2, 3))
            word = {2: "doubles", 3: "triples"}[k]
            sentence = rng.choice(
                (
                    f"Then the number of {many} {he} has {word}.",
                    f"Then {name}'s pile of {many} {word}.",
                    f"{subject} ends up with {'twice' if k == 2 else 'three times'} as many {many} as before.",
                )
            )
            step = (cur, "*", k, cur * k)
        if step[3] > MAX_RESULT:
            continue
        if kind == "group":
            steps.append((k, "*", m, k * m))
        scaled = scaled or kind == "scale"
        steps.append(step)
        sentences.append(sentence)
        cur = step[3]
    question = rng.choice(
        (
            f"How many {many} does {name} have now?",
            f"How many {many} does {he} have now?",
            f"How many {many} does {name} have in the end?",
            f"How many {many} does {he} end up with?",
            f"What is the number of {many} {name} has now?",
        )
    )
    return " ".join([*sentences, question]), steps


def _shopping(rng: random.Random) -> tuple[str, list[Step]]:
    """Prices times quantities: change from a bill, a total of two items, or a cost plus a fee."""
    name, he, _ = rng.choice(_PEOPLE)
    (one, many), (one2, many2) = rng.sample(_ITEMS, 2)
    q, p = rng.randint(2, 9), rng.randint(2, 9)
    cost = q * p
    form = rng.choice(("change", "two_items", "fee"))
    if form == "change":
        while cost > 50:  # the bill is at most 50 dollars (numbers in a prompt stay <= 50)
            q, p = rng.randint(2, 9), rng.randint(2, 9)
            cost = q * p
        bill = rng.choice((20, 50)) if cost <= 20 else 50
        prompt = rng.choice(
            (
                f"{name} buys {q} {many} for {p} dollars each and pays with a {bill} dollar bill. How much change does {he} get?",
                f"At the market, {name} buys {q} {many}. Each one costs {p} dollars. {_cap(he)} pays with {bill} dollars. "
                f"How many dollars does {he} get back?",
                f"One {one} costs {p} dollars. {name} buys {q} of them with a {bill} dollar bill. "
                f"How many dollars of change does {he} get?",
            )
        )
        return prompt, [(q, "*", p, cost), (bill, "-", cost, bill - cost)]
    if form == "two_items":
        q2, p2 = rng.randint(2, 9), rng.randint(2, 9)
        prompt = rng.choice(
            (
                f"{name} buys {q} {many} at {p} dollars each and {q2} {many2} at {p2} dollars each. "
                f"How much does {he} spend in total?",
                f"A {one} costs {p} dollars and a {one2} costs {p2} dollars. {name} buys {q} {many} and {q2} {many2}. "
                f"How many dollars does {he} pay?",
            )
        )
        return prompt, [(q, "*", p, cost), (q2, "*", p2, q2 * p2), (cost, "+", q2 * p2, cost + q2 * p2)]
    fee = rng.randint(1, 15)
    prompt = rng.choice(
        (
            f"{name} orders {q} {many} that cost {p} dollars each. Delivery costs {fee} dollars more. "
            f"How much does {he} pay in all?",
            f"Each {one} costs {p} dollars. {name} buys {q} of them and pays {fee} dollars for wrapping. What is the total cost?",
        )
    )
    return prompt, [(q, "*", p, cost), (cost, "+", fee, cost + fee)]


def _grid(rng: random.Random) -> tuple[str, list[Step]]:
    """Rows times items per row, then items added or removed."""
    place, groups, group, things = rng.choice(_GRIDS)
    k, m = rng.randint(2, 9), rng.randint(2, 12)
    total = k * m
    sentences = [
        rng.choice(
            (
                f"A {place} has {k} {groups} with {m} {things} in each {group}.",
                f"In a {place} there are {k} {groups} of {things}, and each {group} has {m}.",
                f"A {place} holds {m} {things} in each of its {k} {groups}.",
            )
        )
    ]
    steps: list[Step] = [(k, "*", m, total)]
    for _ in range(rng.choice((1, 2))):
        if rng.random() < 0.5 and total >= 2:
            n = rng.randint(1, min(total, MAX_OPERAND))
            sentences.append(
                rng.choice((f"Then {n} {things} are taken away.", f"Later {n} {things} are removed.", f"Then {n} are sold."))
            )
            steps.append((total, "-", n, total - n))
        else:
            n = rng.randint(1, MAX_OPERAND)
            sentences.append(rng.choice((f"Then {n} more {things} are added.", f"Later {n} more {things} arrive.")))
            steps.append((total, "+", n, total + n))
        total = steps[-1][3]
    sentences.append(rng.choice((f"How many {things} are there now?", f"How many {things} does the {place} have now?")))
    return " ".join(sentences), steps


def _two_people(rng: random.Random) -> tuple[str, list[Step]]:
    """A second person has more, fewer or a multiple of the first; their total."""
    (a_name, _, _), (b_name, b_he, _) = rng.sample(_PEOPLE, 2)
    one, many = rng.choice(_OBJECTS)
    a = rng.randint(4, MAX_OPERAND)
    form = rng.choice(("more", "fewer", "times", "times_then_gives"))
    if form == "more":
        d = rng.randint(1, MAX_OPERAND)
        middle, first = f"{b_name} has {d} more {many} than {a_name}.", (a, "+", d, a + d)
    elif form == "fewer":
        d = rng.randint(1, a - 1)
        middle, first = f"{b_name} has {d} fewer {many} than {a_name}.", (a, "-", d, a - d)
    else:
        k = rng.choice((2, 3))
        middle = f"{b_name} has {'twice' if k == 2 else 'three times'} as many {many} as {a_name}."
        first = (a, "*", k, a * k)
    steps = [first]
    b = first[3]
    if form == "times_then_gives":
        n = rng.randint(1, min(b, MAX_OPERAND))
        middle += f" Then {b_name} gives away {n}."
        steps.append((b, "-", n, b - n))
        b -= n
    steps.append((a, "+", b, a + b))
    question = rng.choice(
        (
            f"How many {many} do {a_name} and {b_name} have together?",
            f"How many {many} do they have in total?",
            f"What is the total number of {many} they have?",
        )
    )
    return f"{a_name} has {a} {many}. {middle} {question}", steps


def _days(rng: random.Random) -> tuple[str, list[Step]]:
    """An activity over days: a sum of three days, a multiple of one day, or a daily rate."""
    name, he, _ = rng.choice(_PEOPLE)
    verb, base, unit = rng.choice(_ACTIVITIES)
    a, b = rng.randint(1, MAX_OPERAND), rng.randint(1, MAX_OPERAND)
    start = rng.randrange(len(_DAYS) - 2)
    d1, d2, d3 = _DAYS[start : start + 3]
    form = rng.choice(("sum", "multiple", "rate"))
    question = rng.choice((f"How many {unit} does {he} {base} in total?", f"How many {unit} does {name} {base} altogether?"))
    if form == "sum":
        c = rng.randint(1, MAX_OPERAND)
        prompt = f"{name} {verb} {a} {unit} on {d1}, {b} {unit} on {d2} and {c} {unit} on {d3}. {question}"
        return prompt, [(a, "+", b, a + b), (a + b, "+", c, a + b + c)]
    if form == "multiple":
        k = rng.choice((2, 3))
        times = "twice" if k == 2 else "three times"
        prompt = f"{name} {verb} {a} {unit} on {d1} and {b} on {d2}. On {d3} {he} {verb} {times} as many as on {d1}. {question}"
        return prompt, [(a, "*", k, a * k), (a, "+", b, a + b), (a + b, "+", a * k, a + b + a * k)]
    k = rng.randint(2, 9)
    a = rng.randint(2, 20)
    prompt = rng.choice(
        (
            f"{name} {verb} {a} {unit} every day for {k} days, and then {b} more. {question}",
            f"For {k} days {name} {verb} {a} {unit} a day. After that {he} {verb} {b} more {unit}. {question}",
        )
    )
    return prompt, [(a, "*", k, a * k), (a * k, "+", b, a * k + b)]


_ARITHMETIC_SCHEMAS = (_inventory, _inventory, _shopping, _grid, _two_people, _days)


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    while True:
        prompt, steps = rng.choice(_ARITHMETIC_SCHEMAS)(rng)
        # Every schema is built to respect these; the check keeps a future template from slipping past them.
        if 2 <= len(steps) <= 3 and all(0 <= c <= MAX_RESULT and _apply(a, op, b) == c for a, op, b, c in steps):
            final = str(steps[-1][3])
            work = " ".join(f"{a} {op} {b} = {c}." for a, op, b, c in steps)
            return prompt, f"{work} #### {final}", final


# ----------------------------------------------------------------------------- sorting, reversal, logic


def _sorting(rng: random.Random) -> tuple[str, str, str]:
    numbers = rng.sample(range(100), rng.randint(3, 6))
    descending = rng.random() < 0.5
    template = rng.choice(_NUMBER_LIST_DESC if descending else _NUMBER_LIST_ASC)
    final = ", ".join(str(n) for n in sorted(numbers, reverse=descending))
    return template.format(", ".join(str(n) for n in numbers)), f"{final} #### {final}", final


def _reversal(rng: random.Random) -> tuple[str, str, str]:
    if rng.random() < 0.5:
        items = list(rng.choice(_SPELL_WORDS))
        template = rng.choice(_REVERSE_LETTERS)
    else:
        items = rng.sample(_WORDS, rng.randint(3, 6))
        template = rng.choice(_REVERSE_WORDS)
    final = " ".join(reversed(items))
    return template.format(" ".join(items)), f"{final} #### {final}", final


def _logic(rng: random.Random) -> tuple[str, str, str]:
    form = rng.choice(("compare", "parity", "order", "ages", "member"))
    if form == "compare":
        a, b = rng.sample(range(100), 2)
        asks_greater = rng.random() < 0.5
        word = rng.choice(("greater", "bigger", "larger")) if asks_greater else rng.choice(("less", "smaller"))
        prompt = rng.choice((f"Is {a} {word} than {b}?", f"Answer yes or no: is {a} {word} than {b}?"))
        final = "yes" if (a > b) == asks_greater else "no"
        return prompt, f"{a} {'>' if a > b else '<'} {b}. #### {final}", final
    if form == "parity":
        n = rng.randrange(100)
        prompt = rng.choice((f"Is {n} even or odd?", f"Is the number {n} odd or even?"))
        half, odd = divmod(n, 2)
        work = f"{n} = 2 * {half} + 1." if odd else f"{n} = 2 * {half}."
        final = "odd" if odd else "even"
        return prompt, f"{work} #### {final}", final
    if form == "order":
        names = [p[0] for p in rng.sample(_PEOPLE, 3)]  # names[0] > names[1] > names[2]
        more, less, most, least = rng.choice(_ORDERS)
        facts = []
        for hi, lo in ((names[0], names[1]), (names[1], names[2])):
            facts.append(f"{hi} is {more} than {lo}." if rng.random() < 0.5 else f"{lo} is {less} than {hi}.")
        rng.shuffle(facts)
        question = rng.choice(("yes", "no", "most", "least"))
        if question == "most":
            ask, final = f"Who is the {most}?", names[0]
        elif question == "least":
            ask, final = f"Who is the {least}?", names[2]
        else:
            hi, lo = (names[0], names[2]) if question == "yes" else (names[2], names[0])
            word = more
            if rng.random() < 0.5:  # ask with the opposite word: "is lo shorter than hi" has the same answer
                hi, lo, word = lo, hi, less
            ask, final = f"Is {hi} {word} than {lo}?", question
        return f"{' '.join(facts)} {ask}", f"{' > '.join(names)}. #### {final}", final
    if form == "ages":
        people = [p[0] for p in rng.sample(_PEOPLE, 3)]
        ages = rng.sample(range(5, 90), 3)
        oldest = rng.random() < 0.5
        prompt = (
            f"{people[0]} is {ages[0]} years old, {people[1]} is {ages[1]} and {people[2]} is {ages[2]}. "
            f"Who is the {'oldest' if oldest else 'youngest'}?"
        )
        ranked = sorted(zip(ages, people), reverse=oldest)
        sign = " > " if oldest else " < "
        return prompt, f"{sign.join(str(a) for a, _ in ranked)}. #### {ranked[0][1]}", ranked[0][1]
    name = rng.choice(_PEOPLE)[0]
    kind, group = rng.sample(_NONCE, 2)
    positive = rng.random() < 0.5
    rule = f"Every {kind} is a {group}." if positive else f"No {kind} is a {group}."
    final = "yes" if positive else "no"
    prompt = f"{rule} {name} is a {kind}. Is {name} a {group}?"
    link = "is" if positive else "is not"
    return prompt, f"{name} is a {kind}, so {name} {link} a {group}. #### {final}", final


_FAMILY_SAMPLERS = {"arithmetic": _arithmetic, "sorting": _sorting, "reversal": _reversal, "logic": _logic}


# ----------------------------------------------------------------------------- sampling and splits


def is_eval_prompt(prompt: str) -> bool:
    return zlib.crc32(prompt.encode()) % EVAL_BUCKET == 0


def _check_split(split: str) -> None:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")


def sample_example(rng: random.Random, family: str | None = None, split: str = "train") -> TextExample:
    """One judged example of `family` (uniformly random among FAMILIES if None) from `split` ('train' or 'eval')."""
    _check_split(split)
    if family is not None and family not in _FAMILY_SAMPLERS:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)} (freeform: freeform_example)")
    family = family or rng.choice(FAMILIES)
    while True:
        prompt, answer, final = _FAMILY_SAMPLERS[family](rng)
        if len(prompt) <= MAX_PROMPT_CHARS and is_eval_prompt(prompt) == (split == "eval"):
            return TextExample(family, prompt, answer, final)


def eval_examples(n: int, seed: int = 2024, families: Sequence[str] = FAMILIES) -> list[TextExample]:
    """A fixed, family-balanced held-out set: the same `n`, `seed` and `families` give the same examples."""
    if not families:
        raise ValueError("families is empty; pass at least one of " + ", ".join(FAMILIES))
    rng = random.Random(seed)
    return [sample_example(rng, families[i % len(families)], split="eval") for i in range(n)]


def step_rng(seed: int, rank: int, step: int) -> random.Random:
    """The data RNG for one training step, so a resumed run draws the same examples (seeded from seed, rank, step)."""
    return random.Random(f"textworld:{seed}:{rank}:{step}")


# ----------------------------------------------------------------------------- judge

_SPACES = re.compile(r"\s+")
_COMMA = re.compile(r"\s*,\s*")


def normalize_answer(text: str) -> str:
    """The form answers are compared in: whitespace collapsed, ", " between list items, no trailing period, lower case."""
    text = _COMMA.sub(", ", _SPACES.sub(" ", text).strip())
    return text.rstrip(".").strip().lower()


def extract_answer(text: str) -> str | None:
    """The normalised final answer after the last "####", or None when the text has no "####"."""
    if "####" not in text:
        return None
    return normalize_answer(text.rsplit("####", 1)[1])


def judge(outputs: Sequence[str], examples: Sequence[TextExample]) -> dict[str, float]:
    """Per-family accuracy (exact match of the extracted final answer) and "overall", the mean over families present.

    Freeform examples are skipped (they have no right answer); an output without "####" counts as wrong.
    """
    if isinstance(outputs, str):
        raise TypeError("outputs must be a list of strings, one per example, not a single string")
    if len(outputs) != len(examples):
        raise ValueError(f"judge got {len(outputs)} outputs for {len(examples)} examples; pass exactly one output per example")
    hits: dict[str, list[bool]] = {}
    for i, (output, example) in enumerate(zip(outputs, examples)):
        if not isinstance(output, str):
            raise TypeError(f"output {i} is {type(output).__name__}, expected str")
        if example.family == FREEFORM:
            continue
        if example.family not in _FAMILY_SAMPLERS:
            raise ValueError(f"example {i} has unknown family {example.family!r}; judged families are {', '.join(FAMILIES)}")
        hits.setdefault(example.family, []).append(extract_answer(output) == normalize_answer(example.final))
    if not hits:
        raise ValueError("judge needs at least one judged example (freeform examples are not judged)")
    scores = {family: sum(h) / len(h) for family, h in sorted(hits.items())}
    scores["overall"] = sum(scores.values()) / len(scores)
    return scores


# ----------------------------------------------------------------------------- fortunes (free text)

_SKIP_FORTUNE_FILES = {"ascii-art"}  # drawings, not sentences; collapsing their whitespace leaves noise
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CODE_CHARS = frozenset("<>{}[]^=$\\|_#*+/@~`")


def _clean_quote(raw: str) -> str | None:
    if not raw.isascii() or _CONTROL.search(raw.replace("\t", " ")):
        return None  # non-ASCII, or backspace overstrike / escape sequences from old terminals
    text = _SPACES.sub(" ", raw).strip()
    if not 12 <= len(text) <= MAX_QUOTE_CHARS or sum(c.isdigit() for c in text) > MAX_QUOTE_DIGITS:
        return None
    letters = sum(c.isalpha() for c in text)
    if letters < 0.7 * len(text.replace(" ", "")) or sum(c in _CODE_CHARS for c in text) > 2:
        return None  # symbols: ASCII drawings, tables, code, IRC logs, formulas
    if sum(c.isupper() for c in text) > 0.25 * letters:
        return None  # SHOUTING: capitals split into many BPE pieces and read badly
    return text


@functools.lru_cache(maxsize=4)
def _read_fortunes(directory: Path) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for path in sorted(directory.iterdir()):
        # Top-level plain files only: the offensive collection lives in an off/ subdirectory; .dat are indexes
        # and .u8 are symlinks to the same text.
        if path.is_symlink() or not path.is_file() or path.suffix in (".dat", ".u8") or path.name in _SKIP_FORTUNE_FILES:
            continue
        text = path.read_text(encoding="latin-1")
        for raw in re.split(r"^%\s*$", text, flags=re.MULTILINE):
            quote = _clean_quote(raw)
            if quote is not None:
                seen.setdefault(quote, None)
    return tuple(seen)


def fortunes(directory: Path | str | None = None) -> list[str]:
    """Cleaned quotes from Debian's `fortunes` package: ASCII only, whitespace collapsed, at most 300 characters.

    The directory is `directory`, else $DISTILLERY_FORTUNES_DIR, else /usr/share/games/fortunes.
    """
    directory = Path(directory or os.environ.get(FORTUNES_ENV) or FORTUNES_DIR)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"no fortune files at {directory}: install Debian's `fortunes` package (apt-get install fortunes) "
            f"or point {FORTUNES_ENV} at a directory of fortune files"
        )
    quotes = _read_fortunes(directory.resolve())
    if not quotes:
        raise FileNotFoundError(
            f"{directory} holds no usable fortune files (quotes separated by lines of '%'); "
            f"install Debian's `fortunes` package (apt-get install fortunes) or set {FORTUNES_ENV}"
        )
    return list(quotes)


def _freeform_cost(text: str) -> int:
    return len(text) + 2 * sum(c.isupper() or not (c.isalnum() or c in " .,'") for c in text)


def freeform_example(
    rng: random.Random,
    quotes: Sequence[str],
    split: str = "train",
    count_tokens: Callable[[str], int] | None = None,
) -> TextExample:
    """A quote's first 3-8 words as the prompt and its continuation (cut at a word boundary) as the answer.

    The continuation is cut at FREEFORM_ANSWER_COST (see there) and, when `count_tokens` (text -> number of tokens,
    e.g. `functools.partial(text_tokenizer.count_tokens, tokenizer)`) is given, also at ANSWER_TOKENS tokens; a
    prompt over PROMPT_TOKENS tokens sends it to another quote. The split goes by the whole quote (crc32 % 16 == 0
    is eval), so an eval quote's continuation is never trained on.
    """
    _check_split(split)
    if not quotes:
        raise ValueError("quotes is empty; load them with fortunes()")
    for _ in range(2000):
        quote = rng.choice(quotes)
        words = quote.split()
        if len(words) < FREEFORM_PROMPT_WORDS[0] + 2 or is_eval_prompt(quote) != (split == "eval"):
            continue
        k = rng.randint(FREEFORM_PROMPT_WORDS[0], min(FREEFORM_PROMPT_WORDS[1], len(words) - 2))
        prompt = " ".join(words[:k])
        if len(prompt) > FREEFORM_PROMPT_CHARS or (count_tokens and count_tokens(prompt) > PROMPT_TOKENS):
            continue
        answer_words: list[str] = []
        for word in words[k:]:
            if _freeform_cost(" ".join([*answer_words, word])) > FREEFORM_ANSWER_COST:
                break
            answer_words.append(word)
        while count_tokens and answer_words and count_tokens(" ".join(answer_words)) > ANSWER_TOKENS:
            answer_words.pop()
        if answer_words:
            return TextExample(FREEFORM, prompt, " ".join(answer_words), "")
    raise ValueError(f"no usable quote for split {split!r} among {len(quotes)} quotes (need 5+ words, and some in each split)")


def sample_mixture(
    rng: random.Random,
    quotes: Sequence[str] | None,
    freeform_weight: float = 0.2,
    split: str = "train",
    count_tokens: Callable[[str], int] | None = None,
) -> TextExample:
    """A freeform example with probability `freeform_weight` (never when quotes is None), else a judged family.

    `count_tokens` goes to freeform_example (judged prompts and answers always fit the token budgets).
    """
    if not 0.0 <= freeform_weight <= 1.0:
        raise ValueError(f"freeform_weight must be in [0, 1], got {freeform_weight}")
    if quotes is not None and rng.random() < freeform_weight:
        return freeform_example(rng, quotes, split, count_tokens)
    return sample_example(rng, None, split)


def corpus(n: int, seed: int = 0, quotes: Sequence[str] | None = None) -> list[str]:
    """`n` training texts ("prompt answer", train split) for fitting a tokenizer to this world."""
    if n < 1:
        raise ValueError(f"corpus needs n >= 1, got {n}")
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        example = sample_mixture(rng, quotes)
        texts.append(f"{example.prompt} {example.answer}")
    return texts
