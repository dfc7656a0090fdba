"""Per-device memory plan of every phase of a run config, without allocating anything.

A stage runs in phases, each one program (or a loop of one program) with some arrays resident around it:

    rft        rft_sampling     fp32 masters + compute-dtype sampling copy + sampler call (rft.sample_rows rows)
               sft              masters + the train state's copy of them + Adam + TrainStep (rft.* batch)
    grpo       grpo_filter      masters + sampling copy + the too-easy filter's sampler call (grpo.filter_rows)
               grpo_rollout     masters + Adam + reference copy + sampling copy + sampler call (prompts x G rows)
               grpo_reference   masters + Adam + reference copy + LogprobFn (grpo.logprob_rows rows at a time)
               grpo_update      masters + Adam + reference copy + TrainStep (GRPO loss)
    metarm     metarm_sampling  GRM masters + sampling copy + sampler call (metarm.sample_rows rows)
               bce              GRM masters + the meta RM's train state (a copy) + Adam + TrainStep (BCE)
    inference  inference        GRM and meta RM in inference.dtype + sampler call (batch_prompts x k rows)

(what the stage commands hold, read from spct_jax/train/*_cli.py, stages.py and grpo.py). Weights, optimizer
state and gradients are EXACT for the code as written: every leaf of the abstract model (nnx.eval_shape) and of
the optimizer state (jax.eval_shape of make_optimizer(...).init) divided by the ways its partition rule splits
it (rules.py). KV caches are the sampler's own arrays (its power-of-two buckets and row layout included). What a
program adds on top of its arguments (KV cache, activations, gathered weights) comes from plan_phases.py, whose
formulas follow the layouts XLA compiles these programs to; tests/test_parallel_plan.py checks each phase
against `compiled.memory_analysis()` of the real program (plan_xla.py builds them from abstract inputs).

The decoder pins its activations (rows on their own device, heads and MLP width over "tensor") and scans its
blocks, so every program compiles to one layout: weights stay sharded and stream through the scan, and only the
embedding is gathered whole (the LM head). How many activation-sized buffers a program holds at its peak is the
compiler's scheduling, measured per backend (plan_phases.Backend: the TPU compiler on the 27B config, XLA:CPU on
8 fake devices).
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
from spct_jax.models.transformer import init_model
from spct_jax.parallel.mesh import AXES, Accelerator, MeshConfig, parse_accelerator
from spct_jax.parallel.plan_phases import LAYOUTS, TPU, Backend, MeshShape, logprob_program, sampler_program, train_program
from spct_jax.parallel.rules import DEFAULT_RULES, opt_state_specs, param_specs, spec_ways
from spct_jax.train.config import OptimizerConfig
from spct_jax.train.state import make_optimizer

GB = 1e9
STAGES = ("rft", "grpo", "metarm", "inference")
PHASES = {"rft": ("rft_sampling", "sft"),
          "grpo": ("grpo_filter", "grpo_rollout", "grpo_reference", "grpo_update"),
          "metarm": ("metarm_sampling", "bce"),
          "inference": ("inference",)}
CATEGORIES = ("weights", "optimizer", "grads", "kv_cache", "activations", "batch")


# -- abstract models (cached: eval_shape of a 27B decoder takes ~2 s) ------------------------------------------
@functools.lru_cache(maxsize=8)
def abstract_params(model: ModelConfig, param_dtype: str, scalar_rm: bool = False) -> dict[str, Any]:
    """The Params of a Decoder (or ScalarRM) as a nested dict of ShapeDtypeStructs, keyed like its nnx state.

    Built with nnx.eval_shape, nothing allocated. A whole 27B decoder traced at once costs seconds (flax probes
    every Variable's tracer, which is quadratic in the trace), so the model is traced with one layer and its
    stacked block params [1, ...] get the real depth [L, ...]: a block's parameter shapes do not depend on its index
    (the index only picks the attention window). tests/test_parallel_plan.py checks the count against count_params.
    """
    dtype = jnp.dtype(param_dtype)
    one_layer = model.replace(num_layers=1, layer_types=None if model.layer_types is None else model.layer_types[:1])
    if scalar_rm:
        shell = nnx.eval_shape(lambda: ScalarRM(one_layer, rngs=nnx.Rngs(0), param_dtype=dtype))
    else:
        shell = nnx.eval_shape(lambda: init_model(one_layer, param_dtype=dtype))
    tree = nnx.to_pure_dict(nnx.state(shell, nnx.Param))
    decoder = tree["backbone"] if scalar_rm else tree
    decoder["layers"] = jax.tree.map(lambda x: jax.ShapeDtypeStruct((model.num_layers, *x.shape[1:]), x.dtype),
                                     decoder["layers"])
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


# -- the plan --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PhasePlan:
    bytes_per_device: dict[str, int]  # every category of CATEGORIES (0 = not held in this phase)
    parts: dict[str, int]  # what the categories are made of, e.g. {"masters": .., "sampling_copy": ..}
    layouts: dict[str, int]  # the phase's total under each XLA layout (plan_phases.py); the plan takes the max
    peak_bytes: int
    fits: bool
    # The program's own share of the peak (its weight / optimizer arguments and what it adds: plan_phases.py), the
    # rest being arrays the stage holds around it; what XLA's memory_analysis of the program is compared with.
    program_bytes: int = 0


@dataclasses.dataclass
class StagePlan:
    phases: dict[str, PhasePlan]
    peak_bytes: int
    peak_phase: str  # the phase that sets the stage's peak
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

    def phase(self, name: str) -> PhasePlan:
        return next(s.phases[name] for s in self.stages.values() if name in s.phases)

    def to_json(self, stage: str = "grpo") -> dict[str, Any]:
        s = self.stages[stage]
        return {
            "config": self.config_name, "model": self.model, "param_count": self.param_count,
            "meta_rm_param_count": self.meta_rm_param_count,
            "accelerator": {"type": self.accelerator.name, "chips": self.accelerator.chips,
                            "hbm_bytes_per_chip": self.accelerator.hbm_bytes},
            "usable_bytes_per_device": self.usable_bytes, "mesh": self.mesh, "dtypes": self.dtypes,
            "remat": self.remat, "method": "exact weights/optimizer/grads/KV; program transients from "
                                       "spct_jax/parallel/plan_phases.py (the TPU compiler's counts)",
            "stage": stage, "peak_phase": s.peak_phase, "bytes_per_device": s.phases[s.peak_phase].bytes_per_device,
            "peak_bytes": s.peak_bytes, "fits": s.fits,
            "stages": {k: dataclasses.asdict(v) for k, v in self.stages.items()},
        }

    def table(self) -> str:
        acc = self.accelerator
        mesh = " ".join(f"{k}={v}" for k, v in self.mesh.items())
        names = [p for s in self.stages.values() for p in s.phases]
        phases = [self.phase(p) for p in names]
        width = max(12, max(len(n) for n in names) + 1)
        lines = [
            f"spct plan: {self.config_name}",
            f"model {self.model}: {self.param_count:,} params ({self.dtypes['param']} master weights, "
            f"{self.dtypes['compute']} compute, remat={self.remat}); meta RM {self.meta_rm_param_count:,}",
            f"slice {acc.name}: {acc.chips} chips x {acc.hbm_bytes / GB:.1f} GB HBM, usable "
            f"{self.usable_bytes / GB:.1f} GB; mesh {mesh}",
            "",
            f"{'per-device GB':<14}" + "".join(f"{n:>{width}}" for n in names),
        ]
        for cat in CATEGORIES:
            lines.append(f"{cat:<14}" + "".join(f"{p.bytes_per_device[cat] / GB:>{width}.2f}" for p in phases))
        lines.append(f"{'peak':<14}" + "".join(f"{p.peak_bytes / GB:>{width}.2f}" for p in phases))
        lines.append(f"{'fits ' + acc.name:<14}" + "".join(f"{'yes' if p.fits else 'NO':>{width}}" for p in phases))
        lines += ["", f"{'stage':<11}{'peak GB':>9}  {'set by':<16}{'fits':<6}smallest slice"]
        for name, s in self.stages.items():
            lines.append(f"{name:<11}{s.peak_bytes / GB:>9.2f}  {s.peak_phase:<16}{'yes' if s.fits else 'NO':<6}"
                         f"{s.smallest_slice or '-'}")
        lines += ["", "weights: every copy a phase holds (fp32 masters, train-state copy, bf16 sampling/reference",
                  "copies, the meta RM) plus weights XLA gathers whole. Weights, optimizer, grads and KV cache are",
                  "exact on this mesh; activations follow the compiled programs (spct_jax/parallel/plan_phases.py,",
                  "the TPU compiler's counts). smallest slice: data=1, fsdp=rest, the same tensor size",
                  "and rows per chip (micro-batches and rows per sampler call rescaled)."]
        return "\n".join(lines)


def _optimizer_config(c: Any) -> OptimizerConfig:
    """The trainer's optimizer (make_optimizer) as configured: the exact chain whose state is planned."""
    o = c.optimizer
    # The learning rate does not change the state's shapes; RFT's stands in for every stage.
    return OptimizerConfig(learning_rate=c.rft.learning_rate, warmup_steps=o.warmup_steps, schedule=o.schedule,
                           total_steps=c.rft.steps, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
                           clip_norm=o.clip_norm if o.clip_norm > 0 else None)


def _phase(resident: dict[str, dict[str, int]], program: dict[str, dict[str, int]], usable: float) -> PhasePlan:
    """resident: category -> {part: bytes} held around the program; program: layout -> plan_phases output plus
    the program's own weight arguments ("weight_args") and optimizer/grads. The phase is planned at the layout
    whose total is larger."""
    totals = {layout: sum(p.values()) for layout, p in program.items()}
    layout = max(totals, key=totals.get)
    chosen = program[layout]
    parts = {k: v for cat in resident.values() for k, v in cat.items()}
    parts.update({k: v for k, v in chosen.items() if k in ("weight_args", "gathered")})
    by_cat = {cat: sum(resident.get(cat, {}).values()) for cat in CATEGORIES}
    by_cat["weights"] += chosen.get("weight_args", 0) + chosen.get("gathered", 0)
    for cat in ("optimizer", "grads", "kv_cache", "activations", "batch"):
        by_cat[cat] += chosen.get(cat, 0)
    by_cat["batch"] += chosen.get("io", 0)
    resident_total = sum(sum(v.values()) for v in resident.values())
    layouts = {k: int(resident_total + v) for k, v in totals.items()}
    peak = sum(by_cat.values())
    return PhasePlan({k: int(v) for k, v in by_cat.items()}, {k: int(v) for k, v in parts.items()}, layouts,
                     int(peak), peak <= usable, int(peak - resident_total))


def _plan_stages(c: Any, mesh_shape: tuple[int, int, int], backend: Backend = TPU) -> dict[str, StagePlan]:
    data, fsdp, tensor = mesh_shape
    mesh, shape = AbstractMesh(mesh_shape, AXES), MeshShape(data, fsdp, tensor)
    usable = parse_accelerator(c.hardware.accelerator_type).hbm_bytes * c.hardware.hbm_usable_fraction
    model, meta = PRESETS[c.model.preset], PRESETS[c.meta_rm.preset]
    b = jnp.dtype(c.model.compute_dtype).itemsize
    pdt, remat = c.model.param_dtype, c.model.remat

    policy = abstract_params(model, pdt)
    policy_specs = param_specs(mesh, policy, DEFAULT_RULES)
    rm = abstract_params(meta, pdt, scalar_rm=True)
    rm_specs = param_specs(mesh, rm, DEFAULT_RULES)

    def weights(tree: Any, specs: Any, dtype: Any = None) -> int:
        return sharded_bytes(tree, specs, mesh, dtype)

    def adam(m: ModelConfig, scalar_rm: bool, params: Any, specs: Any) -> int:
        opt = abstract_opt_state(m, pdt, scalar_rm, _optimizer_config(c))
        return sharded_bytes(opt, opt_state_specs(opt, params, specs), mesh)

    masters, copy = weights(policy, policy_specs), weights(policy, policy_specs, c.model.compute_dtype)
    policy_adam = adam(model, False, policy, policy_specs)
    grads = weights(policy, policy_specs, jnp.float32)

    def sampler(m: ModelConfig, args: int, rows: int, prompt_len: int, new_tokens: int, itemsize: int):
        return {lay: {"weight_args": args, **sampler_program(m, shape, rows=rows, prompt_len=prompt_len,
                                                             new_tokens=new_tokens, b=itemsize, backend=backend)}
                for lay in LAYOUTS}

    def train(m: ModelConfig, stage: str, seq: int, grad_bytes: int, opt: int, args: int, cast: int, *, lm: bool,
              fields: int):
        s = c[stage]
        return {lay: {"weight_args": args, "optimizer": opt,
                      **train_program(m, shape, rows=s.batch_size, seq=seq, microbatches=s.num_microbatches, b=b,
                                      grad_bytes=grad_bytes, cast_bytes=cast, lm_logits=lm, remat=remat,
                                      batch_fields=fields, backend=backend)}
                for lay in LAYOUTS}

    ph = functools.partial(_phase, usable=usable)
    r, g, mr, inf = c.rft, c.grpo, c.metarm, c.inference
    out: dict[str, dict[str, PhasePlan]] = {"rft": {}, "grpo": {}, "metarm": {}, "inference": {}}
    # RFT: rejective sampling from a compute-dtype copy, then SFT (the loaded model stays referenced by the
    # command while the train state trains its own copy: create_train_state(copy_params=True)).
    prompt = r.max_seq_len - r.max_new_tokens  # usable_items drops longer prompts
    out["rft"]["rft_sampling"] = ph({"weights": {"masters": masters}},
                                    sampler(model, copy, r.sample_rows, prompt, r.max_new_tokens, b))
    out["rft"]["sft"] = ph({"weights": {"masters": masters}},
                           train(model, "rft", r.max_seq_len, grads, policy_adam, masters, copy, lm=True, fields=3))
    # GRPO: the policy trains on the loaded arrays; the reference is a ref_dtype copy (or, when ref_dtype is the
    # param dtype, the loaded arrays with the policy on a copy: the same bytes).
    ref = weights(policy, policy_specs, g.ref_dtype)
    seq = g.max_prompt_len + g.max_new_tokens
    rows = min(g.rollout_batch_prompts, g.batch_size // g.group_size) * g.group_size
    out["grpo"]["grpo_filter"] = ph({"weights": {"masters": masters}},
                                    sampler(model, copy, g.filter_rows, g.max_prompt_len, g.max_new_tokens, b))
    out["grpo"]["grpo_rollout"] = ph({"weights": {"masters": masters, "reference": ref},
                                      "optimizer": {"adam": policy_adam}},
                                     sampler(model, copy, rows, g.max_prompt_len, g.max_new_tokens, b))
    lp = {lay: {"weight_args": ref, **logprob_program(model, shape, rows=g.batch_size, block_rows=g.logprob_rows,
                                                       seq=seq, b=jnp.dtype(g.ref_dtype).itemsize, backend=backend)}
          for lay in LAYOUTS}
    update_batch = 2 * 4 * g.batch_size * seq * 4 // shape.row_shards  # ids, masks, loss mask, ref log-probs
    out["grpo"]["grpo_reference"] = ph({"weights": {"masters": masters}, "optimizer": {"adam": policy_adam},
                                        "batch": {"update_batch": update_batch}}, lp)
    out["grpo"]["grpo_update"] = ph({"weights": {"reference": ref}},
                                    train(model, "grpo", seq, grads, policy_adam, masters, copy, lm=True, fields=4))
    # Meta RM: the guided GRM samples from a copy, then the RM (sharing the GRM's arrays) trains on its own copy.
    rm_masters = weights(rm, rm_specs)
    out["metarm"]["metarm_sampling"] = ph({"weights": {"masters": masters}},
                                          sampler(model, copy, mr.sample_rows, inf.max_prompt_len,
                                                  inf.max_new_tokens, b))
    out["metarm"]["bce"] = ph({"weights": {"masters": masters}},
                              train(meta, "metarm", mr.max_seq_len, weights(rm, rm_specs, jnp.float32),
                                    adam(meta, True, rm, rm_specs), rm_masters,
                                    weights(rm, rm_specs, c.model.compute_dtype), lm=False, fields=2))
    # Inference: the GRM samples in inference.dtype with the meta RM resident beside it.
    ib = jnp.dtype(inf.dtype).itemsize
    out["inference"]["inference"] = ph({"weights": {"meta_rm": weights(rm, rm_specs, inf.dtype)}},
                                       sampler(model, weights(policy, policy_specs, inf.dtype),
                                               inf.batch_prompts * inf.k, inf.max_prompt_len, inf.max_new_tokens,
                                               ib))
    stages = {}
    for name, phases in out.items():
        top = max(phases, key=lambda p: phases[p].peak_bytes)
        stages[name] = StagePlan(phases, phases[top].peak_bytes, top, all(p.fits for p in phases.values()))
    return stages


def smallest_slice(c: Any, stage: str, *, max_chips: int = 4096) -> str | None:
    """The smallest slice of the config's TPU family on which every phase of `stage` fits with the same work per
    chip: mesh data=1, fsdp=rest, the config's tensor size, the config's training rows per chip per micro-batch
    (micro-batches rescaled) and sampler rows per chip (rows per sampler call rescaled)."""
    accel = parse_accelerator(c.hardware.accelerator_type)
    data, fsdp, tensor = MeshConfig.from_mapping(c.mesh).resolve(accel.chips)
    ways = data * fsdp
    rows = {s: c[s].batch_size // (c[s].num_microbatches * ways) for s in ("rft", "grpo", "metarm")}
    chips = accel.min_chips
    while chips <= max_chips:
        shards = chips // tensor
        if chips % tensor == 0 and all(c[s].batch_size % (rows[s] * shards) == 0 for s in rows):
            probe = c.copy_and_resolve_references()
            probe.hardware.accelerator_type = Accelerator(accel.family, chips, accel.hbm_bytes).name
            for s, r in rows.items():
                probe[s].num_microbatches = c[s].batch_size // (r * shards)
            scale = shards / ways
            g = c.grpo
            probe.grpo.rollout_batch_prompts = int(min(max(1, g.rollout_batch_prompts * scale),
                                                       g.batch_size // g.group_size))
            probe.grpo.logprob_rows = int(min(max(shards, g.logprob_rows * scale), g.batch_size))
            probe.rft.sample_rows = int(max(1, c.rft.sample_rows * scale))
            probe.metarm.sample_rows = int(max(1, c.metarm.sample_rows * scale))
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


__all__ = ["abstract_params", "abstract_opt_state", "param_count", "sharded_bytes", "PhasePlan", "StagePlan", "Plan",
           "plan", "plan_json", "smallest_slice", "STAGES", "PHASES", "CATEGORIES"]
