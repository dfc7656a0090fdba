"""Batched sampling of k parallel continuations per prompt: one prefill, a fanned-out KV cache, a jitted loop.

SPCT samples many critiques of one long prompt (Voting@k with k = 8 or 32, N_RFT = 3, GRPO's G = 4), so the prompt is
prefilled ONCE and its cache is fanned out to k rows. The fan-out does not even copy it: the prompt's keys and
values stay one shared prefix (`SharedPrefix` in models/transformer.py) that its k rows read, and each row owns
only the slots it generates:

    prefill (U distinct prompts, left-padded to bucket P)    decode (Q prompt slots x k rows)
    prefix slots 0 ........ P-1                              own slots 0 ...... N-1   (global slot P + s)
    prompt 0    [ . . a b c d ]  <---- rows 0 .. k-1         row 0      [ x1 x2 ...      ]
    prompt 1    [ e f g h i j ]  <---- rows k .. 2k-1        row 1      [ y1 y2 ...      ]
                  ^ left pad, never visible                  ...          ^ k different draws per prompt

Reading the prompt once per step for all k rows (one [k*G, Dh] x [Dh, P] matmul per KV head) instead of k
copies is what makes k = 32 cheap. Identical prompts (e.g. two samples that drew the same response order) are
prefilled once too: prompt slots gather their prefix by a slot -> distinct-prompt index. Every row writes its
t-th new token at own slot t, so one decode step is one column for the whole batch. Rows that have emitted a
stop token keep running (the loop is batched) but their outputs are frozen and cut on the host.

Randomness is per row: the key of (prompt, sample j, step t) is derived from `seed`, the prompt's own tokens (and
its occurrence number among identical prompts), j and t. A row's draws therefore do not depend on what else is in
the batch or where the prompt sits in the list, nor on how the rows are split over devices or hosts.

With a mesh that spans several processes (multi-controller JAX), every process runs `sample` with the same
arguments: each builds the (small) host inputs whole but copies to its devices only the rows they hold, and
every process gets the whole `Samples` back (the outputs are all-gathered across hosts).

One concept per module:
    api.py          `sample`, `compile_call`, `Samples`: options, calls, cutting rows at their stop token
    layout.py       prompts -> calls -> row shards (`plan_call`), the mesh layout (`Layout`), `bucket`
    prefill.py      the chunked prompt pass and the fan-out of its cache to the decode rows
    loop.py         the jitted program: prefill, then the decode `while_loop` over a named `DecodeState` (in
                    phases over growing own slots for long generations on CPU)
    strategies.py   Greedy, Temperature, TopK, TopP: one token per row (inverse-CDF draw, bisection top-p)
"""
from spct_jax.sampling.api import (DECODE_LAYERS, Samples, compile_call, decode_layers_for, decode_phases_for,
                                   sample)
from spct_jax.sampling.layout import Layout, bucket, length_bucketed_batches
from spct_jax.sampling.loop import DecodeState, compile_count
from spct_jax.sampling.prefill import PREFILL_CHUNK
from spct_jax.sampling.strategies import Greedy, Strategy, Temperature, TopK, TopP

__all__ = ["DECODE_LAYERS", "PREFILL_CHUNK", "DecodeState", "Greedy", "Layout", "Samples", "Strategy", "Temperature",
           "TopK", "TopP", "bucket", "compile_call", "compile_count", "decode_layers_for", "decode_phases_for",
           "length_bucketed_batches", "sample"]
