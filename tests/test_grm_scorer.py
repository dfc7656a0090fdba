"""GenerativeRewardModel end to end on the tiny random model: garbage is counted, nothing crashes, seeds hold."""
import json

import pytest

from spct_jax.cli import main as spct
from spct_jax.grm.scorer import GenerativeRewardModel
from spct_jax.models.registry import load_model

ITEMS = [
    {"context": "What is 2+2?", "responses": ["4", "5"], "uid": "a"},
    {"context": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                 {"role": "user", "content": "Name a colour"}], "responses": ["red", "7", "blue"], "uid": "b"},
]


@pytest.fixture(scope="module")
def grm():
    model, tok = load_model("tiny-random")
    return GenerativeRewardModel(model, tok)


@pytest.fixture(scope="module")
def batched(grm):
    return grm.score(ITEMS, k=3, max_new_tokens=12, seed=4)


def test_garbage_outputs_are_counted_as_failures(batched):
    for item, j in zip(ITEMS, batched):
        assert j.num_valid + j.num_failed == 3
        assert len(j.samples) == 3 and len(j.rewards) == len(item["responses"])
        for s in j.samples:
            assert sorted(s.permutation) == list(range(len(item["responses"])))
            assert (s.scores is None) == (s.error is not None)
        if j.num_valid == 0:
            assert j.best is None and j.uncertainty is None


def test_same_seed_same_judgements_and_batching_is_invisible(grm, batched):
    assert grm.score(ITEMS, k=3, max_new_tokens=12, seed=4) == batched
    one_by_one = [grm.score([it], k=3, max_new_tokens=12, seed=4)[0] for it in ITEMS]
    assert one_by_one == batched


def test_samples_see_their_own_shuffles():
    from spct_jax.grm.voting import sample_permutations

    perms = sample_permutations(4, 8, (0, 123))
    assert len(set(perms)) > 1 and perms == sample_permutations(4, 8, (0, 123))


def test_score_cli_writes_judgements_and_summary(tmp_path, capsys):
    src = tmp_path / "items.jsonl"
    src.write_text("\n".join(json.dumps(dict(it, best=0)) for it in ITEMS) + "\n")
    out = tmp_path / "j.jsonl"
    rc = spct(["score", "--model", "tiny-random", "--input", str(src), "--output", str(out), "--k", "2",
               "--max-new-tokens", "8"])
    assert rc == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["uid"] for x in lines] == ["a", "b"] and all(len(x["samples"]) == 2 for x in lines)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["items"] == 2 and 0.0 <= summary["parse_rate"] <= 1.0 and "accuracy" in summary


def test_score_cli_reports_bad_input_with_line(tmp_path, capsys):
    src = tmp_path / "items.jsonl"
    src.write_text(json.dumps(ITEMS[0]) + "\n{\"context\": \"x\", \"responses\": []}\n")
    rc = spct(["score", "--model", "tiny-random", "--input", str(src), "--output", str(tmp_path / "o.jsonl")])
    assert rc == 1
    assert "items.jsonl:2" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
