"""How one token is chosen from a row's logits: greedy, temperature, top-k and top-p, as small objects.

A strategy is a pytree (`flax.struct`): the temperature and p are array leaves, so a new value reuses the compiled
sampler, while k (it sets the shape of `lax.top_k`) is static and part of the compiled program's key. Every
strategy returns the token and its log-probability under the distribution it drew from:

    logits [R, V] --/ T--> scaled --truncate--> -inf outside the kept set --log_softmax--> lp --inverse CDF--> token
                           (TopK: k largest; TopP: k largest if k, then the nucleus)

The draw is the project's inverse-CDF search (one uniform per row, `draw`) and the nucleus a bisection on a
probability threshold (`top_p_mask`): neither sorts the vocabulary.
"""
from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
from flax import struct

_BISECT_STEPS = 32
_CDF_BLOCK = 256  # inverse-CDF search: one cumsum over V / 256 block sums, then one within the chosen block


def top_p_mask(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keep the smallest set of highest-probability tokens whose mass reaches top_p, without sorting V.

    Bisection on a probability threshold tau: mass(p >= tau) is non-increasing in tau, so we search for the largest
    tau whose mass still reaches top_p. 32 halvings of [0, max p] resolve it far below float32 spacing of any
    realistic probability; ties at the threshold are kept.   logits: [R, V] -> [R, V] bool
    """
    probs = jax.nn.softmax(logits, axis=-1)
    lo = jnp.zeros(probs.shape[:-1], probs.dtype)
    hi = jnp.max(probs, axis=-1)

    def step(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        mass = jnp.sum(jnp.where(probs >= mid[:, None], probs, 0.0), axis=-1)
        ok = mass >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, _BISECT_STEPS, step, (lo, hi))
    return probs >= lo[:, None]


def draw(probs: jax.Array, u: jax.Array) -> jax.Array:
    """Inverse-CDF sampling: the first token whose cumulative probability reaches u * total.

    One uniform per row instead of a Gumbel draw per vocabulary entry (the Gumbel noise was most of a decode
    step's sampling cost at V = 32k). Two levels (block sums, then inside one block) keep the cumsums short.
    A zero-probability token (masked by top-k/top-p) is never chosen: the first index whose running sum reaches
    x > 0 always adds positive mass.   probs: [R, V] (need not be normalised), u: [R] in (0, 1] -> [R] int32.
    """
    r, v = probs.shape
    nb = -(-v // _CDF_BLOCK)
    blocks = jnp.pad(probs, ((0, 0), (0, nb * _CDF_BLOCK - v))).reshape(r, nb, _CDF_BLOCK)  # [R, NB, BLK]
    ends = jnp.cumsum(jnp.sum(blocks, axis=-1), axis=-1)  # [R, NB] running mass at each block's end
    x = u * ends[:, -1]  # [R]
    blk = jnp.minimum(jnp.sum(ends < x[:, None], axis=-1), nb - 1)  # first block whose end reaches x
    before = jnp.where(blk > 0, jnp.take_along_axis(ends, jnp.maximum(blk - 1, 0)[:, None], axis=-1)[:, 0], 0.0)
    inner = jnp.take_along_axis(blocks, blk[:, None, None], axis=1)[:, 0]  # [R, BLK]
    within = jnp.sum(before[:, None] + jnp.cumsum(inner, axis=-1) < x[:, None], axis=-1)
    # Rounding can leave x just above the block's own running sum: fall back to its last positive entry.
    last_pos = jnp.max(jnp.where(inner > 0, jnp.arange(_CDF_BLOCK), -1), axis=-1)
    return (blk * _CDF_BLOCK + jnp.minimum(within, last_pos)).astype(jnp.int32)


def _picked(lp: jax.Array, tok: jax.Array) -> jax.Array:
    return jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]  # lp [R, V], tok [R] -> [R]


class Strategy(abc.ABC):
    """Chooses one token per row.  logits: [R, V] float32, keys: [R] typed PRNG keys (one per row and step)
    -> (tokens [R] int32-compatible, log-probabilities [R] of those tokens under the drawn-from distribution)."""

    @abc.abstractmethod
    def choose(self, logits: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
        ...


@struct.dataclass
class Greedy(Strategy):
    """The most likely token; its log-probability is the model's own (no temperature)."""

    def choose(self, logits, keys):
        del keys
        tok = jnp.argmax(logits, axis=-1)
        return tok, _picked(jax.nn.log_softmax(logits, axis=-1), tok)


@struct.dataclass
class Temperature(Strategy):
    """A draw from softmax(logits / temperature) over the tokens `truncate` keeps (here: all of them)."""

    temperature: jax.Array  # [] float32, > 0: a leaf, so another temperature reuses the compiled program

    def truncate(self, scaled: jax.Array) -> jax.Array:
        """scaled: [R, V] logits / temperature -> the same with -inf at the tokens that may not be drawn."""
        return scaled

    def choose(self, logits, keys):
        lp = jax.nn.log_softmax(self.truncate(logits / self.temperature), axis=-1)  # [R, V]
        u = 1.0 - jax.vmap(lambda k: jax.random.uniform(k, ()))(keys)  # [R] in (0, 1]
        tok = draw(jnp.exp(lp), u)
        return tok, _picked(lp, tok)


def _keep_top_k(scaled: jax.Array, k: int) -> jax.Array:
    kth = jax.lax.top_k(scaled, k)[0][:, -1:]  # [R, 1]; lax.top_k is a partial selection, not a sort
    return jnp.where(scaled >= kth, scaled, -jnp.inf)  # ties with the k-th are kept


@struct.dataclass
class TopK(Temperature):
    """Temperature sampling among the k highest logits (ties with the k-th kept)."""

    k: int = struct.field(pytree_node=False)  # static: it sets lax.top_k's output shape

    def truncate(self, scaled):
        return _keep_top_k(scaled, self.k)


@struct.dataclass
class TopP(Temperature):
    """Nucleus sampling: temperature sampling among the fewest most likely tokens whose mass reaches p (after the
    top-k cut when k is set; the mass is that of the tempered distribution)."""

    p: jax.Array  # [] float32 in (0, 1)
    k: int | None = struct.field(pytree_node=False, default=None)

    def truncate(self, scaled):
        if self.k is not None:
            scaled = _keep_top_k(scaled, self.k)
        return jnp.where(top_p_mask(scaled, self.p), scaled, -jnp.inf)


def from_options(temperature: float, top_k: int | None, top_p: float | None, vocab_size: int) -> Strategy:
    """The strategy `sample`'s options describe: temperature 0 or top_k 1 is greedy; top_p 1 keeps everything."""
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
        raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 1")
    if temperature == 0 or top_k == 1:
        return Greedy()
    t = jnp.float32(max(temperature, 1e-6))
    k = None if top_k is None else min(top_k, vocab_size)
    if top_p is not None and top_p < 1.0:
        return TopP(temperature=t, p=jnp.float32(top_p), k=k)
    return Temperature(temperature=t) if k is None else TopK(temperature=t, k=k)
