"""Voting@k and MetaRM@k: the paper's worked examples, shuffles, failures, tie-break determinism."""
import pytest

from spct_jax.grm.prompts import build_prompt
from spct_jax.grm.voting import (default_k_meta, permute, presented_position, sample_permutations, seeded_argmax,
                                 unpermute, vote)

IDENTITY, REVERSED = (0, 1), (1, 0)


def test_table17_reversed_orders_vote_20_vs_27():
    # Table 17: result 1 \boxed{8, 8}; results 2 and 3 saw the responses in reversed order.
    presented = [((8, 8), IDENTITY), ((9, 5), REVERSED), ((10, 7), REVERSED)]
    original = [unpermute(scores, perm) for scores, perm in presented]
    assert original == [(8, 8), (5, 9), (7, 10)]
    v = vote(original)
    assert v.totals == (20, 27) and v.best == 1
    assert v.num_valid == 3 and v.num_failed == 0 and v.kept == (0, 1, 2)


def test_fig3_voting_and_meta_rm():
    samples = [(1, 5), (5, 6), (4, 8), (7, 6)]
    v = vote(samples)
    assert v.totals == (17, 25) and v.best == 1
    # The meta RM keeps samples 1 and 3 (1-based), i.e. k_meta = k/2 = 2 highest meta rewards.
    m = vote(samples, meta_scores=[1.3, -15.8, 1.7, 0.2])
    assert m.kept == (0, 2) and m.totals == (5, 13) and m.best == 1
    assert m.num_used == 2 and m.num_valid == 4


def test_uncertainty_is_the_variance_of_the_used_votes():
    v = vote([(1, 5), (5, 6), (4, 8), (7, 6)])
    assert v.uncertainty == pytest.approx((4.6875, 1.1875))
    assert vote([(3, 4)]).uncertainty == (0.0, 0.0)


def test_failures_are_dropped_and_counted():
    v = vote([(8, 8), None, (5, 9), None])
    assert v.totals == (13, 17) and v.num_valid == 2 and v.num_failed == 2 and v.kept == (0, 2)
    none = vote([None, None], num_responses=3)
    assert none.totals == (0, 0, 0) and none.best is None and none.uncertainty is None and none.num_failed == 2
    assert vote([None]).totals == ()


def test_meta_rm_ranks_failures_last_and_breaks_meta_ties_by_index():
    # The failure has the top meta score but no scores: it must not take one of the two slots.
    v = vote([(1, 2), None, (3, 4), (5, 6)], meta_scores=[0.0, 9.0, 1.0, 0.0], k_meta=2)
    assert v.kept == (0, 2) and v.totals == (4, 6)
    tie = vote([(1, 2), (3, 4), (5, 6)], meta_scores=[0.5, 0.5, 0.5], k_meta=2, seed=123)
    assert tie.kept == (0, 1)


def test_k_meta_defaults_and_errors():
    assert [default_k_meta(k) for k in (1, 2, 3, 8, 32)] == [1, 1, 2, 4, 16]
    with pytest.raises(ValueError):
        vote([(1, 2)], k_meta=1)
    with pytest.raises(ValueError):
        vote([(1, 2), (2, 1)], meta_scores=[0.0, 1.0], k_meta=3)
    with pytest.raises(ValueError):
        vote([(1, 2), (2, 1)], meta_scores=[0.0])
    with pytest.raises(ValueError):
        vote([(1, 2), (2, 1)], meta_scores=[0.0, float("nan")])
    with pytest.raises(ValueError):
        vote([(1, 2), (2, 1, 3)])
    with pytest.raises(ValueError):
        vote([(1, 2)], num_responses=3)
    with pytest.raises(ValueError):
        vote([])


def test_tie_break_is_seeded_and_deterministic():
    totals = (9, 20, 3, 20, 20)
    picks = {seed: seeded_argmax(totals, seed) for seed in range(200)}
    assert set(picks.values()) == {1, 3, 4}  # only maxima, and every one of them for some seed
    assert all(seeded_argmax(totals, s) == p for s, p in picks.items())
    assert seeded_argmax(totals, (7, 3)) == seeded_argmax(totals, (7, 3))
    for seed in range(20):
        assert vote([(5, 5, 1)], seed=seed).best == vote([(5, 5, 1)], seed=seed).best
    assert vote([(1, 9, 2)], seed=5).best == 1  # a unique max never depends on the seed


def test_sample_permutations_are_seeded_and_batch_size_invariant():
    perms = sample_permutations(5, 8, seed=3)
    assert len(perms) == 8 and all(sorted(p) == list(range(5)) for p in perms)
    assert perms == sample_permutations(5, 8, seed=3)
    assert sample_permutations(5, 4, seed=3) == perms[:4]
    assert len(set(perms)) > 1
    assert sample_permutations(5, 8, seed=4) != perms
    assert sample_permutations(5, 8, seed=(3, 1)) != sample_permutations(5, 8, seed=(3, 2))
    assert sample_permutations(1, 3, seed=0) == [(0,), (0,), (0,)]
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError):
            sample_permutations(3, 2, seed=bad)


def test_permute_unpermute_and_hint_position():
    responses = ["r0", "r1", "r2", "r3"]
    perm = (2, 0, 3, 1)
    shown = permute(responses, perm)
    assert shown == ["r2", "r0", "r3", "r1"]
    assert list(unpermute(shown, perm)) == responses
    assert presented_position(perm, 3) == 2
    # The hint names the GT best (original index 3) by its presented position: Response 3.
    assert build_prompt("q", shown, hint_best=presented_position(perm, 3)).endswith("Response 3")
    for bad in [(0, 0, 1, 2), (0, 1, 2), (0, 1, 2, 4)]:
        with pytest.raises(ValueError):
            unpermute([1, 2, 3, 4], bad)


def test_shuffled_sampling_end_to_end():
    # A judge that always prefers original response 2, seen through k shuffles, votes for it.
    responses = ["a", "b", "c"]
    true_scores = (3, 5, 9)
    samples = []
    for perm in sample_permutations(3, 6, seed=11):
        shown_scores = tuple(true_scores[i] for i in perm)  # what the GRM writes, in presented order
        samples.append(unpermute(shown_scores, perm))
    v = vote(samples)
    assert v.totals == (18, 30, 54) and v.best == 2 and v.uncertainty == (0.0, 0.0, 0.0)
    assert len(responses) == len(v.totals)


def test_nested_votes_revote_prefixes_with_one_tie_seed():
    from spct_jax.grm.voting import nested_votes

    # 4 samples over 2 responses: the first two favour response 0, the last two response 1 by more.
    scores = [(9, 1), (8, 2), (1, 10), (2, 10)]
    meta = [0.1, 0.9, 0.8, 0.2]
    runs = [("voting", 1, None), ("voting", 2, None), ("voting", 4, None), ("metarm", 4, None), ("metarm", 4, 1)]
    got = nested_votes(scores, runs, meta_scores=meta, seed=(3, 7))
    assert [v.best for v in got] == [0, 0, 1, 1, 0]
    assert got[2].totals == (20, 23)
    assert got[3].kept == (1, 2) and got[3].totals == (9, 12)  # k_meta = k/2 keeps the two best meta scores
    assert got[4].kept == (1,)  # k_meta = 1 keeps the top meta score only
    # Each run equals vote() over the prefix with the same tie seed: a tie (5, 5) breaks the same way in both.
    tie = [(5, 5), (5, 5)]
    assert nested_votes(tie, [("voting", 2, None)], seed=(1, 2))[0] == vote(tie, seed=(1, 2))
    with pytest.raises(ValueError):
        nested_votes(scores, [("metarm", 2, None)])  # no meta scores
    with pytest.raises(ValueError):
        nested_votes(scores, [("voting", 2, 1)], meta_scores=meta)
    with pytest.raises(ValueError):
        nested_votes(scores, [("best_of", 2, None)])
