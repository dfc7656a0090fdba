"""RFT rejection rules on hand-made trajectories: wrong, too easy, hinted kept, and the hint stripped."""
import pytest

from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.prompts import build_prompt
from spct_jax.train.rft import RFTStats, example_from, select, wants_hint
from spct_jax.grm.trajectories import Trajectory

ITEM = PreferenceItem(context=[{"role": "user", "content": "What is 2+3?"}], responses=["5", "6", "4"],
                      rewards=None, best=0, source="t", uid="q1")


def traj(perm, scores, *, hinted=False, text="Specific Criteria: x\nAnalysis: y\nScores: \\boxed{9, 2, 1}"):
    from spct_jax.grm.rules import is_correct

    return Trajectory(uid="q1", perm=perm, template="default", hinted=hinted, prompt_ids=(1,), completion_ids=(2,),
                      logprobs=(0.0,), text=text, principles="", critique="", scores=scores,
                      error=None if scores else "no_boxed: x",
                      correct=scores is not None and is_correct(scores, ITEM.gt_rewards()))


def test_wrong_trajectories_are_rejected_and_correct_ones_kept():
    stats = RFTStats()
    kept, verdict = select(ITEM, [traj((0, 1, 2), (9, 2, 1)), traj((1, 0, 2), (5, 5, 1)), traj((2, 1, 0), None)],
                           stats)
    assert len(kept) == 1 and kept[0].perm == (0, 1, 2) and verdict == "partial"
    assert stats.accepted == 1 and stats.rejected == 2 and stats.parse_failures == 1


def test_ties_with_the_best_are_wrong():
    assert not traj((0, 1, 2), (8, 8, 1)).correct


def test_all_correct_is_too_easy_and_dropped():
    stats = RFTStats()
    kept, verdict = select(ITEM, [traj((0, 1, 2), (9, 2, 1))] * 3, stats)
    assert kept == [] and verdict == "too_easy" and stats.too_easy_items == 1 and stats.accepted == 0


def test_no_correct_sample_is_unsolved():
    stats = RFTStats()
    kept, verdict = select(ITEM, [traj((0, 1, 2), (1, 9, 2))] * 3, stats)
    assert kept == [] and verdict == "unsolved" and stats.rejected == 3


@pytest.mark.parametrize("mode,expected", [
    ("all", {"partial": True, "unsolved": True, "too_easy": False}),
    ("unsolved", {"partial": False, "unsolved": True, "too_easy": False}),
    ("none", {"partial": False, "unsolved": False, "too_easy": False}),
])
def test_hinted_modes_select_the_documented_items(mode, expected):
    # "all" ([P] §3.2, our reading): every item that is not too easy; "unsolved": only items none of whose plain
    # samples is correct; "none": no hinted sampling. Too-easy items are dropped whatever the mode.
    assert {v: wants_hint(ITEM, v, mode) for v in expected} == expected
    single = PreferenceItem(context=ITEM.context, responses=["5"], rewards=[1.0], best=None, source="t", uid="s")
    assert not any(wants_hint(single, v, mode) for v in expected)  # one response: nothing to hint at


def test_rejective_sampling_never_hints_single_response_items():
    """tiny-random gets nothing right, so every item is unsolved: "all" hints the multi-response
    items only, and no single-response item is labelled hinted (it used to get a fourth plain sample so labelled)."""
    from spct_jax.grm.scorer import GenerativeRewardModel
    from spct_jax.models.registry import load_model
    from spct_jax.train.rft import RFTConfig, rejective_sampling
    from spct_jax.grm.trajectories import RolloutConfig

    model, tok = load_model("tiny-random")
    items = [PreferenceItem(context=[{"role": "user", "content": "2+3?"}], responses=["5", "6"], rewards=None,
                            best=0, source="t", uid="pair"),
             PreferenceItem(context=[{"role": "user", "content": "2+2?"}], responses=["4"], rewards=[1.0], best=None,
                            source="t", uid="single")]
    grm = GenerativeRewardModel(model, tok, template="toy")
    rollout = RolloutConfig(max_new_tokens=4, template="toy", single_template="toy")
    for mode, hinted in (("all", 1), ("none", 0)):
        res = rejective_sampling(grm, items, RFTConfig(n_rft=2, hinted=mode, rollout=rollout))
        assert res.stats.hinted_items == hinted and res.stats.unsolved_items == 2
        assert all(not t.hinted for ts in res.plain for t in ts)
    with pytest.raises(ValueError, match="hinted"):
        RFTConfig(hinted=True)


def test_hinted_trajectory_is_trained_without_the_hint():
    t = traj((2, 0, 1), (9, 3, 1), hinted=True)
    ex = example_from(ITEM, t)
    assert ex.hinted and "The best response is" not in ex.prompt
    assert ex.prompt == build_prompt(ITEM.context, ["4", "5", "6"])  # the trajectory's presented order
    assert ex.sft_record().messages[-1]["content"] == ex.prompt and ex.target == t.text
