"""RFT rejection rules on hand-made trajectories: wrong, too easy, hinted kept, and the hint stripped."""
from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.prompts import build_prompt
from spct_jax.train.rft import RFTStats, example_from, select
from spct_jax.train.rollout import Trajectory

ITEM = PreferenceItem(context=[{"role": "user", "content": "What is 2+3?"}], responses=["5", "6", "4"],
                      rewards=None, best=0, source="t", uid="q1")


def traj(perm, scores, *, hinted=False, text="Specific Criteria: x\nAnalysis: y\nScores: \\boxed{9, 2, 1}"):
    from spct_jax.grm.rules import is_correct

    return Trajectory(uid="q1", perm=perm, template="default", hinted=hinted, prompt_ids=(1,), completion_ids=(2,),
                      logprobs=(0.0,), text=text, scores=scores, error=None if scores else "no_boxed: x",
                      correct=scores is not None and is_correct(scores, ITEM.gt_rewards()))


def test_wrong_trajectories_are_rejected_and_correct_ones_kept():
    stats = RFTStats()
    kept, hint = select(ITEM, [traj((0, 1, 2), (9, 2, 1)), traj((1, 0, 2), (5, 5, 1)), traj((2, 1, 0), None)], stats)
    assert len(kept) == 1 and kept[0].perm == (0, 1, 2) and not hint
    assert stats.accepted == 1 and stats.rejected == 2 and stats.parse_failures == 1


def test_ties_with_the_best_are_wrong():
    assert not traj((0, 1, 2), (8, 8, 1)).correct


def test_all_correct_is_too_easy_and_dropped():
    stats = RFTStats()
    kept, hint = select(ITEM, [traj((0, 1, 2), (9, 2, 1))] * 3, stats)
    assert kept == [] and not hint and stats.too_easy_items == 1 and stats.accepted == 0


def test_no_correct_sample_asks_for_a_hint():
    stats = RFTStats()
    kept, hint = select(ITEM, [traj((0, 1, 2), (1, 9, 2))] * 3, stats)
    assert kept == [] and hint and stats.rejected == 3


def test_hinted_trajectory_is_trained_without_the_hint():
    t = traj((2, 0, 1), (9, 3, 1), hinted=True)
    ex = example_from(ITEM, t)
    assert ex.hinted and "The best response is" not in ex.prompt
    assert ex.prompt == build_prompt(ITEM.context, ["4", "5", "6"])  # the trajectory's presented order
    assert ex.sft_record().messages[-1]["content"] == ex.prompt and ex.target == t.text
