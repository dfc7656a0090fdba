"""`TrainState` (params, optimizer state, step, RNG) and the optax optimizer built from `OptimizerConfig`.

The model is split once into (graphdef, params); everything that changes during training lives in `TrainState`,
a plain pytree, so a train step is a pure `jax.jit` function of arrays and a checkpoint is one `tree` save.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from spct_jax.train.config import OptimizerConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """params: nnx.State of the model's Params; opt_state: optax state; step: [] int32; rng: [2] uint32.

    `rng` is a raw (uint32) key so it checkpoints as an ordinary array. The step does not consume it; stages
    that sample (GRPO rollouts) draw from it and store the successor with `replace(rng=...)`.
    """

    params: nnx.State
    opt_state: optax.OptState
    step: jax.Array
    rng: jax.Array

    def replace(self, **changes) -> "TrainState":
        return dataclasses.replace(self, **changes)


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Linear warmup from 0 over `warmup_steps`, then constant or cosine decay until `total_steps`."""
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.learning_rate)
    else:
        main = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps=cfg.total_steps - cfg.warmup_steps,
                                           alpha=cfg.end_lr_ratio)
    if cfg.warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, main], boundaries=[cfg.warmup_steps])


def _decay_mask(params):
    # Decoupled weight decay on matrices only: decaying norm scales / biases fights their normalising role.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on the schedule. Deterministic in `cfg`, so a step can rebuild it."""
    adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=_decay_mask)
    if cfg.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, params). Training state must be Params only: other Variables would silently not be trained."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    others = jax.tree_util.tree_leaves_with_path(rest)
    if others:
        names = ", ".join(jax.tree_util.keystr(path) for path, _ in others[:5])
        raise ValueError(f"model has non-Param state that a train step would drop: {names}")
    return graphdef, params


def create_train_state(model: nnx.Module, opt_cfg: OptimizerConfig, seed: int, *, copy_params: bool = True
                       ) -> tuple[nnx.GraphDef, TrainState]:
    """Split `model` and build its optimizer state. The params are copied: `nnx.split` leaves alias the
    module's Variables, and the first (donating) train step would otherwise delete the caller's model arrays.
    copy_params=False skips the copy (one model's worth of memory) for a caller that gives up `model`."""
    graphdef, params = split_params(model)
    if copy_params:
        params = jax.tree.map(jnp.copy, params)
    opt_state = make_optimizer(opt_cfg).init(params)
    return graphdef, TrainState(params=params, opt_state=opt_state, step=jnp.zeros((), jnp.int32),
                                rng=jax.random.PRNGKey(seed))
