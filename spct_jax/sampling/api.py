"""`sample`: k continuations of each prompt, and `compile_call`: the compiled program of its first call.

The host side of the sampler: check the options, group the prompts into calls (layout.groups), lay each call out
over the row shards (layout.plan_call), run the jitted program (loop.generate) and cut every row at its first stop
token.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from spct_jax.models.transformer import Decoder
from spct_jax.parallel.compilation import compile_phase
from spct_jax.sampling import layout as lay
from spct_jax.sampling.loop import Static, jitted_generate, own_phases_for
from spct_jax.sampling.strategies import Strategy, from_options


@dataclasses.dataclass(frozen=True)
class Samples:
    """tokens[i][j]: ids generated for prompt i, sample j, up to and including the first stop token.
    logprobs[i][j]: their log-probabilities under the sampling distribution (temperature, top-k/top-p applied;
    for greedy decoding, under the model's own distribution)."""

    tokens: list[list[list[int]]]
    logprobs: list[list[list[float]]]

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for row in self.tokens for s in row)


DECODE_LAYERS = ("auto", "scan", "split")


def decode_layers_for(choice: str, mesh: jax.sharding.Mesh | None = None) -> str:
    """"auto" -> "split" on CPU, "scan" elsewhere (the platform of the mesh's devices, else the default backend).

    "scan" runs the decode step's layers as the model's layer scan over the stacked [L, ...] params and cache;
    "split" cuts both per layer once before the decode loop and runs the layers unrolled over separate buffers
    (KVCache.split_layers), at the cost of one copy of the block weights for the call and a program that grows
    with depth. XLA:CPU copies a stacked operand's layer slice before each dot, which made a CPU decode step
    1.4x-1.7x slower (benchmarks/sampling.py prints both). TPU's compiler reads the stacked weights in place (it
    still copies each layer's cache slice; docs/performance.md), its compile time is what the scan keeps flat,
    and the pod memory plan (parallel/plan.py) assumes "scan"."""
    if choice not in DECODE_LAYERS:
        raise ValueError(f"decode_layers must be one of {DECODE_LAYERS}, got {choice!r}")
    if choice != "auto":
        return choice
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return "split" if platform == "cpu" else "scan"


PHASED_FROM = 256  # decode_phases=None: new-token buckets from this size decode in phases


def decode_phases_for(choice: bool | None, new_bucket: int, split: bool, mesh: jax.sharding.Mesh | None) -> tuple:
    """The decode loop's own-slot phases (loop.own_phases_for). None (auto): on for one device's split-layer loop
    (the CPU sampler) from PHASED_FROM new tokens, where a step reads every own slot it holds at memory speed and
    a long generation pays for the second loop body's compile (XLA's memory account there is lower with phases,
    not higher: docs/performance.md). Off on a mesh, where neither speed nor memory was measured with
    phases, so sharded programs stay the ones the memory plan and the sharded tests check. True / False force it
    either way (True from 64 new tokens)."""
    on = (split and mesh is None and new_bucket >= PHASED_FROM) if choice is None else choice
    return own_phases_for(new_bucket) if on else ()


def _static(model: Decoder, num_samples: int, max_new_tokens: int, stop_tokens: Sequence[int],
            fan_out: bool, decode_layers: str = "auto", mesh: jax.sharding.Mesh | None = None,
            decode_phases: bool | None = None) -> Static:
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError("num_samples and max_new_tokens must be >= 1")
    pad = model.config.pad_token_id
    split = decode_layers_for(decode_layers, mesh) == "split"
    new_bucket = lay.bucket(max_new_tokens)
    return Static(num_samples=num_samples, new_bucket=new_bucket,
                  stop_tokens=tuple(sorted(set(int(t) for t in stop_tokens))), pad_id=pad if pad is not None else 0,
                  fan_out=fan_out, split_layers=split,
                  own_phases=decode_phases_for(decode_phases, new_bucket, split, mesh))


def _for_call(st: Static, call: lay.Call) -> Static:
    """The program's statics for one call: its rows per slot and slots per prefix."""
    return dataclasses.replace(st, num_samples=call.per_slot, prefix_slots=call.prefix_slots)


def _check_prompts(model: Decoder, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    prompts = [list(map(int, p)) for p in prompts]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token (e.g. BOS)")
    vocab = model.config.vocab_size
    if any(t < 0 or t >= vocab for p in prompts for t in p):
        raise ValueError(f"prompt token id out of range [0, {vocab})")
    return prompts


def _inputs(call: lay.Call, layout: lay.Layout | None, base: jax.Array, abstract: bool = False) -> tuple:
    """The program's row-indexed inputs (ids, mask, src, row key data): split over the row shards with a layout,
    each process copying only its own devices' rows; shapes only (jax.ShapeDtypeStruct) when `abstract`."""
    seeds, samples = call.row_keys.T  # [R] each
    key_data = np.asarray(lay.row_key_data(base, seeds, samples))  # [R, *key] uint32, the same on every host
    host = (call.ids, call.mask, call.src, key_data)
    if abstract:
        return tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=None if layout is None else layout.rows)
                     for x in host)
    if layout is None:
        return tuple(map(jnp.asarray, host))
    return tuple(lay.to_global(x, layout.rows) for x in host)


def sample(model: Decoder, prompts: Sequence[Sequence[int]], *, num_samples: int = 1, max_new_tokens: int,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           stop_tokens: Sequence[int] = (), seed: int = 0, max_batch_rows: int = 256,
           mesh: jax.sharding.Mesh | None = None, data_axis: str | Sequence[str] | None = None,
           fan_out: bool = True, prompt_seeds: Sequence[int] | None = None,
           progress: bool | None = None, decode_layers: str = "auto", share_identical: bool = True,
           decode_phases: bool | None = None) -> Samples:
    """Sample `num_samples` continuations of each prompt; temperature 0 is greedy.

    Prompts are grouped by length bucket (at most `max_batch_rows` = prompts x num_samples per call, at least one
    prompt; rows padded to a power of two), so a job over prompts of many lengths compiles once per (length
    bucket, batch bucket, max_new bucket). Identical prompts in a call are prefilled once (per row shard).
    `prompt_seeds` (one int per prompt) replaces the default per-prompt seed (a hash of the prompt's tokens and its
    occurrence number) when callers have stable ids.

    With `mesh`, everything with a row is split over `data_axis` (default: the mesh's batch axes, data x fsdp):
    the distinct prompts are prefilled where their rows decode, each shard reads only its own prefixes, the KV
    cache's heads split over "tensor" when they divide, and the outputs are gathered once per call. Parameters keep
    whatever sharding they already have (e.g. the partition rules'). A mesh may span several processes: then every
    process calls `sample` with the same arguments, the parameters must be global arrays on the mesh's devices,
    each host feeds only the rows its devices hold, and every process returns the same, whole `Samples`. The
    tokens do not depend on the mesh, the batching or the number of processes.

    `decode_layers` ("auto", "scan", "split": see `decode_layers_for`) changes speed and memory, not tokens.
    `decode_phases` (None = auto, see `decode_phases_for`): decode in two phases, over N/2 then N own slots
    (sampling/loop.py); it changes speed, memory and compile time, not tokens.
    `share_identical`: a prompt passed several times (one sample each with its own `prompt_seeds`, as the GRM
    scorer does) is prefilled once and its rows read one prefix when that adds no rows (layout.plan_call); it
    changes speed, not tokens.
    """
    st = _static(model, num_samples, max_new_tokens, stop_tokens, fan_out, decode_layers, mesh, decode_phases)
    strategy = from_options(temperature, top_k, top_p, model.config.vocab_size)
    prompts = _check_prompts(model, prompts)
    if prompt_seeds is None:
        prompt_seeds = lay.default_seeds(prompts)
    elif len(prompt_seeds) != len(prompts):
        raise ValueError("prompt_seeds needs one seed per prompt")
    layout = lay.layout_for(mesh, data_axis)
    shards = 1 if layout is None else layout.shards
    base = jax.random.key(seed)
    graphdef, state = nnx.split(model)
    groups = lay.groups(prompts, num_samples, max_batch_rows)

    tokens: list = [[None] * num_samples for _ in prompts]
    logprobs: list = [[None] * num_samples for _ in prompts]
    stop_set = set(st.stop_tokens)
    show = progress if progress is not None else len(groups) > 1
    for group in tqdm(groups, desc="sampling", unit="batch", disable=not show):
        call = lay.plan_call(group, prompts, prompt_seeds, num_samples, shards, st.pad_id, share_identical)
        with compile_phase("sampling"):  # compile counts (parallel/compilation.py), unless a stage phase names them
            toks, lps, _ = jitted_generate(graphdef, state, *_inputs(call, layout, base), jnp.int32(max_new_tokens),
                                           strategy, st=_for_call(st, call),
                                           layout=layout)
        toks, lps = lay.to_host(toks), lay.to_host(lps)  # [R, N] each: the one gather of this call
        for q, slot in enumerate(call.slots):
            if slot is None:
                continue
            i, j0 = slot
            for jj in range(call.per_slot):
                row = toks[q * call.per_slot + jj, :max_new_tokens].tolist()
                end = next((t + 1 for t, tok in enumerate(row) if tok in stop_set), len(row))
                tokens[i][j0 + jj] = row[:end]
                logprobs[i][j0 + jj] = lps[q * call.per_slot + jj, :end].tolist()
    return Samples(tokens=tokens, logprobs=logprobs)


def compile_call(model: Decoder, prompts: Sequence[Sequence[int]], *, num_samples: int = 1, max_new_tokens: int,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 stop_tokens: Sequence[int] = (), max_batch_rows: int = 256, mesh: jax.sharding.Mesh | None = None,
                 data_axis: str | Sequence[str] | None = None, fan_out: bool = True, abstract: bool = False,
                 decode_layers: str = "auto", decode_phases: bool | None = None):
    """The compiled program of `sample`'s FIRST sampler call for these arguments, without running it:
    `compile_call(...).memory_analysis()` is XLA's own per-device account of that call's memory (arguments,
    outputs, temporaries), the figure the planner and the benchmarks compare with.

    `abstract=True` lowers from input shapes only, for a model whose parameters are abstract too
    (jax.ShapeDtypeStruct with shardings, e.g. on a TPU topology's devices that this process cannot write to)."""
    st = _static(model, num_samples, max_new_tokens, stop_tokens, fan_out, decode_layers, mesh, decode_phases)
    strategy: Strategy = from_options(temperature, top_k, top_p, model.config.vocab_size)
    prompts = _check_prompts(model, prompts)
    layout = lay.layout_for(mesh, data_axis)
    group = lay.groups(prompts, num_samples, max_batch_rows)[0]
    call = lay.plan_call(group, prompts, lay.default_seeds(prompts), num_samples,
                         1 if layout is None else layout.shards, st.pad_id)
    graphdef, state = nnx.split(model)
    args = (graphdef, state, *_inputs(call, layout, jax.random.key(0), abstract), jnp.int32(max_new_tokens), strategy)
    return jitted_generate.lower(*args, st=_for_call(st, call),
                                 layout=layout).compile()
