"""`spct export STAGE_DIR`: a training stage's orbax checkpoint -> an HF folder, offline.

    spct export run_dir/rft                       latest step -> run_dir/rft/model
    spct export gs://bucket/run/grpo --step 200 --out gs://bucket/exports/grpo-200 --dtype bfloat16

A stage dir is what `spct rft|grpo|metarm` write: `config.json` (the run config) and `train/checkpoints/` (orbax
steps of the whole TrainState). Only the params are read, one tensor at a time (`checkpoint.ParamsReader`), so the
optimizer state is never loaded and no host holds more than one tensor; a training job need not export at its end.
The architecture and tokenizer come from the checkpoint the stage started from (`model.init_checkpoint`, or for
metarm `meta_rm.init_checkpoint` when set; `--model` overrides), and a checkpoint whose params sit under
`backbone/` is the meta RM, written as a sequence-classification folder. The export dtype defaults to the run's
`model.param_dtype`.

On several processes (`launch/run.sh export ...` on a pod slice, or SPCT_* variables) each tensor is restored
sharded over all devices by the partition rules and written by process 0 without a gather (weights.write_checkpoint).
The folder appears whole or not at all. Exit codes: 0 written, 1 an input that cannot be read, 2 a bad command line.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from spct_jax import paths

log = logging.getLogger("spct.export")
DTYPE_NAMES = ("float32", "bfloat16")


def _run_config(stage: paths.Path) -> dict[str, Any]:
    path = stage / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _param_shapes(cfg, kind: str) -> dict[tuple[Any, ...], tuple[int, ...]]:
    """Every param path of the model `cfg` describes and its shape (nnx.eval_shape: nothing allocated)."""
    from flax import nnx

    from spct_jax.models.scalar_head import ScalarRM
    from spct_jax.models.transformer import Decoder

    build = ScalarRM if kind == "scalar_rm" else Decoder
    abstract = nnx.eval_shape(lambda: build(cfg, rngs=nnx.Rngs(0)))
    return {path: tuple(var.shape) for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}


def export_checkpoint(stage_dir: paths.PathLike, *, out: paths.PathLike | None = None, step: int | None = None,
                      model: str | None = None, dtype: str | None = None,
                      max_shard_bytes: int = 5 * 1024**3) -> dict[str, Any]:
    """Write step `step` (default: latest) of `stage_dir`'s checkpoint as an HF folder at `out` (default
    stage_dir/model). Every process calls it. -> a summary."""
    import jax
    import ml_dtypes
    import numpy as np

    from spct_jax.models.registry import describe_model
    from spct_jax.models.scalar_head import scalar_rm_hf_config, scalar_rm_mapping
    from spct_jax.models.weights import (WeightsError, lm_hf_config, lm_mapping, rule_shardings, tensor_blocks,
                                         tensor_shape, write_checkpoint)
    from spct_jax.tokenizers.save import tokenizer_writer
    from spct_jax.train.checkpoint import ParamsReader

    stage = paths.as_path(stage_dir)
    run = _run_config(stage)
    run_model = run.get("model", {})
    source = model or (run.get("meta_rm", {}).get("init_checkpoint") if stage.name == "metarm" else "") \
        or run_model.get("init_checkpoint", "")
    if not source:
        raise ValueError(f"{stage}: no config.json naming model.init_checkpoint; give --model (the checkpoint the "
                         "stage started from: its architecture and tokenizer)")
    dtype = dtype or run_model.get("param_dtype", "float32")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype {dtype!r}: expected one of {DTYPE_NAMES}")
    np_dtype = np.dtype(np.float32 if dtype == "float32" else ml_dtypes.bfloat16)
    out = paths.as_path(out) if out is not None else stage / "model"

    with ParamsReader(stage / "train" / "checkpoints", step) as reader:
        saved = reader.shapes()
        cfg, tokenizer = describe_model(source)
        if any(p[0] == "backbone" for p in saved):  # the meta RM (ScalarRM): backbone + score head
            if cfg.pad_token_id is None:  # as metarm_cli builds it: transformers needs a pad id to pick the token
                cfg = cfg.replace(pad_token_id=tokenizer.pad_id)
            mapping, hf_config, kind = scalar_rm_mapping(cfg), scalar_rm_hf_config(cfg, np_dtype), "scalar_rm"
        else:
            mapping, hf_config, kind = lm_mapping(cfg), lm_hf_config(cfg, np_dtype), "lm"
        wanted = {m.path for m in mapping}
        extra, missing = sorted(map(str, set(saved) - wanted)), sorted(map(str, wanted - set(saved)))
        if extra or missing:
            raise WeightsError(f"{reader.directory} step {reader.step} does not fit {source!r}: "
                               + (f"missing param {missing[0]}" if missing else f"unexpected param {extra[0]}")
                               + f" ({len(missing)} missing, {len(extra)} unexpected)")
        # The same paths can hold other shapes (the blocks are stacked: another depth is another [L, ...]).
        want = _param_shapes(cfg, kind)
        wrong = sorted(str(p) for p in wanted if tuple(saved[p][0]) != want[p])
        if wrong:
            path = next(p for p in wanted if str(p) == wrong[0])
            raise WeightsError(f"{reader.directory} step {reader.step} does not fit {source!r}: param {wrong[0]} has "
                               f"shape {tuple(saved[path][0])}, the model needs {want[path]} ({len(wrong)} differ)")
        multi = jax.process_count() > 1
        sharding = None
        if multi:  # each tensor restored sharded by the rules: every host reads its shards only
            from spct_jax.parallel.mesh import MeshConfig, make_mesh

            sharding = rule_shardings(make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1)))
        # A stacked param ([L, ...], the decoder's blocks) holds one tensor per layer: its layers are written one
        # after the other, so that it is read once and dropped after its last layer (the file order is free).
        first = {}
        for i, m in enumerate(mapping):
            first.setdefault(m.path, i)
        order = sorted(mapping, key=lambda m: (first[m.path], m.layer or 0))
        left = {p: sum(m.path == p for m in mapping) for p in first}  # tensors still to write per param
        held: dict = {}  # path -> the param, while its layers are being written

        def produce(m):
            shape, _ = saved[m.path]
            arr = held.get(m.path)
            if arr is None:
                arr = reader.read(m.path, None if sharding is None else sharding(m.path, shape))
            left[m.path] -= 1
            if left[m.path]:
                held[m.path] = arr
            else:
                held.pop(m.path, None)
            return tensor_blocks(arr, m.transpose, np_dtype, layer=m.layer)

        tensors = [(m.hf, tensor_shape(saved[m.path][0], m), np_dtype, lambda m=m: produce(m)) for m in order]
        write_checkpoint(out, hf_config, tensors, max_shard_bytes=max_shard_bytes, collective=multi,
                         extra_files=tokenizer_writer(tokenizer, source))
        step = reader.step
    log.info("exported %s step %d to %s", stage, step, out)
    return {"path": str(out), "step": step, "kind": kind, "dtype": dtype, "source": source,
            "tensors": len(mapping)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="spct export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage_dir", help="run_dir/<stage> (local, gcsfuse or gs://)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--out", default=None, help="output folder (default: STAGE_DIR/model)")
    parser.add_argument("--model", default=None, help="architecture and tokenizer source (default: the run config's)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="weights dtype (default: model.param_dtype)")
    parser.add_argument("--max-shard-gb", type=float, default=5.0, help="safetensors shard size (GB)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    from spct_jax.parallel.mesh import initialize_distributed

    initialize_distributed()  # SPCT_* variables or a TPU pod; a no-op on one process
    try:
        summary = export_checkpoint(args.stage_dir, out=args.out, step=args.step, model=args.model,
                                    dtype=args.dtype, max_shard_bytes=int(args.max_shard_gb * 1024**3))
    except (OSError, ValueError, KeyError) as e:
        print(f"spct export: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


__all__ = ["export_checkpoint", "main"]
