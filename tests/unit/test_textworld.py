"""The text world: its task families are right by independent checks, its splits hold, its judge and its fortunes."""

import functools
import random
import re
import zlib
from collections import Counter

import pytest

from trainer import text_tokenizer as T
from trainer.worlds import textworld as W

DESCENDING = ("largest to smallest", "decreasing", "descending", "greatest to least", "biggest to")


def examples_of(n: int, family: str | None = None, seed: int = 0, split: str = "train") -> list[W.TextExample]:
    rng = random.Random(seed)
    return [W.sample_example(rng, family, split) for _ in range(n)]


@pytest.fixture(scope="module")
def quotes() -> list[str]:
    # The README's development set-up installs Debian's fortunes; without it this fails with that advice.
    return W.fortunes()


@pytest.fixture(scope="module")
def tokenizer(quotes):
    """The canvas tokenizer at its default 2048 vocabulary, fitted on a small corpus (a worst case for length)."""
    return T.train_tokenizer(W.corpus(3000, seed=0, quotes=quotes), vocab_size=2048)


# ----------------------------------------------------------------------------- sampling


def test_sampling_is_deterministic_and_covers_every_family():
    a, b = examples_of(200, seed=3), examples_of(200, seed=3)
    assert a == b
    assert examples_of(200, seed=4) != a
    counts = Counter(e.family for e in a)
    assert set(counts) == set(W.FAMILIES)
    assert min(counts.values()) > 20  # uniform over four families


@pytest.mark.parametrize("family", W.FAMILIES)
def test_every_answer_ends_in_its_final(family):
    for e in examples_of(300, family, seed=1):
        assert e.family == family
        assert e.prompt and e.final and e.prompt == e.prompt.strip()
        assert e.answer.endswith(f"#### {e.final}")
        assert e.answer.count("####") == 1
        assert W.extract_answer(e.answer) == W.normalize_answer(e.final)


_EQUATION = re.compile(r"(\d+) ([+\-*]) (\d+) = (\d+)\.")


def test_arithmetic_work_is_correct_and_within_bounds():
    for e in examples_of(1500, "arithmetic", seed=2):
        work, final = e.answer.split(" #### ")
        equations = _EQUATION.findall(work)
        assert " ".join(f"{a} {op} {b} = {c}." for a, op, b, c in equations) == work, e.answer  # nothing else in it
        assert 2 <= len(equations) <= 3, e
        for a, op, b, c in equations:
            a, b, c = int(a), int(b), int(c)
            assert {"+": a + b, "-": a - b, "*": a * b}[op] == c, e.answer
            assert 0 <= c <= W.MAX_RESULT
            if op == "*":
                assert min(a, b) <= 9, e.answer  # "small *": one factor is a single digit
        assert final == equations[-1][3]
        stated = [int(n) for n in re.findall(r"\d+", e.prompt)]
        assert stated and max(stated) <= W.MAX_OPERAND, e.prompt
        # Every number the prompt states is used by the worked solution.
        used = {int(x) for eq in equations for x in (eq[0], eq[2])}
        assert set(stated) <= used, e


def test_arithmetic_prompts_are_paraphrased():
    prompts = [e.prompt for e in examples_of(600, "arithmetic", seed=5)]
    names = {n for n, _, _ in W._PEOPLE}
    skeletons = set()
    for prompt in prompts:
        words = [("N" if w.strip(".,?'s").isdigit() else "P" if w.strip(".,?'s") in names else w) for w in prompt.split()]
        skeletons.add(" ".join(words[:4]))
    assert len(skeletons) >= 30  # many openings, not one template with numbers swapped
    assert len(set(prompts)) == len(prompts)
    assert any("*" in e.answer for e in examples_of(200, "arithmetic", seed=5))
    assert any("-" in e.answer for e in examples_of(200, "arithmetic", seed=5))


def test_sorting_is_sorted_in_the_asked_direction():
    directions = Counter()
    for e in examples_of(500, "sorting", seed=6):
        numbers = [int(n) for n in e.prompt.split(":")[1].split(",")]
        assert 3 <= len(numbers) <= 6
        descending = any(w in e.prompt for w in DESCENDING)
        directions[descending] += 1
        assert e.final == ", ".join(str(n) for n in sorted(numbers, reverse=descending)), e
        assert e.answer == f"{e.final} #### {e.final}"
    assert directions[True] > 100 and directions[False] > 100


def test_reversal_reverses_letters_and_words():
    kinds = Counter()
    for e in examples_of(400, "reversal", seed=7):
        items = e.prompt.split(": ", 1)[1].split()
        kinds["letters" if all(len(i) == 1 for i in items) else "words"] += 1
        assert e.final.split() == items[::-1], e
    assert kinds["letters"] > 100 and kinds["words"] > 100


def _solve_logic(prompt: str) -> str:
    """An independent solver for the logic prompts' forms; fails the test on a form it does not know."""
    if m := re.fullmatch(r"(?:Answer yes or no: i|I)s (\d+) (greater|bigger|larger|less|smaller) than (\d+)\?", prompt):
        a, word, b = int(m[1]), m[2], int(m[3])
        return "yes" if (a > b if word in ("greater", "bigger", "larger") else a < b) else "no"
    if m := re.fullmatch(r"Is (?:the number )?(\d+) (?:even or odd|odd or even)\?", prompt):
        return "odd" if int(m[1]) % 2 else "even"
    if m := re.fullmatch(r"(\w+) is (\d+) years old, (\w+) is (\d+) and (\w+) is (\d+)\. Who is the (oldest|youngest)\?", prompt):
        ages = {m[1]: int(m[2]), m[3]: int(m[4]), m[5]: int(m[6])}
        return (max if m[7] == "oldest" else min)(ages, key=ages.get)
    if m := re.fullmatch(r"(Every|No) (\w+) is a (\w+)\. (\w+) is a (\w+)\. Is (\w+) a (\w+)\?", prompt):
        assert m[2] == m[5] and m[3] == m[7] and m[4] == m[6]
        return "yes" if m[1] == "Every" else "no"
    # Ordering: facts "X is <cmp> than Y." then a question; rebuild the order from the facts alone.
    *facts, question = re.findall(r"[^.?]+[.?]", prompt)
    more = {}  # person -> set of people they exceed in the "more" direction
    axis = next(order for order in W._ORDERS if any(word in prompt for word in order))
    people = set()
    for fact in facts:
        x, cmp, y = re.fullmatch(r"\s*(\w+) is (\w+) than (\w+)\.", fact).groups()
        people |= {x, y}
        hi, lo = (x, y) if cmp == axis[0] else (y, x)
        assert cmp in axis[:2], fact
        more.setdefault(hi, set()).add(lo)
    rank = {p: len(more.get(p, ())) + sum(len(more.get(q, ())) for q in more.get(p, ())) for p in people}
    question = question.strip()
    if m := re.fullmatch(r"Who is the (\w+)\?", question):
        return (max if m[1] == axis[2] else min)(rank, key=rank.get)
    x, cmp, y = re.fullmatch(r"Is (\w+) (\w+) than (\w+)\?", question).groups()
    return "yes" if (rank[x] > rank[y]) == (cmp == axis[0]) else "no"


def test_logic_answers_match_an_independent_solver():
    finals = Counter()
    for e in examples_of(800, "logic", seed=8):
        assert _solve_logic(e.prompt) == e.final, e
        finals[e.final if e.final in ("yes", "no", "even", "odd") else "name"] += 1
    assert all(finals[k] > 40 for k in ("yes", "no", "even", "odd", "name")), finals


# ----------------------------------------------------------------------------- splits


def test_eval_prompts_are_never_trained_on():
    train = {e.prompt for e in examples_of(4000, seed=9)}
    held_out = W.eval_examples(400)
    assert not train & {e.prompt for e in held_out}
    assert all(zlib.crc32(e.prompt.encode()) % 16 == 0 for e in held_out)
    assert not any(W.is_eval_prompt(p) for p in train)


def test_eval_set_is_fixed_and_family_balanced():
    a = W.eval_examples(80)
    assert a == W.eval_examples(80)
    assert a != W.eval_examples(80, seed=1)
    assert Counter(e.family for e in a) == {f: 20 for f in W.FAMILIES}
    only = W.eval_examples(9, families=("sorting",))
    assert {e.family for e in only} == {"sorting"} and len(only) == 9


def test_step_rng_depends_on_seed_rank_and_step():
    draw = lambda *key: W.sample_example(W.step_rng(*key))
    assert draw(0, 0, 5) == draw(0, 0, 5)
    assert len({draw(0, 0, 5), draw(1, 0, 5), draw(0, 1, 5), draw(0, 0, 6)}) == 4


def test_bad_sampling_arguments_are_refused():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="unknown family 'poetry'"):
        W.sample_example(rng, "poetry")
    with pytest.raises(ValueError, match="split must be 'train' or 'eval'"):
        W.sample_example(rng, split="test")
    with pytest.raises(ValueError, match="families is empty"):
        W.eval_examples(4, families=())
    with pytest.raises(ValueError, match=r"freeform_weight must be in \[0, 1\]"):
        W.sample_mixture(rng, None, freeform_weight=1.5)
    with pytest.raises(ValueError, match="n >= 1"):
        W.corpus(0)


# ----------------------------------------------------------------------------- judge


def test_extract_answer_takes_the_last_marker_normalised():
    assert W.extract_answer("no marker here") is None
    assert W.extract_answer("3 + 4 = 7. #### 7") == "7"
    assert W.extract_answer("#### 1 #### 2") == "2"
    assert W.extract_answer("####   7 ,15,  23  ") == "7, 15, 23"
    assert W.extract_answer("x ####  Yes. ") == "yes"
    assert W.extract_answer("####") == ""


def test_judge_gives_the_worlds_own_answers_full_marks():
    examples = W.eval_examples(200)
    scores = W.judge([e.answer for e in examples], examples)
    assert scores == {**{f: 1.0 for f in W.FAMILIES}, "overall": 1.0}


def test_judge_scores_wrong_and_missing_answers_zero():
    examples = W.eval_examples(40)
    assert W.judge(["#### definitely wrong"] * 40, examples)["overall"] == 0.0
    assert W.judge([e.final for e in examples], examples)["overall"] == 0.0  # no "####": no answer
    # A wrong final after a right-looking solution is wrong; half right is half (families cycle every 4).
    outputs = [e.answer if (i // 4) % 2 else e.answer.replace(f"#### {e.final}", "#### 1000") for i, e in enumerate(examples)]
    scores = W.judge(outputs, examples)
    assert scores["overall"] == pytest.approx(0.5)
    assert all(scores[f] == pytest.approx(0.5) for f in W.FAMILIES)


def test_judge_averages_over_families_present_and_skips_freeform():
    arithmetic = examples_of(4, "arithmetic", seed=11)
    logic = examples_of(2, "logic", seed=11)
    free = W.TextExample(W.FREEFORM, "We have more to fear", "from the bungling", "")
    outputs = [e.answer for e in arithmetic] + ["#### wrong", logic[1].answer, "anything"]
    scores = W.judge(outputs, [*arithmetic, *logic, free])
    assert scores == {"arithmetic": 1.0, "logic": 0.5, "overall": 0.75}


def test_judge_refuses_mismatched_or_malformed_input():
    examples = W.eval_examples(4)
    with pytest.raises(ValueError, match="judge got 3 outputs for 4 examples"):
        W.judge(["#### 1"] * 3, examples)
    with pytest.raises(TypeError, match="not a single string"):
        W.judge("#### 1", examples[:1])
    with pytest.raises(TypeError, match="output 1 is NoneType"):
        W.judge(["#### 1", None], examples[:2])
    with pytest.raises(ValueError, match="at least one judged example"):
        W.judge(["x"], [W.TextExample(W.FREEFORM, "a b c", "d", "")])
    with pytest.raises(ValueError, match="unknown family 'chess'"):
        W.judge(["#### 1"], [W.TextExample("chess", "Best move?", "#### e4", "e4")])


# ----------------------------------------------------------------------------- fortunes and freeform


def _write_fortunes(directory, name: str, quotes: list[str]) -> None:
    (directory / name).write_text("\n%\n".join(quotes) + "\n%\n")


def test_fortunes_parses_cleans_and_skips_what_it_should(tmp_path, monkeypatch):
    keep = "A  journey of a thousand miles\n\tbegins with a single step."
    _write_fortunes(
        tmp_path,
        "wisdom",
        [keep, "Caf\u00e9 au lait is not ASCII at all.", "x" * 400, "|__|  /\\ /\\ |__|  ()()  [][]", keep, "short"],
    )
    (tmp_path / "wisdom.dat").write_bytes(b"\x00\x01binary index")
    (tmp_path / "wisdom.u8").symlink_to(tmp_path / "wisdom")
    (tmp_path / "off").mkdir()
    _write_fortunes(tmp_path / "off", "rude", ["An offensive quote that must never be read."])
    _write_fortunes(tmp_path, "ascii-art", ["Pictures of cats drawn with letters only."])
    assert W.fortunes(tmp_path) == ["A journey of a thousand miles begins with a single step."]
    monkeypatch.setenv(W.FORTUNES_ENV, str(tmp_path))
    assert W.fortunes() == ["A journey of a thousand miles begins with a single step."]


def test_fortunes_missing_says_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        W.fortunes(tmp_path / "nowhere")
    monkeypatch.setenv(W.FORTUNES_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=W.FORTUNES_ENV):
        W.fortunes()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no usable fortune files"):
        W.fortunes(tmp_path / "empty")


def test_the_installed_fortunes_are_clean(quotes):
    assert len(quotes) > 5000
    assert len(set(quotes)) == len(quotes)
    for q in quotes:
        assert q.isascii() and q == q.strip() and "  " not in q and "\n" not in q and "\t" not in q
        assert 12 <= len(q) <= W.MAX_QUOTE_CHARS


def test_freeform_continues_a_quote(quotes):
    rng = random.Random(12)
    for _ in range(300):
        e = W.freeform_example(rng, quotes)
        assert e.family == W.FREEFORM and e.final == ""
        assert 3 <= len(e.prompt.split()) <= 8 and e.answer
        assert any(q.startswith(f"{e.prompt} {e.answer}") for q in quotes if q.startswith(e.prompt))


def test_freeform_splits_by_quote_and_respects_a_token_counter():
    quotes = [f"quote number {word} says something rather long about its own {word} and more words after" for word in W._WORDS]
    rng = random.Random(13)
    for split in ("train", "eval"):
        for _ in range(50):
            e = W.freeform_example(rng, quotes, split)
            source = next(q for q in quotes if q.startswith(f"{e.prompt} {e.answer}"))
            assert W.is_eval_prompt(source) == (split == "eval")
    # With characters as "tokens" the answer budget (47) cuts the continuation by words.
    for _ in range(50):
        e = W.freeform_example(rng, quotes, count_tokens=len)
        assert 0 < len(e.answer) <= W.ANSWER_TOKENS and len(e.prompt) <= W.PROMPT_TOKENS
    with pytest.raises(ValueError, match="quotes is empty"):
        W.freeform_example(rng, [])
    with pytest.raises(ValueError, match="no usable quote"):
        W.freeform_example(rng, ["too short"])


def test_mixture_weights_and_corpus(quotes):
    rng = random.Random(14)
    mixed = [W.sample_mixture(rng, quotes, freeform_weight=0.5) for _ in range(800)]
    share = sum(e.family == W.FREEFORM for e in mixed) / len(mixed)
    assert 0.42 < share < 0.58
    assert {e.family for e in mixed} == {*W.FAMILIES, W.FREEFORM}
    assert all(W.sample_mixture(rng, None, freeform_weight=1.0).family != W.FREEFORM for _ in range(50))
    assert all(W.sample_mixture(rng, quotes, freeform_weight=1.0).family == W.FREEFORM for _ in range(50))
    texts = W.corpus(50, seed=3, quotes=quotes)
    assert len(texts) == 50 and texts == W.corpus(50, seed=3, quotes=quotes)
    assert all(isinstance(t, str) and t for t in texts)


# ----------------------------------------------------------------------------- the canvas budget


def test_every_example_fits_the_48_plus_48_canvas(tokenizer, quotes):
    """Prompts fit 48 tokens with [BOS] and [SEP], answers 48 with at least one [EOS], over thousands of samples."""
    rng = random.Random(15)
    examples = [W.sample_mixture(rng, quotes) for _ in range(4000)]
    examples += W.eval_examples(800)
    examples += [W.freeform_example(rng, quotes) for _ in range(1000)]
    count = functools.partial(T.count_tokens, tokenizer)
    longest = {}
    for e in examples:
        p, a = count(e.prompt), count(e.answer)
        longest[e.family] = max(longest.get(e.family, (0, 0))[0], p), max(longest.get(e.family, (0, 0))[1], a)
    assert set(longest) == {*W.FAMILIES, W.FREEFORM}
    assert max(p for p, _ in longest.values()) <= W.PROMPT_TOKENS, longest
    assert max(a for _, a in longest.values()) <= W.ANSWER_TOKENS, longest
    # The same examples lay out on the canvas without error.
    ids, mask = T.encode_examples(tokenizer, [e.prompt for e in examples], [e.answer for e in examples], 48, 48)
    assert ids.shape == (len(examples), 96) and mask[:, 47:].all()
    # With the tokenizer as counter, freeform fits exactly however odd the quote.
    for _ in range(300):
        e = W.freeform_example(rng, quotes, count_tokens=count)
        assert count(e.answer) <= W.ANSWER_TOKENS and count(e.prompt) <= W.PROMPT_TOKENS
