"""PreferenceItem invariants, JSON round trip and the unique-argmax rule of Eq. 10."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from spct_jax.data import DataError, PreferenceItem, Turn, best_from_rewards, read_preferences

CTX = [Turn(role="system", content="Be brief."), Turn(role="user", content="2+2?")]


def item(**kw) -> PreferenceItem:
    base = dict(context=CTX, responses=["4", "5"], rewards=[1.0, 0.0], best=0, source="t", uid="u")
    return PreferenceItem(**{**base, **kw})


def test_valid_items_and_properties():
    it = item()
    assert it.query == "2+2?" and it.num_responses == 2 and it.gt_rewards() == [1.0, 0.0]
    single = item(responses=["4"], rewards=[1.0], best=None)
    assert single.gt_rewards() == [1.0]
    order_only = item(rewards=None, best=1)
    assert order_only.gt_rewards() == [0.0, 1.0]
    with pytest.raises(DataError, match="no ground truth"):
        item(rewards=None, best=None).gt_rewards()


@pytest.mark.parametrize("kw, field", [
    (dict(responses=[]), "responses"),
    (dict(responses=["a", 3], rewards=None), "responses"),
    (dict(context=[]), "context"),
    (dict(context=[{"role": "robot", "content": "x"}]), "context"),
    (dict(rewards=[1.0]), "rewards"),
    (dict(best=2), "best"),
    (dict(best=-1), "best"),
    (dict(best=1), "best"),  # not the maximum of rewards
    (dict(rewards=[1.0, 1.0], best=0), "best"),  # the maximum is not unique
])
def test_invalid_items_name_the_field(kw, field):
    with pytest.raises(DataError, match=f"'{field}'"):
        item(**kw)


def test_json_round_trip_through_schema_jsonl(tmp_path):
    items = [item(uid="a", meta={"subset": "x", "pairs": [[0, 1]]}), item(uid="b", responses=["ok"], rewards=[0.0],
                                                                           best=None)]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(it.to_json()) + "\n" for it in items))
    assert read_preferences(path) == items
    assert [PreferenceItem.from_json(it.to_json()) for it in items] == items


@pytest.mark.parametrize("rewards, best", [
    ([0.0, 1.0, 0.5], 1), ([1.0, 1.0, 0.0], None), ([3.0], None), ([2.0, 7.0], 1), ([5.0, 5.0], None),
])
def test_best_from_rewards_is_the_unique_argmax(rewards, best):
    assert best_from_rewards(rewards) == best


# ---------------------------------------------------------------- native rows: `best` from `rewards` (Eq. 10)

NATIVE = {"context": [{"role": "user", "content": "Which answer is best?"}], "responses": ["a", "b", "c"],
          "source": "spct", "uid": "n-1"}


def _write(tmp_path, rows):
    path = tmp_path / "native.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_native_row_with_rewards_only_takes_best_from_their_unique_maximum(tmp_path):
    from types import SimpleNamespace

    from spct_jax.train.stage_common import usable_items

    [it] = read_preferences(_write(tmp_path, [{**NATIVE, "rewards": [1, 3, 2]}]))
    assert it.rewards == [1.0, 3.0, 2.0] and it.best == 1
    # Training keeps it (it used to be dropped as "no_unique_best"); a stand-in GRM whose prompts are 16 tokens.
    grm = SimpleNamespace(prompt_ids=lambda item, perm, template=None, hint_best=None: [0] * 16)
    rollout = SimpleNamespace(template_for=lambda n: "default", max_new_tokens=8)
    kept, dropped = usable_items([it], grm, rollout, max_tokens=64, hinted=True)
    assert kept == [it] and dropped == {"no_ground_truth": 0, "no_unique_best": 0, "too_long": 0}
    assert PreferenceItem.from_json({**NATIVE, "rewards": [1, 3, 2]}).best == 1


def test_native_row_with_a_shared_maximum_and_no_best_fails_naming_file_and_line(tmp_path):
    path = _write(tmp_path, [{**NATIVE, "rewards": [1, 3, 2]}, {**NATIVE, "uid": "n-2", "rewards": [3, 3, 2]}])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: field 'rewards': .*not unique"):
        read_preferences(path)
    with pytest.raises(DataError, match="'n-2'.*not unique"):
        PreferenceItem.from_json({**NATIVE, "uid": "n-2", "rewards": [3, 3, 2]})


def test_explicit_null_best_is_a_declared_tie_and_round_trips(tmp_path):
    """`"best": null` is what to_json writes for an item with no unique best (a PPE correctness question with several
    correct answers, UltraFeedback's tied ratings): it still reads back as such; with a unique maximum, best follows."""
    tie = {**NATIVE, "rewards": [3, 3, 2], "best": None}
    unique = {**NATIVE, "uid": "n-2", "rewards": [0, 1, 0], "best": None}
    assert [it.best for it in read_preferences(_write(tmp_path, [tie, unique]))] == [None, 1]
    ppe = read_preferences(Path(__file__).parent / "fixtures" / "data" / "formats" / "ppe_correctness.jsonl")
    assert [it.best for it in ppe] == [5, None]  # mmlu-2 has three correct attempts: no unique best, by design
    path = tmp_path / "ppe_dump.jsonl"
    path.write_text("".join(json.dumps(it.to_json()) + "\n" for it in ppe))
    assert read_preferences(path) == ppe
