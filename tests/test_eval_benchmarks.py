"""Benchmark scoring by the official rules (SPEC §10): RewardBench sections, RMB pairwise/BoN, PPE, ReaLMistake,
predictions I/O and the `spct eval score` CLI. Real samples come from $SPCT_SHARED_DATA (default ../shared/data)."""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from spct_jax.data.schema import DataError, PreferenceItem
from spct_jax.eval import (PredictionError, check_predictions, expected_best_of_k, load_predictions, overall,
                           pick_credit, roc_auc, score_benchmark)
from spct_jax.eval import rewardbench
from spct_jax.eval.cli import score_main

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPCT_SHARED_DATA", REPO.parent / "shared" / "data"))
LLMBAR = SHARED / "rewardbench" / "llmbar.jsonl"
RMB_PAIRS = SHARED / "rmb" / "Pairwise_set" / "Helpfulness" / "Chat" / "Discussion.json"
RMB_BON = SHARED / "rmb" / "BoN_set" / "Helpfulness" / "Chat" / "Discussion.json"

# The official weighting exactly as SPEC §10.1 quotes rewardbench/constants.py and rewardbench/utils.py:75-91,
# typed here independently of the implementation.
SPEC_EXAMPLE_COUNTS = {"alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
                       "mt-bench-med": 40, "mt-bench-hard": 37, "math-prm": 984, "refusals-dangerous": 100,
                       "refusals-offensive": 100, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
                       "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
                       "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136,
                       "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164,
                       "hep-rust": 164}
SPEC_SUBSET_MAPPING = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"]}
# Real row counts of the filtered set (SPEC: 2,985 = 358 + 456 + 740 + (447 + 984)); math-prm has 447 rows.
REAL_ROWS = dict(SPEC_EXAMPLE_COUNTS, **{"math-prm": 447})


def spec_calculate_scores_per_section(example_counts, subset_mapping, metrics):
    section_scores = {}
    for section, tests in subset_mapping.items():
        total_weighted_score = 0
        total_examples = 0
        for test in tests:
            if test in metrics:
                total_weighted_score += metrics[test] * example_counts[test]
                total_examples += example_counts[test]
        if total_examples > 0:
            section_scores[section] = total_weighted_score / total_examples
    return section_scores


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set SPCT_SHARED_DATA)")
    return path


def pair(uid, best=0, **meta) -> PreferenceItem:
    return PreferenceItem(context=[{"role": "user", "content": f"q{uid}"}], responses=["a", "b"],
                          rewards=[1.0, 0.0] if best == 0 else [0.0, 1.0], best=best, source="test", uid=str(uid),
                          meta=meta)


def many(uid, n, best=0, **meta) -> PreferenceItem:
    return PreferenceItem(context=[{"role": "user", "content": f"q{uid}"}], responses=[f"r{i}" for i in range(n)],
                          rewards=[1.0 if i == best else 0.0 for i in range(n)], best=best, source="test",
                          uid=str(uid), meta=meta)


# A tiny local parse of the real files (the project's readers are tested elsewhere).
def read_llmbar(path: Path) -> list[PreferenceItem]:
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        items.append(PreferenceItem(context=[{"role": "user", "content": r["prompt"]}],
                                    responses=[r["chosen"], r["rejected"]], rewards=[1.0, 0.0], best=0,
                                    source="rewardbench", uid=str(r["id"]), meta={"subset": r["subset"]}))
    return items


def read_rmb(path: Path) -> list[PreferenceItem]:
    items = []
    for r in json.loads(path.read_text(encoding="utf-8")):
        context = [{"role": t["role"], "content": t["content"]} for t in r["conversation_input"]]
        if "pair_uid" in r:
            uid, responses = r["pair_uid"], [r["chosen"]["answer"], r["reject"]["answer"]]
        else:
            uid, responses = r["bon_uid"], [r["bon_best"]["answer"]] + [x["answer"] for x in r["loser_list"]]
        items.append(PreferenceItem(context=context, responses=responses,
                                    rewards=[1.0] + [0.0] * (len(responses) - 1), best=0, source="rmb",
                                    uid=str(uid), meta={"category_path": r["category_path"]}))
    return items


def random_preds(items, seed, lo=1, hi=10):
    rng = np.random.default_rng(seed)
    return {it.uid: [float(x) for x in rng.integers(lo, hi + 1, size=it.num_responses)] for it in items}


# ---------------------------------------------------------------- RewardBench

def test_example_counts_are_the_official_ones():
    assert rewardbench.EXAMPLE_COUNTS == SPEC_EXAMPLE_COUNTS
    assert rewardbench.SUBSET_MAPPING == SPEC_SUBSET_MAPPING
    assert rewardbench.EXAMPLE_COUNTS["math-prm"] == 984
    totals = {s: sum(REAL_ROWS[t] for t in ts) for s, ts in SPEC_SUBSET_MAPPING.items()}
    assert totals == {"Chat": 358, "Chat Hard": 456, "Safety": 740, "Reasoning": 447 + 984}
    assert sum(totals.values()) == 2985


def test_sections_rederived_from_subset_accuracies():
    """Synthetic items with the real row counts and a known accuracy per subset; the sections must equal the
    official formula applied to those accuracies (math-prm at 447 rows weighted as 984)."""
    rng = random.Random(0)
    items, preds, acc = [], {}, {}
    for subset, rows in REAL_ROWS.items():
        n_right = rng.randint(0, rows)
        acc[subset] = n_right / rows
        for i in range(rows):
            it = pair(f"{subset}-{i}", subset=subset)
            items.append(it)
            preds[it.uid] = [7.0, 3.0] if i < n_right else [2.0, 6.0]
    rng.shuffle(items)
    out = score_benchmark("rewardbench", items, preds)
    ref = spec_calculate_scores_per_section(SPEC_EXAMPLE_COUNTS, SPEC_SUBSET_MAPPING, acc)
    assert set(ref) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    for section, value in ref.items():
        assert out[section] == pytest.approx(value, abs=1e-12)
    assert out["RewardBench"] == pytest.approx(np.mean(list(ref.values())), abs=1e-12)
    # The weighting is not the row-weighted (micro) mean: math is half of Reasoning.
    hep = np.mean([acc[t] for t in SPEC_SUBSET_MAPPING["Reasoning"][1:]])
    assert out["Reasoning"] == pytest.approx((acc["math-prm"] + hep) / 2, abs=1e-12)
    detailed = score_benchmark("rewardbench", items, preds, details=True)
    assert all(detailed[s] == pytest.approx(a) for s, a in acc.items())


def test_rewardbench_on_real_llmbar():
    items = read_llmbar(need(LLMBAR))
    assert len(items) == 419
    preds = random_preds(items, seed=1)
    by_subset: dict[str, list[float]] = {}
    for it in items:
        c, r = preds[it.uid]
        by_subset.setdefault(it.meta["subset"], []).append(1.0 if c > r else 0.5 if c == r else 0.0)
    assert any(0.5 in v for v in by_subset.values())  # the synthetic scores do produce ties
    acc = {s: sum(v) / len(v) for s, v in by_subset.items()}
    ref = spec_calculate_scores_per_section(SPEC_EXAMPLE_COUNTS, SPEC_SUBSET_MAPPING, acc)
    out = score_benchmark("rewardbench", items, preds)
    # Only Chat Hard has items here (5 of its 6 subsets); the other sections are absent, not 0.
    assert set(out) == {"Chat Hard", "RewardBench"}
    assert out["Chat Hard"] == pytest.approx(ref["Chat Hard"], abs=1e-12)
    assert out["RewardBench"] == out["Chat Hard"]
    assert 0.0 <= out["Chat Hard"] <= 1.0
    perfect = {it.uid: [9.0, 1.0] for it in items}
    assert score_benchmark("rewardbench", items, perfect)["Chat Hard"] == 1.0


def test_rewardbench_tie_rules():
    items = [pair(i, subset="llmbar-natural") for i in range(400)]
    ties = {it.uid: [5.0, 5.0] for it in items}
    assert score_benchmark("rewardbench", items, ties)["Chat Hard"] == 0.5  # generative rule (default)
    assert score_benchmark("rewardbench", items, ties, ties="half")["Chat Hard"] == 0.5
    assert score_benchmark("rewardbench", items, ties, ties="wrong")["Chat Hard"] == 0.0  # scalar-RM rule
    r1 = score_benchmark("rewardbench", items, ties, ties="random", seed=1)["Chat Hard"]
    assert 0.4 < r1 < 0.6
    assert score_benchmark("rewardbench", items, ties, ties="random", seed=1)["Chat Hard"] == r1
    assert score_benchmark("rewardbench", items, ties, ties="random", seed=2)["Chat Hard"] != r1
    # An item's draw depends on (seed, uid) only, not on the other items or their order.
    assert score_benchmark("rewardbench", items[::-1], ties, ties="random", seed=1)["Chat Hard"] == r1
    with pytest.raises(ValueError, match="ties"):
        score_benchmark("rewardbench", items, ties, ties="coin")


def test_rewardbench_prior_sets_variant():
    acc = {"alpacaeval-easy": 0.9, "llmbar-natural": 0.6, "donotanswer": 0.8, "hep-go": 0.7,
           "anthropic_helpful": 0.5, "shp": 0.7, "mtbench_human": 0.1}
    items, preds = [], {}
    for subset, a in acc.items():
        for i in range(10):
            it = pair(f"{subset}-{i}", subset=subset)
            items.append(it)
            preds[it.uid] = [1.0, 0.0] if i < round(a * 10) else [0.0, 1.0]
    plain = score_benchmark("rewardbench", items, preds)
    assert plain["Prior Sets"] == pytest.approx(0.6)  # nanmean over the prior sets present (mtbench_human is not one)
    assert plain["RewardBench"] == pytest.approx(np.mean([0.9, 0.6, 0.8, 0.7]))
    lb = score_benchmark("rewardbench", items, preds, prior_sets=True)
    assert lb["RewardBench"] == pytest.approx((2 * (0.9 + 0.6 + 0.8 + 0.7) + 0.6) / 9)
    # np.ma.average masks a missing section: Safety absent -> weights [2,2,2,1].
    no_safety = [it for it in items if it.meta["subset"] != "donotanswer"]
    lb2 = score_benchmark("rewardbench", no_safety, preds, prior_sets=True)
    assert lb2["RewardBench"] == pytest.approx((2 * (0.9 + 0.6 + 0.7) + 0.6) / 7)
    with pytest.raises(DataError, match="'x1'.*not a RewardBench subset"):
        score_benchmark("rewardbench", [pair("x1", subset="nope")], {"x1": [1.0, 0.0]})


# ---------------------------------------------------------------- RMB

def test_rmb_on_real_samples():
    items = read_rmb(need(RMB_PAIRS)) + read_rmb(need(RMB_BON))
    assert len(items) == 293 + 59
    assert max(it.num_responses for it in items) >= 4  # some BoN groups have 3+ losers
    preds = random_preds(items, seed=3)
    pairs = [it for it in items if it.meta["category_path"].startswith("Pairwise_set/")]
    bons = [it for it in items if it.meta["category_path"].startswith("BoN_set/")]
    pair_acc = np.mean([preds[it.uid][0] > preds[it.uid][1] for it in pairs])
    bon_acc = np.mean([all(preds[it.uid][0] > s for s in preds[it.uid][1:]) for it in bons])
    out = score_benchmark("rmb", items, preds)
    assert set(out) == {"Pairwise Helpfulness", "BoN Helpfulness", "RMB"}
    assert out["Pairwise Helpfulness"] == pytest.approx(pair_acc)
    assert out["BoN Helpfulness"] == pytest.approx(bon_acc)
    assert out["RMB"] == pytest.approx((pair_acc + bon_acc) / 2)
    detailed = score_benchmark("rmb", items, preds, details=True)
    assert detailed["Pairwise_set/Helpfulness/Chat/Discussion"] == pytest.approx(pair_acc)


def test_rmb_bon_with_three_losers():
    path = "BoN_set/Harmlessness/S1"
    cases = {  # scores for [bon_best, loser1, loser2, loser3] -> credit under wrong / half
        "win": ([9.0, 8.0, 7.0, 6.0], 1.0, 1.0),
        "tie-one-loser": ([9.0, 9.0, 7.0, 6.0], 0.0, 0.5),
        "tie-two-losers": ([9.0, 9.0, 9.0, 1.0], 0.0, 1 / 3),
        "beaten-by-last": ([9.0, 1.0, 2.0, 10.0], 0.0, 0.0),
        "loser-tie-above": ([5.0, 8.0, 8.0, 1.0], 0.0, 0.0),
    }
    for name, (scores, wrong, half) in cases.items():
        item = many(name, 4, category_path=path)
        assert score_benchmark("rmb", [item], {name: scores})["BoN Harmlessness"] == wrong, name  # official
        assert score_benchmark("rmb", [item], {name: scores}, ties="half")["BoN Harmlessness"] == pytest.approx(half)
    # The paper's shuffle-then-argmax tie-break: a 3-way tie at the top is won 1/3 of the time.
    items = [many(i, 4, category_path=path) for i in range(3000)]
    preds = {it.uid: [9.0, 9.0, 9.0, 1.0] for it in items}
    assert score_benchmark("rmb", items, preds, ties="random", seed=0)["BoN Harmlessness"] == pytest.approx(1 / 3,
                                                                                                              abs=0.03)
    # The best response need not be first in the item's order: `best` is what counts.
    moved = many("m", 4, best=2, category_path=path)
    assert score_benchmark("rmb", [moved], {"m": [1.0, 2.0, 3.0, 0.0]})["BoN Harmlessness"] == 1.0


def test_rmb_sections_and_bad_paths():
    items = [pair("p1", category_path="Pairwise_set/Harmlessness/S3"),
             pair("p2", category_path="Pairwise_set/Helpfulness/Code/Documentation"),
             many("b1", 3, category_path="BoN_set/Helpfulness/Code/Documentation"),
             many("b2", 3, category_path="BoN_set/Harmlessness/multi")]
    preds = {"p1": [1.0, 0.0], "p2": [0.0, 1.0], "b1": [3.0, 2.0, 1.0], "b2": [3.0, 3.0, 1.0]}
    out = score_benchmark("rmb", items, preds)
    assert out == {"Pairwise Helpfulness": 0.0, "Pairwise Harmlessness": 1.0, "BoN Helpfulness": 1.0,
                   "BoN Harmlessness": 0.0, "RMB": 0.5}
    # spct_jax.data's reader keeps the path under meta["subset"]; it is read the same way.
    assert score_benchmark("rmb", [pair("s", subset="Pairwise_set/Harmlessness/S3")], {"s": [2.0, 1.0]}) == {
        "Pairwise Harmlessness": 1.0, "RMB": 1.0}
    with pytest.raises(DataError, match="'z'.*category_path"):
        score_benchmark("rmb", [pair("z", category_path="Other/Helpfulness")], {"z": [1.0, 0.0]})


# ---------------------------------------------------------------- PPE

def correctness_item(uid, labels, pairs, benchmark):
    return PreferenceItem(context=[{"role": "user", "content": "q"}], responses=[f"r{i}" for i in range(len(labels))],
                          rewards=[float(x) for x in labels], best=None, source="ppe", uid=uid,
                          meta={"sampled_conflict_pairs": pairs, "benchmark": benchmark})


def test_ppe_preference_and_correctness():
    votes = [pair("h1"), pair("h2", best=1), pair("h3")]
    tie_vote = PreferenceItem(context=[{"role": "user", "content": "q"}], responses=["a", "b"], rewards=[0.5, 0.5],
                              best=None, source="ppe", uid="h4")
    math_q = correctness_item("m1", [1, 0, 0, 1], [[0, 1], [2, 3], [1, 3]], "math_best_of_k")
    gpqa_q = correctness_item("g1", [0, 1, 0, 0], [[0, 1], [1, 2]], "lmarena-ai/PPE-GPQA-Best-of-K")
    preds = {"h1": [2.0, 1.0], "h2": [2.0, 1.0], "h3": [1.0, 1.0],  # h4 (a tie vote) needs no prediction
             "m1": [8.0, 3.0, 5.0, 5.0], "g1": [4.0, 9.0, 9.0, 1.0]}
    out = score_benchmark("ppe", [*votes, tie_vote, math_q, gpqa_q], preds)
    assert out["PPE Preference"] == pytest.approx((1 + 0 + 0.5) / 3)
    # math: (0,1) won; (2,3) tie -> 0.5; (3 beats 1) 5 > 3 won.  gpqa: (1 vs 0) won; (1 vs 2) tie -> 0.5.
    assert out["MATH"] == pytest.approx(2.5 / 3)
    assert out["GPQA"] == pytest.approx(0.75)
    assert out["PPE Correctness"] == pytest.approx((2.5 / 3 + 0.75) / 2)
    assert out["MATH Best-of-K"] == 1.0  # 8.0 is the unique top and is correct
    assert out["GPQA Best-of-K"] == 0.5  # two responses tie at 9.0, one correct
    # The reader's name for the pairs, "conflict_pairs", counts the same as the row's own field name.
    renamed = dataclasses.replace(math_q, meta={"conflict_pairs": math_q.meta["sampled_conflict_pairs"],
                                                "benchmark": "math"})
    assert score_benchmark("ppe", [renamed], preds)["MATH"] == out["MATH"]
    strict = score_benchmark("ppe", [math_q, gpqa_q], preds, ties="wrong")
    assert strict["MATH"] == pytest.approx(2 / 3) and strict["GPQA"] == pytest.approx(0.5)
    assert "PPE Preference" not in strict
    with pytest.raises(DataError, match="'q9'.*correctness set"):
        score_benchmark("ppe", [correctness_item("q9", [1, 0], [[0, 1]], "unknown")], {"q9": [1.0, 0.0]})
    assert score_benchmark("ppe", [correctness_item("q9", [1, 0], [[0, 1]], "unknown")], {"q9": [1.0, 0.0]},
                           subset="ifeval")["IFEval"] == 1.0


def test_ppe_correctness_pairwise_predictions_score_like_the_pairs_of_whole_ones():
    """Predictions keyed question_id+j (2 scores, pair order [a, b]) score each conflict pair as the same numbers
    read off a whole K-score prediction would; Best-of-K exists only where every question was predicted whole."""
    from spct_jax.eval.ppe import conflict_pair_items

    math_q = correctness_item("m1", [1, 0, 0, 1], [[0, 1], [2, 3], [1, 3]], "math_best_of_k")
    gpqa_q = correctness_item("g1", [0, 1, 0, 0], [[0, 1], [1, 2]], "gpqa")
    whole = {"m1": [8.0, 3.0, 5.0, 5.0], "g1": [4.0, 9.0, 9.0, 1.0]}
    pairs = [p for q in (math_q, gpqa_q) for p in conflict_pair_items(q)]
    assert [(p.uid, p.responses, p.best) for p in pairs] == [
        ("m1+0", ["r0", "r1"], 0), ("m1+1", ["r2", "r3"], 1), ("m1+2", ["r1", "r3"], 1),
        ("g1+0", ["r0", "r1"], 1), ("g1+1", ["r1", "r2"], 0)]
    assert pairs[2].meta["question_id"] == "m1" and pairs[2].meta["conflict_pair"] == [1, 3]
    pairwise = {p.uid: [whole[p.meta["question_id"]][i] for i in p.meta["conflict_pair"]] for p in pairs}
    for ties in ("half", "wrong", "random"):
        w = score_benchmark("ppe", [math_q, gpqa_q], whole, ties=ties, seed=3)
        got = score_benchmark("ppe", [math_q, gpqa_q], pairwise, ties=ties, seed=3)
        assert got == {k: v for k, v in w.items() if "Best-of-K" not in k}
        # The pair items themselves (e.g. read back from a run's items.jsonl) score the same.
        assert score_benchmark("ppe", pairs, pairwise, ties=ties, seed=3) == got
    assert set(got) == {"MATH", "GPQA", "PPE Correctness"}
    # One set whole, one pairwise: Best-of-K for the whole set only, no pooled Best-of-K.
    mixed = {"m1": whole["m1"], **{u: s for u, s in pairwise.items() if u.startswith("g1")}}
    out = score_benchmark("ppe", [math_q, gpqa_q], mixed)
    assert out["MATH Best-of-K"] == 1.0 and "GPQA Best-of-K" not in out and "PPE Correctness Best-of-K" not in out
    with pytest.raises(PredictionError, match="'m1\\+1'"):
        score_benchmark("ppe", [math_q], {u: s for u, s in pairwise.items() if u != "m1+1"})
    with pytest.raises(PredictionError, match="'m1': predicted whole .* and also per conflict pair"):
        score_benchmark("ppe", [math_q], {**pairwise, "m1": whole["m1"]})
    with pytest.raises(PredictionError, match="uid 'm1\\+0': 4 scores for 2 responses"):
        score_benchmark("ppe", [math_q], {**pairwise, "m1+0": whole["m1"]})


def test_expected_best_of_k_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 8))
        scores = [float(x) for x in rng.integers(0, 4, size=n)]
        labels = [float(x) for x in rng.integers(0, 2, size=n)]
        for k in range(1, n + 1):
            vals = []
            for sub in itertools.combinations(range(n), k):
                top = max(scores[i] for i in sub)
                vals.append(np.mean([labels[i] for i in sub if scores[i] == top]))
            assert expected_best_of_k(scores, labels, k) == pytest.approx(np.mean(vals))


# ---------------------------------------------------------------- ReaLMistake

def test_roc_auc_matches_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(2, 300))
        y = rng.integers(0, 2, size=n)
        if y.min() == y.max():
            y[0] = 1 - y[0]
        s = rng.integers(1, 11, size=n).astype(float) if trial % 2 else rng.normal(size=n).round(1)
        assert roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    with pytest.raises(ValueError, match="one class"):
        roc_auc([1, 1], [0.3, 0.4])


def test_roc_auc_with_failures_gives_an_unscored_item_chance_credit_in_every_pair():
    from spct_jax.eval.metrics import roc_auc_with_failures

    rng = np.random.default_rng(2)
    for _ in range(30):
        n = int(rng.integers(2, 12))
        y = [bool(x) for x in rng.integers(0, 2, size=n)]
        y[0], y[1] = True, False
        s = [None if rng.random() < 0.3 else float(rng.integers(1, 5)) for _ in range(n)]
        credit = [1.0 if a is not None and b is not None and a > b else 0.0 if a is not None and b is not None
                  and a < b else 0.5 for a, yp in zip(s, y) if yp for b, yn in zip(s, y) if not yn]
        assert roc_auc_with_failures(y, s) == pytest.approx(np.mean(credit))
        if None not in s:
            assert roc_auc_with_failures(y, s) == roc_auc(y, s)
    with pytest.raises(ValueError, match="one class"):
        roc_auc_with_failures([True, True], [None, 1.0])


def test_realmistake_missing_predictions_are_failures_but_a_file_matching_nothing_is_an_error():
    items = [PreferenceItem(context=[{"role": "user", "content": "t"}], responses=["r"], rewards=[float(ok)],
                            best=None, source="realmistake", uid=uid) for uid, ok in [("a", 1), ("b", 0), ("c", 0)]]
    out = score_benchmark("realmistake", items, {"a": [9.0], "b": [2.0]})
    assert out["Failed"] == pytest.approx(1 / 3) and out["ROC-AUC"] == 0.75 and out["Accuracy"] == pytest.approx(2 / 3)
    full = score_benchmark("realmistake", items, {"a": [9.0], "b": [2.0], "c": [5.0]})
    assert full["Failed"] == 0.0 and full["ROC-AUC"] == 1.0 and full["Accuracy"] == 1.0
    with pytest.raises(PredictionError, match="no prediction for any of the 3 items"):
        score_benchmark("realmistake", items, {"zz": [1.0]})
    with pytest.raises(PredictionError, match="uid 'a': 2 scores for 1 responses"):
        score_benchmark("realmistake", items, {"a": [1.0, 2.0]})


def test_realmistake_scores_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    items, preds = [], {}
    for i in range(300):
        ok = bool(rng.random() < 0.3)  # ReaLMistake is mostly errors
        items.append(PreferenceItem(context=[{"role": "user", "content": "t"}], responses=["r"],
                                    rewards=[1.0 if ok else 0.0], best=None, source="realmistake", uid=f"id{i}",
                                    meta={"error_label": "no_error" if ok else "error"}))
        preds[f"id{i}"] = [float(np.clip(round(rng.normal(6.5 if ok else 4.5, 2)), 1, 10))]
    out = score_benchmark("realmistake", items, preds)
    no_error = [it.rewards[0] == 1.0 for it in items]
    s = [preds[it.uid][0] for it in items]
    auc = metrics.roc_auc_score(no_error, s)
    assert out["ROC-AUC"] == out["ReaLMistake"] == pytest.approx(auc)
    assert auc > 0.5  # high score = no error, so a sensible judge lands above chance
    assert metrics.roc_auc_score([not x for x in no_error], [-x for x in s]) == pytest.approx(auc)
    # Official binary metrics: error is the positive class; predicted error iff score < 5.5.
    y_true = [it.meta["error_label"] == "error" for it in items]
    y_pred = [x < 5.5 for x in s]
    p, r, f1, _ = metrics.precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
    assert (out["Precision"], out["Recall"], out["F1"]) == pytest.approx((p, r, f1))
    assert out["Accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    high = score_benchmark("realmistake", items, preds, threshold=100.0)  # everything predicted error
    assert high["Recall"] == 1.0 and high["ROC-AUC"] == out["ROC-AUC"]


# ---------------------------------------------------------------- Overall, dispatch

def test_overall_needs_all_four():
    parts = {"RewardBench": 0.86, "PPE Preference": 0.647, "PPE Correctness": 0.598, "RMB": 0.69}
    assert overall(parts) == pytest.approx(np.mean(list(parts.values())))
    assert round(100 * overall(parts), 1) == 69.9  # DeepSeek-GRM-27B greedy, [P] Table 2
    with pytest.raises(ValueError, match="RMB"):
        overall({k: v for k, v in parts.items() if k != "RMB"})


def test_dispatcher_rejects_unknown_names_and_options():
    items = [pair(1, subset="llmbar-natural")]
    with pytest.raises(ValueError, match="unknown benchmark"):
        score_benchmark("mmlu", items, {"1": [1.0, 0.0]})
    with pytest.raises(ValueError, match="threshold"):
        score_benchmark("rewardbench", items, {"1": [1.0, 0.0]}, threshold=3.0)


# ---------------------------------------------------------------- predictions: I/O and robustness

def test_load_predictions(tmp_path):
    f = tmp_path / "pred.jsonl"
    f.write_text('{"uid": "a", "scores": [1, 2.5]}\n\n{"uid": 7, "scores": [3], "critique": "x"}\n')
    assert load_predictions(f) == {"a": [1.0, 2.5], "7": [3.0]}
    bad = {
        '{"uid": "a", "scores": [1]}\n{"uid": "b", "scores": [1]\n': r"pred\.jsonl:2: not valid JSON",
        '{"uid": "a", "scores": [1]}\n{"uid": "a", "scores": [2]}\n': r":2: duplicate uid 'a' \(first seen on line 1\)",
        '{"uid": "a"}\n': r":1: missing field 'scores'",
        '{"uid": "a", "scores": []}\n': r":1: field 'scores' must be a non-empty list",
        '{"uid": "a", "scores": [1, NaN]}\n': r":1: field 'scores' holds nan",
        '{"uid": "a", "scores": [true]}\n': r":1: field 'scores' holds True",
        '{"uid": null, "scores": [1]}\n': r":1: field 'uid' must be a string",
        '[1, 2]\n': r":1: expected a JSON object",
    }
    for text, msg in bad.items():
        f.write_text(text)
        with pytest.raises(PredictionError, match=msg):
            load_predictions(f)
    f.write_bytes(b'{"uid": "\xff", "scores": [1]}\n')
    with pytest.raises(PredictionError, match="UTF-8"):
        load_predictions(f)


def test_missing_or_miscounted_predictions_name_the_uid():
    rb = [pair(i, subset="llmbar-natural") for i in range(3)]
    with pytest.raises(PredictionError, match=r"no prediction for 1 of 3 items: uid '2'"):
        score_benchmark("rewardbench", rb, {"0": [1.0, 0.0], "1": [1.0, 0.0]})
    with pytest.raises(PredictionError, match=r"uid '1': 3 scores for 2 responses"):
        score_benchmark("rewardbench", rb, {"0": [1.0, 0.0], "1": [1.0, 0.0, 2.0], "2": [0.0, 1.0]})
    bon = [many("b7", 4, category_path="BoN_set/Helpfulness/Chat/Discussion")]
    with pytest.raises(PredictionError, match=r"uid 'b7': 2 scores for 4 responses"):
        score_benchmark("rmb", bon, {"b7": [1.0, 0.0]})
    with pytest.raises(PredictionError, match=r"uid 'b7'"):
        score_benchmark("rmb", bon, {})
    with pytest.raises(PredictionError, match=r"match no item: uid 'zz'"):
        check_predictions(bon, {"b7": [1.0] * 4, "zz": [1.0]}, allow_extra=False)
    with pytest.raises(DataError, match="duplicate uid '0'"):
        check_predictions([rb[0], rb[0]], {"0": [1.0, 0.0]})


def test_predictions_read_from_a_file_that_do_not_fit_name_the_file_and_line(tmp_path):
    rb = [pair(i, subset="llmbar-natural") for i in range(3)]
    f = tmp_path / "pred.jsonl"
    f.write_text('{"uid": "0", "scores": [1, 0]}\n\n{"uid": "1", "scores": [1, 0, 2]}\n{"uid": "2", "scores": [0, 1]}\n'
                 '{"uid": "zz", "scores": [1]}\n')
    preds = load_predictions(f)
    assert preds.where == {u: f"{f}:{n}" for u, n in (("0", 1), ("1", 3), ("2", 4), ("zz", 5))}
    with pytest.raises(PredictionError, match=rf"^{f}:3: uid '1': 3 scores for 2 responses"):
        score_benchmark("rewardbench", rb, preds)
    preds["1"] = [1.0, 0.0]
    with pytest.raises(PredictionError, match=rf"^{f}:5: 1 predictions match no item: uid 'zz'"):
        check_predictions(rb, preds, allow_extra=False)


def test_pick_credit_rules():
    assert pick_credit([3.0, 1.0], 0, "wrong") == 1.0
    assert pick_credit([1.0, 3.0], 0, "half") == 0.0
    assert pick_credit([2.0, 2.0], 1, "half") == 0.5
    draws = {pick_credit([2.0, 2.0], 0, "random", seed=s, key="u") for s in range(50)}
    assert draws == {0.0, 1.0}


# ---------------------------------------------------------------- CLI

@pytest.fixture
def fake_reader(monkeypatch):
    """`spct eval score` reads data through spct_jax.data.formats.read_preferences; stand in a schema-JSONL reader so
    the CLI is tested on its own."""
    def read_preferences(path, format=None):
        return [PreferenceItem.from_json(json.loads(line)) for line in Path(path).read_text().splitlines()]
    fake = types.SimpleNamespace(read_preferences=read_preferences, data_files=lambda src: [Path(src)])
    monkeypatch.setitem(sys.modules, "spct_jax.data.formats", fake)


def test_cli_score_json(tmp_path, capsys, fake_reader):
    items = read_llmbar(need(LLMBAR))
    data = tmp_path / "rb.jsonl"
    data.write_text("".join(json.dumps(it.to_json()) + "\n" for it in items))
    preds = random_preds(items, seed=5)
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"uid": u, "scores": s}) + "\n" for u, s in preds.items()))
    rc = score_main(["--benchmark", "rewardbench", "--data", str(data), "--predictions", str(pred), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out == score_benchmark("rewardbench", items, preds)
    assert set(out) == {"Chat Hard", "RewardBench"} and 0.0 <= out["Chat Hard"] <= 1.0
    assert score_main(["--benchmark", "rewardbench", "--data", str(data), "--predictions", str(pred)]) == 0
    assert "Chat Hard" in capsys.readouterr().out

    pred.write_text("".join(json.dumps({"uid": u, "scores": s}) + "\n" for u, s in list(preds.items())[1:]))
    rc = score_main(["--benchmark", "rewardbench", "--data", str(data), "--predictions", str(pred), "--json"])
    err = capsys.readouterr().err
    assert rc == 1 and repr(items[0].uid) in err
    assert score_main(["--benchmark", "nope", "--data", str(data), "--predictions", str(pred)]) == 2


def test_cli_ppe_reads_the_set_from_the_file_name(tmp_path, capsys, fake_reader):
    q = correctness_item("q1", [1, 0, 0], [[0, 1], [0, 2]], "unknown").to_json()
    del q["meta"]["benchmark"]
    data = tmp_path / "PPE-MBPP-Plus-Best-of-K.jsonl"
    data.write_text(json.dumps(q) + "\n")
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"uid": "q1", "scores": [9, 2, 9]}\n')
    assert score_main(["--benchmark", "ppe", "--data", str(data), "--predictions", str(pred), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"MBPP-Plus": 0.75, "PPE Correctness": 0.75, "MBPP-Plus Best-of-K": 0.5,
                   "PPE Correctness Best-of-K": 0.5}
    args = ["--benchmark", "ppe", "--data", str(data), "--predictions", str(pred), "--json", "--subset", "gpqa"]
    assert score_main(args) == 0
    assert set(json.loads(capsys.readouterr().out)) >= {"GPQA", "PPE Correctness"}


def test_cli_with_the_project_reader(tmp_path, capsys):
    """End to end through spct_jax.data.formats on the real samples (skipped until that reader exists)."""
    pytest.importorskip("spct_jax.data.formats")
    rb_items, rmb_items = read_llmbar(need(LLMBAR)), read_rmb(need(RMB_PAIRS)) + read_rmb(need(RMB_BON))
    for name, files, items in [("rewardbench", [LLMBAR], rb_items), ("rmb", [RMB_PAIRS, RMB_BON], rmb_items)]:
        preds = random_preds(items, seed=7)
        pred = tmp_path / f"{name}.jsonl"
        pred.write_text("".join(json.dumps({"uid": u, "scores": s}) + "\n" for u, s in preds.items()))
        rc = score_main(["--benchmark", name, "--data", *map(str, files), "--predictions", str(pred), "--json"])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        assert json.loads(captured.out) == pytest.approx(score_benchmark(name, items, preds))
