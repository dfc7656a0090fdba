"""Pure train steps `(state, batch) -> (state, metrics)`, jitted with explicit shardings and a donated state.

A step is built from a loss function `loss_fn(model, batch) -> (sum, denominator, aux)` where `aux` maps a metric
name to its own `(sum, denominator)`. Inside the step the batch is cut into micro-batches and a `lax.scan` adds up
gradients of the *sum*, the sums and the denominators; the step divides once at the end, so any number of
micro-batches (and, through GSPMD's reductions, any data-parallel layout) gives the same mean gradient.

Sharding. The batch's leading axis is split over the mesh's ("data", "fsdp") axes; params are replicated unless
`param_shardings` says otherwise (the scale-out rules plug in there), and optimizer moments follow their params.
Micro-batch m takes rows m, m+M, m+2M, ... so that, with contiguous per-device row blocks, every micro-batch is
spread over all data devices instead of living on a few of them:

    rows (B = 8, M = 2):  0 1 2 3 | 4 5 6 7      (two devices)
    micro-batch 0:        0   2   | 4   6
    micro-batch 1:          1   3 |   5   7

Length segments. A batch may also be a tuple of batches ("segments") of different padded lengths, e.g. the short
and the long half of a length-sorted batch, each padded to its own longest row. The step adds up every segment's
gradient sums and denominators before the one division, so the update is the one of the whole batch padded to a
common length (padding never enters a loss): the same math, with less padding computed.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from spct_jax.models.logprobs import sequence_logprobs
from spct_jax.models.transformer import Decoder
from spct_jax.parallel.compilation import compile_phase
from spct_jax.parallel.mesh import BATCH_AXES, batch_axes, batch_sharding
from spct_jax.parallel.rules import constrain
from spct_jax.train.config import GRPOLossConfig, OptimizerConfig
from spct_jax.train.losses import Weighted, bce_loss, grpo_diagnostic_sums, grpo_loss, nll_loss
from spct_jax.train.state import TrainState, learning_rate_schedule, make_optimizer

Batch = Mapping[str, Any]  # name -> [B, ...] array (numpy or jax)
Segments = tuple[Batch, ...]  # one update's rows, in blocks of different padded lengths
LossFn = Callable[[nnx.Module, Batch], tuple[jax.Array, jax.Array, dict[str, Weighted]]]


# -- meshes and shardings -------------------------------------------------------------------------------------
def default_mesh() -> Mesh:
    """A 1-device mesh with the batch axes, so single-device code runs the same sharded program."""
    auto = jax.sharding.AxisType.Auto  # jax 0.10 make_mesh defaults to Explicit axes, which GSPMD code rejects.
    return jax.make_mesh((1, 1), BATCH_AXES, axis_types=(auto, auto), devices=jax.devices()[:1])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_shardings(state: TrainState, mesh: Mesh, param_shardings: Any = None) -> TrainState:
    """Shardings for every leaf of `state`: params as given (default replicated); any optimizer-state subtree
    shaped like the params (Adam's mu and nu) follows the params; everything else is replicated."""
    rep = replicated(mesh)
    p_sh = jax.tree.map(lambda _: rep, state.params) if param_shardings is None else param_shardings
    params_def = jax.tree.structure(state.params)
    is_params = lambda x: jax.tree.structure(x) == params_def
    opt_sh = jax.tree.map(lambda sub: p_sh if is_params(sub) else jax.tree.map(lambda _: rep, sub),
                          state.opt_state, is_leaf=is_params)
    return TrainState(params=p_sh, opt_state=opt_sh, step=rep, rng=rep)


# -- the core: gradients of a summed loss over micro-batches ----------------------------------------------------
def _split_microbatches(batch: Batch, num: int, mesh: Mesh) -> dict[str, jax.Array]:
    out = {}
    spec = NamedSharding(mesh, P(None, batch_axes(mesh)))
    for name, x in batch.items():
        b = x.shape[0]
        if b % num:
            raise ValueError(f"batch field {name!r} has {b} rows, not divisible by num_microbatches={num}")
        x = jnp.asarray(x).reshape(b // num, num, *x.shape[1:]).swapaxes(0, 1)  # [M, B/M, ...], strided rows
        out[name] = jax.lax.with_sharding_constraint(x, spec)
    return out


def pinned(graphdef: nnx.GraphDef, params: nnx.State, mesh: Mesh) -> nnx.Module:
    """The module of (graphdef, params) with every decoder in it laying out its activations as the partition rules
    say (rules.ACTIVATION_SPECS: rows over the batch axes, heads / MLP width over "tensor"). Without the pins GSPMD
    follows the FSDP-sharded weights and may keep D split instead, computing every row of an fsdp group on each of
    its devices: activation memory then stops dividing with the mesh."""
    module = nnx.merge(graphdef, params)
    pin = functools.partial(_constrain, mesh)
    for _, sub in nnx.iter_modules(module):
        if isinstance(sub, Decoder):
            sub.constrain = pin
    return module


def _constrain(mesh: Mesh, x: jax.Array, kind: str) -> jax.Array:
    return constrain(x, mesh, kind)


def accumulate_gradients(graphdef: nnx.GraphDef, params: nnx.State, batch: Batch, loss_fn: LossFn, *,
                         num_microbatches: int = 1, mesh: Mesh | None = None):
    """-> (grads of the summed loss, loss sum, denominator, aux {name: (sum, denominator)}), all float32.

    Call inside jit. Gradients are NOT divided: the caller divides by the denominator once.
    """
    mesh = default_mesh() if mesh is None else mesh

    def one(micro: Batch):
        def summed(p):
            s, d, aux = loss_fn(pinned(graphdef, p, mesh), micro)
            return s, (d, aux)

        (s, (d, aux)), g = jax.value_and_grad(summed, has_aux=True)(params)
        g = jax.tree.map(lambda x: x.astype(jnp.float32), g)
        return g, s.astype(jnp.float32), d.astype(jnp.float32), aux

    if num_microbatches == 1:
        return one(batch)
    micro = _split_microbatches(batch, num_microbatches, mesh)
    first = jax.tree.map(lambda x: x[0], micro)
    zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(one, first))  # carry with the exact output structure

    def body(carry, mb):
        return jax.tree.map(jnp.add, carry, one(mb)), None

    acc, _ = jax.lax.scan(body, zero, micro)
    return acc


def _safe_inverse(d: jax.Array) -> jax.Array:
    # An all-padding batch (d = 0) also has sum 0 and zero gradients: report 0, not NaN.
    return jnp.where(d > 0, 1.0 / jnp.maximum(d, 1e-30), 0.0)


class TrainStep:
    """`step(state, batch) -> (state, metrics)`; compiled (and the state placed) on the first call.

    metrics (replicated scalars): loss (the exact mean), grad_norm (before clipping), lr (the rate this update
    used), tokens (attention-mask tokens processed), loss_denominator, plus each aux mean.
    Arguments are donated: use the returned state, never the one passed in.
    """

    def __init__(self, graphdef: nnx.GraphDef, loss_fn: LossFn, *, optimizer: OptimizerConfig,
                 num_microbatches: int = 1, mesh: Mesh | None = None, param_shardings: Any = None):
        if num_microbatches < 1:
            raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
        self.graphdef = graphdef
        self.loss_fn = loss_fn
        self.tx = make_optimizer(optimizer)
        self.schedule = learning_rate_schedule(optimizer)
        self.num_microbatches = num_microbatches
        self.mesh = default_mesh() if mesh is None else mesh
        self.param_shardings = param_shardings
        self._jitted = None

    def shardings(self, state: TrainState) -> TrainState:
        return state_shardings(state, self.mesh, self.param_shardings)

    def place(self, state: TrainState) -> TrainState:
        """Put `state` on this step's shardings (the first call does it; use it for a state from elsewhere)."""
        return jax.device_put(state, self.shardings(state))

    def _step(self, state: TrainState, batch: Batch | Segments) -> tuple[TrainState, dict[str, jax.Array]]:
        segments = batch if isinstance(batch, tuple) else (batch,)
        # Unrolled over segments (each has its own static shape); sums add before the one division below.
        parts = [accumulate_gradients(self.graphdef, state.params, seg, self.loss_fn,
                                      num_microbatches=self.num_microbatches, mesh=self.mesh) for seg in segments]
        grads, loss_sum, denom, aux = jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *parts)
        inv = _safe_inverse(denom)
        grads = jax.tree.map(lambda g, p: (g * inv).astype(p.dtype), grads, state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss_sum * inv,
            "grad_norm": optax.tree.norm(grads),
            "lr": jnp.asarray(self.schedule(state.step), jnp.float32),
            "tokens": sum(jnp.sum(jnp.asarray(seg["attention_mask"], jnp.float32)) for seg in segments),
            "loss_denominator": denom,
        }
        metrics.update({name: s * _safe_inverse(d) for name, (s, d) in aux.items()})
        return TrainState(params=params, opt_state=opt_state, step=state.step + 1, rng=state.rng), metrics

    def jitted(self, state: TrainState):
        if self._jitted is None:
            st = self.shardings(state)
            self._jitted = jax.jit(self._step, in_shardings=(st, batch_sharding(self.mesh)),
                                   out_shardings=(st, replicated(self.mesh)), donate_argnums=(0,))
        return self._jitted

    def __call__(self, state: TrainState, batch: Batch | Segments) -> tuple[TrainState, dict[str, jax.Array]]:
        if self._jitted is None:  # a fresh state from `create_train_state` sits on one device: place it once
            state = self.place(state)
        with compile_phase("train_step"):  # compile counts, unless a stage phase (sft, grpo_update, ...) names them
            return self.jitted(state)(state, batch)


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, *, optimizer: OptimizerConfig,
                    num_microbatches: int = 1, mesh: Mesh | None = None, param_shardings: Any = None) -> TrainStep:
    return TrainStep(graphdef, loss_fn, optimizer=optimizer, num_microbatches=num_microbatches, mesh=mesh,
                     param_shardings=param_shardings)


# -- the three stages' losses ---------------------------------------------------------------------------------
def sft_loss_fn(*, chunk: int = 512) -> LossFn:
    """NLL on `loss_mask` tokens. Batch: input_ids, attention_mask, loss_mask ([B, T])."""

    def loss_fn(model: nnx.Module, batch: Batch):
        logp = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], chunk=chunk)  # [B, T]
        s, d = nll_loss(logp, batch["loss_mask"])
        return s, d, {}

    return loss_fn


def grpo_loss_fn(loss_cfg: GRPOLossConfig = GRPOLossConfig(), *, chunk: int = 512, temperature: float = 1.0
                 ) -> LossFn:
    """GRPO on completion tokens. Batch: input_ids, attention_mask, loss_mask (completion tokens), ref_logp,
    advantages [B], and old_logp. Without old_logp the policy's own log-probs (gradient stopped) stand in: with
    one update per rollout batch (DeepSeekMath's original GRPO) they are equal, and this saves a forward pass.

    temperature: the rollouts' sampling temperature. pi_theta, pi_old and pi_ref of Eq. 15 are all taken at it
    (softmax(logits / T)), so the ratio is the one of the distribution the rollouts came from, and ref_logp /
    old_logp must be computed at the same T (`make_logprob_fn(..., temperature=T)`)."""

    def loss_fn(model: nnx.Module, batch: Batch):
        logp = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], chunk=chunk,
                                 temperature=temperature)  # [B, T]
        old = batch["old_logp"] if "old_logp" in batch else jax.lax.stop_gradient(logp)
        args = (logp, old, batch["ref_logp"], batch["advantages"], batch["loss_mask"])
        s, d = grpo_loss(*args, epsilon=loss_cfg.epsilon, beta=loss_cfg.beta, aggregation=loss_cfg.aggregation)
        return s, d, grpo_diagnostic_sums(*args, epsilon=loss_cfg.epsilon)

    return loss_fn


def _default_score(model: nnx.Module, batch: Batch) -> jax.Array:
    return model(batch["input_ids"], batch["attention_mask"])  # [B]


def bce_loss_fn(score_fn: Callable[[nnx.Module, Batch], jax.Array] = _default_score) -> LossFn:
    """Meta-RM BCE. Batch: input_ids, attention_mask, labels [B]; score_fn(model, batch) -> logits [B]."""

    def loss_fn(model: nnx.Module, batch: Batch):
        logits = score_fn(model, batch)
        s, d = bce_loss(logits, batch["labels"])
        accuracy = jnp.sum(((logits > 0) == (batch["labels"] > 0.5)).astype(jnp.float32))
        return s, d, {"accuracy": (accuracy, d)}

    return loss_fn


def make_sft_step(graphdef: nnx.GraphDef, *, optimizer: OptimizerConfig, chunk: int = 512, **kw) -> TrainStep:
    """kw: num_microbatches, mesh, param_shardings (as `make_train_step`)."""
    return make_train_step(graphdef, sft_loss_fn(chunk=chunk), optimizer=optimizer, **kw)


def make_grpo_step(graphdef: nnx.GraphDef, *, optimizer: OptimizerConfig, loss: GRPOLossConfig = GRPOLossConfig(),
                   chunk: int = 512, temperature: float = 1.0, **kw) -> TrainStep:
    return make_train_step(graphdef, grpo_loss_fn(loss, chunk=chunk, temperature=temperature), optimizer=optimizer,
                           **kw)


def make_bce_step(graphdef: nnx.GraphDef, *, optimizer: OptimizerConfig,
                  score_fn: Callable[[nnx.Module, Batch], jax.Array] = _default_score, **kw) -> TrainStep:
    return make_train_step(graphdef, bce_loss_fn(score_fn), optimizer=optimizer, **kw)


# -- forward-only log-probs (GRPO's reference and old policy) -----------------------------------------------------
class LogprobFn:
    """`fn(params, batch) -> logp [B, T]` (log p(ids[t] | ids[<t]), 0 at t = 0), jitted, no gradient, logits
    built `chunk` positions at a time. Used outside the update for the frozen reference and the old policy, at the
    rollouts' sampling `temperature` (see grpo_loss_fn).

    rows: at most this many rows go through the model at once (a `lax.map` over row blocks, rows taken strided as
    the update's micro-batches are, so every block is spread over all batch shards): the forward's activations,
    whose attention scores alone are [rows, heads, T, T] float32 per layer, are set by `rows`, not by B.
    Batch: input_ids, attention_mask (other fields are ignored). Compiled on first call (per batch shape)."""

    def __init__(self, graphdef: nnx.GraphDef, *, chunk: int = 512, mesh: Mesh | None = None,
                 param_shardings: Any = None, temperature: float = 1.0, rows: int | None = None):
        if rows is not None and rows < 1:
            raise ValueError(f"rows must be >= 1 or None, got {rows}")
        self.graphdef = graphdef
        self.chunk = chunk
        self.temperature = temperature
        self.rows = rows
        self.mesh = default_mesh() if mesh is None else mesh
        self.param_shardings = param_shardings
        self._jitted = None

    def _logprobs(self, params: nnx.State, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        def one(ids, mask):
            return sequence_logprobs(pinned(self.graphdef, params, self.mesh), ids, mask, chunk=self.chunk,
                                     temperature=self.temperature)

        b = input_ids.shape[0]
        if self.rows is None or self.rows >= b:
            return one(input_ids, attention_mask)
        if b % self.rows:
            raise ValueError(f"{b} rows do not split into log-prob blocks of {self.rows} rows")
        blocks = _split_microbatches({"ids": input_ids, "mask": attention_mask}, b // self.rows, self.mesh)
        out = jax.lax.map(lambda m: one(m["ids"], m["mask"]), blocks)  # [M, rows, T]
        return out.swapaxes(0, 1).reshape(b, -1)  # undo the strided split: row r*M + m <- block m, row r

    def __call__(self, params: nnx.State, batch: Batch) -> jax.Array:
        if self._jitted is None:
            rep = replicated(self.mesh)
            p_sh = jax.tree.map(lambda _: rep, params) if self.param_shardings is None else self.param_shardings
            bs = batch_sharding(self.mesh)
            self._jitted = jax.jit(self._logprobs, in_shardings=(p_sh, bs, bs), out_shardings=bs)
        with compile_phase("logprobs"):
            return self._jitted(params, batch["input_ids"], batch["attention_mask"])


def make_logprob_fn(graphdef: nnx.GraphDef, *, chunk: int = 512, mesh: Mesh | None = None,
                    param_shardings: Any = None, temperature: float = 1.0, rows: int | None = None) -> LogprobFn:
    return LogprobFn(graphdef, chunk=chunk, mesh=mesh, param_shardings=param_shardings, temperature=temperature,
                     rows=rows)
