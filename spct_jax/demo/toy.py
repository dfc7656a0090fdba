"""The synthetic GRM task of the embedded CPU demo (`spct demo`): rule-decidable queries whose critique
has to work something out, a deliberately imperfect teacher that writes GRM trajectories, seeded disjoint splits
(the demo's tokenizer is trained on its texts in `spct_jax.demo.tokenizer`).

Why this task. The demo must show SPCT's phenomena (RFT > cold start, RL > RFT, Voting@k and MetaRM@k gains, and
principles helping) with a ~0.2M-parameter model trained for minutes on CPU. So:
  * the best response is decided by a rule, giving a unique ground-truth best (Eq. 10) and a free Eq. 11 reward;
  * the judgement needs a small computation (a sum or difference, the largest / smallest / middle of three
    numbers), which a tiny model gets right only stochastically: that is what sampling k trajectories and voting
    can fix, and what RL can sharpen;
  * the principle line carries the worked-out key fact ("Correct result 37 + 48 = 85"), and the analysis only has
    to compare each response with it ("83 vs 85 wrong."). Without principles the analysis must judge each response
    with no written key fact, so the ablation loses the scratchpad, the mechanism by which principles help here.

A fixed layout, because of what a tiny model learns in minutes. Measured while designing this task (2-3 layers,
d_model 64, batch 16, a few hundred to a few thousand steps): reading a token at a
fixed distance back is learned in a few hundred steps; finding a response *by content* among look-alike numbers
(an induction-style lookup) was not learned in 1200 steps, and neither was "close" (|a - b| <= 2, with borrows),
while plain equality of two adjacent two-digit numbers is learned in ~1000. So:
  * every number is two digits and every item has 3 responses (`ToyConfig.num_responses`), so all items of a kind
    share one token layout;
  * a prompt's response line ("Response 1: 83") and an analysis note ("83 vs 85 wrong.") have the same number of
    tokens: note i always sits at the same distance after response i, and the key fact it restates sits one note
    back (the first note: in the principle line, at a fixed distance per kind);
  * verdicts are "correct" / "wrong": an equality check of adjacent numbers;
  * even so, inside whole trajectories the check is learned late (the last note follows from the others, and most
    notes say "wrong"), so the demo mixes `comparison_drills` ("83 vs 85 wrong. 85 vs 85 correct.") into the cold
    start, as a pretrained LM would bring such skills from pretraining.
The earlier, freer version of this task (responses as sentences, 2-4 per item, sorting and range constraints, the
paper's bracketed response blocks) stayed at chance with this model size and budget.

Query kinds (`KINDS`); each item has `ToyConfig.num_responses` responses (3 by default), exactly one correct:
  "arith"   "What is 37 + 48?"; two-digit operands and result; wrong answers are off by 1, 2 or 10, or have their
            digits swapped.
  "order"   "Which is the largest of 37, 82 and 45?" (or smallest, or middle); wrong answers are the other two
            numbers, off by one, or have their digits swapped.

Ground truth: each response's reward is the teacher's rule score / 10 (correct 1.0, wrong 0.2), so the correct
response is the unique maximum. There are no single-response (n = 1) items: they would need a 0/1 template, and
the demo's phenomena do not need them.

Teacher ("pretrained GRM"): `teacher_trajectory` writes the three-line App. G output for the responses in a given
presented order. With probability `error_rate` it makes one realistic mistake, and every mistake makes the
trajectory wrong by Eq. 10, so the teacher's accuracy is exactly 1 - error_rate:
  "fact"     the key fact is miscomputed, anchored on a wrong response (37 + 48 = 84), and every response is
             checked against it;
  "check"    one response is mis-checked (a wrong one called correct, a tie; or the correct one called wrong);
  "swap"     the analysis is right but the best response's score is swapped with another's;
  "position" (opt-in) as "fact", but anchored on the wrong response shown first: a judge biased towards what it
             reads first, a systematic bias that rejective sampling against the ground truth can remove and that
             shuffling the responses per sample turns into noise that voting averages out.

Splits (`SPLITS`): each split draws items from its own seeded stream, and a query is accepted only in its "home"
split, a seeded hash of the query text; so no query text appears in two splits (nor twice in one), and a split's
items do not depend on the other splits' sizes. Items cycle through `config.kinds` in order (shuffle if order
matters); asking for more items extends a split without changing its first ones.

Prompts: the demo uses the compact templates "toy" / "toy_no_principles" (spct_jax/grm/templates/toy*.txt), App. G's
parts with a one-line instruction and one line per response, because the paper's ~600-token instruction block and
bracketed response blocks would dominate CPU training.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from spct_jax.data.schema import PreferenceItem, Turn
from spct_jax.grm.prompts import build_prompt
from spct_jax.grm.voting import permute, presented_position

SPLITS = ("sft", "rft", "rl", "metarm", "eval")
KINDS = ("arith", "order")
ERROR_TYPES = ("fact", "check", "swap", "position")
# The teacher's default mistakes; "position" (a position-biased judge) is opt-in.
DEFAULT_ERROR_TYPES = ("fact", "check", "swap")
TEMPLATE = "toy"
TEMPLATE_NO_PRINCIPLES = "toy_no_principles"
SOURCE = "toy"
# Rule scores (1..10). Only "correct" earns 10, so the correct response is the unique maximum.
_CORRECT, _WRONG = 10, 2
# Every number in the task (operands, results, answers) has two digits: a fixed-width layout.
_LO, _HI = 10, 99
_ORDER_WORDS = ("largest", "smallest", "middle")

# Attempts to find a fresh query homed in the split before giving up (the query space is exhausted).
_MAX_ATTEMPTS = 5000

Answer = int  # every answer is a two-digit number
Key = int  # the worked-out fact a judgement is checked against


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Difficulty knobs. Defaults give ~6.5k arith and ~1.9M order queries (a fifth of each homed in each split),
    and with the toy tokenizer chat-wrapped prompts of ~60-70 tokens and trajectories of ~55-60 (principles) /
    ~45 (none).

    Every number is two digits, so within a kind all items share one token layout (module docstring).

    kinds: query kinds to generate, cycled in this order.
    num_responses: (min, max) responses per item, inclusive; 2 <= min <= max <= 5. The default is a fixed 3: every
        item of a kind then has the same layout, which is what a tiny model learns in minutes.
    arith_ops: operators; operands and results are two-digit numbers ("-" puts the larger operand first).
    order_ops: which of three numbers an ordering query asks for (any of "largest", "smallest", "middle").
    """

    kinds: tuple[str, ...] = KINDS
    num_responses: tuple[int, int] = (3, 3)
    arith_ops: tuple[str, ...] = ("+", "-")
    order_ops: tuple[str, ...] = _ORDER_WORDS

    def __post_init__(self):
        if not self.kinds or any(k not in KINDS for k in self.kinds):
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        lo, hi = self.num_responses
        if not 2 <= lo <= hi <= 5:
            raise ValueError(f"num_responses must satisfy 2 <= min <= max <= 5, got {self.num_responses}")
        if not self.arith_ops or any(op not in ("+", "-") for op in self.arith_ops):
            raise ValueError(f"arith_ops must be a non-empty subset of ('+', '-'), got {self.arith_ops}")
        if not self.order_ops or any(w not in _ORDER_WORDS for w in self.order_ops):
            raise ValueError(f"order_ops must be a non-empty subset of {_ORDER_WORDS}, got {self.order_ops}")


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _distinct(candidates: Sequence[Answer], exclude: Answer) -> list[Answer]:
    out: list[Answer] = []
    for c in candidates:
        if c != exclude and c not in out:
            out.append(c)
    return out


def _two_digit(xs: Sequence[int]) -> list[int]:
    return [x for x in xs if _LO <= x <= _HI]


def _near_misses(c: Answer) -> list[Answer]:
    """Two-digit numbers one slip away from c: a ones digit off by 1 or 2, a tens digit off by 1, the digits swapped."""
    return _distinct(_two_digit([c + d for d in (1, -1, 2, -2, 10, -10)] + [int(str(c)[::-1])]), c)


class _Kind(Protocol):
    """One query kind. `problem` is the JSON-able dict stored in `PreferenceItem.meta` (without "answers")."""

    def problem(self, rng: np.random.Generator, config: ToyConfig) -> dict[str, Any]: ...
    def query(self, p: dict[str, Any]) -> str: ...
    def truth(self, p: dict[str, Any]) -> Key: ...
    def correct_answer(self, p: dict[str, Any], rng: np.random.Generator) -> Answer: ...
    def wrong_answers(self, p: dict[str, Any], rng: np.random.Generator, config: ToyConfig) -> list[Answer]: ...
    def render(self, answer: Answer) -> str: ...
    def principle(self, p: dict[str, Any], key: Key) -> str: ...
    def check(self, p: dict[str, Any], key: Key, answer: Answer) -> tuple[str, int]: ...
    def wrong_key(self, p: dict[str, Any], target: Answer) -> Key: ...
    # Verdicts a mis-check could give the correct answer, always including one at the kind's lowest score.
    def mischecks(self, p: dict[str, Any], answer: Answer, rng: np.random.Generator) -> list[tuple[str, int]]: ...


def _check(key: Key, answer: Answer) -> tuple[str, int]:
    """The verdict word and rule score of one response: an equality check against the key fact."""
    return ("correct", _CORRECT) if answer == key else ("wrong", _WRONG)


class _NumberKind:
    """What both kinds share: a two-digit answer, checked for equality with a two-digit key fact."""

    def correct_answer(self, p, rng):
        return self.truth(p)

    def render(self, answer):
        return str(answer)

    def check(self, p, key, answer):
        return _check(key, answer)

    def wrong_key(self, p, target):
        return target

    def mischecks(self, p, answer, rng):
        return [("wrong", _WRONG)]


class _Arith(_NumberKind):
    def problem(self, rng, config):
        op = _pick(rng, config.arith_ops)
        while True:  # two-digit operands and a two-digit result
            a, b = (int(x) for x in rng.integers(_LO, _HI + 1, size=2))
            if op == "-" and a < b:
                a, b = b, a
            if _LO <= (a + b if op == "+" else a - b) <= _HI:
                return {"kind": "arith", "a": a, "op": op, "b": b}

    def query(self, p):
        return f"What is {p['a']} {p['op']} {p['b']}?"

    def truth(self, p):
        return p["a"] + p["b"] if p["op"] == "+" else p["a"] - p["b"]

    def wrong_answers(self, p, rng, config):
        # Typical slips: off by one or two, a lost or spurious carry (+-10), digits written in the wrong order.
        return _near_misses(self.truth(p))

    def principle(self, p, key):
        return f"Correct result {p['a']} {p['op']} {p['b']} = {key} (Weight: 100%)."



class _Order(_NumberKind):
    """An ordering query: the largest, smallest or middle of three distinct two-digit numbers."""

    def problem(self, rng, config):
        which = _pick(rng, config.order_ops)
        values = [int(x) for x in rng.choice(np.arange(_LO, _HI + 1), size=3, replace=False)]
        return {"kind": "order", "which": which, "values": values}

    def query(self, p):
        a, b, c = p["values"]
        return f"Which is the {p['which']} of {a}, {b} and {c}?"

    def truth(self, p):
        return sorted(p["values"])[{"smallest": 0, "middle": 1, "largest": 2}[p["which"]]]

    def wrong_answers(self, p, rng, config):
        c = self.truth(p)
        # Picking another of the three (the usual mistake), an off-by-one misreading, or swapped digits.
        return _distinct(_two_digit(list(p["values"]) + [c + 1, c - 1, int(str(c)[::-1])]), c)

    def principle(self, p, key):
        a, b, c = p["values"]
        return f"{p['which'].capitalize()} of {a}, {b} and {c} is {key} (Weight: 100%)."



_KINDS: dict[str, _Kind] = {"arith": _Arith(), "order": _Order()}


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
        responses=[kind.render(a) for a in answers],
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
                       principles: bool = True, error_types: Sequence[str] = DEFAULT_ERROR_TYPES) -> str:
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

    if error == "fact":
        key = kind.wrong_key(p, answers[_pick(rng, others)])
    elif error == "position":  # the earliest-shown wrong response: a judge biased towards what it reads first
        key = kind.wrong_key(p, answers[others[0]])
    else:
        key = kind.truth(p)
    verdicts = [kind.check(p, key, a) for a in answers]
    if error == "check":
        q = int(rng.integers(n))
        if q == best:
            # Demoted no lower than needed to lose: to at most the best of the others' scores (a tie also loses).
            ceiling = max(verdicts[o][1] for o in others)
            verdicts[q] = _pick(rng, [v for v in kind.mischecks(p, answers[q], rng) if v[1] <= ceiling])
        else:
            verdicts[q] = ("correct", _CORRECT)
    scores = [s for _, s in verdicts]
    if error == "swap":
        q = _pick(rng, others)
        scores[best], scores[q] = scores[q], scores[best]

    lines = [f"Specific Criteria: {kind.principle(p, key)}"] if principles else []
    # With principles each note restates the key fact next to the answer ("83 vs 85 wrong."); without, it names
    # the response ("Response 1: 83 wrong."). Either way a note has as many tokens as a prompt line, so note i sits
    # at the same distance from response i for every i (the fixed layout of the module docstring).
    if principles:
        notes = (f"{kind.render(a)} vs {kind.render(key)} {note}." for a, (note, _) in zip(answers, verdicts))
    else:
        notes = (f"Response {q + 1}: {kind.render(a)} {note}."
                 for q, (a, (note, _)) in enumerate(zip(answers, verdicts)))
    lines.append("Analysis: " + " ".join(notes))
    lines.append("Scores: \\boxed{" + ", ".join(str(s) for s in scores) + "}")
    return "\n".join(lines)


DRILL_PROMPT = "Check each number against the key."


def comparison_drills(seed: int, count: int) -> list[tuple[str, str]]:
    """`count` (prompt, target) pairs that drill the analysis notes' check in isolation: "83 vs 85 wrong. 85 vs 85
    correct." with 0-3 matches per line (so no note can be guessed from "exactly one is correct").

    Why: in the GRM trajectories the check is learned slowly, because the last note can be inferred from the
    others and most notes are "wrong"; mixed into the cold start, these lines teach the tiny model the equality
    check itself (measured while designing the task). The numbers are random two-digit numbers, not split items, so no
    held-out query is seen.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = np.random.default_rng([seed, len(SPLITS) + 1])  # a stream that no split and no tokenizer text draws from
    out = []
    for _ in range(count):
        key = int(rng.integers(_LO, _HI + 1))
        # Near misses are the task's own wrong answers (`_near_misses`): a ones digit off (+-1, +-2), a tens digit
        # off (+-10), or the digits swapped. With only ones-digit misses, a model learned to compare ones digits
        # and called "97 vs 87" correct (measured while designing the task).
        misses = _near_misses(key)
        answers = [_pick(rng, (key, _pick(rng, misses), int(rng.integers(_LO, _HI + 1))))
                   for _ in range(int(rng.integers(2, 4)))]
        out.append((DRILL_PROMPT, " ".join(f"{a} vs {key} {_check(key, a)[0]}." for a in answers)))
    return out
