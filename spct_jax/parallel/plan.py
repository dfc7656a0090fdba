"""Per-device memory plan of every stage of a run config, without allocating anything.

Parameters, gradients and optimizer state are EXACT for the code as written: the models are built with
`nnx.eval_shape`, the optimizer state with `jax.eval_shape(make_optimizer(...).init, params)`, and every leaf is
divided by the number of ways its partition rule splits it on the configured mesh (rules.py). KV caches are exact
array sizes of the sampler's cache (its power-of-two row / length buckets included).

Activations are a documented ESTIMATE (not a compiled measurement), per device, for one micro-batch:

    tokens   = rows per device per micro-batch x sequence length
    layer    = bytes one decoder block keeps for its backward pass, per token:
                 (10 b + 32) D                     residual copies, norms (fp32 inside)
               + 5 b F / t                         gate, activation, up, product (t = tensor ways)
               + b (3 H + 3 K) Dh / t              q, k before/after RoPE, v, attention output
               + (12 + b) (H / t) T                attention scores: fp32 logits, soft-cap, mask; probs in b
    remat "full":  L x tokens x D x b  (block inputs)  +  2 x tokens x layer  (one block recomputed, + cotangents)
    remat "none":  (L + 1) x tokens x layer
    + logits:  rows x chunk x V / t x 12 bytes  (the loss builds fp32 logits `chunk` positions at a time)
    + FSDP gathers: two blocks' weights and the embedding, gathered over "fsdp" in the compute dtype

b = compute-dtype bytes. Calibration: for remat "none" the estimate is within 5% of XLA's compiled
`memory_analysis().temp_size_in_bytes` of the loss gradient on CPU for scaled-down Gemma-2 models
(tests/test_parallel_plan.py keeps one such check); remat "full" is not calibrated. The attention term is this
implementation's: scores are materialised ([T, T] per head, sliding-window layers included). Remat "full" is what
the configs ask for: the stage commands' train step then wraps each block in nnx.remat (`StageRun.remat`);
without it a 4K-token 27B row needs ~480 GB per chip.

Rollouts (sampler): chunked prefill (forward only: one block live, + the [rows, chunk, V] logits `extend` builds)
or one decode step, whichever is larger; the KV cache counts twice (prefill cache and shared prefix, see _sampler_kv_bytes).

Stage peaks are phase aware: GRPO holds params, Adam moments and the reference model throughout, then EITHER the
rollout's KV cache and sampler activations OR the update's gradients and activations.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh

from spct_jax.models.config import PRESETS, ModelConfig
from spct_jax.models.scalar_head import ScalarRM
from spct_jax.models.transformer import Block, init_model
from spct_jax.parallel.mesh import AXES, Accelerator, MeshConfig, parse_accelerator
from spct_jax.parallel.rules import DEFAULT_RULES, opt_state_specs, param_specs, spec_ways
from spct_jax.sampling import bucket
from spct_jax.train.config import OptimizerConfig
from spct_jax.train.state import make_optimizer

GB = 1e9
LOSS_LOGITS_CHUNK = 512  # spct_jax.train.steps' default `chunk`
PREFILL_CHUNK = 512  # spct_jax.sampling prefills long prompts in 512-column chunks
STAGES = ("rft", "grpo", "metarm", "inference")
CATEGORIES = ("params", "grads", "optimizer", "reference_model", "meta_rm", "kv_cache", "activations",
              "rollout_activations", "fsdp_gathers")


# -- abstract models (cached: eval_shape of a 27B decoder takes ~2 s) ------------------------------------------
@functools.lru_cache(maxsize=8)
def abstract_params(model: ModelConfig, param_dtype: str, scalar_rm: bool = False) -> dict[str, Any]:
    """The Params of a Decoder (or ScalarRM) as a nested dict of ShapeDtypeStructs, keyed like its nnx state.

    Built with nnx.eval_shape, nothing allocated. A whole 27B decoder traced at once costs seconds (flax probes
    every Variable's tracer, which is quadratic in the trace), so the model is traced with one layer and one
    Block is traced alone and repeated: a block's parameter shapes do not depend on its index (the index only
    picks the attention window). tests/test_parallel_plan.py checks the count against count_params.
    """
    dtype = jnp.dtype(param_dtype)
    one_layer = model.replace(num_layers=1, layer_types=None if model.layer_types is None else model.layer_types[:1])
    if scalar_rm:
        shell = nnx.eval_shape(lambda: ScalarRM(one_layer, rngs=nnx.Rngs(0), param_dtype=dtype))
    else:
        shell = nnx.eval_shape(lambda: init_model(one_layer, param_dtype=dtype))
    tree = nnx.to_pure_dict(nnx.state(shell, nnx.Param))
    block = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Block(model, 0, rngs=nnx.Rngs(0), param_dtype=dtype)),
                                       nnx.Param))
    decoder = tree["backbone"] if scalar_rm else tree
    decoder["layers"] = {i: block for i in range(model.num_layers)}
    return tree


@functools.lru_cache(maxsize=8)
def abstract_opt_state(model: ModelConfig, param_dtype: str, scalar_rm: bool, optimizer: OptimizerConfig) -> Any:
    """The trainer's optax state (make_optimizer(optimizer).init) for those params, as ShapeDtypeStructs.
    (Plain dicts, not nnx.State: the state's structure mirrors its input, and the paths are the same.)"""
    return jax.eval_shape(make_optimizer(optimizer).init, abstract_params(model, param_dtype, scalar_rm))


def param_count(tree: Any) -> int:
    return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


def sharded_bytes(tree: Any, specs: Any, mesh: AbstractMesh, dtype: Any = None) -> int:
    """Per-device bytes of `tree` laid out by `specs` (each leaf's size / ways, in its own dtype or `dtype`)."""
    total = 0
    for leaf, spec in zip(jax.tree.leaves(tree), jax.tree.leaves(specs)):
        itemsize = jnp.dtype(dtype or leaf.dtype).itemsize
        total += int(np.prod(leaf.shape)) * itemsize // spec_ways(spec, mesh)
    return total


# -- estimates -----------------------------------------------------------------------------------------------------
def _tensor_split(n: int, t: int) -> float:
    return n / t if n % t == 0 else float(n)  # a dim that does not divide stays whole (rules.activation_spec)


def layer_bytes_per_token(m: ModelConfig, seq: int, b: int, t: int) -> float:
    """Bytes one block keeps per token for its backward (module docstring); `seq` = attended length T."""
    heads = _tensor_split(m.num_heads, t)
    return ((10 * b + 32) * m.hidden_size
            + 5 * b * _tensor_split(m.intermediate_size, t)
            + b * (3 * m.num_heads + 3 * m.num_kv_heads) * m.head_dim / (m.num_heads / heads)
            + (12 + b) * heads * seq)


def train_activation_bytes(m: ModelConfig, rows: int, seq: int, b: int, t: int, remat: str, *,
                           lm_logits: bool = True) -> int:
    """Per-device activation bytes of one micro-batch's forward + backward (rows = per device)."""
    tokens = rows * seq
    layer = layer_bytes_per_token(m, seq, b, t)
    if remat == "full":
        body = m.num_layers * tokens * m.hidden_size * b + 2 * tokens * layer
    else:
        body = (m.num_layers + 1) * tokens * layer
    logits = rows * min(LOSS_LOGITS_CHUNK, seq) * _tensor_split(m.vocab_size, t) * 12 if lm_logits else 0
    return int(body + logits)


def sampler_activation_bytes(m: ModelConfig, rows: int, prompt_slots: int, slots: int, b: int, t: int) -> int:
    """Per-device bytes of the sampler's largest transient: one prefill chunk or one decode step."""
    chunk = min(PREFILL_CHUNK, prompt_slots)
    layer_fwd = layer_bytes_per_token(m, slots, b, t)  # forward only: one block's buffers live at a time
    vocab = _tensor_split(m.vocab_size, t)
    prefill = rows * chunk * (layer_fwd + vocab * 8)  # + fp32 logits and their soft-cap
    decode = rows * (layer_fwd + vocab * 16)  # + logits, softmax, top-p probabilities, log-softmax
    return int(max(prefill, decode))


def fsdp_gather_bytes(m: ModelConfig, b: int, t: int) -> int:
    """Weights gathered over "fsdp" for compute: two blocks (one in use, one prefetched) plus the embedding."""
    d, f, dh = m.hidden_size, m.intermediate_size, m.head_dim
    block = d * (m.num_heads + 2 * m.num_kv_heads) * dh + m.num_heads * dh * d + 3 * d * f
    return int((2 * block + m.vocab_size * d) * b / t)


def kv_cache_bytes(m: ModelConfig, rows: int, slots: int, itemsize: int, batch_ways: int, t: int) -> int:
    """Per-device bytes of a KVCache of `rows` x `slots` (rows over the batch axes, KV heads over tensor)."""
    per_row_slot = 2 * m.num_layers * _tensor_split(m.num_kv_heads, t) * m.head_dim * itemsize
    return int(-(-rows // batch_ways) * slots * per_row_slot)


# -- the plan --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StagePlan:
    bytes_per_device: dict[str, int]  # every category of CATEGORIES (0 = not used by this stage)
    phases: dict[str, str]  # category -> "resident" | "always" (transient, in every phase) | "rollout" | "update"
    peak_bytes: int
    fits: bool
    smallest_slice: str | None = None


@dataclasses.dataclass
class Plan:
    config_name: str
    model: str
    param_count: int
    meta_rm_param_count: int
    accelerator: Accelerator
    usable_bytes: int
    mesh: dict[str, int]
    dtypes: dict[str, str]
    remat: str
    stages: dict[str, StagePlan]

    def to_json(self, stage: str = "grpo") -> dict[str, Any]:
        return {
            "config": self.config_name, "model": self.model, "param_count": self.param_count,
            "meta_rm_param_count": self.meta_rm_param_count,
            "accelerator": {"type": self.accelerator.name, "chips": self.accelerator.chips,
                            "hbm_bytes_per_chip": self.accelerator.hbm_bytes},
            "usable_bytes_per_device": self.usable_bytes, "mesh": self.mesh, "dtypes": self.dtypes,
            "remat": self.remat, "activations_method": "estimate (spct_jax/parallel/plan.py docstring)",
            "stage": stage, "bytes_per_device": self.stages[stage].bytes_per_device,
            "peak_bytes": self.stages[stage].peak_bytes, "fits": self.stages[stage].fits,
            "stages": {k: dataclasses.asdict(v) for k, v in self.stages.items()},
        }

    def table(self) -> str:
        acc = self.accelerator
        mesh = " ".join(f"{k}={v}" for k, v in self.mesh.items())
        lines = [
            f"spct plan: {self.config_name}",
            f"model {self.model}: {self.param_count:,} params ({self.dtypes['param']} master weights, "
            f"{self.dtypes['compute']} compute, remat={self.remat}); meta RM {self.meta_rm_param_count:,}",
            f"slice {acc.name}: {acc.chips} chips x {acc.hbm_bytes / GB:.1f} GB HBM, usable "
            f"{self.usable_bytes / GB:.1f} GB; mesh {mesh}",
            "",
            f"{'per-device GB':<22}{'phase':<16}" + "".join(f"{s:>13}" for s in self.stages),
        ]
        for cat in CATEGORIES:
            values = [self.stages[s].bytes_per_device[cat] for s in self.stages]
            if not any(values):
                continue
            phase = "/".join(sorted({self.stages[s].phases[cat] for s in self.stages
                                     if self.stages[s].bytes_per_device[cat]}))
            lines.append(f"{cat:<22}{phase:<16}" + "".join(f"{v / GB:>13.2f}" for v in values))
        lines.append(f"{'peak':<38}" + "".join(f"{p.peak_bytes / GB:>13.2f}" for p in self.stages.values()))
        lines.append(f"{'fits ' + acc.name:<38}" + "".join(f"{'yes' if p.fits else 'NO':>13}"
                                                           for p in self.stages.values()))
        lines.append(f"{'smallest slice':<38}" + "".join(f"{p.smallest_slice or '-':>13}"
                                                         for p in self.stages.values()))
        lines += ["", "peak = resident + max(rollout, update). params, grads, optimizer, KV cache: exact sizes on",
                  "this mesh. activations: estimate (spct_jax/parallel/plan.py); remat=full assumes per-block",
                  "remat in the model. smallest slice: data=1, fsdp=rest, the same tensor size and rows per chip",
                  "(training micro-batches and prompts per sampler call rescaled)."]
        return "\n".join(lines)


def _sampler_kv_bytes(m: ModelConfig, rows: int, slots: int, itemsize: int, batch_ways: int, t: int) -> int:
    """The sampler's KV cache at its peak, an upper bound: the prefill cache of the distinct prompts [U, P], the
    shared prefix gathered from it for the prompt slots [Q, P] (KVCache.take, then shared_by) and the rows' own
    slots [R, N] are live together. Every GRPO rollout and every Voting@k sample shuffles the responses
    (grm/trajectories.py, [P] §4), so nearly every row is its own prompt (U = Q = R): 2 R P + R N <= 2 R (P + N)."""
    return 2 * kv_cache_bytes(m, rows, slots, itemsize, batch_ways, t)


def _stage_rows(c: Any, stage: str, batch_ways: int) -> int:
    """Rows per device per micro-batch of a training stage."""
    s = c[stage]
    return s.batch_size // (s.num_microbatches * batch_ways)


def _plan_stages(c: Any, mesh_shape: tuple[int, int, int]) -> dict[str, StagePlan]:
    data, fsdp, tensor = mesh_shape
    mesh = AbstractMesh(mesh_shape, AXES)
    batch_ways = data * fsdp
    model, meta = PRESETS[c.model.preset], PRESETS[c.meta_rm.preset]
    b = jnp.dtype(c.model.compute_dtype).itemsize
    remat = c.model.remat

    policy = abstract_params(model, c.model.param_dtype)
    policy_specs = param_specs(mesh, policy, DEFAULT_RULES)
    rm = abstract_params(meta, c.model.param_dtype, scalar_rm=True)
    rm_specs = param_specs(mesh, rm, DEFAULT_RULES)

    def opt_bytes(model: ModelConfig, scalar_rm: bool, params: Any, specs: Any) -> int:
        opt = abstract_opt_state(model, c.model.param_dtype, scalar_rm, _optimizer_config(c))
        return sharded_bytes(opt, opt_state_specs(opt, params, specs), mesh)

    def train_rows(stage: str) -> int:
        return _stage_rows(c, stage, batch_ways)

    def grads(params: Any, specs: Any, stage: str) -> int:
        # float32 accumulation (train.steps); with micro-batches the scan carry and one micro-batch's grads coexist
        return sharded_bytes(params, specs, mesh, jnp.float32) * (2 if c[stage].num_microbatches > 1 else 1)

    def stage_plan(values: dict[str, int], phases: dict[str, str]) -> StagePlan:
        full = {cat: int(values.get(cat, 0)) for cat in CATEGORIES}
        resident = sum(v for k, v in full.items() if phases.get(k) in ("resident", "always"))
        rollout = sum(v for k, v in full.items() if phases.get(k) == "rollout")
        update = sum(v for k, v in full.items() if phases.get(k) == "update")
        peak = resident + max(rollout, update)
        usable = parse_accelerator(c.hardware.accelerator_type).hbm_bytes * c.hardware.hbm_usable_fraction
        return StagePlan(full, {k: phases.get(k, "-") for k in CATEGORIES}, peak, peak <= usable)

    policy_bytes = sharded_bytes(policy, policy_specs, mesh)
    policy_opt = opt_bytes(model, False, policy, policy_specs)
    gathers = fsdp_gather_bytes(model, b, tensor) if fsdp > 1 else 0
    out: dict[str, StagePlan] = {}

    out["rft"] = stage_plan(
        {"params": policy_bytes, "optimizer": policy_opt, "grads": grads(policy, policy_specs, "rft"),
         "activations": train_activation_bytes(model, train_rows("rft"), c.rft.max_seq_len, b, tensor, remat),
         "fsdp_gathers": gathers},
        {"params": "resident", "optimizer": "resident", "grads": "update", "activations": "update",
         "fsdp_gathers": "always"})

    g = c.grpo
    prompt_slots, new_slots = bucket(g.max_prompt_len), bucket(g.max_new_tokens)
    rollout_prompts = min(g.rollout_batch_prompts, g.batch_size // g.group_size)  # per sampler call
    rows = max(bucket(rollout_prompts * g.group_size, minimum=1), batch_ways)
    kv = _sampler_kv_bytes(model, rows, prompt_slots + new_slots, jnp.dtype(g.kv_dtype).itemsize, batch_ways, tensor)
    out["grpo"] = stage_plan(
        {"params": policy_bytes, "optimizer": policy_opt, "grads": grads(policy, policy_specs, "grpo"),
         "reference_model": sharded_bytes(policy, policy_specs, mesh, g.ref_dtype), "kv_cache": kv,
         "activations": train_activation_bytes(model, train_rows("grpo"), g.max_prompt_len + g.max_new_tokens,
                                               b, tensor, remat),
         "rollout_activations": sampler_activation_bytes(model, -(-rows // batch_ways), prompt_slots,
                                                         prompt_slots + new_slots, b, tensor),
         "fsdp_gathers": gathers},
        {"params": "resident", "optimizer": "resident", "reference_model": "resident", "kv_cache": "rollout",
         "rollout_activations": "rollout", "grads": "update", "activations": "update", "fsdp_gathers": "always"})

    out["metarm"] = stage_plan(
        {"params": sharded_bytes(rm, rm_specs, mesh), "optimizer": opt_bytes(meta, True, rm, rm_specs),
         "grads": grads(rm, rm_specs, "metarm"),
         "activations": train_activation_bytes(meta, train_rows("metarm"), c.metarm.max_seq_len, b, tensor, remat,
                                               lm_logits=False),
         "fsdp_gathers": fsdp_gather_bytes(meta, b, tensor) if fsdp > 1 else 0},
        {"params": "resident", "optimizer": "resident", "grads": "update", "activations": "update",
         "fsdp_gathers": "always"})

    i = c.inference
    p_slots, n_slots = bucket(i.max_prompt_len), bucket(i.max_new_tokens)
    i_rows = max(bucket(i.batch_prompts * i.k, minimum=1), batch_ways)
    out["inference"] = stage_plan(
        {"params": sharded_bytes(policy, policy_specs, mesh, i.dtype),
         "meta_rm": sharded_bytes(rm, rm_specs, mesh, i.dtype),
         "kv_cache": _sampler_kv_bytes(model, i_rows, p_slots + n_slots, jnp.dtype(i.dtype).itemsize, batch_ways,
                                       tensor),
         "rollout_activations": sampler_activation_bytes(model, -(-i_rows // batch_ways), p_slots, p_slots + n_slots,
                                                         b, tensor),
         "fsdp_gathers": gathers},
        {"params": "resident", "meta_rm": "resident", "kv_cache": "rollout", "rollout_activations": "rollout",
         "fsdp_gathers": "always"})
    return out


def _optimizer_config(c: Any) -> OptimizerConfig:
    """The trainer's optimizer (make_optimizer) as configured: the exact chain whose state is planned."""
    o = c.optimizer
    # The learning rate does not change the state's shapes; RFT's stands in for every stage.
    return OptimizerConfig(learning_rate=c.rft.learning_rate, warmup_steps=o.warmup_steps, schedule=o.schedule,
                           total_steps=c.rft.steps, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
                           clip_norm=o.clip_norm)


def smallest_slice(c: Any, stage: str, *, max_chips: int = 4096) -> str | None:
    """The smallest slice of the config's TPU family on which `stage` fits with the same work per chip: mesh data=1,
    fsdp=rest, the config's tensor size, the config's training rows per chip per micro-batch (the number of
    micro-batches is rescaled) and sampler rows per chip (prompts per sampler call rescaled)."""
    accel = parse_accelerator(c.hardware.accelerator_type)
    data, fsdp, tensor = MeshConfig.from_mapping(c.mesh).resolve(accel.chips)
    rows = {s: _stage_rows(c, s, data * fsdp) for s in ("rft", "grpo", "metarm")}
    chips = accel.min_chips
    while chips <= max_chips:
        shards = chips // tensor
        if chips % tensor == 0 and all(c[s].batch_size % (rows[s] * shards) == 0 for s in rows):
            probe = c.copy_and_resolve_references()
            probe.hardware.accelerator_type = Accelerator(accel.family, chips, accel.hbm_bytes).name
            for s, r in rows.items():
                probe[s].num_microbatches = c[s].batch_size // (r * shards)
            scale = shards / (data * fsdp)
            g = c.grpo
            probe.grpo.rollout_batch_prompts = int(min(max(1, g.rollout_batch_prompts * scale),
                                                       g.batch_size // g.group_size))
            probe.inference.batch_prompts = int(max(1, c.inference.batch_prompts * scale))
            try:
                if _plan_stages(probe, (1, shards, tensor))[stage].fits:
                    return probe.hardware.accelerator_type
            except ValueError:  # a parameter dim that does not divide on this mesh: try the next size
                pass
        chips *= 2
    return None


def plan(c: Any, *, search_smallest: bool = True) -> Plan:
    """The per-device memory plan of config `c` (a validated run ConfigDict) on its configured slice."""
    accel = parse_accelerator(c.hardware.accelerator_type)
    shape = MeshConfig.from_mapping(c.mesh).resolve(accel.chips)
    stages = _plan_stages(c, shape)
    if search_smallest:
        for name, sp in stages.items():
            sp.smallest_slice = smallest_slice(c, name)
    model, meta = PRESETS[c.model.preset], PRESETS[c.meta_rm.preset]
    return Plan(
        config_name=c.name, model=c.model.preset,
        param_count=param_count(abstract_params(model, c.model.param_dtype)),
        meta_rm_param_count=param_count(abstract_params(meta, c.model.param_dtype, scalar_rm=True)),
        accelerator=accel, usable_bytes=int(accel.hbm_bytes * c.hardware.hbm_usable_fraction),
        mesh=dict(zip(AXES, shape)),
        dtypes={"param": c.model.param_dtype, "compute": c.model.compute_dtype, "reference": c.grpo.ref_dtype,
                "kv_cache": c.grpo.kv_dtype, "inference": c.inference.dtype},
        remat=c.model.remat, stages=stages)


def plan_json(p: Plan, stage: str = "grpo") -> str:
    return json.dumps(p.to_json(stage), indent=2, sort_keys=False)


__all__ = ["abstract_params", "param_count", "sharded_bytes", "layer_bytes_per_token", "train_activation_bytes",
           "sampler_activation_bytes", "fsdp_gather_bytes", "kv_cache_bytes", "StagePlan", "Plan", "plan",
           "plan_json", "smallest_slice", "STAGES", "CATEGORIES"]
