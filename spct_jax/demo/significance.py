"""Which of the demo's phenomena are signal: each as a paired difference over the held-out items with a bootstrap
interval and a verdict (`spct_jax.eval.bootstrap`).

The demo keeps one correctness vector per method over the held-out items (`per_item` in results.json: 1 where the
method's best response is the ground-truth best). A phenomenon is "A beats B", read on the same items as A - B.
The paper's claims the demo reproduces ([P] §5, Table 3 and Fig. 4):

    RFT > cold start                      greedy accuracy after RFT against the cold start ([P] §3.2)
    RL > RFT                              greedy accuracy after rule-based RL against RFT ([P] §3.2)
    Voting@K > Voting@1                   inference-time scaling by voting, K the largest k ([P] §4)
    MetaRM@k > Voting@k                   meta-RM-guided voting on the same k samples ([P] §4)
    principles help                       Voting@k with principle generation against without ([P] Table 4)

The interval covers the sampling of items only: the training seed's own variance shows up between seeds, which is
why the README reports several seeds.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from spct_jax.eval.bootstrap import paired_bootstrap

RESAMPLES = 2000
LEVEL = 0.95


def greedy_key(stage: str) -> str:
    return f"greedy/{stage}"


def voting_key(k: int) -> str:
    return f"voting@{k}"


def metarm_key(k: int) -> str:
    return f"metarm@{k}"


def no_principles_key(k: int) -> str:
    return f"no_principles@{k}"


def phenomena(ks: Sequence[int], metarm_ks: Sequence[int], ablation_k: int) -> list[tuple[str, str, str]]:
    """(name, key of A, key of B) for each phenomenon the configuration measures."""
    out = [("RFT > cold start", greedy_key("rft"), greedy_key("cold_start")),
           ("RL > RFT", greedy_key("rl"), greedy_key("rft"))]
    top = max(ks)
    if 1 in ks and top > 1:
        out.append((f"Voting@{top} > Voting@1", voting_key(top), voting_key(1)))
    out += [(f"MetaRM@{k} > Voting@{k}", metarm_key(k), voting_key(k)) for k in metarm_ks if k in ks]
    if ablation_k in ks:
        out.append((f"principles help (Voting@{ablation_k})", voting_key(ablation_k), no_principles_key(ablation_k)))
    return out


def signal(per_item: Mapping[str, Sequence[int]], comparisons: Sequence[tuple[str, str, str]], *,
           seed: int = 0) -> list[dict]:
    """One row per phenomenon: its name, A and B, the accuracy difference A - B, its 95% paired bootstrap interval
    over the items (RESAMPLES resamples, seeded) and the verdict."""
    rows = []
    for name, a, b in comparisons:
        r = paired_bootstrap(per_item[a], per_item[b], resamples=RESAMPLES, seed=seed, level=LEVEL)
        rows.append({"phenomenon": name, "a": a, "b": b, **r.as_dict()})
    return rows


def signal_markdown(rows: Sequence[Mapping]) -> list[str]:
    """The rows as a markdown table (points, i.e. accuracy x 100)."""
    lines = [f"| phenomenon | A - B (points) | {int(100 * LEVEL)}% interval | verdict |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['phenomenon']} | {100 * r['diff']:+.1f} | [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] "
                     f"| {r['verdict']} |")
    return lines


__all__ = ["LEVEL", "RESAMPLES", "greedy_key", "metarm_key", "no_principles_key", "phenomena", "signal",
           "signal_markdown", "voting_key"]
