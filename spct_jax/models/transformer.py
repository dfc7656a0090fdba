"""One flax.nnx decoder for the Gemma-2 and Llama/Qwen2 families, with a KV cache.

The block layout is chosen by `ModelConfig.family`; parity with transformers' eager implementation is the
definition of correct (tests/test_transformer_parity.py). Batches are LEFT-padded: every row's last token sits in
the last column, so one decode step appends one column for all rows at the same cache slot.

Positions vs slots. A *slot* is a column of the padded batch (and of the KV cache); a *position* is the RoPE
index of a real token in its own row. They differ by each row's padding:

    slots      0   1   2   3   4   5
    row 0      .   .   a   b   c   d      positions: -, -, 0, 1, 2, 3
    row 1      e   f   g   h   i   j      positions: 0, 1, 2, 3, 4, 5

Causality and Gemma-2's sliding window are measured in slots (as transformers does), RoPE in positions.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from spct_jax.models.attention import attend
from spct_jax.models.config import ModelConfig

_MASKED = -1e30  # finite, so a row with no visible key (a pad query) softmaxes to uniform instead of NaN.


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SharedPrefix:
    """Prefilled prompt keys/values that C consecutive rows continue, stored once instead of C times.

    Sampling k critiques of one long prompt reads the prompt's keys every step; with a copy per row that is
    k times the memory traffic of the prompt and k tiny attention matmuls. Kept shared, the k rows' queries meet
    the prompt's keys in one [k*G, Dh] x [Dh, P] matmul per KV head:

        prefix (U=2 prompts, P slots)          own slots of the U*C rows (C=3), written by decode
        u=0  [ . . a b c d ]  <-- rows 0,1,2    row 0 [ x1 x2 .. ]   global slot of own slot s = P + s
        u=1  [ e f g h i j ]  <-- rows 3,4,5    row 1 [ y1 y2 .. ]
                                                ...

    k, v: every layer stacked, [L, U, K, P, Dh]; valid: [U, P]. Row r continues prefix r // C (C = rows / U).
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array

    @property
    def length(self) -> int:
        return self.valid.shape[1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values of every layer for S slots, plus which slots hold real tokens.

    k, v:     [L, B, K, S, Dh], every layer stacked (the layer scan reads layer l's [B, K, S, Dh] as its slice l;
              K = kv heads; slots next to head_dim, so attention reads them without a transpose each decode step).
              The row dim is dim 1: `rows_dim` says so to code that splits or gathers rows.
    valid:    [B, S] bool, True where the slot holds a real (non-pad) token that has been written
    length:   [] int32, slots written so far; the same for all rows because padding is on the left
    next_pos: [B] int32, RoPE position the next real token of each row gets
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    length: jax.Array
    next_pos: jax.Array
    prefix: "SharedPrefix | None" = None  # read-only slots in front of every row's own ones (see shared_by)

    rows_dim = 1  # of k and v (and of a prefix's k, v); 0 of valid and next_pos

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> "KVCache":
        shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), valid=jnp.zeros((batch, max_len), bool),
                   length=jnp.zeros((), jnp.int32), next_pos=jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    @property
    def split(self) -> bool:
        """True when k and v are tuples of L per-layer arrays [B, K, S, Dh] (see `split_layers`)."""
        return isinstance(self.k, tuple)

    def split_layers(self) -> "KVCache":
        """The same cache with k, v (and a prefix's) as tuples of L separate [B, K, S, Dh] buffers.

        The decode loop carries this form on backends where reading layer l of a stacked array inside the loop
        copies it (XLA:CPU materialises a dynamic slice before a dot): each step would copy the whole cache once
        more than it reads it. Separate buffers are read in place and written one column at a time."""
        if self.split:
            return self
        cut = lambda a: tuple(a[i] for i in range(a.shape[0]))  # noqa: E731
        prefix = None if self.prefix is None else dataclasses.replace(self.prefix, k=cut(self.prefix.k),
                                                                       v=cut(self.prefix.v))
        return dataclasses.replace(self, k=cut(self.k), v=cut(self.v), prefix=prefix)

    def grow(self, slots: int) -> "KVCache":
        """The same cache with room for `slots` slots of its own: empty ones appended after the last (k, v zero,
        not valid), so every written slot keeps its number. The sampler's decode loop grows the rows' own slots
        in phases (sampling/loop.py) so that early steps attend over fewer of them.

            before  [ x1 x2 x3 x4 ]                  own slots 0..3, all written
            after   [ x1 x2 x3 x4  .  .  .  . ]      slots 4..7 empty: masked until a step writes them
        """
        extra = slots - self.max_len
        if extra < 0:
            raise ValueError(f"cannot shrink a cache of {self.max_len} slots to {slots}")
        if extra == 0:
            return self
        axis = 2 if self.split else 3  # the slot axis of [B, K, S, Dh] (split) or [L, B, K, S, Dh]
        pad = lambda a: jnp.pad(a, [(0, 0)] * axis + [(0, extra), (0, 0)])  # noqa: E731
        k, v = (tuple(map(pad, a)) if self.split else pad(a) for a in (self.k, self.v))
        return dataclasses.replace(self, k=k, v=v, valid=jnp.pad(self.valid, ((0, 0), (0, extra))))

    def take(self, rows: jax.Array) -> "KVCache":
        """Fan out: new row r is a copy of old row rows[r] (e.g. [0,0,0,1,1,1] gives each prompt 3 rows).

        A gather along the batch; nothing is recomputed.  rows: [R] int32.
        """
        if self.prefix is not None:
            raise ValueError("take() gathers whole rows; a cache with a shared prefix keeps its rows grouped")
        kv = lambda x: jnp.take(x, rows, axis=self.rows_dim)  # noqa: E731
        return KVCache(k=kv(self.k), v=kv(self.v), valid=jnp.take(self.valid, rows, axis=0), length=self.length,
                       next_pos=jnp.take(self.next_pos, rows, axis=0))

    def shared_by(self, rows_per_prompt: int, new_slots: int) -> "KVCache":
        """Fan out without copying: this prefilled cache of U prompts becomes the read-only prefix of
        U * rows_per_prompt rows, each with `new_slots` slots of its own (see `SharedPrefix`). Every slot of
        this cache must have been written (prefill into a cache of exactly the padded prompt length): the own
        slots are numbered from its end, which Gemma-2's sliding window relies on."""
        if self.prefix is not None:
            raise ValueError("the cache already has a shared prefix")
        layers, u, heads, _, dh = self.k.shape
        own = (layers, u * rows_per_prompt, heads, new_slots, dh)
        return KVCache(k=jnp.zeros(own, self.k.dtype), v=jnp.zeros(own, self.v.dtype),
                       valid=jnp.zeros((u * rows_per_prompt, new_slots), bool), length=jnp.zeros((), jnp.int32),
                       next_pos=jnp.repeat(self.next_pos, rows_per_prompt, axis=0),
                       prefix=SharedPrefix(k=self.k, v=self.v, valid=self.valid))


def _no_pin(x: jax.Array, kind: str = "hidden") -> jax.Array:
    return x


def weight_dot(x: jax.Array, w: jax.Array) -> jax.Array:
    """x @ w in x's dtype.  x: [..., In], w: [In, Out] -> [..., Out].

    Weights narrower than the compute dtype (bfloat16 weights, float32 compute) are not widened: x is rounded to
    the weights' dtype and the product accumulates in float32. That is what a TPU's default-precision float32
    matmul computes anyway (one bfloat16 pass), and on XLA:CPU it is what reaches the fast bfloat16 dot kernels:
    widening the weights in the program reads them at ~1 GB/s there, and a bfloat16-output dot is slower than
    float32 (benchmarks/cpu_dtypes.py prints all four). Same-width operands keep the plain product.

    A one-row product goes in as two rows (the second zero): XLA:CPU sends a [1, In] bfloat16 product to a
    matrix-vector loop ~10x slower than the same product on two rows. Accelerators pad rows to their tile anyway."""
    if jnp.dtype(w.dtype).itemsize >= jnp.dtype(x.dtype).itemsize:
        return x @ w.astype(x.dtype)
    narrow = x.astype(w.dtype)
    if math.prod(x.shape[:-1]) != 1:  # (an empty batch takes this branch too)
        return jnp.dot(narrow, w, preferred_element_type=x.dtype)
    two = jnp.concatenate([narrow.reshape(1, -1), jnp.zeros((1, x.shape[-1]), w.dtype)])  # [2, In]
    return jnp.dot(two, w, preferred_element_type=x.dtype)[:1].reshape(*x.shape[:-1], w.shape[-1])


class Dense(nnx.Module):
    """y = x @ kernel (+ bias), kernel stored [in, out] (transformers stores Linear weights [out, in])."""

    def __init__(self, din: int, dout: int, *, use_bias: bool, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (din, dout), param_dtype) * 0.02)
        self.bias = nnx.Param(jnp.zeros((dout,), param_dtype)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = weight_dot(x, self.kernel[...])
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class RMSNorm(nnx.Module):
    """RMSNorm in float32. Gemma scales by (1 + w) and casts after; Llama casts first, then scales by w."""

    def __init__(self, dim: int, *, eps: float, gemma: bool, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.zeros((dim,), param_dtype) if gemma else jnp.ones((dim,), param_dtype))
        self.eps = eps
        self.gemma = gemma

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        w = self.scale[...].astype(jnp.float32)
        if self.gemma:
            return (normed * (1.0 + w)).astype(x.dtype)
        return (w.astype(x.dtype)) * normed.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, 'rotate half' layout as in transformers.  x: [B, T, H, Dh], positions: [B, T]."""
    dh = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))  # [Dh/2]
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, Dh]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x1, x2 = x[..., : dh // 2], x[..., dh // 2 :]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        d, h, k, dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = Dense(d, h * dh, use_bias=cfg.qkv_bias, rngs=rngs, param_dtype=param_dtype)
        self.k_proj = Dense(d, k * dh, use_bias=cfg.qkv_bias, rngs=rngs, param_dtype=param_dtype)
        self.v_proj = Dense(d, k * dh, use_bias=cfg.qkv_bias, rngs=rngs, param_dtype=param_dtype)
        self.o_proj = Dense(h * dh, d, use_bias=False, rngs=rngs, param_dtype=param_dtype)
        self.cfg = cfg
        self.window = cfg.window_of(layer)

    def __call__(self, x, positions, q_slots, kv: tuple[jax.Array, jax.Array] | None, kv_valid, write_at,
                 prefix: tuple[jax.Array, jax.Array, jax.Array] | None = None, pin=_no_pin):
        """x: [B, T, D]; positions, q_slots: [B, T] / [T]; kv: cached (k, v) [B, K, S, Dh] or None (no cache);
        prefix: a SharedPrefix layer's (k, v [U, K, P, Dh], valid [U, P]) in front of the S own slots, or None;
        pin(array, kind): the activation layout (see Decoder.hidden_states).

        Returns (out [B, T, D], (k, v) after writing this call's T keys at slot `write_at`).
        """
        cfg = self.cfg
        b, t, _ = x.shape
        q = pin(self.q_proj(x).reshape(b, t, cfg.num_heads, cfg.head_dim), "heads")
        k_new = pin(self.k_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim), "heads")
        v_new = pin(self.v_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim), "heads")
        q = rope(q, positions, cfg.rope_theta)
        k_new = rope(k_new, positions, cfg.rope_theta).swapaxes(1, 2)  # [B, K, T, Dh]
        v_new = v_new.swapaxes(1, 2)
        if kv is None:
            k_all, v_all = k_new, v_new  # [B, K, S=T, Dh]
        else:
            k_all = jax.lax.dynamic_update_slice_in_dim(kv[0], k_new.astype(kv[0].dtype), write_at, axis=2)
            v_all = jax.lax.dynamic_update_slice_in_dim(kv[1], v_new.astype(kv[1].dtype), write_at, axis=2)
        groups = cfg.num_heads // cfg.num_kv_heads
        qg = q.reshape(b, t, cfg.num_kv_heads, groups, cfg.head_dim)  # [B, T, K, G, Dh]
        # Without a cache the queries sit at slots 0..T-1 (hidden_states), which attend may know statically (a TPU
        # kernel's mask is built at trace time); with one, at this call's traced q_slots.
        out = attend(qg, k_all, v_all, q_slots=0 if kv is None else q_slots, kv_valid=kv_valid, scale=cfg.attn_scale,
                     softcap=cfg.attn_logit_softcap, window=self.window, prefix=prefix)  # [B, T, K, G, Dh]
        return self.o_proj(out.reshape(b, t, -1)), (k_all, v_all)


class MLP(nnx.Module):
    """Gated MLP: GeGLU (gelu-tanh) for Gemma-2, SwiGLU for Llama/Qwen2."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Dense(d, f, use_bias=False, rngs=rngs, param_dtype=param_dtype)
        self.up_proj = Dense(d, f, use_bias=False, rngs=rngs, param_dtype=param_dtype)
        self.down_proj = Dense(f, d, use_bias=False, rngs=rngs, param_dtype=param_dtype)
        self.gemma = cfg.is_gemma

    def __call__(self, x, pin=_no_pin):
        g = pin(self.gate_proj(x), "ffn")  # [B, T, F]
        act = jax.nn.gelu(g, approximate=True) if self.gemma else jax.nn.silu(g)
        return self.down_proj(act * pin(self.up_proj(x), "ffn"))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        norm = lambda: RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, gemma=cfg.is_gemma, param_dtype=param_dtype)
        self.input_norm = norm()
        self.attn = Attention(cfg, layer, rngs=rngs, param_dtype=param_dtype)
        self.post_attn_norm = norm()  # Llama: the pre-MLP norm; Gemma-2: the post-attention norm.
        if cfg.is_gemma:  # Gemma-2 wraps both sub-blocks in pre AND post norms.
            self.pre_mlp_norm = norm()
            self.post_mlp_norm = norm()
        else:
            self.pre_mlp_norm = None
            self.post_mlp_norm = None
        self.mlp = MLP(cfg, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, positions, q_slots, kv, kv_valid, write_at, prefix=None, pin=_no_pin):
        attn_out, kv = self.attn(self.input_norm(x), positions, q_slots, kv, kv_valid, write_at, prefix, pin)
        if self.pre_mlp_norm is not None:
            x = pin(x + self.post_attn_norm(attn_out), "hidden")
            x = x + self.post_mlp_norm(self.mlp(self.pre_mlp_norm(x), pin))
        else:
            x = pin(x + attn_out, "hidden")
            x = x + self.mlp(self.post_attn_norm(x), pin)
        return pin(x, "hidden"), kv


# Remat policies (`model.remat` in the run config): what a block keeps for its backward pass.
REMAT_POLICIES = {
    "none": None,  # every activation the backward pass needs (27B: ~0.5 TB per chip for one 4K-token row)
    "full": jax.checkpoint_policies.nothing_saveable,  # the block's input only; the whole block is recomputed
    # The outputs of the weight matmuls (q/k/v/o, gate/up/down); attention scores and elementwise work are
    # recomputed. More memory than "full" (~(H + 2K) * Dh + 2 D + 3 F values per token and layer), less compute.
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_name(remat: str | bool | None) -> str:
    """A REMAT_POLICIES key; True / False (the older switch) mean "full" / "none"."""
    if remat is True:
        return "full"
    if remat is False or remat is None:
        return "none"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat policy {remat!r}: expected one of {sorted(REMAT_POLICIES)}")
    return remat


def _stack_blocks(blocks: list[Block]) -> Block:
    """One Block whose every Param carries a leading [L] layer dim: slice l is blocks[l]'s. Built from per-layer
    Blocks so that the random init draws exactly what L separate blocks drew (same seeds, same values)."""
    graphdef, _ = nnx.split(blocks[0])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(b) for b in blocks])
    return nnx.merge(graphdef, stacked)


class Decoder(nnx.Module):
    """A causal LM.  `model(input_ids, attention_mask) -> logits [B, T, V]`; `model.config` is the ModelConfig.

    The blocks' params are stacked: `layers` is one Block whose every Param is [L, ...] (slice l = layer l), run as
    a `lax.scan` over the repeating unit of the layer pattern (`ModelConfig.scan_unit`), so the program holds one
    unit whatever the depth. Gemma-2 alternates sliding and full attention, and the window is static per layer
    (an attention kernel wants it so), so its unit is the pair:

        layer_types   s f s f s f s            (L = 7; s = sliding window, f = full attention)
        scan          [s f] [s f] [s f] s      3 steps of the pair over params [3, 2, ...] = layers[0:6]
                                               then layer 6 unrolled (the remainder, < one unit)

    scan_layers=False runs every layer unrolled instead (the same params and math; compile time grows with L).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
                 remat: str | bool = "none", scan_layers: bool = True):
        self.config = config
        self.dtype = dtype  # compute dtype; params may be kept wider (param_dtype) as master weights.
        # What each block keeps for the backward pass (REMAT_POLICIES); the train steps set it (stages._remat_graphdef).
        self.remat = remat_name(remat)
        self.scan_layers = scan_layers
        # `pin(array, kind)` for activations (hidden_states); set per program by the sharded train steps, None here.
        self.constrain = None
        self.embed = nnx.Param(jax.random.normal(rngs.params(), (config.vocab_size, config.hidden_size), param_dtype) * 0.02)
        # Never called as is: its Attention.window is layer 0's; _blocks sets each layer's own (config.window_of).
        self.layers = _stack_blocks([Block(config, i, rngs=rngs, param_dtype=param_dtype)
                                     for i in range(config.num_layers)])
        self.final_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, gemma=config.is_gemma, param_dtype=param_dtype)
        self.lm_head = None if config.tie_embeddings else Dense(
            config.hidden_size, config.vocab_size, use_bias=False, rngs=rngs, param_dtype=param_dtype)

    # -- pieces shared by the LM, the scalar head and chunked log-prob computation ------------------------------
    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                      cache: KVCache | None = None, *, constrain=None,
                      layers: tuple | None = None) -> tuple[jax.Array, KVCache | None]:
        """Final-normed hidden states [B, T, D] and the updated cache (None when called without one).

        constrain: `pin(array, kind)` (default: `self.constrain`, else nothing) applied to the activations as they
        are made: "hidden" the residual stream [B, T, D] (after the embedding and inside every block), "heads" q / k
        / v [B, T, H, Dh], "ffn" the MLP's gate and up [B, T, F]. The sharded programs pass a sharding constraint
        that keeps rows on their devices (parallel/rules.py ACTIVATION_SPECS, the sampler's layout). Without one
        GSPMD follows the FSDP-sharded weights and may split D instead, computing every row of a device group on
        each of its devices.

        layers: `layer_states()`, the blocks' params cut per layer once outside a decode loop; with a split cache
        (`KVCache.split_layers`) the blocks then run unrolled over separate buffers (see `_blocks`)."""
        b, t = input_ids.shape
        mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        start = jnp.zeros((b,), jnp.int32) if cache is None else cache.next_pos
        positions = jnp.maximum(start[:, None] + jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1, 0)  # [B, T]
        if cache is None:
            write_at = jnp.zeros((), jnp.int32)
            q_slots = jnp.arange(t)
            kv_valid = mask
        else:
            write_at = cache.length
            q_slots = write_at + jnp.arange(t)
            kv_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, mask, write_at, axis=1)

        pin = constrain or self.constrain or _no_pin
        x = pin(self.embed[...], "table")[input_ids].astype(self.dtype)  # [B, T, D]: only the looked-up rows cast
        if self.config.is_gemma:
            # Gemma multiplies by sqrt(d) rounded to the compute dtype, as transformers does.
            x = x * jnp.asarray(self.config.hidden_size**0.5, self.dtype)
        x = pin(x, "hidden")
        x, written = self._blocks(x, (positions, q_slots, kv_valid, write_at), cache, pin, layers)
        x = self.final_norm(x)
        if cache is None:
            return x, None
        k, v = written  # a split cache's buffers already hold this call's columns (written in place)
        if not cache.split:
            # Only this call's T columns of every layer go back into the cache, in place: [L, B, K, T, Dh] at write_at.
            k, v = (jax.lax.dynamic_update_slice_in_dim(old, new.astype(old.dtype), write_at, axis=3)
                    for old, new in ((cache.k, k), (cache.v, v)))
        return x, KVCache(k=k, v=v, valid=kv_valid, length=cache.length + t,
                          next_pos=cache.next_pos + jnp.sum(mask, axis=1, dtype=jnp.int32), prefix=cache.prefix)

    def layer_states(self) -> tuple:
        """The blocks' params as L per-layer states (static slices of the stacked [L, ...] leaves), for
        `hidden_states(layers=)`. Taken once before a decode loop, they cost one copy of the block weights."""
        params = nnx.state(self.layers)
        return tuple(jax.tree.map(lambda a: a[i], params) for i in range(self.config.num_layers))

    def _blocks(self, x: jax.Array, where: tuple, cache: KVCache | None, pin, layers: tuple | None = None):
        """x [B, T, D] through every block -> (x, (k, v) of this call's T columns [L, B, K, T, Dh], or None without
        a cache). where = (positions, q_slots, kv_valid, write_at) as Attention takes them.

        The scan carries x; its xs are the unit's params and KV-cache slices of each step, [G, unit, ...] views of
        the stacked [L, ...] arrays; it returns only the new columns (ys), which hidden_states writes into the
        cache once for all layers (a carried cache would be copied in and out of every step).

        With a split cache (tuples of per-layer buffers) the layers run unrolled instead, each writing its new
        columns into its own buffer in place, and return the whole buffers:

            stacked + scan   per step: copy layer l's [B, K, S, Dh] out of [L, ...], write, attend   (3 passes)
            split            per step: write one column into buffer l, attend                       (1 pass)

        XLA:CPU materialises the slice of a stacked operand before a dot, so a decode step over the stacked
        cache reads the whole cache about three times (benchmarks/sampling.py prints both layouts' speed)."""
        cfg = self.config
        graphdef, params = nnx.split(self.layers)  # every leaf [L, ...]
        policy = REMAT_POLICIES[self.remat]
        t = x.shape[1]
        positions, q_slots, kv_valid, write_at = where
        prefix_valid = None if cache is None or cache.prefix is None else cache.prefix.valid

        def block(window, p, x, kv, prefix_kv, whole=False):
            blk = nnx.merge(graphdef, p)
            blk.attn.window = window  # the layer's own; static, so the attention code may specialise on it
            prefix = None if prefix_kv is None else (*prefix_kv, prefix_valid)
            x, (k_all, v_all) = blk(x, positions, q_slots, kv, kv_valid, write_at, prefix, pin=pin)
            if kv is None:
                return x, None
            if whole:
                return x, (k_all, v_all)
            cols = lambda a: jax.lax.dynamic_slice_in_dim(a, write_at, t, axis=2)  # noqa: E731  [B, K, T, Dh]
            return x, (cols(k_all), cols(v_all))

        if policy is not None:
            # Inside a scan XLA cannot CSE the recomputation away, so prevent_cse is only needed unrolled.
            block = jax.checkpoint(block, policy=policy, prevent_cse=not self.scan_layers, static_argnums=(0, 5))

        if cache is not None and cache.split:
            ks, vs = [], []
            for layer in range(cfg.num_layers):
                p = layers[layer] if layers is not None else jax.tree.map(lambda a: a[layer], params)
                prefix = None if cache.prefix is None else (cache.prefix.k[layer], cache.prefix.v[layer])
                x, (k, v) = block(cfg.window_of(layer), p, x, (cache.k[layer], cache.v[layer]), prefix, True)
                ks.append(k)
                vs.append(v)
            return x, (tuple(ks), tuple(vs))

        def layer_inputs(tree, index):  # index: an int, or a slice of whole units
            kv = None if cache is None else (cache.k[index], cache.v[index])
            prefix = None if cache is None or cache.prefix is None else (cache.prefix.k[index], cache.prefix.v[index])
            return jax.tree.map(lambda a: a[index], tree), kv, prefix

        unit = cfg.scan_unit() if self.scan_layers else cfg.num_layers
        groups = cfg.num_layers // unit if self.scan_layers else 0
        scanned = unit * groups
        written = []
        if groups:
            def step(x, xs):
                p, kv, prefix = xs  # leaves [unit, ...]
                cols = []
                for j in range(unit):  # layer g * unit + j has the window of layer j (scan_unit's definition)
                    x, c = block(cfg.window_of(j), jax.tree.map(lambda a: a[j], p), x,
                                 None if kv is None else (kv[0][j], kv[1][j]),
                                 None if prefix is None else (prefix[0][j], prefix[1][j]), False)
                    cols.append(c)
                return x, None if kv is None else tuple(jnp.stack(z) for z in zip(*cols))  # [unit, B, K, T, Dh]

            # [L, ...] -> [G, unit, ...]: a reshape of the leading dim (free when the units cover every layer).
            units = lambda a: a[:scanned].reshape(groups, unit, *a.shape[1:])  # noqa: E731
            xs = jax.tree.map(units, layer_inputs(params, slice(0, scanned)))  # None (no cache) stays None
            x, ys = jax.lax.scan(step, x, xs)
            if ys is not None:
                written.append(tuple(y.reshape(scanned, *y.shape[2:]) for y in ys))
        for layer in range(scanned, cfg.num_layers):  # the remainder (or every layer, unrolled)
            p, kv, prefix = layer_inputs(params, layer)
            x, c = block(cfg.window_of(layer), p, x, kv, prefix, False)
            if c is not None:
                written.append(tuple(z[None] for z in c))
        if cache is None:
            return x, None
        return x, tuple(jnp.concatenate(z) if len(z) > 1 else z[0] for z in zip(*written))

    def logits_from_hidden(self, h: jax.Array) -> jax.Array:
        """h: [..., D] -> logits [..., V] in float32 (soft-capped for Gemma-2)."""
        w = self.embed[...].T if self.lm_head is None else self.lm_head.kernel[...]  # [D, V]
        logits = weight_dot(h, w).astype(jnp.float32)
        if self.config.final_logit_softcap is not None:
            cap = self.config.final_logit_softcap
            logits = jnp.tanh(logits / cap) * cap
        return logits

    # -- public entry points ------------------------------------------------------------------------------------
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        h, _ = self.hidden_states(input_ids, attention_mask)
        return self.logits_from_hidden(h)

    def extend(self, input_ids: jax.Array, attention_mask: jax.Array, cache: KVCache, *,
               constrain=None, layers: tuple | None = None) -> tuple[jax.Array, KVCache]:
        """Run T new columns through the model, appending them to the cache. Prefill and decode both use this."""
        h, cache = self.hidden_states(input_ids, attention_mask, cache, constrain=constrain, layers=layers)
        return self.logits_from_hidden(h), cache

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache.empty(self.config, batch, max_len, self.dtype)


def init_model(config: ModelConfig, *, seed: int = 0, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str | bool = "none", scan_layers: bool = True) -> Decoder:
    return Decoder(config, rngs=nnx.Rngs(params=seed), dtype=dtype, param_dtype=param_dtype, remat=remat,
                   scan_layers=scan_layers)


def count_params(config: ModelConfig) -> int:
    """Parameter count from shapes only (jax.eval_shape: nothing is allocated)."""
    abstract = nnx.eval_shape(lambda: init_model(config))
    state = nnx.state(abstract, nnx.Param)
    return sum(int(x.size) for x in jax.tree.leaves(state))
