"""PPE (Preference Proxy Evaluations, lmarena/PPE, arXiv 2410.14872) scoring.

The official metric code was not available here, so these follow the PPE paper's headline
metrics and DeepSeek-GRM's single numbers per set:
- "PPE Preference": accuracy on the human-preference pairs with a non-tie vote. A pair item's `best` is the
  winner's index; an item with best=None is a tie vote and is left out (consumers drop ties:
  `if w not in ("model_a", "model_b"): continue`), so it needs no prediction.
- "PPE Correctness": per sub-benchmark, pairwise accuracy over `sampled_conflict_pairs` (`[i, j]`, 0-based,
  exactly one of the two correct); the item carries all K = 32 responses, `rewards` = the 0/1 `scores` labels and
  the pairs in `meta["sampled_conflict_pairs"]` (or `meta["conflict_pairs"]`, as spct_jax.data's reader names
  them). The headline is the mean over the sub-benchmarks present, as [P] Table 9 (mean of MMLU-Pro, MATH, GPQA,
  MBPP-Plus, IFEval).

Pairwise judging. A correctness question is judged one conflict pair at a time: `conflict_pair_items` turns pair j
= [a, b] into a 2-response item [response_{a+1}, response_{b+1}] with uid `question_id+j`, PPE's own pairwise view
(`BaseBenchmark.get_conflict_pair_iter`: `for j, pair in enumerate(pairs)`, `uid = question_id + "+" + str(j)`,
`ground_truth = int(scores[i] > scores[j])`). `spct eval run` judges those items, never all 32 responses in one
prompt: with real chain-of-thought answers 32 of them overflow Gemma-2's 8K context, and one generation cannot
carry 32 scores in 512 new tokens. [P] App. D.2 calls PPE a benchmark where "each query has two responses".

Predictions for a correctness question come in one of two shapes (never both; see `prediction_items`):
- pairwise: one `{"uid": "question_id+j", "scores": [s_a, s_b]}` line per conflict pair (what `spct eval run`
  writes); an expanded pair item itself (meta "conflict_pair") is scored the same way;
- whole: `{"uid": "question_id", "scores": [s_1, ..., s_K]}`, e.g. a scalar RM's per-response scores.
"<sub-benchmark> Best-of-K" (extra, whole predictions only): the expected 0/1 label of the top-scored response out
of all K responses (ties at the top averaged), averaged over questions; "PPE Correctness Best-of-K" is their mean.
It needs all K scores of a question on one scale, which pairwise judgements do not give, so it is reported only
for a set whose every question was predicted whole (`spct eval score` with K-score lines), never by `spct eval run`.

Ties default to "half", the expected value of the paper's shuffle-then-argmax tie-break (no official PPE rule seen);
a "random" draw is keyed by the pair's uid, so both prediction shapes draw alike.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from spct_jax.data.schema import DataError, PreferenceItem, Turn
from spct_jax.eval.metrics import TieRule, check_tie_rule, expected_best_of_k, mean, pick_credit
from spct_jax.eval.predictions import PredictionError, check_predictions

# PPE's canonical set names (`benchmarks/base.py` canonical_all) without the "_best_of_k" tail -> [P] Table 9 names.
CORRECTNESS_SETS: dict[str, str] = {"mmlu_pro": "MMLU-Pro", "math": "MATH", "gpqa": "GPQA",
                                    "mbpp_plus": "MBPP-Plus", "ifeval": "IFEval"}
PAIRS_KEYS = ("sampled_conflict_pairs", "conflict_pairs")  # the row's field name; the reader's name
PAIR_KEY = "conflict_pair"  # meta of one conflict pair's item: [a, b], indices into the question's responses
PREFERENCE_KEY = "PPE Preference"
CORRECTNESS_KEY = "PPE Correctness"


def parse_correctness_set(text: str) -> str | None:
    """The canonical set key named in `text`: any spelling containing it counts ("mmlu_pro_best_of_k",
    "lmarena-ai/PPE-MMLU-Pro-Best-of-K", "data/ppe/math.jsonl"); None unless exactly one is named."""
    norm = text.lower().replace("-", "_")
    hits = [k for k in CORRECTNESS_SETS if k in norm]
    return hits[0] if len(hits) == 1 else None


def correctness_set(item: PreferenceItem, override: str | None = None) -> str:
    """The sub-benchmark of a correctness item as a canonical key ("mmlu_pro", ...), read from `override` (a
    caller who knows the file's set), else `meta["benchmark"]`, else `source`. The correctness rows themselves do
    not name their set, so one of the three must."""
    for raw in (override, item.meta.get("benchmark"), item.source):
        found = parse_correctness_set(raw) if isinstance(raw, str) else None
        if found is not None:
            return found
    raise DataError(f"item {item.uid!r}: cannot tell its PPE correctness set ({', '.join(CORRECTNESS_SETS)}) from "
                    f"meta['benchmark'] or source {item.source!r}; pass subset=")


def is_correctness(item: PreferenceItem) -> bool:
    return any(k in item.meta for k in PAIRS_KEYS)


def _conflict_pairs(item: PreferenceItem) -> list[tuple[int, int]]:
    pairs = next(item.meta[k] for k in PAIRS_KEYS if k in item.meta)
    labels = item.rewards
    if labels is None:
        raise DataError(f"item {item.uid!r}: a PPE correctness item needs 'rewards' (the 0/1 scores)")
    out = []
    for pair in pairs:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(x, int) and 0 <= x < item.num_responses for x in pair)):
            raise DataError(f"item {item.uid!r}: bad conflict pair {pair!r}")
        i, j = pair
        if labels[i] == labels[j]:
            raise DataError(f"item {item.uid!r}: conflict pair {pair!r} has equal labels {labels[i]!r}")
        out.append((i, j))
    return out


def pair_uid(question_uid: str, j: int) -> str:
    """PPE's pairwise uid of conflict pair j (its position in `sampled_conflict_pairs`): `question_id + "+" + j`."""
    return f"{question_uid}+{j}"


def is_pair(item: PreferenceItem) -> bool:
    """An item made by `conflict_pair_items` (one conflict pair of a correctness question)."""
    return PAIR_KEY in item.meta


def conflict_pair_items(item: PreferenceItem) -> list[PreferenceItem]:
    """One 2-response item per conflict pair of a correctness question, in PPE's pairwise view (module docstring):
    responses [a, b] in the pair's order, rewards their 0/1 labels, best the correct one, uid `question_id+j`.
    meta keeps the question's (its set name included) plus "question_id" and "conflict_pair" = [a, b]."""
    meta = {k: v for k, v in item.meta.items() if k not in PAIRS_KEYS}
    out = []
    for j, (a, b) in enumerate(_conflict_pairs(item)):
        rewards = [item.rewards[a], item.rewards[b]]
        out.append(PreferenceItem(context=[Turn(role=t["role"], content=t["content"]) for t in item.context],
                                  responses=[item.responses[a], item.responses[b]], rewards=rewards,
                                  best=0 if rewards[0] > rewards[1] else 1, source=item.source,
                                  uid=pair_uid(item.uid, j),
                                  meta={**meta, "question_id": item.uid, PAIR_KEY: [a, b]}))
    return out


def pairwise_items(items: Sequence[PreferenceItem]) -> list[PreferenceItem]:
    """What a GRM judges for PPE: each correctness question as its conflict pairs, every other item as it is."""
    out: list[PreferenceItem] = []
    for item in items:
        out += conflict_pair_items(item) if is_correctness(item) else [item]
    return out


def prediction_items(items: Sequence[PreferenceItem], preds: Mapping[str, Sequence[float]]) -> list[PreferenceItem]:
    """The items `preds` answers: a correctness question whose own uid is predicted stands for itself (a whole
    prediction, K scores), any other correctness question for its conflict pairs (`question_id+j`, 2 scores each);
    other items as they are. A question predicted both ways is ambiguous and raises PredictionError."""
    out: list[PreferenceItem] = []
    for item in items:
        if not is_correctness(item):
            out.append(item)
            continue
        pairs = conflict_pair_items(item)
        if item.uid not in preds:
            out += pairs
            continue
        both = [p.uid for p in pairs if p.uid in preds]
        if both:
            raise PredictionError(f"uid {item.uid!r}: predicted whole ({len(preds[item.uid])} scores) and also per "
                                  f"conflict pair ({', '.join(repr(u) for u in both[:3])}); give one or the other")
        out.append(item)
    return out


def score_ppe(items: Sequence[PreferenceItem], preds: Mapping[str, Sequence[float]], *,
              ties: TieRule = "half", seed: int = 0, subset: str | None = None) -> dict[str, float]:
    """Items with conflict pairs in meta are correctness questions, items made by conflict_pair_items their pairs,
    the others human-preference pairs; the result holds "PPE Preference" and/or the per-set accuracies, their
    Best-of-K (whole predictions only) and "PPE Correctness"."""
    check_tie_rule(ties)
    answered = prediction_items(items, preds)
    check_predictions([it for it in answered if is_correctness(it) or is_pair(it) or it.best is not None], preds)
    out: dict[str, float] = {}

    votes = [it for it in items if not (is_correctness(it) or is_pair(it)) and it.best is not None]
    if votes:
        credit = []
        for item in votes:
            if item.num_responses != 2:
                raise DataError(f"item {item.uid!r}: a PPE preference item is a pair, got {item.num_responses}")
            credit.append(pick_credit(preds[item.uid], item.best, ties, seed=seed, key=item.uid))
        out[PREFERENCE_KEY] = mean(credit)

    pair_credit: dict[str, list[float]] = {}
    bok: dict[str, list[float]] = {}
    pairwise_sets: set[str] = set()  # sets with a question judged pair by pair: no Best-of-K for them
    for item in answered:
        if is_pair(item):
            name = correctness_set(item, subset)
            pairwise_sets.add(name)
            pair_credit.setdefault(name, []).append(pick_credit(preds[item.uid], item.best, ties, seed=seed,
                                                                key=item.uid))
        elif is_correctness(item):  # predicted whole: the pairs read off the K scores
            name = correctness_set(item, subset)
            scores = preds[item.uid]
            for j, (a, b) in enumerate(_conflict_pairs(item)):
                winner = 0 if item.rewards[a] > item.rewards[b] else 1
                pair_credit.setdefault(name, []).append(
                    pick_credit([scores[a], scores[b]], winner, ties, seed=seed, key=pair_uid(item.uid, j)))
            bok.setdefault(name, []).append(expected_best_of_k(scores, item.rewards))
    # Keys in [P] Table 9's order (MMLU-Pro, MATH, GPQA, MBPP-Plus, IFEval), which CORRECTNESS_SETS follows.
    for key in CORRECTNESS_SETS:
        if key in pair_credit:
            out[CORRECTNESS_SETS[key]] = mean(pair_credit[key])
    if pair_credit:
        out[CORRECTNESS_KEY] = mean([mean(v) for v in pair_credit.values()])
    whole_sets = [k for k in CORRECTNESS_SETS if k in bok and k not in pairwise_sets]
    for key in whole_sets:
        out[f"{CORRECTNESS_SETS[key]} Best-of-K"] = mean(bok[key])
    if whole_sets and not pairwise_sets:
        out[f"{CORRECTNESS_KEY} Best-of-K"] = mean([mean(bok[k]) for k in whole_sets])
    return out
