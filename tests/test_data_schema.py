"""PreferenceItem invariants, JSON round trip and the unique-argmax rule of Eq. 10."""
from __future__ import annotations

import json

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
