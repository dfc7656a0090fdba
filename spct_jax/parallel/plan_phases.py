"""Per-device bytes of the programs a run's phases execute: the sampler call, the train step, the log-prob pass.

Arguments that are model-sized (weights, Adam state) are counted exactly by plan.py from the partition rules;
this module counts what a program adds on top of its arguments: KV cache, activations, gradients, batches.

The layout every program compiles to (the decoder pins its activations, models/transformer.py `constrain`, and
scans its blocks): every row stays on its own device (rows / (data x fsdp)), heads and MLP width split over
"tensor", weights stay sharded and are streamed through the scan a unit of layers at a time. What a program holds
at its peak, read from the buffer assignments of the compiled programs (plan_xla.py builds them):

  train step   f32 gradients (an accumulator and one micro-batch's), every block's input (remat "full"; plus
               the weight matmuls' outputs with "save_dots"), the embedding gathered whole over fsdp (the lookup,
               the LM head and its gradient), compute-dtype copies of the weight shards (the cast hoisted out of
               the scan), the loss's f32 logits of one chunk, and the block being recomputed: MLP-sized products
               [rows, T, F / tensor] and, on the full attention path (short T), the scores.
  log-probs    one row block's forward: the embedding, a logits chunk, MLP products, scores when full.
  sampler      the KV cache (the prefill cache and the prefix taken from it, then the prefix and the rows' own
               slots), the embedding gathered for the LM head, one prefill chunk's or one decode step's
               activations.

How many of each a program holds depends on the compiler's scheduling, so the counts are a `Backend`'s, measured
from compiled programs: TPU from the TPU compiler (libtpu) on Gemma-2-27B at the v5p-64 config's shapes, CPU on 8
fake devices (tests/test_parallel_plan.py checks the CPU counts; docs/training-on-tpu.md has the 27B table).
"""
from __future__ import annotations

import dataclasses

from spct_jax.models.attention import FULL_BELOW_T, default_block
from spct_jax.models.config import ModelConfig
from spct_jax.sampling import PREFILL_CHUNK, bucket

LOSS_CHUNK = 512  # spct_jax.train.steps: logits are built this many positions at a time
F32 = 4


@dataclasses.dataclass(frozen=True)
class MeshShape:
    data: int
    fsdp: int
    tensor: int

    @property
    def row_shards(self) -> int:  # the batch axes: every row dim is split over data x fsdp
        return self.data * self.fsdp


@dataclasses.dataclass(frozen=True)
class Backend:
    """What one compiler's programs hold at their peak, in units of the arrays named (module docstring).

    train_mlp / logprob_mlp   MLP-sized products [rows, T, F / tensor] in the compute dtype: the block in flight
                              forward and backward (and whatever else of activation size the schedule keeps).
    embed_lm / embed_rm       whole-over-fsdp copies of the embedding [V / tensor, D] in the train step of an
                              LM (lookup, LM head, their gradient) / of the scalar RM (no LM head).
    logprob_embed             the same in the log-prob pass.
    logits                    f32 [rows, chunk, V / tensor] logit buffers of the loss / log-prob chunk.
    weight_casts              compute-dtype copies of the train step's weight shards.
    sampler_gathers_model     the sampler holds every block's weights gathered over fsdp (the decode loop's
                              gathers hoisted out of it), not just the embedding.
    kv_sum                    the sampler's prefill cache, the prefix taken from it AND the own slots live at once
                              (else the prefill cache is freed before the own slots are made).
    """

    name: str
    train_mlp: float
    embed_lm: float
    embed_rm: float
    logits: float
    weight_casts: float
    logprob_mlp: float
    logprob_embed: float
    sampler_gathers_model: bool
    kv_sum: bool


# TPU: the TPU compiler (libtpu, v5p:4x4x2) on Gemma-2-27B with the v5p-64 config (data 1, fsdp 16, tensor 2).
TPU = Backend("tpu", train_mlp=28.4, embed_lm=4, embed_rm=4, logits=2, weight_casts=2, logprob_mlp=1.6,
              logprob_embed=1, sampler_gathers_model=False, kv_sum=False)
# CPU: XLA:CPU on 8 fake devices, a scaled-down Gemma-2 (tests/test_parallel_plan.py), float32.
CPU = Backend("cpu", train_mlp=21.7, embed_lm=4, embed_rm=4, logits=0, weight_casts=2, logprob_mlp=1.6,
              logprob_embed=1, sampler_gathers_model=False, kv_sum=True)
LAYOUTS = ("pinned",)  # plan.py keeps a per-layout total; with activations pinned XLA has one


def _split(n: int, t: int) -> float:
    """A dim over "tensor": split when it divides (rules.activation_spec), else whole."""
    return n / t if n % t == 0 else float(n)


def _full_attention(t: int, keys: int) -> bool:
    """Whether models/attention.py's "auto" takes the full path (scores materialised) for t queries."""
    return t < FULL_BELOW_T or t * keys <= default_block() ** 2


def _scores(m: ModelConfig, mesh: MeshShape, rows: int, t: int, keys: int, buffers: int) -> float:
    """f32 attention scores [rows, H / tensor, t, keys] on the full path; the blockwise path holds blocks only."""
    if not _full_attention(t, keys):
        keys = t = min(default_block(), t)
        keys = min(default_block(), keys)
    return buffers * rows * _split(m.num_heads, mesh.tensor) * t * keys * F32


def sampler_layout(rows: int, shards: int) -> tuple[int, int]:
    """(distinct prompts U, decode rows R) per device of one sampler call of `rows` rows, as sampling.layout.plan_call
    lays them out: every trajectory call samples one row per prompt (num_samples=1, responses shuffled per row),
    slots padded to a power of two and then to a multiple of the shards, U bucketed per shard."""
    q_pad = bucket(rows, minimum=1)
    q_pad = -(-q_pad // shards) * shards
    q = q_pad // shards
    return bucket(q, minimum=1), q


def block_weight_bytes(m: ModelConfig, b: int, t: int) -> float:
    """One decoder block's matrices in itemsize b, split over tensor where the rules split them."""
    d, f, dh = m.hidden_size, m.intermediate_size, m.head_dim
    return (d * (m.num_heads + 2 * m.num_kv_heads) * dh + m.num_heads * dh * d) * b / t + 3 * d * f * b / t


def _embed(m: ModelConfig, mesh: MeshShape, b: int) -> float:
    return m.vocab_size * m.hidden_size * b / (mesh.tensor if m.vocab_size % mesh.tensor == 0 else 1)


def sampler_program(m: ModelConfig, mesh: MeshShape, *, rows: int, prompt_len: int, new_tokens: int,
                    b: int, backend: Backend = TPU) -> dict[str, int]:
    """Per-device bytes one sampler call adds to its weight arguments (b = compute/KV itemsize).

    kv_cache     k and v of every layer: the distinct prompts' prefill cache [U, K, P, Dh] and the prefix taken
                 from it for the prompt slots, then that prefix and the rows' own slots [R, K, N, Dh].
    gathered     the embedding for the LM head (and every block's weights where `backend` hoists their gathers).
    activations  the larger of one prefill chunk (C = 512 columns) and one decode step: MLP gate/up products,
                 attention scores (full path) of the device's rows, f32 logits.
    io           prompts, masks, row keys in; tokens and log-probs out.
    """
    u, r = sampler_layout(rows, mesh.row_shards)
    p, n = bucket(prompt_len), bucket(new_tokens)
    c = min(PREFILL_CHUNK, p)
    t = mesh.tensor
    ffn, vocab = _split(m.intermediate_size, t), _split(m.vocab_size, t)
    kv_row = 2 * m.num_layers * _split(m.num_kv_heads, t) * m.head_dim * b  # one slot of one row, k and v
    kv = kv_row * ((2 * u * p + r * n) if backend.kv_sum else max(2 * u * p, u * p + r * n))
    gathered = _embed(m, mesh, b) + (m.num_layers * block_weight_bytes(m, b, t) if backend.sampler_gathers_model else 0)
    prefill = 2 * u * c * ffn * b + _scores(m, mesh, u, c, p, 2)
    decode = 2 * r * ffn * b + _scores(m, mesh, r, 1, p + n, 2) + 3 * r * vocab * F32
    io = u * p * (4 + 1) + r * n * (4 + 4) + r * 8
    return {"kv_cache": int(kv), "gathered": int(gathered), "activations": int(max(prefill, decode)), "io": int(io)}


def _logits(m: ModelConfig, mesh: MeshShape, rows_dev: int, seq: int, buffers: float) -> float:
    """f32 logits of one `LOSS_CHUNK` of positions, the device's rows, vocabulary over tensor."""
    return buffers * rows_dev * min(LOSS_CHUNK, seq) * _split(m.vocab_size, mesh.tensor) * F32


def logprob_program(m: ModelConfig, mesh: MeshShape, *, rows: int, block_rows: int | None, seq: int,
                    b: int, backend: Backend = TPU) -> dict[str, int]:
    """Per-device bytes of LogprobFn (train/steps.py) on [rows, seq] beyond its weight arguments: one block of
    `block_rows` rows at a time (lax.map), forward only."""
    block = rows if block_rows is None or block_rows >= rows else block_rows
    rows_dev = -(-block // mesh.row_shards)
    mlp = rows_dev * seq * _split(m.intermediate_size, mesh.tensor) * b
    act = backend.logprob_mlp * mlp + _scores(m, mesh, rows_dev, seq, seq, 2) + _logits(m, mesh, rows_dev, seq, 1)
    io = rows * seq * (4 + 1 + 4) // mesh.row_shards  # ids (int32), mask (bool) in; log-probs (f32) out
    return {"gathered": int(backend.logprob_embed * _embed(m, mesh, b)), "activations": int(act), "io": int(io)}


def train_program(m: ModelConfig, mesh: MeshShape, *, rows: int, seq: int, microbatches: int, b: int,
                  grad_bytes: int, cast_bytes: int, lm_logits: bool = True, remat: str | bool = "full",
                  batch_fields: int = 3, backend: Backend = TPU) -> dict[str, int]:
    """Per-device bytes of TrainStep (train/steps.py) beyond its state arguments.

    grads        float32 gradients (exact size from the rules, `grad_bytes`); with micro-batches the scan's
                 accumulator and one micro-batch's gradients are both live.
    gathered     the embedding gathered whole over fsdp (`backend` copies) and compute-dtype copies of the weight
                 shards (`cast_bytes` each: the params in the compute dtype on this mesh).
    activations  every block's input [rows, T, D] (what remat "full" keeps; "save_dots" adds the weight matmuls'
                 outputs), the block in flight (`backend.train_mlp` MLP-sized products, scores on the full
                 attention path) and the loss's f32 logits of one chunk (the scalar RM has none). Without remat
                 every block keeps its forward buffers.
    batch        the [rows, T] fields (`batch_fields` of them, the attention mask among them) and their
                 micro-batch split.
    """
    rows_dev = -(-(rows // microbatches) // mesh.row_shards)
    t = mesh.tensor
    mlp = rows_dev * seq * _split(m.intermediate_size, t) * b  # one MLP product
    attn = _scores(m, mesh, rows_dev, seq, seq, 3)  # scores, probabilities and their gradient
    saved = m.num_layers * rows_dev * seq * m.hidden_size * b
    remat = {True: "full", False: "none"}.get(remat, remat)
    act = backend.train_mlp * mlp + attn
    if remat == "none":
        act += m.num_layers * (3 * mlp + attn)
    else:
        act += saved
    if remat == "save_dots":  # q/k/v (heads over tensor), o and down ([T, D]), gate and up (the MLP products)
        qkv = (m.num_heads + 2 * m.num_kv_heads) * m.head_dim
        act += m.num_layers * (rows_dev * seq * (_split(qkv, t) + 2 * m.hidden_size) * b + 2 * mlp)
    if lm_logits:
        act += _logits(m, mesh, rows_dev, seq, backend.logits)
    gathered = (backend.embed_lm if lm_logits else backend.embed_rm) * _embed(m, mesh, b)
    gathered += backend.weight_casts * cast_bytes
    grads = grad_bytes * (2 if microbatches > 1 else 1)
    batch = 2 * (4 * (batch_fields - 1) + 1) * rows * seq // mesh.row_shards  # the bool mask 1 byte, the rest 4
    return {"grads": int(grads), "gathered": int(gathered), "activations": int(act), "batch": int(batch)}


__all__ = ["Backend", "CPU", "TPU", "LAYOUTS", "block_weight_bytes", "MeshShape", "sampler_layout",
           "sampler_program", "logprob_program", "train_program", "LOSS_CHUNK"]
