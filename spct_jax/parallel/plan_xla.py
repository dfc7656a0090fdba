"""The real programs of a run's phases, built from abstract inputs and compiled without running them.

Each builder takes a mesh (fake CPU devices, real devices, or the devices of a TPU topology from
`jax.experimental.topologies`), builds the arguments as `jax.ShapeDtypeStruct`s carrying the shardings the stage
commands use (partition rules for weights and optimizer state, the batch axes for rows), and returns the compiled
program: `memory_bytes(compiled)` is XLA's per-device account of it. tests/test_parallel_plan.py compares the
planner's formulas (plan_phases.py) with these.

The programs are the library's own: the sampler's first call as `sample` lays it out
(`sampling.compile_call(abstract=True)`, lowered from shapes, which a TPU topology's devices allow),
`LogprobFn._logprobs` and `TrainStep.jitted` with the stage losses, the train graphdef rematerialised as
`stages._remat_graphdef` makes it.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from spct_jax import sampling
from spct_jax.models.config import ModelConfig
from spct_jax.models.scalar_head import ScalarRM
from spct_jax.models.transformer import Decoder, init_model, remat_name
from spct_jax.parallel.mesh import batch_sharding
from spct_jax.parallel.rules import param_specs
from spct_jax.train import steps
from spct_jax.train.config import GRPOLossConfig, OptimizerConfig
from spct_jax.train.state import TrainState, make_optimizer


def memory_bytes(compiled) -> dict[str, int]:
    """XLA's per-device memory of a compiled program. `total` = arguments + outputs + temporaries - aliased (a
    donated argument's buffer reused for an output counts once): what the program needs while it runs."""
    ma = compiled.memory_analysis()
    out = {"arguments": ma.argument_size_in_bytes, "outputs": ma.output_size_in_bytes,
           "temporaries": ma.temp_size_in_bytes, "aliased": ma.alias_size_in_bytes}
    out["total"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
    return out


def abstract_module(m: ModelConfig, mesh: Mesh, *, dtype: Any, param_dtype: Any = None, scalar_rm: bool = False):
    """(graphdef, state) of a Decoder (or ScalarRM) whose leaves are ShapeDtypeStructs sharded by the rules."""
    param_dtype = dtype if param_dtype is None else param_dtype
    if scalar_rm:
        module = nnx.eval_shape(lambda: ScalarRM(m, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
    else:
        module = nnx.eval_shape(lambda: init_model(m, dtype=dtype, param_dtype=param_dtype))
    graphdef, state = nnx.split(module)
    pure = nnx.to_pure_dict(state)
    specs = param_specs(mesh, pure)
    nnx.replace_by_pure_dict(state, jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, s)), pure, specs))
    return graphdef, state


def sampler_call(m: ModelConfig, mesh: Mesh, *, rows: int, prompt_len: int, new_tokens: int, dtype: Any,
                 temperature: float = 1.0):
    """The sampler call of a trajectory phase: `rows` distinct prompts of `prompt_len` tokens, one sample each
    (every trajectory call samples one row per shuffled prompt), <= `new_tokens` new tokens, weights in `dtype`."""
    graphdef, state = abstract_module(m, mesh, dtype=dtype)
    prompts = [[1 + i % 97, 1 + i // 97 % 97] + [3] * (prompt_len - 2) for i in range(rows)]  # all distinct
    return sampling.compile_call(nnx.merge(graphdef, state), prompts, max_new_tokens=new_tokens,
                                 temperature=temperature, stop_tokens=(2,), max_batch_rows=rows, mesh=mesh,
                                 abstract=True, decode_layers="scan")  # the pods' layout (TPU's "auto"), on any backend


def logprob_call(m: ModelConfig, mesh: Mesh, *, rows: int, block_rows: int | None, seq: int, dtype: Any,
                 temperature: float = 1.0):
    """GRPO's reference log-probs: LogprobFn(rows=block_rows) over [rows, seq], reference params in `dtype`."""
    graphdef, state = abstract_module(m, mesh, dtype=dtype)
    graphdef, params = nnx.split(nnx.merge(graphdef, state), nnx.Param)
    shardings = jax.tree.map(lambda x: x.sharding, params)
    fn = steps.LogprobFn(graphdef, mesh=mesh, param_shardings=shardings, temperature=temperature, rows=block_rows)
    bs = batch_sharding(mesh)
    ids = jax.ShapeDtypeStruct((rows, seq), jnp.int32)
    mask = jax.ShapeDtypeStruct((rows, seq), jnp.bool_)  # GRPO's batches: models.padding's bool masks
    # LogprobFn.__call__ jits exactly this on first use.
    return jax.jit(fn._logprobs, in_shardings=(shardings, bs, bs), out_shardings=bs).lower(params, ids, mask).compile()


def train_step_call(m: ModelConfig, mesh: Mesh, kind: str, *, rows: int, seq: int, microbatches: int,
                    compute_dtype: Any, param_dtype: Any, remat: str = "full"):
    """TrainStep of a stage ("sft", "grpo" or "bce") on a [rows, seq] batch, state in `param_dtype`."""
    graphdef, state = abstract_module(m, mesh, dtype=compute_dtype, param_dtype=param_dtype, scalar_rm=kind == "bce")
    module = nnx.merge(graphdef, state)
    for _, sub in nnx.iter_modules(module):  # as stages._remat_graphdef
        if isinstance(sub, Decoder):
            sub.remat = remat_name(remat)
    graphdef, params = nnx.split(module, nnx.Param)
    opt = OptimizerConfig(learning_rate=1e-6)
    abstract_state = TrainState(params=params, opt_state=jax.eval_shape(make_optimizer(opt).init, params),
                                step=jax.ShapeDtypeStruct((), jnp.int32), rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    make = {"sft": steps.make_sft_step, "grpo": steps.make_grpo_step, "bce": steps.make_bce_step}[kind]
    kw = {"loss": GRPOLossConfig()} if kind == "grpo" else {}
    step = make(graphdef, optimizer=opt, num_microbatches=microbatches, mesh=mesh,
                param_shardings=jax.tree.map(lambda x: x.sharding, params), **kw)
    i32 = jax.ShapeDtypeStruct((rows, seq), jnp.int32)
    f32 = jax.ShapeDtypeStruct((rows, seq), jnp.float32)
    batch = {"input_ids": i32, "attention_mask": jax.ShapeDtypeStruct((rows, seq), jnp.bool_)}  # as models.padding
    if kind == "sft":
        batch["loss_mask"] = f32
    elif kind == "grpo":
        batch.update(loss_mask=f32, ref_logp=f32, advantages=jax.ShapeDtypeStruct((rows,), jnp.float32))
    else:
        batch["labels"] = jax.ShapeDtypeStruct((rows,), jnp.float32)
    return step.jitted(abstract_state).lower(abstract_state, batch).compile()


__all__ = ["memory_bytes", "abstract_module", "sampler_call", "logprob_call", "train_step_call"]
