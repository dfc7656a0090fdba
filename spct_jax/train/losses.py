"""Losses for the three SPCT training stages, each returning `(sum, denominator)`.

Returning the pair instead of a mean lets gradient accumulation and data-parallel reduction be exact: micro-batches
(and devices) add their sums and denominators, and the step divides once. The mean is `sum / denominator`.

  nll_loss     RFT (SFT on accepted trajectories): masked next-token negative log-likelihood.
  grpo_loss    RL ([P] Eq. 15): clipped surrogate minus beta * k3 KL to the reference, negated.
  bce_loss     meta RM ([P] §4): binary cross-entropy of a scalar logit against Eq.-10 correctness.

Token alignment used everywhere: `logp[:, t] = log p(ids[t] | ids[<t])` (0 at t = 0, as
`spct_jax.models.logprobs` computes them), and a mask value at t means "token t is a target", matching the batching
module's `loss_mask`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from spct_jax.train.config import GRPO_BETA_27B, GRPO_EPSILON

Weighted = tuple[jax.Array, jax.Array]  # (sum, denominator)

# exp() of a log-ratio beyond this overflows float32 soon after; real policies never get near it, so clamping
# only guards against NaN from a broken rollout (ours; TRL/verl clamp similarly).
LOG_RATIO_CLAMP = 20.0


# -- RFT ---------------------------------------------------------------------------------------------------------
def nll_loss(logprobs: jax.Array, loss_mask: jax.Array) -> Weighted:
    """Masked NLL: (-sum_t mask * logp, sum_t mask). logprobs, loss_mask: [B, T]."""
    m = loss_mask.astype(jnp.float32)
    return -jnp.sum(logprobs * m), jnp.sum(m)


# -- GRPO --------------------------------------------------------------------------------------------------------
def k3_kl(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """Per-token unbiased KL[pi || pi_ref] estimator k3 = r - log r - 1, r = pi_ref / pi (Schulman 2020), as in
    DeepSeekMath's GRPO (the paper's "original GRPO"). Always >= 0, and 0 where pi == pi_ref."""
    d = jnp.clip(ref_logp - logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return jnp.exp(d) - d - 1.0


def _grpo_terms(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, epsilon: float):
    ratio = jnp.exp(jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    adv = advantages[:, None].astype(jnp.float32)  # [B, 1]: an outcome reward, the same for every token
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon) * adv
    return ratio, adv, jnp.minimum(unclipped, clipped)


def _seq_mean_token_mean(per_token: jax.Array, mask: jax.Array) -> Weighted:
    # [P] Eq. 15: 1/G sum_i 1/|o_i| sum_t. Rows without completion tokens (batch padding) are not rollouts.
    lengths = jnp.sum(mask, axis=1)  # [B]
    per_seq = jnp.sum(per_token * mask, axis=1) / jnp.maximum(lengths, 1.0)
    return jnp.sum(per_seq), jnp.sum((lengths > 0).astype(jnp.float32))


def _token_mean(per_token: jax.Array, mask: jax.Array) -> Weighted:
    # DAPO: every token of the batch weighs the same, so long rollouts are not down-weighted.
    return jnp.sum(per_token * mask), jnp.sum(mask)


def _seq_sum(per_token: jax.Array, mask: jax.Array) -> Weighted:
    # Dr. GRPO: no 1/|o_i| (its constant normaliser only rescales the learning rate); mean over rollouts.
    return jnp.sum(per_token * mask), jnp.sum((jnp.sum(mask, axis=1) > 0).astype(jnp.float32))


GRPO_AGGREGATIONS: dict[str, Callable[[jax.Array, jax.Array], Weighted]] = {
    "seq_mean_token_mean": _seq_mean_token_mean,
    "token_mean": _token_mean,
    "seq_sum": _seq_sum,
}


def grpo_loss(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
              epsilon: float = GRPO_EPSILON, beta: float = GRPO_BETA_27B,
              aggregation: str = "seq_mean_token_mean") -> Weighted:
    """GRPO loss to minimise (= -objective of [P] Eq. 15) as (sum, denominator).

    logp, old_logp, ref_logp, mask: [B, T] (mask = completion tokens); advantages: [B].
    Per token: -( min(rho*A, clip(rho, 1-eps, 1+eps)*A) - beta * k3 ), rho = exp(logp - old_logp) (log-ratio
    clamped). The min picks the pessimistic term: for A < 0 and rho > 1+eps the unclipped term is active (the
    gradient still pushes rho down); for A < 0 and rho < 1-eps the clipped constant is active (no gradient).
    Defaults: epsilon 0.2 (GRPO default; [P] silent), beta 0.08 ([P] App. C.1, 27B).
    """
    if aggregation not in GRPO_AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {sorted(GRPO_AGGREGATIONS)}")
    _, _, surrogate = _grpo_terms(logp, old_logp, advantages, epsilon)
    per_token = -(surrogate - beta * k3_kl(logp, ref_logp))  # [B, T]
    return GRPO_AGGREGATIONS[aggregation](per_token, mask.astype(jnp.float32))


def grpo_diagnostic_sums(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array, advantages: jax.Array,
                         mask: jax.Array, *, epsilon: float = GRPO_EPSILON) -> dict[str, Weighted]:
    """Token-weighted (sum, denominator) of the mean k3 KL and of the fraction of tokens whose clipped term is
    active (zero policy gradient): A > 0 and rho > 1+eps, or A < 0 and rho < 1-eps."""
    m = mask.astype(jnp.float32)
    ratio, adv, _ = _grpo_terms(logp, old_logp, advantages, epsilon)
    clipped = ((adv > 0) & (ratio > 1.0 + epsilon)) | ((adv < 0) & (ratio < 1.0 - epsilon))
    n = jnp.sum(m)
    return {"kl_mean": (jnp.sum(k3_kl(logp, ref_logp) * m), n),
            "clip_fraction": (jnp.sum(clipped.astype(jnp.float32) * m), n)}


def grpo_diagnostics(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array, advantages: jax.Array,
                     mask: jax.Array, *, epsilon: float = GRPO_EPSILON) -> dict[str, jax.Array]:
    """{"kl_mean", "clip_fraction"} over the masked tokens."""
    sums = grpo_diagnostic_sums(logp, old_logp, ref_logp, advantages, mask, epsilon=epsilon)
    return {k: s / jnp.maximum(d, 1.0) for k, (s, d) in sums.items()}


def group_advantages(rewards: jax.Array, group_size: int, *, eps: float = 1e-4, ddof: int = 1) -> jax.Array:
    """Â = (r - mean_group) / (std_group + eps) for rewards [N*G] laid out group by group -> [N*G].

    Std convention: sample std (ddof=1), as TRL's GRPOTrainer (torch `.std()`), with its eps 1e-4; [P] and
    DeepSeekMath only write std(r). For G = 4 and ±1 rewards this gives |Â| ≤ 1.5. A group with all-equal
    rewards gets Â = 0 exactly (no policy gradient, only the KL term).
    """
    r = jnp.asarray(rewards, jnp.float32)
    if r.ndim != 1 or r.shape[0] % group_size:
        raise ValueError(f"rewards must be [N*G] with G={group_size} dividing it, got shape {r.shape}")
    g = r.reshape(-1, group_size)  # [N, G]
    mean = jnp.mean(g, axis=1, keepdims=True)
    std = jnp.std(g, axis=1, keepdims=True, ddof=ddof)
    return ((g - mean) / (std + eps)).reshape(-1)


# -- meta RM -----------------------------------------------------------------------------------------------------
def bce_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> Weighted:
    """Binary cross-entropy of logits [B] against labels [B] in {0, 1} (or soft), as (sum, count).

    softplus(x) - y*x equals -(y log σ(x) + (1-y) log(1-σ(x))) and stays finite for |x| ~ 1e4, where
    log(sigmoid(x)) underflows to log(0).
    """
    x = logits.astype(jnp.float32)
    y = labels.astype(jnp.float32)
    per = jax.nn.softplus(x) - y * x  # [B]
    m = jnp.ones_like(x) if mask is None else mask.astype(jnp.float32)
    return jnp.sum(per * m), jnp.sum(m)
