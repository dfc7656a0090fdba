"""Per-token log-probs of a sequence under a decoder: what GRPO's ratios, the reference model and the likelihood
meta RM all read, so it lives with the models rather than with any one of its users.

Token alignment: `logp[:, t] = log p(ids[t] | ids[<t])`, 0 at t = 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def token_logprobs_from_logits(logits: jax.Array, input_ids: jax.Array) -> jax.Array:
    """logits [B, T, V] (position t scores token t+1), input_ids [B, T] -> logp [B, T], 0 at t = 0."""
    targets = input_ids[:, 1:]  # [B, T-1]
    lp = _target_logprobs(logits[:, :-1], targets)
    return jnp.pad(lp, ((0, 0), (1, 0)))


def _target_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits [..., V] float, targets [...] int -> log softmax(logits)[target], without storing log_softmax."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def logprobs_from_hidden(model: nnx.Module, hidden: jax.Array, input_ids: jax.Array, *, chunk: int = 512,
                         temperature: float = 1.0) -> jax.Array:
    """hidden [B, T, D] (final-normed) -> logp [B, T] via `model.logits_from_hidden`, `chunk` positions at a time.

    temperature: the log-probs of softmax(logits / temperature), the distribution the sampler draws from at that
    temperature (the sampler divides the same soft-capped logits), so GRPO's ratios of rollouts sampled at T != 1
    are on-policy.

    Only [B, chunk, V] logits exist at once, forward and backward: each chunk is rematerialised
    (`jax.checkpoint`), so the backward pass keeps the chunk's hidden states, not its logits. When the whole
    sequence fits in one chunk there is nothing to save memory against, and the logits are not recomputed.

    With the model's activation layout set (`Decoder.constrain`, as the sharded steps set it: steps.pinned), each
    chunk's hidden states keep their rows on their devices and its logits are split by rows and vocabulary
    ("logits" of parallel/rules.py ACTIVATION_SPECS), so GSPMD never holds a chunk's [B, C, V] whole.
    """
    b, t, d = hidden.shape
    n = t - 1  # positions 0..T-2 predict tokens 1..T-1
    h = hidden[:, :-1]  # [B, n, D]
    targets = input_ids[:, 1:]  # [B, n]
    pin = getattr(model, "constrain", None) or (lambda x, kind: x)

    def one_chunk(h_c: jax.Array, tgt_c: jax.Array) -> jax.Array:  # [B, C, D], [B, C] -> [B, C]
        logits = pin(model.logits_from_hidden(pin(h_c, "hidden")), "logits")  # [B, C, V]
        return _target_logprobs(logits if temperature == 1.0 else logits / temperature, tgt_c)

    if n <= chunk:
        lp = one_chunk(h, targets)
    else:
        remat_chunk = jax.checkpoint(one_chunk)
        num = -(-n // chunk)
        pad = num * chunk - n
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(b, num, chunk, d).swapaxes(0, 1)  # [N, B, C, D]
        tg = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, num, chunk).swapaxes(0, 1)  # [N, B, C]
        lp = jax.lax.map(lambda xs: remat_chunk(*xs), (h, tg))  # [N, B, C]
        lp = lp.swapaxes(0, 1).reshape(b, num * chunk)[:, :n]
    return jnp.pad(lp, ((0, 0), (1, 0)))


def sequence_logprobs(model: nnx.Module, input_ids: jax.Array, attention_mask: jax.Array, *,
                      chunk: int = 512, temperature: float = 1.0) -> jax.Array:
    """out[:, t] = log p(ids[t] | ids[<t]) under `model` at `temperature` ([B, T], 0 at t = 0); logits are built
    `chunk` at a time."""
    hidden, _ = model.hidden_states(input_ids, attention_mask)  # [B, T, D]
    return logprobs_from_hidden(model, hidden, input_ids, chunk=chunk, temperature=temperature)
