"""What `spct rft|grpo|metarm` share: config loading, runtime setup, checkpoints in and out, data, and exit codes.

Each stage CLI is `main(argv) = run_cli(prog, argv, run)` where `run(config, mesh) -> summary` does the stage's
work; `run_cli` loads `--config FILE` with `--config.key=value` overrides (typed by the field they replace) and
re-validates it, joins the multi-process runtime (a no-op on one process), builds the (data, fsdp, tensor) mesh,
and prints the stage's JSON summary. Exit codes: 0 done (also after a SIGTERM that saved a checkpoint), 2 a bad
config or command line (the message names the field), 1 an input that cannot be read (checkpoint, data).

Outputs live under `run_dir/<stage>/`: `train/` (the shared loop's checkpoints, metrics.jsonl, TensorBoard), the
stage's results, `config.json` and `summary.json`. A rerun with the same run_dir resumes from `train/`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import ml_dtypes
import numpy as np

from spct_jax.config_files import load_config, split_overrides
from spct_jax.train.errors import StageError

log = logging.getLogger("spct.train")

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}  # model.param_dtype -> load / export dtype


# -- config -------------------------------------------------------------------------------------------------------
def load_run_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """get_config() of the file at `path`, overridden, then checked by the file's own `validate` when it has one,
    and its run_dir checked to be a folder (or nothing yet): a file there would otherwise fail deep inside the
    first write, as a traceback, after the runtime and the model are set up."""
    import os

    from spct_jax import paths

    config = load_config(path, overrides)
    run_dir = config.run_dir
    if run_dir and not paths.is_remote(str(run_dir)):
        existing = os.path.abspath(run_dir)
        while not os.path.exists(existing):  # a missing run_dir is made; the nearest existing folder must be one
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise ValueError(f"config field 'run_dir': {existing} is a file, not a folder; give a folder (made if "
                             "missing)")
    return config


def stage_dir(config: ml_collections.ConfigDict, stage: str):
    """run_dir/<stage> as an `epath.Path`: a local or gcsfuse path, or `gs://bucket/run/<stage>` (spct_jax.paths)."""
    from spct_jax import paths

    return paths.Path(config.run_dir) / stage


def optimizer_config(config: ml_collections.ConfigDict, stage: str):
    from spct_jax.train.config import OptimizerConfig

    o, s = config.optimizer, config[stage]
    try:
        return OptimizerConfig(learning_rate=s.learning_rate, warmup_steps=o.warmup_steps, schedule=o.schedule,
                               total_steps=s.steps, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
                               clip_norm=o.clip_norm if o.clip_norm > 0 else None)
    except ValueError as e:  # e.g. a cosine warmup as long as {stage}.steps
        raise StageError(f"config fields 'optimizer' / '{stage}.steps': {e}") from None


def stage_run(config: ml_collections.ConfigDict, stage: str, mesh, workdir: Path):
    """The shared loop's settings for `stage` (checkpoint.every / keep / log_every, model.remat); with a mesh, the
    stage drivers shard params by the partition rules (spct_jax.parallel.rules) through `StageRun.shardings` and
    feed each process's own rows of every batch (`StageRun.feed`)."""
    from spct_jax.train.stages import StageRun

    s = config[stage]
    check_batch(s.batch_size, s.num_microbatches, mesh, f"{stage}.batch_size")
    c = config.checkpoint
    return StageRun(workdir=str(workdir), steps=s.steps, batch_size=s.batch_size,
                    optimizer=optimizer_config(config, stage), seed=config.seed, checkpoint_every=c.every,
                    progress_bar=sys.stderr.isatty(), num_microbatches=s.num_microbatches, mesh=mesh,
                    keep_checkpoints=c.keep, log_every=c.log_every, remat=config.model.remat)


def check_batch(rows: int, microbatches: int, mesh, field: str) -> None:
    # validate() checked the slice the config names; this checks the devices the process actually has.
    from spct_jax.parallel.mesh import batch_shards

    ways = microbatches * batch_shards(mesh)
    if rows % ways:
        raise StageError(f"config field {field!r}: {rows} rows do not split into {microbatches} micro-batches over "
                         f"{batch_shards(mesh)} batch shards of mesh {dict(mesh.shape)}")


# -- runtime ------------------------------------------------------------------------------------------------------
def setup_runtime(config: ml_collections.ConfigDict):
    """Join the multi-process run (before any other JAX call), point JAX's persistent compilation cache at
    `runtime.compilation_cache` (default run_dir/compilation_cache: a restarted pod loads its programs instead of
    compiling them; spct_jax/parallel/compilation.py), start counting compiles per phase, then build the mesh from
    config.mesh."""
    from spct_jax.parallel.compilation import enable_compilation_cache
    from spct_jax.parallel.mesh import MeshConfig, MeshError, initialize_distributed, make_mesh

    setup = initialize_distributed()
    rt = config.runtime
    enable_compilation_cache(rt.compilation_cache, run_dir=config.run_dir, min_compile_secs=rt.compilation_cache_min_secs)
    try:
        mesh = make_mesh(MeshConfig.from_mapping(config.mesh))
    except MeshError as e:  # validate() checked the named slice; this is the devices actually present
        raise StageError(f"config field 'mesh': {e}") from None
    log.info("runtime: %s (%s); mesh %s", setup.mode, setup.reason, dict(mesh.shape))
    return mesh


def is_main_process() -> bool:
    import jax

    return jax.process_index() == 0  # every host computes the same outputs; one writes them


# -- checkpoints --------------------------------------------------------------------------------------------------
def load_checkpoint(spec: str, field: str, model: ml_collections.ConfigDict, mesh=None):
    """(model, tokenizer) from a config's checkpoint field, with `model.param_dtype` params and
    `model.compute_dtype` compute (`model.remat` belongs to the train step: `stage_run`). The training CLIs need a
    real tokenizer, so "" is an error. With a mesh, each process reads only the rows its own devices hold and every
    tensor lands in its partition-rule sharding (`load_model(mesh=)`): no host reads or holds the whole model, and
    the train step's placement is a no-op."""
    from spct_jax.models.registry import NAMED, load_model
    from spct_jax.parallel.rules import ShardingRuleError

    if not spec:
        raise StageError(f"config field {field!r} is empty: this stage needs a checkpoint for its weights and "
                         f"tokenizer (an HF folder, a .gguf file, or one of {NAMED})")
    try:
        return load_model(spec, dtype=DTYPES[model.param_dtype], compute_dtype=DTYPES[model.compute_dtype],
                          mesh=mesh)
    except ShardingRuleError as e:  # the model's dims do not split over the mesh the config asks for
        raise StageError(f"config field 'mesh' {dict(mesh.shape)} for {field!r} = {spec!r}: {e}") from None
    except (OSError, ValueError) as e:  # missing folder, bad config.json, missing tensor, unreadable tokenizer
        raise StageError(f"config field {field!r} = {spec!r}: {e}", exit_code=1) from None


def save_model(model, tokenizer, source: str, dest, param_dtype: str) -> dict[str, Any]:
    """An HF folder (weights in the param dtype) plus tokenizer files: `--model dest` works in score; a `ScalarRM`
    becomes a sequence-classification folder. Every process calls it. A model sharded over processes is written
    without a gather (`weights.write_checkpoint`: one row block at a time reaches process 0, which writes); the
    folder appears whole (temp name, then rename) and every process returns after a barrier."""
    import jax
    from jax.experimental import multihost_utils

    from spct_jax.models.scalar_head import ScalarRM, save_scalar_rm
    from spct_jax.models.weights import save_pretrained, spans_processes
    from spct_jax.tokenizers.base import TokenizerError
    from spct_jax.tokenizers.save import tokenizer_writer

    tokenizer_files = tokenizer_writer(tokenizer, source)
    save = save_scalar_rm if isinstance(model, ScalarRM) else save_pretrained
    try:
        if spans_processes(model) or jax.process_count() == 1:
            save(model, dest, dtype=DTYPES[param_dtype], extra_files=tokenizer_files)
        else:  # every process holds a whole copy: one writes, the others wait for it and hear how it went
            error = None
            if is_main_process():
                try:
                    save(model, dest, dtype=DTYPES[param_dtype], extra_files=tokenizer_files)
                except Exception as e:  # noqa: BLE001 - re-raised below on every process
                    error = e
            if np.any(multihost_utils.process_allgather(np.asarray(error is not None, np.int32))):
                raise error or OSError(f"exporting {dest} failed on process 0 (see its log)")
    except TokenizerError as e:  # a tokenizer that cannot be written next to the model: an input of the run
        raise StageError(str(e), exit_code=1) from None
    return {"path": str(dest)}


# -- data ---------------------------------------------------------------------------------------------------------
def read_items(path: str, field: str) -> list:
    """Every preference item under a file or folder (any format `spct data check` knows)."""
    from spct_jax.data.formats import read_folder_with_report

    if not path:
        raise StageError(f"config field {field!r} is empty: give a preference file or folder")
    try:
        items, _ = read_folder_with_report(path)
    except (OSError, ValueError) as e:
        raise StageError(f"config field {field!r} = {path!r}: {e}", exit_code=1) from None
    if not items:
        raise StageError(f"config field {field!r} = {path!r}: no preference items found", exit_code=1)
    return items


def usable_items(items: Sequence, grm, rollout, *, max_tokens: int, hinted: bool = False
                 ) -> tuple[list, dict[str, int]]:
    """Items Eq. 10 can judge whose prompt (+ max_new_tokens) fits `max_tokens`; -> (kept, {reason: count}).

    No ground truth, or no unique best among >= 2 responses (Eq. 10 needs one), or too long: dropped and counted.
    """
    kept, dropped = [], {"no_ground_truth": 0, "no_unique_best": 0, "too_long": 0}
    for item in items:
        if item.rewards is None and item.best is None:
            dropped["no_ground_truth"] += 1
            continue
        if item.num_responses > 1 and item.best is None:
            dropped["no_unique_best"] += 1
            continue
        identity = tuple(range(item.num_responses))
        template = rollout.template_for(item.num_responses)
        length = len(grm.prompt_ids(item, identity, template=template))
        if hinted and item.num_responses > 1:  # the hint sentence makes the hinted prompt the longest one
            length = max(length, len(grm.prompt_ids(item, identity, template=template, hint_best=item.best)))
        if length + rollout.max_new_tokens > max_tokens:
            dropped["too_long"] += 1
            continue
        kept.append(item)
    return kept, dropped


def last_metrics(workdir: Path) -> dict[str, float]:
    """The final logged training metrics (metrics.jsonl of the shared loop), {} when none."""
    from spct_jax.train.metrics import read_jsonl_metrics

    path = workdir / "metrics.jsonl"
    records = read_jsonl_metrics(path) if path.is_file() else {}
    return records[max(records)] if records else {}


def write_json(path, obj: Any) -> None:
    """Process 0 writes `obj` as strict JSON, atomically (a local path or a gs:// one: spct_jax.paths)."""
    from spct_jax import paths

    if is_main_process():
        paths.makedirs(paths.as_path(path).parent)
        paths.write_text_atomic(path, to_json(obj))


def to_json(obj: Any) -> str:
    """Strict JSON: NaN / inf (an undefined AUC) become null, numpy scalars plain numbers."""
    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if dataclasses.is_dataclass(x):
            return clean(dataclasses.asdict(x))
        if isinstance(x, (float, np.floating)):
            return float(x) if np.isfinite(x) else None
        if isinstance(x, np.integer):
            return int(x)
        return x if isinstance(x, (str, int, bool, type(None))) else str(x)

    return json.dumps(clean(obj), indent=1, allow_nan=False)


# -- the entry point ----------------------------------------------------------------------------------------------
def run_cli(prog: str, argv: Sequence[str], description: str,
            run: Callable[[ml_collections.ConfigDict, Any], dict[str, Any]]) -> int:
    overrides, rest = split_overrides(list(argv))
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config file, e.g. configs/gemma2_27b_v5p.py; "
                        "override any field with --config.key=value")
    args = parser.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("spct").setLevel(logging.INFO)  # absl (via orbax) may have configured the root at WARNING
    try:
        config = load_run_config(args.config, overrides)
    except ValueError as e:  # ConfigFileError, the config's own validation error, MeshError: all name the field
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    from spct_jax.parallel.compilation import compile_counts, compile_delta, log_compile_counts, preserved_cache_settings

    before = compile_counts()
    with preserved_cache_settings():  # run in-process (tests), the command leaves JAX's settings as it found them
        try:
            mesh = setup_runtime(config)
            summary = run(config, mesh)
        except StageError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return e.exit_code
        finally:
            log_compile_counts(compile_delta(before), logger=log)  # per phase: sampling, sft, grpo_update, ...
    print(to_json(summary))
    return 0
