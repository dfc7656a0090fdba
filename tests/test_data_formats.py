"""Readers: real samples with exact counts, one hand-written fixture per format, and the malformed corpus."""
from __future__ import annotations

import collections
import importlib.util
import io
import json
import logging
from pathlib import Path

import pytest

from spct_jax.data import DataError, read_folder_with_report, read_preferences, read_preferences_with_report
from spct_jax.data import check
from spct_jax.data.formats import FORMAT_NAMES, count_by_subset
from spct_jax.data.readers import files

FIX = Path(__file__).parent / "fixtures" / "data"
FORMATS = FIX / "formats"
MALFORMED = FIX / "malformed"


# ---------------------------------------------------------------- real samples (../shared/data)

def test_real_rewardbench_llmbar_counts_by_subset(shared_data):
    items = read_preferences(shared_data / "rewardbench" / "llmbar.jsonl")
    assert len(items) == 419
    by_subset = collections.Counter(it.meta["subset"] for it in items)
    assert by_subset == {"llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
                         "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46}
    assert all(it.source == "rewardbench" and it.best == 0 and it.num_responses == 2 for it in items)


def test_real_llmbar_source_agrees_with_its_rewardbench_conversion(shared_data):
    """The upstream {input, output_1, output_2, label} files give the same (prompt, chosen, rejected) triples."""
    upstream, _ = read_folder_with_report(shared_data / "rewardbench" / "llmbar_source")
    converted = read_preferences(shared_data / "rewardbench" / "llmbar.jsonl")

    def triples(items):
        return collections.Counter((it.query, it.responses[it.best], it.responses[1 - it.best]) for it in items)

    assert len(upstream) == 419 and triples(upstream) == triples(converted)


def test_real_rmb_pairwise_and_bon(shared_data):
    pairs = read_preferences(shared_data / "rmb" / "Pairwise_set" / "Helpfulness" / "Chat" / "Discussion.json")
    bon = read_preferences(shared_data / "rmb" / "BoN_set" / "Helpfulness" / "Chat" / "Discussion.json")
    assert len(pairs) == 293 and len(bon) == 59
    assert {it.source for it in pairs} == {"rmb_pairwise"} and {it.meta["goal"] for it in pairs} == {"Helpfulness"}
    # BoN: [bon_best, *loser_list], best first; the loser list has 2..5 entries in this file.
    assert all(it.best == 0 for it in bon)
    assert collections.Counter(it.num_responses - 1 for it in bon) == {2: 42, 3: 13, 4: 3, 5: 1}
    assert all(it.context[-1]["role"] == "user" for it in pairs + bon)


def test_real_hh_rlhf_transcripts(shared_data):
    items, report = read_preferences_with_report(shared_data / "train" / "hh-rlhf_harmless-base_test.jsonl.gz")
    assert len(items) == 2312 and report.rows == 2312 and report.ok and not report.dropped
    for it in items:
        assert it.context[0]["role"] == "user" and it.context[-1]["role"] == "user"
        if not it.meta.get("merged_turns"):  # a merged reply may itself quote "Human:" (the model wrote it)
            assert all("\n\nHuman:" not in r for r in it.responses)
    # Five real transcripts split the reply with a stray "\n\nAssistant:"; they are kept, joined and flagged.
    assert sum(bool(it.meta.get("merged_turns")) for it in items) == 5


def test_real_sharegpt_dpo(shared_data):
    items = read_preferences(shared_data / "train" / "llamafactory_dpo_en_demo.json")
    assert len(items) == 300
    assert sum(it.context[0]["role"] == "system" for it in items) == 80
    assert len({it.uid for it in items}) == 300


def test_check_cli_on_real_files(shared_data):
    out = io.StringIO()
    assert check.main([str(shared_data / "rmb" / "Pairwise_set"), str(shared_data / "train")], out=out) == 0
    text = out.getvalue()
    assert "rmb_pairwise" in text and "2312" in text and "bad rows: 0" in text


# ---------------------------------------------------------------- one fixture per format

FIXTURES = [  # file, format, items, dropped by policy
    ("rewardbench.jsonl", "rewardbench", 3, {}),
    ("rewardbench_object.json", "rewardbench", 2, {}),
    ("rmb_pairwise.json", "rmb_pairwise", 2, {}),
    ("rmb_bon.json", "rmb_bon", 2, {}),
    ("ppe_human.jsonl", "ppe_human", 2, {"tie": 2}),
    ("ppe_correctness.jsonl", "ppe_correctness", 2, {}),
    ("helpsteer2_preference.jsonl.gz", "helpsteer2", 2, {"tie": 1}),
    ("ultrafeedback_binarized.parquet", "ultrafeedback_binarized", 2, {"tie": 1}),
    ("ultrafeedback.jsonl", "ultrafeedback", 1, {"single completion": 1}),
    ("hh_rlhf.jsonl", "hh_rlhf", 3, {}),
    ("sharegpt_dpo.json", "sharegpt_dpo", 2, {}),
    ("realmistake.jsonl", "realmistake", 2, {}),
    ("schema.jsonl", "schema", 2, {}),
    ("llmbar.json", "llmbar", 2, {}),
    ("items.jsonl", "items", 3, {}),
    ("judgebench.jsonl", "judgebench", 3, {}),
    ("rewardbench2.jsonl", "rewardbench2", 3, {}),
    ("rmbench.json", "rmbench", 2, {}),
]


def test_every_format_has_a_fixture():
    assert {fmt for _, fmt, _, _ in FIXTURES} == set(FORMAT_NAMES)


@pytest.mark.parametrize("name, fmt, n, dropped", FIXTURES, ids=[f[0] for f in FIXTURES])
def test_fixture_detects_and_reads(name, fmt, n, dropped):
    if name.endswith(".parquet") and importlib.util.find_spec("pyarrow") is None:
        pytest.skip("pyarrow is not installed")
    items, report = read_preferences_with_report(FORMATS / name)
    assert report.format == fmt and len(items) == n and dict(report.dropped) == dropped and report.ok
    assert report.rows == n + sum(dropped.values())
    forced = read_preferences(FORMATS / name, format=fmt)
    assert forced == items
    for it in items:
        assert it.context and it.responses
        if it.best is not None and it.rewards is not None:
            assert it.rewards.index(max(it.rewards)) == it.best


def by_uid(name: str) -> dict:
    return {it.uid: it for it in read_preferences(FORMATS / name)}


def test_rewardbench_mapping():
    items = by_uid("rewardbench.jsonl")
    a = items["11"]
    assert a.context == [{"role": "user", "content": "What is 2 + 2?"}] and a.responses == ["2 + 2 = 4.", "2 + 2 = 5."]
    assert a.best == 0 and a.rewards is None and a.meta["subset"] == "math-prm" and a.meta["chosen_model"] == "gpt-4"
    mt = items["13"]  # prompt given as a list of turns
    assert [t["role"] for t in mt.context] == ["user", "assistant", "user"] and mt.query == "Name a larger one."
    obj = by_uid("rewardbench_object.json")
    assert set(obj) == {"21", "22"}


def test_rmb_mapping():
    p = by_uid("rmb_pairwise.json")["p-2"]
    assert [t["role"] for t in p.context] == ["user", "assistant", "user"] and p.responses == ["Pepper.", "Miso."]
    assert p.meta == {"models": ["claude-3", "mistral-7b"], "subset": "Pairwise_set/Harmlessness/S1",
                      "goal": "Harmlessness"}
    b = by_uid("rmb_bon.json")["b-2"]
    assert b.responses == ["Hi!", "Bye.", "...", "No."] and b.best == 0 and b.meta["goal"] == "Harmlessness"


def test_ppe_mapping():
    human = by_uid("ppe_human.jsonl")
    assert human["q1"].best == 0 and human["q2"].best == 1 and human["q2"].responses == ["chien", "chat"]
    assert "q3" not in human and "q4" not in human  # ties are dropped (and counted, see the fixture test)
    corr = by_uid("ppe_correctness.jsonl")
    one, many = corr["mmlu-1"], corr["mmlu-2"]
    assert one.num_responses == 32 and one.rewards == [1.0 if i == 5 else 0.0 for i in range(32)] and one.best == 5
    assert many.best is None and sum(many.rewards) == 3  # three correct responses: no unique best
    assert one.meta["conflict_pairs"][0] == [5, 0] and one.meta["model_name"] == "gemma-2-9b-it"
    for it in (one, many):
        assert all(it.rewards[i] != it.rewards[j] for i, j in it.meta["conflict_pairs"])


def test_training_format_mappings():
    hs = list(by_uid("helpsteer2_preference.jsonl.gz").values())
    assert hs[0].best == 0 and hs[0].meta["preference_strength"] == -3  # negative: response_1 is better
    assert hs[1].best == 1 and [t["role"] for t in hs[1].context] == ["user", "assistant", "user"]
    assert hs[1].context[1]["content"] == "Where to?" and hs[1].query == "To Rome, for two days."
    assert hs[0].uid == "helpsteer2_preference.jsonl.gz:1"

    uf = by_uid("ultrafeedback.jsonl")["ultrafeedback.jsonl:1"]
    assert uf.num_responses == 4 and uf.best == 0 and uf.meta["subset"] == "evol_instruct"
    assert uf.rewards[1] == pytest.approx(2.0)  # mean of 2, 3, 1; the "N/A" honesty rating is left out

    hh = list(by_uid("hh_rlhf.jsonl").values())
    assert hh[1].context[-1]["content"] == "Tell me a fact." and hh[1].responses == ["Honey never spoils.", "No."]
    assert hh[2].responses == ["Sure.\n\nWhat do you need?", "No."] and hh[2].meta == {"merged_turns": True}

    sg = list(by_uid("sharegpt_dpo.json").values())
    assert [t["role"] for t in sg[1].context] == ["system", "user", "assistant", "user"]
    assert sg[1].responses[0] == "Bye." and sg[1].best == 0


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed")
def test_ultrafeedback_binarized_parquet_mapping():
    items = by_uid("ultrafeedback_binarized.parquet")
    assert set(items) == {"a1b2", "c3d4"}  # e5f6 has equal scores: dropped as a tie
    a = items["a1b2"]
    assert a.context == [{"role": "user", "content": "Name a color."}] and a.responses == ["Blue.", "Seven."]
    assert a.rewards == [9.0, 2.5] and a.best == 0


def test_realmistake_mapping():
    items = by_uid("realmistake.jsonl")
    ok, err = items["mwpg-0001"], items["ffv-0002"]
    assert ok.rewards == [1.0] and err.rewards == [0.0] and ok.best is None and ok.num_responses == 1
    assert err.meta["subset"] == "finegrained_fact_verification" and err.meta["error_label"] == "error"


def test_gzip_is_detected_from_bytes_and_json_arrays_in_gzip(tmp_path):
    rows = json.loads((FORMATS / "sharegpt_dpo.json").read_text())
    import gzip
    (tmp_path / "pairs.json.gz").write_bytes(gzip.compress(json.dumps(rows).encode()))
    assert len(read_preferences(tmp_path / "pairs.json.gz")) == 2


def test_jsonl_saved_as_json_is_read_by_line(tmp_path):
    lines = (FORMATS / "rewardbench.jsonl").read_text()
    (tmp_path / "rows.json").write_text(lines)
    assert [it.uid for it in read_preferences(tmp_path / "rows.json")] == ["11", "12", "13"]


def test_unknown_format_and_undetectable_rows(tmp_path):
    with pytest.raises(DataError, match="unknown format 'nope'"):
        read_preferences(FORMATS / "rewardbench.jsonl", format="nope")
    (tmp_path / "x.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(DataError, match=r"x\.jsonl:1: cannot detect the format from fields \['foo'\]"):
        read_preferences(tmp_path / "x.jsonl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported file type"):
        read_preferences(tmp_path / "x.txt")


def test_parquet_without_pyarrow_says_how_to_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(files.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyarrow" else real(name, *a))
    with pytest.raises(DataError, match="pip install pyarrow"):
        read_preferences(FORMATS / "ultrafeedback_binarized.parquet")


# ---------------------------------------------------------------- the malformed corpus

MALFORMED_CASES = [  # file, location in the message, text naming the field/problem, good rows in the file
    ("truncated.json", "truncated.json:31:", "invalid JSON", None),
    ("truncated.jsonl", "truncated.jsonl:3:", "invalid JSON", 2),
    ("missing_field.jsonl", "missing_field.jsonl:2:", "field 'rejected': missing", 2),
    ("wrong_type.jsonl", "wrong_type.jsonl:2:", "field 'chosen': expected a string, got int", 2),
    ("wrong_type_rmb.json", "wrong_type_rmb.json:[1]:", "field 'conversation_input': expected a list, got str", 1),
    ("empty_responses.jsonl", "empty_responses.jsonl:2:", "field 'responses': empty list", 1),
    ("empty_losers.json", "empty_losers.json:[1]:", "field 'loser_list': empty list", 1),
    ("best_out_of_range.jsonl", "best_out_of_range.jsonl:2:", "field 'best' = 5 out of range for 3 responses", 1),
    ("non_utf8.jsonl", "non_utf8.jsonl:2:", "not valid UTF-8 (byte 0xff", 2),
    ("non_utf8.json", "non_utf8.json:42:", "not valid UTF-8 (byte 0xfe)", None),
    ("duplicate_uids.jsonl", "duplicate_uids.jsonl:3:", "field 'id': duplicate uid '11' (first at", 2),
    ("judgebench_no_label.jsonl", "judgebench_no_label.jsonl:2:", "field 'label': missing (pair_id 'jb-no-label')", 1),
]


@pytest.mark.parametrize("name, loc, problem, good", MALFORMED_CASES, ids=[c[0] for c in MALFORMED_CASES])
def test_malformed_rows_raise_with_location_and_field(name, loc, problem, good):
    with pytest.raises(DataError) as e:
        read_preferences(MALFORMED / name)
    msg = str(e.value)
    assert loc in msg and problem in msg, msg
    if good is None:  # the whole file is unreadable: skipping cannot help either
        with pytest.raises(DataError):
            read_preferences_with_report(MALFORMED / name, on_error="skip")
        return
    items, report = read_preferences_with_report(MALFORMED / name, on_error="skip")
    assert len(items) == good and len(report.bad) == 1 and report.items == good
    bad = report.bad[0]
    assert f"{bad.loc}: {bad.reason}" == msg  # the same words in both modes


ROW_ERRORS = [  # a row in each format's layout with one thing wrong -> the field the message must name
    ({"question_id": "q", "prompt": "p", "response_1": "a", "response_2": "b", "winner": "model_c"},
     "field 'winner': expected 'model_a', 'model_b' or a tie"),
    ({"question_id": "q", "prompt": "p", "response_1": "a", "response_2": "b", "scores": [1],
      "sampled_conflict_pairs": []}, "field 'scores': has 1 values for 2 responses"),
    ({"question_id": "q", "prompt": "p", "response_1": "a", "response_2": "b", "scores": [1, 0],
      "sampled_conflict_pairs": [[0, 2]]}, "field 'sampled_conflict_pairs[0]': expected [i, j]"),
    ({"question_id": "q", "prompt": "p", "response_1": "a", "response_2": "b", "scores": [1, 1],
      "sampled_conflict_pairs": [[0, 1]]}, "field 'sampled_conflict_pairs[0]': pair [0, 1] is not a conflict"),
    ({"prompt": "p", "response_1": "a", "response_2": "b", "preference_strength": "high"},
     "field 'preference_strength': expected a finite number"),
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "human", "value": "a"},
      "rejected": {"from": "gpt", "value": "b"}}, "field 'chosen.from': expected an assistant reply"),
    ({"conversations": [{"from": "alien", "value": "q"}], "chosen": {"from": "gpt", "value": "a"},
      "rejected": {"from": "gpt", "value": "b"}}, "field 'conversations[0].from': unknown role 'alien'"),
    ({"chosen": "Human: no leading blank line", "rejected": "\n\nHuman: q\n\nAssistant: a"},
     "field 'chosen': expected a transcript"),
    ({"chosen": "\n\nHuman: q\n\nAssistant: a\n\nHuman: more?", "rejected": "\n\nHuman: q\n\nAssistant: b"},
     "field 'chosen': after the shared context the transcript must hold only the assistant's reply"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "b"}],
      "score_chosen": 2, "score_rejected": 5}, "field 'score_chosen': 2 is below score_rejected 5"),
    ({"input": "q", "llm_response": "a", "error_label": "maybe", "metadata": {"id": "m"}},
     "field 'error_label': expected 'error' or 'no_error'"),
    ({"input": "q", "llm_response": "a", "error_label": "error", "metadata": {}}, "field 'metadata.id': missing"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "id": True}, "field 'id': expected a string or integer id"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a",
      "rejected": "b", "id": 1}, "field 'prompt': the conversation must end with a user turn"),
    ({"instruction": "q", "completions": [{"response": "a"}, {"response": "b", "overall_score": 3}]},
     "field 'completions[0].overall_score': missing"),
]


@pytest.mark.parametrize("row, problem", ROW_ERRORS, ids=[str(i) for i in range(len(ROW_ERRORS))])
def test_format_specific_errors_name_the_field(tmp_path, row, problem):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        read_preferences(path)
    assert f"rows.jsonl:1: {problem}" in str(e.value), str(e.value)


def test_raise_returns_nothing_and_leaves_shared_state_alone():
    seen: dict = {}
    with pytest.raises(DataError):
        read_preferences_with_report(MALFORMED / "duplicate_uids.jsonl", seen_uids=seen)
    assert seen == {}


def test_duplicates_across_files_are_caught_but_not_across_sources(tmp_path):
    rows = (FORMATS / "rewardbench.jsonl").read_text()
    (tmp_path / "a.jsonl").write_text(rows)
    (tmp_path / "b.jsonl").write_text(rows.splitlines()[0] + "\n")
    with pytest.raises(DataError, match=r"b\.jsonl:1: field 'id': duplicate uid '11' \(first at .*a\.jsonl:1\)"):
        read_folder_with_report(tmp_path)
    # An RMB pair_uid equal to a RewardBench id is a different item.
    (tmp_path / "b.jsonl").unlink()
    rmb = json.loads((FORMATS / "rmb_pairwise.json").read_text())
    rmb[0]["pair_uid"] = "11"
    (tmp_path / "c.json").write_text(json.dumps(rmb))
    items, _ = read_folder_with_report(tmp_path)
    assert sorted((it.source, it.uid) for it in items if it.uid == "11") == [("rewardbench", "11"),
                                                                           ("rmb_pairwise", "11")]


def test_skip_mode_logs_what_it_skipped(caplog):
    with caplog.at_level(logging.WARNING):
        items = read_preferences(MALFORMED / "missing_field.jsonl", on_error="skip")
    assert len(items) == 2 and "1 bad rows skipped" in caplog.text and "missing_field.jsonl:2" in caplog.text


def test_check_cli_reports_every_bad_row():
    out = io.StringIO()
    assert check.main([str(MALFORMED)], out=out) == 1
    text = out.getvalue()
    for _, loc, problem, _ in MALFORMED_CASES:
        assert loc in text and problem in text, (loc, text)
    out = io.StringIO()
    assert check.main([str(FORMATS)], out=out) == 0
    counts = count_by_subset(read_folder_with_report(FORMATS)[0])
    assert f"total: {sum(counts.values())} items in {len(FIXTURES)} files" in out.getvalue()
    assert "dropped by policy: 1 single completion, 4 tie; bad rows: 0" in out.getvalue()
    assert check.main([str(FORMATS / "rmb_bon.json"), "--format", "rmb_pairwise"], out=io.StringIO()) == 1
    assert check.main(["--format", "nope", str(FORMATS)]) == 2
