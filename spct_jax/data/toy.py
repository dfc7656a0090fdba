"""The synthetic GRM task of the embedded CPU demo (`spct demo`, issue 9): rule-decidable queries whose critique
has to work something out, a deliberately imperfect teacher that writes GRM trajectories, seeded disjoint splits,
and the demo's in-process tokenizer.

Why this task. The demo must show SPCT's phenomena (RFT > cold start, RL > RFT, Voting@k and MetaRM@k gains, and
principles helping) with a ~1-3M-parameter model trained for minutes on CPU. So:
  * the best response is decided by a rule, giving a unique ground-truth best (Eq. 10) and a free Eq. 11 reward;
  * the judgement needs a small computation (a sum, a sorted list, a range check), which a tiny model gets right
    only stochastically: that is what sampling k trajectories and voting can fix, and what RL can sharpen;
  * the principle line carries the worked-out key fact ("Correct result 37 + 48 = 85"), and the analysis only has
    to compare each response with it. Without principles the analysis must judge each response with no written
    key fact, so the ablation loses the scratchpad, the mechanism by which principles help in this task.

Query kinds (`KINDS`); each item has `ToyConfig.num_responses` responses (2-4 by default), exactly one correct:
  "arith"       "What is 37 + 48?"; wrong answers are off by 1, 2 or 10, or have their digits swapped.
  "sort"        "Sort the digits 7294 ascending."; wrong answers have two neighbours swapped, miss a digit, are
                left as given, or are in the opposite order. (Digits run together: each digit is one token, and
                "7 2 9 4" would cost a space token per digit.)
  "constraint"  "Give an even number from 23 to 41."; wrong numbers break the parity, the range, or both.
                (Numbers, not the words of a lexicon: a word query such as "4 letters starting with b" has only
                ~100 distinct forms, too few for query-disjoint splits, and letter counting through BPE pieces is
                memorisation rather than checking.)

Ground truth: each response's reward is the teacher's rule score / 10 (correct 1.0; partial credit 0.1-0.4, e.g.
"close" > "wrong"), so the correct response is the unique maximum. There are no single-response (n = 1)
items: they would need a 0/1 template, and the demo's phenomena do not need them.

Teacher ("pretrained GRM"): `teacher_trajectory` writes the three-line App. G output for the responses in a given
presented order. With probability `error_rate` it makes one realistic mistake, and every mistake makes the
trajectory wrong by Eq. 10, so the teacher's accuracy is exactly 1 - error_rate:
  "fact"   the key fact is miscomputed, anchored on a wrong response (37 + 48 = 84), and every response is checked
           against it;
  "check"  one response is mis-checked (a wrong one called correct, a tie; or the correct one called wrong);
  "swap"   the analysis is right but the best response's score is swapped with another's.

Splits (`SPLITS`): each split draws items from its own seeded stream, and a query is accepted only in its "home"
split, a seeded hash of the query text; so no query text appears in two splits (nor twice in one), and a split's
items do not depend on the other splits' sizes. Items cycle through `config.kinds` in order (shuffle if order
matters); asking for more items extends a split without changing its first ones.

Prompts: the demo uses the short templates "toy" / "toy_no_principles" (spct_jax/grm/templates/toy*.txt), the App. G
structure with a one-line instruction, because the paper's ~600-token instruction block would dominate CPU training.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spct_jax.data.schema import PreferenceItem, Turn
from spct_jax.grm.prompts import build_metarm_prompt, build_prompt
from spct_jax.grm.voting import permute, presented_position
from spct_jax.tokenizers.chat import CHAT_FORMATS
from spct_jax.tokenizers.sp import SentencePieceTokenizer, train_sentencepiece

SPLITS = ("sft", "rft", "rl", "metarm", "eval")
KINDS = ("arith", "sort", "constraint")
ERROR_TYPES = ("fact", "check", "swap")
TEMPLATE = "toy"
TEMPLATE_NO_PRINCIPLES = "toy_no_principles"
SOURCE = "toy"
# Enough pieces for nearly every word of the toy texts to be one token (the texts support ~950 at most; the
# limit is soft, so a narrower ToyConfig just gets fewer). Digits are always single pieces (train_sentencepiece
# sets split_digits), so a number is spelled digit by digit, as arithmetic needs.
TOY_VOCAB_SIZE = 768

# Rule scores (1..10). Only "correct" earns 10, so the correct response is the unique maximum.
_CORRECT, _NEAR, _PARTIAL, _WRONG, _BAD = 10, 4, 3, 2, 1
# A wrong arithmetic answer this close to the key fact is "close" (the Closeness criterion's partial credit).
_ARITH_NEAR = 2

# Attempts to find a fresh query homed in the split before giving up (the query space is exhausted).
_MAX_ATTEMPTS = 5000

Answer = Any  # int for "arith" and "constraint", list[int] for "sort"
Key = Any  # the worked-out fact a judgement is checked against (kind-specific)


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Difficulty knobs. Defaults give ~12k arith, ~70k sort and ~10k constraint queries (a fifth of each homed in
    each split), enough for splits of a few thousand items, and with the toy tokenizer chat-wrapped prompts of
    ~100-165 tokens (n = 2: ~110, n = 4: ~150) and trajectories of ~50-105 (principles) / ~25-80 (none).

    kinds: query kinds to generate, cycled in this order.
    num_responses: (min, max) responses per item, inclusive; 2 <= min <= max <= 5.
    arith_ops / arith_operands: operators and the inclusive operand range ("-" puts the larger operand first).
    sort_lengths / sort_values: how many digits (inclusive), distinct, drawn from 0..sort_values-1 (<= 10).
    sort_descending: also ask for descending order (half of the sort queries), so the principle must state it.
    constraint_low / constraint_width: inclusive ranges of the lower bound and of (upper - lower).
    constraint_miss: how far outside the range an out-of-range wrong number lies, at most.
    """

    kinds: tuple[str, ...] = KINDS
    num_responses: tuple[int, int] = (2, 4)
    arith_ops: tuple[str, ...] = ("+", "-")
    arith_operands: tuple[int, int] = (10, 99)
    sort_lengths: tuple[int, int] = (4, 5)
    sort_values: int = 10
    sort_descending: bool = True
    constraint_low: tuple[int, int] = (10, 150)
    constraint_width: tuple[int, int] = (6, 40)
    constraint_miss: int = 5

    def __post_init__(self):
        if not self.kinds or any(k not in KINDS for k in self.kinds):
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        lo, hi = self.num_responses
        if not 2 <= lo <= hi <= 5:
            raise ValueError(f"num_responses must satisfy 2 <= min <= max <= 5, got {self.num_responses}")
        if not self.arith_ops or any(op not in ("+", "-") for op in self.arith_ops):
            raise ValueError(f"arith_ops must be a non-empty subset of ('+', '-'), got {self.arith_ops}")
        if not 0 <= self.arith_operands[0] <= self.arith_operands[1]:
            raise ValueError(f"bad arith_operands {self.arith_operands}")
        if not 2 <= self.sort_lengths[0] <= self.sort_lengths[1] <= self.sort_values <= 10:
            raise ValueError(f"need 2 <= sort_lengths <= sort_values <= 10, got {self.sort_lengths}, "
                             f"{self.sort_values}")
        # constraint_miss >= 2 so a number of either parity exists just outside each bound.
        if not (2 <= self.constraint_miss <= self.constraint_low[0] <= self.constraint_low[1]
                and 2 <= self.constraint_width[0] <= self.constraint_width[1]):
            raise ValueError("need 2 <= constraint_miss <= constraint_low[0] <= constraint_low[1] and "
                             "2 <= constraint_width[0] <= constraint_width[1]")


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _distinct(candidates: Sequence[Answer], exclude: Answer) -> list[Answer]:
    out: list[Answer] = []
    for c in candidates:
        if c != exclude and c not in out:
            out.append(c)
    return out


class _Kind(Protocol):
    """One query kind. `problem` is the JSON-able dict stored in `PreferenceItem.meta` (without "answers")."""

    def problem(self, rng: np.random.Generator, config: ToyConfig) -> dict[str, Any]: ...
    def query(self, p: dict[str, Any]) -> str: ...
    def truth(self, p: dict[str, Any]) -> Key: ...
    def correct_answer(self, p: dict[str, Any], rng: np.random.Generator) -> Answer: ...
    def wrong_answers(self, p: dict[str, Any], rng: np.random.Generator, config: ToyConfig) -> list[Answer]: ...
    def render(self, p: dict[str, Any], answer: Answer, rng: np.random.Generator) -> str: ...
    def principle(self, p: dict[str, Any], key: Key) -> str: ...
    def head(self, answer: Answer) -> str: ...  # "gives <answer>", the start of every analysis note
    def check(self, p: dict[str, Any], key: Key, answer: Answer) -> tuple[str, int]: ...
    def wrong_key(self, p: dict[str, Any], target: Answer) -> Key: ...
    # Verdicts a mis-check could give the correct answer, always including one at the kind's lowest score.
    def mischecks(self, p: dict[str, Any], answer: Answer, rng: np.random.Generator) -> list[tuple[str, int]]: ...


class _Arith:
    def problem(self, rng, config):
        lo, hi = config.arith_operands
        op = _pick(rng, config.arith_ops)
        a, b = (int(x) for x in rng.integers(lo, hi + 1, size=2))
        if op == "-" and a < b:
            a, b = b, a
        return {"kind": "arith", "a": a, "op": op, "b": b}

    def query(self, p):
        return f"What is {p['a']} {p['op']} {p['b']}?"

    def truth(self, p):
        return p["a"] + p["b"] if p["op"] == "+" else p["a"] - p["b"]

    def correct_answer(self, p, rng):
        return self.truth(p)

    def wrong_answers(self, p, rng, config):
        c = self.truth(p)
        # Typical slips: off by one or two, a lost or spurious carry (+-10), digits written in the wrong order.
        pool = [c + d for d in (1, -1, 2, -2, 10, -10)] + ([int(str(c)[::-1])] if c >= 10 else [])
        return _distinct([x for x in pool if x >= 0], c)

    def render(self, p, answer, rng):
        # No "37 + 48 = 85." form: restating the query costs ~7 prompt tokens per response for nothing new.
        return _pick(rng, (f"{answer}", f"The answer is {answer}."))

    def principle(self, p, key):
        return f"Correct result {p['a']} {p['op']} {p['b']} = {key} (Weight: 80%); Closeness (Weight: 20%)."

    def head(self, answer):
        return f"gives {answer}"

    def check(self, p, key, answer):
        if answer == key:
            return f"gives {answer}, correct", _CORRECT
        if abs(answer - key) <= _ARITH_NEAR:
            return f"gives {answer}, close", _NEAR
        return f"gives {answer}, wrong", _WRONG

    def wrong_key(self, p, target):
        return target

    def mischecks(self, p, answer, rng):
        return [(f"gives {answer}, close", _NEAR), (f"gives {answer}, wrong", _WRONG)]


def _spell(digits: Sequence[int]) -> str:
    return "".join(str(x) for x in digits)


class _Sort:
    def problem(self, rng, config):
        desc = bool(config.sort_descending and rng.random() < 0.5)
        while True:
            length = int(rng.integers(config.sort_lengths[0], config.sort_lengths[1] + 1))
            digits = [int(x) for x in rng.choice(config.sort_values, size=length, replace=False)]
            if digits != sorted(digits, reverse=desc):  # an already sorted query would make "as given" correct
                return {"kind": "sort", "digits": digits, "descending": desc}

    def query(self, p):
        return f"Sort the digits {_spell(p['digits'])} {'descending' if p['descending'] else 'ascending'}."

    def truth(self, p):
        return sorted(p["digits"], reverse=p["descending"])

    def correct_answer(self, p, rng):
        return self.truth(p)

    def wrong_answers(self, p, rng, config):
        t = self.truth(p)
        swaps = [t[:i] + [t[i + 1], t[i]] + t[i + 2:] for i in range(len(t) - 1)]
        missing = [t[:i] + t[i + 1:] for i in range(len(t))]
        # One of each kind first, so a 3-4 response item shows different mistakes, then the rest.
        first = [_pick(rng, swaps), _pick(rng, missing), list(p["digits"]), t[::-1]]
        return _distinct(first + swaps + missing, t)

    def render(self, p, answer, rng):
        return _pick(rng, (_spell(answer), f"Sorted: {_spell(answer)}."))

    def principle(self, p, key):
        order = "descending" if p["descending"] else "ascending"
        return f"Sorted {order}: {_spell(key)} (Weight: 70%); Keeps every digit (Weight: 30%)."

    def head(self, answer):
        return f"gives {_spell(answer)}"

    def check(self, p, key, answer):
        head = self.head(answer)
        if answer == key:
            return f"{head}, correct", _CORRECT
        if sorted(answer) == sorted(key):
            return f"{head}, wrong order", _NEAR
        lost, extra = set(key) - set(answer), set(answer) - set(key)
        if len(lost) == 1 and not extra:
            return f"{head}, misses {lost.pop()}", _PARTIAL
        if len(extra) == 1 and not lost:
            return f"{head}, has extra {extra.pop()}", _PARTIAL
        return f"{head}, wrong digits", _WRONG

    def wrong_key(self, p, target):
        return list(target)

    def mischecks(self, p, answer, rng):
        head = self.head(answer)
        return [(f"{head}, wrong order", _NEAR), (f"{head}, misses {_pick(rng, answer)}", _PARTIAL),
                (f"{head}, wrong digits", _WRONG)]


def _parity(x: int) -> str:
    return "odd" if x % 2 else "even"


class _Constraint:
    def problem(self, rng, config):
        low = int(rng.integers(config.constraint_low[0], config.constraint_low[1] + 1))
        high = low + int(rng.integers(config.constraint_width[0], config.constraint_width[1] + 1))
        return {"kind": "constraint", "parity": _pick(rng, ("even", "odd")), "low": low, "high": high}

    def query(self, p):
        return f"Give an {p['parity']} number from {p['low']} to {p['high']}."

    def truth(self, p):
        return p["parity"], p["low"], p["high"]

    def _draw(self, rng, p, parity_ok: bool, in_range: bool, miss: int) -> int:
        while True:
            if in_range:
                x = int(rng.integers(p["low"], p["high"] + 1))
            elif rng.random() < 0.5:
                x = p["high"] + int(rng.integers(1, miss + 1))
            else:
                x = p["low"] - int(rng.integers(1, miss + 1))
            if (_parity(x) == p["parity"]) == parity_ok:
                return x

    def correct_answer(self, p, rng) -> int:
        return self._draw(rng, p, True, True, 1)

    def wrong_answers(self, p, rng, config):
        kinds = [(False, True), (True, False), (False, False)]
        m = config.constraint_miss
        # Four rounds of the three ways to fail, so even a 5-response item finds 4 distinct wrong numbers.
        return [self._draw(rng, p, ok, inside, m) for ok, inside in kinds * 4]

    def render(self, p, answer, rng):
        return _pick(rng, (f"{answer}", f"I pick {answer}.", f"{answer} works."))

    def principle(self, p, key):
        parity, low, high = key
        return f"{parity.capitalize()} number (Weight: 50%); From {low} to {high} (Weight: 50%)."

    def head(self, answer):
        return f"gives {answer}"

    def check(self, p, key, answer):
        parity, low, high = key
        fails = ([] if _parity(answer) == parity else [f"not {parity}"]) + (
            [f"above {high}"] if answer > high else [f"below {low}"] if answer < low else [])
        if not fails:
            return f"gives {answer}, correct", _CORRECT
        return f"gives {answer}, {' and '.join(fails)}", _NEAR if len(fails) == 1 else _BAD

    def wrong_key(self, p, target):
        # Misread the query so that `target` passes: flip the parity or stretch a bound.
        parity = p["parity"] if _parity(target) == p["parity"] else _parity(target)
        return parity, min(p["low"], target), max(p["high"], target)

    def mischecks(self, p, answer, rng):
        return [(f"gives {answer}, not {p['parity']}", _NEAR),
                (f"gives {answer}, not {p['parity']} and above {p['high']}", _BAD)]


_KINDS: dict[str, _Kind] = {"arith": _Arith(), "sort": _Sort(), "constraint": _Constraint()}


def _make_item(kind_name: str, p: dict[str, Any], n: int, rng: np.random.Generator, config: ToyConfig,
               uid: str) -> PreferenceItem | None:
    """An item with n responses for problem p, or None when p has too few distinct wrong answers (e.g. 92 - 92)."""
    kind = _KINDS[kind_name]
    truth = kind.truth(p)
    correct = kind.correct_answer(p, rng)
    wrong = _distinct(kind.wrong_answers(p, rng, config), correct)
    if len(wrong) < n - 1:
        return None
    chosen = [wrong[i] for i in rng.choice(len(wrong), size=n - 1, replace=False)]
    answers = [correct, *chosen]
    order = [int(i) for i in rng.permutation(n)]
    answers = [answers[i] for i in order]
    rewards = [kind.check(p, truth, a)[1] / _CORRECT for a in answers]
    return PreferenceItem(
        context=[Turn(role="user", content=kind.query(p))],
        responses=[kind.render(p, a, rng) for a in answers],
        rewards=rewards, best=order.index(0), source=SOURCE, uid=uid,
        meta={**p, "answers": answers},
    )


def _home(seed: int, query: str) -> str:
    # A stable hash (not Python's salted hash()) so homes are the same in every process.
    digest = hashlib.blake2b(f"{seed}\x00{query}".encode(), digest_size=8).digest()
    return SPLITS[int.from_bytes(digest, "big") % len(SPLITS)]


def _make_split(seed: int, split: str, size: int, config: ToyConfig) -> list[PreferenceItem]:
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    seen: set[str] = set()
    items = []
    for i in range(size):
        kind_name = config.kinds[i % len(config.kinds)]
        kind = _KINDS[kind_name]
        n = int(rng.integers(config.num_responses[0], config.num_responses[1] + 1))
        for _ in range(_MAX_ATTEMPTS):
            p = kind.problem(rng, config)
            query = kind.query(p)
            if query in seen or _home(seed, query) != split:
                continue
            item = _make_item(kind_name, p, n, rng, config, uid=f"toy-{seed}-{split}-{i}")
            if item is not None:
                break
        else:
            raise ValueError(f"split {split!r}: no fresh {kind_name} query after {_MAX_ATTEMPTS} draws at item {i}; "
                             "ask for fewer items or widen the ToyConfig ranges")
        seen.add(query)
        items.append(item)
    return items


def toy_splits(seed: int, sizes: Mapping[str, int], config: ToyConfig = ToyConfig()
               ) -> dict[str, list[PreferenceItem]]:
    """Seeded, query-disjoint splits; `sizes` maps split names (any of `SPLITS`) to item counts."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    for name, size in sizes.items():
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose from {SPLITS}")
        if size < 0:
            raise ValueError(f"split {name!r}: negative size {size}")
    return {name: _make_split(seed, name, size, config) for name, size in sizes.items()}


def toy_prompt(item: PreferenceItem, perm: Sequence[int], *, principles: bool = True, hint: bool = False) -> str:
    """The GRM user text for `item` with responses shown in order `perm` (perm[p] = original index shown at p).

    hint: append the hinted-sampling suffix naming the best response's presented position (RFT, §3.2).
    """
    return build_prompt(item.context, permute(item.responses, perm),
                        template=TEMPLATE if principles else TEMPLATE_NO_PRINCIPLES,
                        hint_best=presented_position(perm, item.best) if hint else None)


def teacher_trajectory(item: PreferenceItem, perm: Sequence[int], rng: np.random.Generator, *, error_rate: float,
                       principles: bool = True, error_types: Sequence[str] = ERROR_TYPES) -> str:
    """A "pretrained GRM" trajectory judging `item`'s responses in presented order `perm`.

    With probability `error_rate` it makes one mistake of a kind drawn from `error_types` (module docstring);
    every mistake makes the scores wrong by Eq. 10, and an error-free trajectory is always right.
    principles=False writes no "Specific Criteria:" line (for "toy_no_principles"); the analysis is the same, and a
    "fact" error still shows up as responses checked against the miscomputed fact.
    """
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
    if any(e not in ERROR_TYPES for e in error_types) or not error_types:
        raise ValueError(f"error_types must be a non-empty subset of {ERROR_TYPES}, got {error_types}")
    if item.source != SOURCE or item.best is None:
        raise ValueError(f"item {item.uid!r} is not a toy item")
    kind = _KINDS[item.meta["kind"]]
    p = item.meta
    answers = permute(p["answers"], perm)
    n = len(answers)
    best = presented_position(perm, item.best)
    others = [q for q in range(n) if q != best]
    error = _pick(rng, tuple(error_types)) if rng.random() < error_rate else None

    key = kind.wrong_key(p, answers[_pick(rng, others)]) if error == "fact" else kind.truth(p)
    verdicts = [kind.check(p, key, a) for a in answers]
    if error == "check":
        q = int(rng.integers(n))
        if q == best:
            # Demoted no lower than needed to lose: to at most the best of the others' scores (a tie also loses).
            ceiling = max(verdicts[o][1] for o in others)
            verdicts[q] = _pick(rng, [v for v in kind.mischecks(p, answers[q], rng) if v[1] <= ceiling])
        else:
            verdicts[q] = (f"{kind.head(answers[q])}, correct", _CORRECT)
    scores = [s for _, s in verdicts]
    if error == "swap":
        q = _pick(rng, others)
        scores[best], scores[q] = scores[q], scores[best]

    lines = [f"Specific Criteria: {kind.principle(p, key)}"] if principles else []
    lines.append("Analysis: " + " ".join(f"Response {q + 1} {note}." for q, (note, _) in enumerate(verdicts)))
    lines.append("Scores: \\boxed{" + ", ".join(str(s) for s in scores) + "}")
    return "\n".join(lines)


def toy_tokenizer_texts(seed: int = 0, *, num_items: int = 300, config: ToyConfig = ToyConfig(),
                        chat_format: str = "gemma") -> list[str]:
    """Texts for the demo tokenizer: chat-rendered GRM conversations (both toy templates, some hinted; teacher
    trajectories with and without principles, some with mistakes) and meta-RM prompts.

    Items come from the "sft" split only, so the vocabulary is fitted without looking at held-out queries.
    """
    chat = CHAT_FORMATS[chat_format]()
    items = toy_splits(seed, {"sft": num_items}, config)["sft"]
    rng = np.random.default_rng([seed, len(SPLITS)])  # a stream that no split draws from
    texts = []
    for item in items:
        perm = [int(i) for i in rng.permutation(item.num_responses)]
        for principles in (True, False):
            prompt = toy_prompt(item, perm, principles=principles, hint=bool(rng.random() < 0.2))
            trajectory = teacher_trajectory(item, perm, rng, error_rate=0.3, principles=principles)
            turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": trajectory}]
            texts.append(chat.render(turns, add_generation_prompt=False))
        texts.append(build_metarm_prompt(item.context, permute(item.responses, perm), trajectory)[0])
    return texts


def train_toy_tokenizer(directory: str | Path, seed: int = 0, *, vocab_size: int = TOY_VOCAB_SIZE,
                        config: ToyConfig = ToyConfig(), chat_format: str = "gemma") -> SentencePieceTokenizer:
    """Train the demo's sentencepiece tokenizer in-process (about a second) into `directory` and return it.

    Digits are single pieces (train_sentencepiece's split_digits), so the model reads and writes numbers digit by
    digit. vocab_size is an upper bound: the result has at most that many pieces (read `.vocab_size`).
    `load_tokenizer(directory)` restores it later.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    texts = toy_tokenizer_texts(seed, config=config, chat_format=chat_format)
    # split_by_unicode_script=False lets punctuation join letters ("[The", "Scores:"): ~12% fewer tokens on
    # trajectories and ~20 fewer per prompt, which is CPU time on every training and sampling step.
    return train_sentencepiece(texts, vocab_size, path, chat_format=chat_format, split_by_unicode_script=False,
                               hard_vocab_limit=False)
