"""Per-device bytes of the programs a run's phases execute: the sampler call, the train step, the log-prob pass.

Arguments that are model-sized (weights, Adam state) are counted exactly by plan.py from the partition rules;
this module counts what a program adds on top of its arguments: KV cache, activations, gradients, batches.

What XLA does with these programs (read from the compiled HLO and its buffer assignment, on 8 fake CPU devices
for scaled-down Gemma-2 models and with the TPU compiler for Gemma-2-27B on a v5p-64 topology, 2 layers):

  * Weights stay FSDP-sharded inside every program: there is no per-layer all-gather of the blocks' matrices,
    and so nothing to hoist out of the decode loop. The one weight XLA gathers whole is the embedding, for the
    LM head (the sampler's logits): V x D / tensor in the compute dtype (27B: 2.36 GB).
  * Instead, a matmul against a weight split over "fsdp" on its contracting dim D runs as partial sums: the
    input is resharded to D, every device multiplies ALL rows of its fsdp group by its slice of the weight and
    the [rows, T, F] products are all-reduced. So the dense layers' activations (MLP above all) hold the rows of
    the whole fsdp group on every device: rows / data, not rows / (data x fsdp). Attention (scores, softmax) is
    per row and stays on each device's own rows. For 27B on v5p-64 one prefill chunk of the sampler's 128 rows
    holds bf16 [128, 512, 36864] MLP products (4.8 GB each) on every chip; an SFT micro-batch of 32 rows
    [32, 4096, 36864] (9.7 GB each).
  * The log-prob pass and the loss build fp32 logits `chunk` (512) positions at a time.

No sharding constraint inside the blocks pins these layouts (the model code has none), so XLA may pick another
one for another shape: the sampler of 27B with 4 layers compiled to 4.1 GB of temporaries where 2 layers took
12.9 GB. The formulas below are those of the layout above, the one every compiled program at the configs'
proportions showed; tests/test_parallel_plan.py checks them against the compiled programs.
"""
from __future__ import annotations

import dataclasses

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


def _split(n: int, t: int) -> float:
    """A dim over "tensor": split when it divides (rules.activation_spec), else whole."""
    return n / t if n % t == 0 else float(n)


def sampler_layout(rows: int, shards: int) -> tuple[int, int]:
    """(distinct prompts U, decode rows R) per device of one sampler call of `rows` rows, as sampling._plan_call
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


def sampler_program(m: ModelConfig, mesh: MeshShape, *, rows: int, prompt_len: int, new_tokens: int,
                    b: int, layout: str) -> dict[str, int]:
    """Per-device bytes one sampler call adds to its weight arguments (b = compute/KV itemsize), in `layout`
    (module docstring: "gathered" or "partial_sums").

    kv_cache     the distinct prompts' prefill cache [U, K, P, Dh] and the prefix taken from it for the prompt
                 slots (both live: KVCache.take then shared_by), plus the rows' own slots [R, K, N, Dh]; k and v,
                 every layer.
    gathered     weights gathered over fsdp: "gathered" holds the whole model (the decode loop's all-gathers are
                 loop-invariant and XLA hoists them), "partial_sums" only the embedding (the LM head).
    activations  the larger of one prefill chunk (C = 512 columns) and one decode step: MLP gate/up products,
                 fp32 attention scores and softmax of the device's rows, fp32 logits.
    io           prompts, masks, row keys in; tokens and log-probs out.
    """
    u, r = sampler_layout(rows, mesh.row_shards)
    p, n = bucket(prompt_len), bucket(new_tokens)
    c = min(PREFILL_CHUNK, p)
    t = mesh.tensor
    kv_heads, heads = _split(m.num_kv_heads, t), _split(m.num_heads, t)
    ffn, vocab = _split(m.intermediate_size, t), _split(m.vocab_size, t)
    embed = m.vocab_size * m.hidden_size * b / (t if m.vocab_size % t == 0 else 1)
    group = mesh.fsdp if layout == "partial_sums" else 1  # rows of the fsdp group the dense layers hold
    kv = 2 * m.num_layers * kv_heads * m.head_dim * b * (2 * u * p + r * n)
    gathered = embed + (m.num_layers * block_weight_bytes(m, b, t) if layout == "gathered" else 0)
    prefill = 2 * u * group * c * ffn * b + 2 * u * heads * c * p * F32
    decode = 2 * r * group * ffn * b + 2 * r * heads * (p + n) * F32 + 3 * r * vocab * F32
    io = u * p * (4 + 1) + r * n * (4 + 4) + r * 8
    return {"kv_cache": int(kv), "gathered": int(gathered), "activations": int(max(prefill, decode)),
            "io": int(io)}


def _block_forward(m: ModelConfig, mesh: MeshShape, rows_dev: int, seq: int, b: int, *, group: int,
                   mlp_buffers: int) -> float:
    """Transient bytes of one decoder block over `rows_dev` rows per device: MLP products for `group` x those
    rows (the fsdp group's in "partial_sums") and fp32 attention scores [rows, H, T, T] with their softmax."""
    t = mesh.tensor
    return (mlp_buffers * rows_dev * group * seq * _split(m.intermediate_size, t) * b
            + 2 * rows_dev * _split(m.num_heads, t) * seq * seq * F32)


def _logits(m: ModelConfig, mesh: MeshShape, rows_dev: int, seq: int, *, group: int, buffers: int) -> float:
    """fp32 logits of one `LOSS_CHUNK` of positions (the LM head is a partial-sum matmul too)."""
    return buffers * rows_dev * group * min(LOSS_CHUNK, seq) * _split(m.vocab_size, mesh.tensor) * F32


def _gathered(m: ModelConfig, mesh: MeshShape, b: int, layout: str, blocks: float) -> int:
    embed = m.vocab_size * m.hidden_size * b / (mesh.tensor if m.vocab_size % mesh.tensor == 0 else 1)
    return int(embed + (blocks * block_weight_bytes(m, b, mesh.tensor) if layout == "gathered" else 0))


def logprob_program(m: ModelConfig, mesh: MeshShape, *, rows: int, block_rows: int | None, seq: int,
                    b: int, layout: str) -> dict[str, int]:
    """Per-device bytes of LogprobFn (train/steps.py) on [rows, seq] beyond its weight arguments: one block of
    `block_rows` rows at a time (lax.map), forward only."""
    block = rows if block_rows is None or block_rows >= rows else block_rows
    rows_dev = -(-block // mesh.row_shards)
    group = mesh.fsdp if layout == "partial_sums" else 1
    act = (_block_forward(m, mesh, rows_dev, seq, b, group=group, mlp_buffers=2)
           + _logits(m, mesh, rows_dev, seq, group=group, buffers=1))
    io = rows * seq * (4 + 4 + 4) // mesh.row_shards  # ids, mask in; log-probs out
    return {"gathered": _gathered(m, mesh, b, layout, 2), "activations": int(act), "io": int(io)}


@dataclasses.dataclass(frozen=True)
class Backend:
    """How many MLP-sized products [fsdp group's rows, T, F] XLA keeps in a train step's backward, measured from
    the compiled programs of one backend (the per-layer count from two depths, L and 2L, of the same program).

    per_layer   products each block keeps until its backward, although the block is rematerialised: on CPU the
                step's temporaries grow by ~3 of them per layer with the LM loss and ~7 with the scalar RM's BCE.
    block       products of the block being recomputed, on top.
    """

    name: str
    per_layer_lm: float
    per_layer_rm: float
    block_lm: float
    block_rm: float


# CPU: tests/test_parallel_plan.py (8 fake devices, scaled-down Gemma-2, L = 2 and 4).
CPU = Backend("cpu", per_layer_lm=3, per_layer_rm=7, block_lm=0, block_rm=1)
# TPU: the TPU compiler (libtpu, v5p 4x4x2 topology) on Gemma-2-27B's SFT step, L = 2 and 4 (docs/training-on-tpu.md).
TPU = Backend("tpu", per_layer_lm=0, per_layer_rm=0, block_lm=2, block_rm=2)


def train_program(m: ModelConfig, mesh: MeshShape, *, rows: int, seq: int, microbatches: int, b: int,
                  grad_bytes: int, layout: str, lm_logits: bool = True, remat: str | bool = "full",
                  batch_fields: int = 3, backend: Backend = TPU) -> dict[str, int]:
    """Per-device bytes of TrainStep (train/steps.py) beyond its state arguments.

    grads        float32 gradients (exact size from the rules, `grad_bytes`); with micro-batches the scan's
                 accumulator and one micro-batch's gradients are both live.
    activations  every block's input [rows, T, D] (what remat "full" keeps), the MLP products XLA keeps per
                 layer and for the block in flight (`backend`), fp32 attention scores of one block, and the
                 loss's fp32 logits of one chunk (the scalar RM has none). "save_dots" also keeps every layer's
                 weight-matmul outputs (q/k/v, o, gate/up, down). Without remat every block keeps its forward
                 buffers.
    batch        the [rows, T] fields and their micro-batch split.
    """
    rows_dev = -(-(rows // microbatches) // mesh.row_shards)
    group = mesh.fsdp if layout == "partial_sums" else 1
    t = mesh.tensor
    mlp = rows_dev * group * seq * _split(m.intermediate_size, t) * b  # one MLP product
    attn = 2 * rows_dev * _split(m.num_heads, t) * seq * seq * F32
    saved = m.num_layers * rows_dev * seq * m.hidden_size * b
    per_layer = backend.per_layer_lm if lm_logits else backend.per_layer_rm
    block = backend.block_lm if lm_logits else backend.block_rm
    remat = {True: "full", False: "none"}.get(remat, remat)
    if remat == "none":
        act = m.num_layers * (3 * mlp + attn)
    else:
        act = saved + m.num_layers * per_layer * mlp + block * mlp + attn
    if remat == "save_dots":  # q/k/v (heads over tensor), o and down ([T, D]), gate and up (the MLP products)
        qkv = (m.num_heads + 2 * m.num_kv_heads) * m.head_dim
        dots = rows_dev * seq * (_split(qkv, t) + 2 * m.hidden_size) * b + 2 * mlp
        act += m.num_layers * dots
    if lm_logits:
        act += _logits(m, mesh, rows_dev, seq, group=group, buffers=1)
    grads = grad_bytes * (2 if microbatches > 1 else 1)
    batch = 2 * batch_fields * rows * seq * 4 // mesh.row_shards
    return {"grads": int(grads), "gathered": _gathered(m, mesh, b, layout, 2), "activations": int(act),
            "batch": int(batch)}


LAYOUTS = ("gathered", "partial_sums")


__all__ = ["Backend", "CPU", "TPU", "LAYOUTS", "block_weight_bytes", "MeshShape", "sampler_layout", "sampler_program", "logprob_program", "train_program", "LOSS_CHUNK"]
