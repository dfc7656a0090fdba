"""`spct rft --config C [--config.key=value ...]`: SPCT stage 1, rejective fine-tuning ([P] §3.2, App. C.1).

1. The GRM is model.init_checkpoint (HF folder, .gguf, tiny-random, smollm2-135m); the items are rft.data (a
   preference file or folder, any format `spct data check` reads). Items Eq. 10 cannot judge (no ground truth, no
   unique best) or whose prompt + max_new_tokens exceeds rft.max_seq_len are dropped and counted.
2. Rejective sampling (spct_jax.train.rft): rft.n_rft trajectories per item, responses shuffled per sample; wrong
   ones rejected, all-correct items dropped as too easy, one hinted sample per item as rft.hinted says ("all" items
   that are not too easy, "unsolved" ones only, or "none"). Sampled in chunks of rft.chunk_items items, each
   written as it is done to run_dir/rft/samples/ (a JSONL shard with every trajectory and the rows it gives, and a
   manifest; train/sample_store.py). A SIGTERM on any host stops every host after the same chunk (exit 0,
   "preempted" in the summary); a rerun resumes at the first unfinished chunk, and refuses a folder sampled from
   other items or with other settings. The shards are then assembled into run_dir/rft/rft_data.jsonl and
   rft_data.jsonl.stats.json (counts summed over chunks), the same rows in the same order however the run was
   chunked or interrupted. A rerun that finds both reuses them (sampling is the expensive half; delete them and
   run_dir/rft/samples to sample again).
3. SFT on the kept trajectories, mixed with rft.general_data when set, with rft.learning_rate / batch_size / steps /
   num_microbatches / max_seq_len, resumable under run_dir/rft/train. With nothing to train on (a random model
   gets nothing right) the SFT is skipped, said so, and the unchanged model is saved.
4. run_dir/rft/model: an HF causal-LM folder with tokenizer files, so `spct score --model run_dir/rft/model` and
   `spct grpo --config.model.init_checkpoint=run_dir/rft/model` work. Tokenizer files are copied from a folder
   checkpoint; tiny-random's byte tokenizer is exported as an equivalent tokenizer.json.

Sampling fields: rft.temperature (ours: the paper gives no sampling temperature for RFT), rft.max_new_tokens,
rft.chunk_items (items per written chunk), rft.hinted ([P] §3.2; docs/paper-choices.md), rft.general_data
("" = none; JSONL of {"messages", "target"} or sharegpt).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import ml_collections

from spct_jax.train.errors import StageError
from spct_jax.train.stage_common import (last_metrics, load_checkpoint, read_items, run_cli, save_model,
                                         stage_dir, stage_run, usable_items, write_json)

log = logging.getLogger("spct.rft")


def rollout_config(config: ml_collections.ConfigDict):
    from spct_jax.grm.trajectories import RolloutConfig

    r = config.rft
    return RolloutConfig(temperature=float(r.temperature), max_new_tokens=int(r.max_new_tokens))


def sampling_fingerprint(config: ml_collections.ConfigDict, rollout) -> dict[str, Any]:
    """What decides the trajectories besides the items (train/sample_store.py): a rerun that differs refuses to
    resume. rft.sample_rows and the mesh are left out: they split the same rows differently."""
    from spct_jax.train.rft import HINT_SALT

    m, r = config.model, config.rft
    return {"stage": "rft", "init_checkpoint": m.init_checkpoint, "param_dtype": m.param_dtype,
            "compute_dtype": m.compute_dtype, "seed": config.seed, "n_rft": r.n_rft, "hinted": r.hinted,
            "hint_salt": HINT_SALT, "rollout": dataclasses.asdict(rollout)}


def sample_dataset(config: ml_collections.ConfigDict, grm, summary: dict[str, Any]) -> list | None:
    """The RFT examples: read back from run_dir/rft when a previous run assembled them, else sampled chunk by chunk
    into run_dir/rft/samples (resuming at the first unfinished chunk) and assembled. None when a SIGTERM stopped
    the sampling (every process, after the same chunk; `summary["preempted"]`): the same command resumes."""
    from spct_jax.train.rft import (RFTConfig, assemble_rft_dataset, chunked_rejective_sampling, read_rft_dataset,
                                    stats_path, summed_stats)
    from spct_jax.train.sample_store import on_main, open_stage_store

    r = config.rft
    out = stage_dir(config, "rft")
    dataset = out / "rft_data.jsonl"
    summary["dataset"] = str(dataset)
    if dataset.is_file() and stats_path(dataset).is_file():
        log.info("reusing %s and its stats (delete them and %s to sample again)", dataset, out / "samples")
        summary["reused_dataset"] = True
        summary["rft_stats"] = json.loads(stats_path(dataset).read_text())
        return read_rft_dataset(dataset)
    rollout = rollout_config(config)
    items, dropped = usable_items(read_items(r.data, "rft.data"), grm, rollout, max_tokens=r.max_seq_len,
                                  hinted=r.hinted != "none")
    summary.update(items=len(items), dropped_items=dropped)
    if not items:
        raise StageError(f"config field 'rft.data' = {r.data!r}: no usable item (dropped: {dropped})", exit_code=1)
    store = open_stage_store(out / "samples", sampling_fingerprint(config, rollout), items, r.chunk_items)
    log.info("rejective sampling: %d items x N_RFT=%d at T=%g, <= %d new tokens, in %d chunks of <= %d items",
             len(items), r.n_rft, rollout.temperature, rollout.max_new_tokens, store.num_chunks, r.chunk_items)
    run = chunked_rejective_sampling(grm, items, RFTConfig(n_rft=r.n_rft, hinted=r.hinted, rollout=rollout,
                                                           sample_rows=r.sample_rows, seed=config.seed), store)
    summary["sampling"] = run.as_dict()
    if run.complete:
        on_main(lambda: assemble_rft_dataset(store, dataset), f"assembling {dataset}")  # then every process reads it
        summary["rft_stats"] = summed_stats(store).as_dict()
        log.info("RFT stats %s", summary["rft_stats"])
    if run.preempted:
        summary["preempted"] = True
        return None
    return read_rft_dataset(dataset)


def sft_records(config: ml_collections.ConfigDict, examples: list) -> list:
    from spct_jax.train.rft import general_instruction_records

    records = [e.sft_record() for e in examples]
    general = config.rft.general_data
    if general:
        try:
            records += general_instruction_records(general)
        except (OSError, ValueError, KeyError) as e:
            raise StageError(f"config field 'rft.general_data' = {general!r}: {e!r}", exit_code=1) from None
    return records


def run(config: ml_collections.ConfigDict, mesh) -> dict[str, Any]:
    from spct_jax.grm.scorer import GenerativeRewardModel
    from spct_jax.grm.trajectories import sampling_copy
    from spct_jax.train.stages import sft

    out = stage_dir(config, "rft")
    write_json(out / "config.json", json.loads(config.to_json()))
    m = config.model
    train = stage_run(config, "rft", mesh, out / "train")  # checks the batch split before hours of sampling
    model, tokenizer = load_checkpoint(m.init_checkpoint, "model.init_checkpoint", m, mesh)
    summary: dict[str, Any] = {"stage": "rft", "init_checkpoint": m.init_checkpoint}
    # Rejective sampling reads a compute-dtype copy of the weights on the mesh (rows split over its batch axes);
    # the copy is dropped when sampling ends, before the SFT trains the param-dtype masters.
    examples = sample_dataset(config, GenerativeRewardModel(sampling_copy(model), tokenizer, mesh=mesh), summary)
    if examples is None:  # SIGTERM during sampling: the finished chunks are on disk; the same command resumes
        write_json(out / "summary.json", summary)
        return summary
    records = sft_records(config, examples)
    summary["sft_records"] = {"rft": len(examples), "general": len(records) - len(examples)}
    if not records:
        reason = "no trajectory was accepted and rft.general_data is not set"
        log.warning("skipping the SFT: %s; saving the unchanged model", reason)
        summary["sft"] = {"skipped": reason}
        trained = model
    else:
        try:
            trained, info = sft(model, tokenizer, records, train, max_len=config.rft.max_seq_len)
        except ValueError as e:  # e.g. no record fits rft.max_seq_len
            raise StageError(f"rft SFT: {e}") from None
        summary["sft"] = {**info, "final_metrics": last_metrics(out / "train")}
        if info["preempted"]:  # SIGTERM: the checkpoint is saved; the same command resumes
            summary["preempted"] = True
            write_json(out / "summary.json", summary)
            return summary
    summary["model"] = save_model(trained, tokenizer, m.init_checkpoint, out / "model", m.param_dtype)
    write_json(out / "summary.json", summary)
    return summary


def main(argv: list[str]) -> int:
    return run_cli("spct rft", argv, __doc__, run)
