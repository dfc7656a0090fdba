"""Readers of the evaluation-breadth formats (JudgeBench, RewardBench 2, RM-Bench) and of the `{"context",
"responses"}` items `spct score` reads, which `spct data check` accepts and labels fit for scoring or evaluation."""
from __future__ import annotations

import collections
import io
import json
from pathlib import Path

import pytest

from spct_jax.data import DataError, read_preferences, read_preferences_with_report
from spct_jax.data import check

FORMATS = Path(__file__).parent / "fixtures" / "data" / "formats"


def by_uid(name: str) -> dict:
    return {it.uid: it for it in read_preferences(FORMATS / name)}


def test_judgebench_mapping():
    items = by_uid("judgebench.jsonl")
    a, b = items["jb-toy-1"], items["jb-toy-2"]
    assert a.responses[0].startswith("v = g t =") and a.best == 0 and b.best == 1  # A>B -> 0, B>A -> 1
    assert a.context == [{"role": "user", "content": a.query}] and a.rewards is None
    assert a.meta == {"subset": "mmlu-pro-physics", "response_model": "toy-model", "original_id": 101}


@pytest.mark.parametrize("label, problem", [(None, "field 'label': missing (pair_id 'p')"),
                                            ("A=B", "field 'label': expected 'A>B' or 'B>A', got 'A=B' (pair_id 'p')")])
def test_judgebench_row_without_a_usable_label_names_file_line_and_uid(tmp_path, label, problem):
    row = {"pair_id": "p", "source": "livecodebench", "question": "q", "response_A": "a", "response_B": "b"}
    if label is not None:
        row["label"] = label
    (tmp_path / "jb.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        read_preferences(tmp_path / "jb.jsonl")
    assert f"jb.jsonl:1: {problem}" in str(e.value)


def test_rewardbench2_mapping():
    items = by_uid("rewardbench2.jsonl")
    f, ref, tied = items["7"], items["ref:3"], items["tied:3"]
    # chosen + rejected, in the official order; the first num_correct responses are the correct ones
    assert f.responses[0].startswith("Jupiter") and f.num_responses == 4 and f.best == 0
    assert f.rewards == [1.0, 0.0, 0.0, 0.0] and f.meta["subset"] == "Factuality" and f.meta["num_correct"] == 1
    assert ref.best == 0 and ref.rewards == [1.0, 0.0, 0.0]
    assert tied.best is None and tied.rewards == [1.0, 1.0, 0.0, 0.0] and tied.meta["num_correct"] == 2


@pytest.mark.parametrize("change, problem", [
    ({"num_correct": 2}, "field 'num_correct': 2 does not count the 1 chosen responses (id '7')"),
    ({"total_completions": 5}, "field 'total_completions': 5 != 1 chosen + 3 rejected (id '7')"),
    ({"subset": None}, "field 'subset': missing (id '7')"),
    ({"chosen": ["ok", 3]}, "field 'chosen[1]': expected a string, got int"),
])
def test_rewardbench2_bad_rows(tmp_path, change, problem):
    row = json.loads((FORMATS / "rewardbench2.jsonl").read_text().splitlines()[0])
    row.update(change)
    if change.get("chosen"):
        row["num_correct"] = 2
        row.pop("total_completions")
    (tmp_path / "rb2.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        read_preferences(tmp_path / "rb2.jsonl", format="rewardbench2")
    assert f"rb2.jsonl:1: {problem}" in str(e.value), str(e.value)


def test_rmbench_mapping_and_uids():
    items = by_uid("rmbench.json")
    # Both rows have id 8 (RM-Bench's per-domain files reuse RewardBench ids): the domain keeps them apart.
    assert set(items) == {"chat:8", "safety-refuse:8"}
    chat = items["chat:8"]
    assert chat.num_responses == 6 and chat.best is None and chat.rewards == [1.0] * 3 + [0.0] * 3
    assert chat.responses[0] == "Carbon dioxide." and chat.responses[3] == "Oxygen."
    assert chat.meta == {"subset": "chat", "domain": "chat", "origin_subset": "toy-chat"}


def test_rmbench_domain_from_the_official_file_name(tmp_path):
    rows = json.loads((FORMATS / "rmbench.json").read_text())
    for r in rows:
        del r["domain"]
    (tmp_path / "safety-response_filtered.json").write_text(json.dumps(rows))
    # Within one domain file an id is unique; here both rows keep id 8, so the second is a duplicate.
    items, report = read_preferences_with_report(tmp_path / "safety-response_filtered.json", on_error="skip")
    assert [it.uid for it in items] == ["safety-response:8"] and [it.meta["domain"] for it in items] == [
        "safety-response"]
    assert "field 'id': duplicate uid 'safety-response:8'" in report.bad[0].reason
    (tmp_path / "other.json").write_text(json.dumps(rows[:1]))
    with pytest.raises(DataError, match=r"other\.json:\[0\]: field 'domain': missing, and the file name 'other\.json'"):
        read_preferences(tmp_path / "other.json", format="rmbench")
    rows[0]["chosen"] = rows[0]["chosen"][:2]
    rows[0]["domain"] = "math"
    (tmp_path / "two.json").write_text(json.dumps(rows[:1]))
    with pytest.raises(DataError, match=r"field 'chosen': has 2 responses, RM-Bench has one per style"):
        read_preferences(tmp_path / "two.json")


def test_score_items_are_read_like_spct_score_reads_them():
    items = read_preferences(FORMATS / "items.jsonl")
    first, prime, single = items
    assert first.context == [{"role": "user", "content": "What is 2 + 2?"}] and first.uid == "items.jsonl:1"
    assert first.rewards is None and first.best is None and first.source == "input"
    assert prime.uid == "prime-1" and prime.best == 1 and prime.context[0]["content"] == "Name a prime number."
    assert single.rewards == [1.0] and single.best is None
    from spct_jax.grm.trajectories import as_item  # what `spct score --input` builds from the same lines

    lines = [json.loads(x) for x in (FORMATS / "items.jsonl").read_text().splitlines()]
    for it, line in zip(items, lines):
        other = as_item(line)
        assert (other.context, other.responses, other.rewards, other.best) == (it.context, it.responses, it.rewards,
                                                                              it.best)


def test_data_check_accepts_score_items_and_says_which_are_fit_for_evaluation(tmp_path):
    # The README tour's items.jsonl: no uid, no ground truth.
    path = tmp_path / "items.jsonl"
    path.write_text('{"context": "Which is larger, 9.11 or 9.9?", "responses": ["9.11", "9.9"]}\n'
                    '{"context": "Capital of France?", "responses": ["Paris", "Lyon"], "uid": "geo", "best": 0}\n')
    out = io.StringIO()
    assert check.main([str(path)], out=out) == 0
    text = out.getvalue()
    assert "items.jsonl: items, 2 rows -> 2 items" in text
    assert ("1 of 2 items have no ground truth ('rewards' or 'best'; uid 'items.jsonl:1'): fit for scoring "
            "(spct score), not for evaluation; 1 fit for evaluation") in text
    assert text.rstrip().endswith("bad rows: 0; without ground truth (scoring only): 1")
    # Every item labelled: nothing to say.
    out = io.StringIO()
    assert check.main([str(FORMATS / "judgebench.jsonl")], out=out) == 0
    assert "ground truth" not in out.getvalue()


def test_items_bad_rows_name_the_field(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"context": "q", "responses": ["a", 7]}\n{"context": "q", "responses": ["a"], "best": "0"}\n')
    out = io.StringIO()
    assert check.main([str(path)], out=out) == 1
    assert "items.jsonl:1: field 'responses[1]': expected a string, got int" in out.getvalue()
    assert "items.jsonl:2: field 'best': expected an integer index or null" in out.getvalue()


# ---------------------------------------------------------------- real JudgeBench pairs (../shared/data)

def test_real_judgebench_pairs(shared_data):
    gpt = read_preferences(shared_data / "judgebench" / "judgebench_gpt-4o.jsonl")
    claude = read_preferences(shared_data / "judgebench" / "judgebench_claude-3-5-sonnet.jsonl")
    assert len(gpt) == 350 and len(claude) == 270
    assert all(it.source == "judgebench" and it.num_responses == 2 and it.best in (0, 1) for it in gpt + claude)
    prefixes = collections.Counter(next(p for p in ("mmlu-pro", "livebench-reasoning", "livebench-math",
                                                    "livecodebench") if it.meta["subset"].startswith(p))
                                   for it in gpt)
    assert prefixes == {"mmlu-pro": 154, "livebench-reasoning": 98, "livebench-math": 56, "livecodebench": 42}
    assert collections.Counter(it.best for it in gpt) == {0: 193, 1: 157}
