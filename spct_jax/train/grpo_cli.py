"""`spct grpo --config C [--config.key=value ...]`: SPCT stage 2, rule-based online RL with GRPO ([P] §3.2, App. C.1 Eq. 15).

The policy starts from model.init_checkpoint (the RFT model, e.g. run_dir/rft/model) and the KL reference is
that same checkpoint, frozen (the stage driver keeps the initial params). Each update samples grpo.group_size
rollouts for each of grpo.batch_size / group_size prompts of grpo.data at grpo.temperature (<= grpo.max_new_tokens
new tokens), rewards them +1/-1 by Eq. 10, and takes the GRPO step with grpo.beta, grpo.epsilon and
grpo.learning_rate; grpo.steps updates, resumable under run_dir/grpo/train. Items Eq. 10 cannot judge, or whose
prompt + max_new_tokens exceeds grpo.max_prompt_len + grpo.max_new_tokens, are dropped and counted.
The policy is saved as run_dir/grpo/model (HF folder with tokenizer files).

RL data ([P] App. C.1): with grpo.filter_too_easy (the default), items whose grpo.filter_samples trajectories by
the filtering GRM (grpo.filter_checkpoint, "" = model.init_checkpoint) are all correct by Eq. 10 are removed before
training; what was removed is written to run_dir/grpo/too_easy_filter.json and reused by a rerun (a resumed run
must train on the same items), and its counts are in summary.json.

Memory knobs: grpo.rollout_batch_prompts prompts (x G rows) per sampler call; grpo.ref_dtype, the dtype the frozen
reference's params are held in (when it differs from model.param_dtype the reference is a cast copy and the
policy trains on the loaded arrays themselves, so the reference adds only its narrow copy); grpo.kv_dtype must
equal model.compute_dtype (the sampler keeps its KV cache in the compute dtype; validate() says so).
"""
from __future__ import annotations

import json
import logging
from typing import Any

import ml_collections

from spct_jax.train.errors import StageError
from spct_jax.train.stage_common import (last_metrics, load_checkpoint, read_items, run_cli, save_model,
                                         stage_dir, stage_run, usable_items, write_json)

log = logging.getLogger("spct.grpo")


def grpo_config(config: ml_collections.ConfigDict):
    from spct_jax.train.config import GRPOLossConfig
    from spct_jax.train.grpo import GRPOConfig
    from spct_jax.grm.trajectories import RolloutConfig

    g = config.grpo
    return GRPOConfig(prompts_per_step=g.batch_size // g.group_size,
                      loss=GRPOLossConfig(epsilon=g.epsilon, beta=g.beta, group_size=g.group_size),
                      rollout=RolloutConfig(temperature=g.temperature, max_new_tokens=g.max_new_tokens),
                      seed=config.seed, rollout_batch_prompts=g.rollout_batch_prompts, logprob_rows=g.logprob_rows,
                      reference_dtype=None if g.ref_dtype == config.model.param_dtype else g.ref_dtype)


def too_easy_filtered(config: ml_collections.ConfigDict, items: list, policy, cfg, mesh) -> tuple[list, dict]:
    """(items left after the too-easy filter, its report). The report is cached in run_dir/grpo: a rerun (e.g.
    after a preemption) reuses the kept list instead of sampling again, and fails if the items changed."""
    from spct_jax.grm.scorer import GenerativeRewardModel
    from spct_jax.grm.trajectories import sampling_copy
    from spct_jax.train.grpo import filter_too_easy

    g = config.grpo
    if not g.filter_too_easy:
        return items, {"enabled": False}
    path = stage_dir(config, "grpo") / "too_easy_filter.json"
    uids = [it.uid for it in items]
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("candidates") != uids:
            raise StageError(f"{path}: written for other grpo.data items; delete it to filter again", exit_code=1)
        log.info("reusing %s: %d of %d items kept", path, len(cached["kept"]), len(uids))
        return [items[i] for i in cached["kept"]], cached["report"]
    spec = g.filter_checkpoint or config.model.init_checkpoint
    model, tokenizer = policy if spec == config.model.init_checkpoint else load_checkpoint(
        spec, "grpo.filter_checkpoint", config.model, mesh)
    log.info("too-easy filter: %d samples of %d items by %s", g.filter_samples, len(items), spec)
    kept, report = filter_too_easy(GenerativeRewardModel(sampling_copy(model), tokenizer, mesh=mesh), items,
                                   samples=g.filter_samples, seed=config.seed, cfg=cfg.rollout,
                                   max_batch_rows=g.filter_rows)
    info = {"enabled": True, "checkpoint": spec, **report.as_dict()}
    log.info("too-easy filter: removed %d of %d items (sample accuracy %.3f)", report.too_easy, report.items,
             report.sample_accuracy)
    write_json(path, {"candidates": uids, "kept": kept, "report": info})
    return [items[i] for i in kept], info


def run(config: ml_collections.ConfigDict, mesh) -> dict[str, Any]:
    from spct_jax.grm.scorer import GenerativeRewardModel
    from spct_jax.train.stages import grpo

    out = stage_dir(config, "grpo")
    write_json(out / "config.json", json.loads(config.to_json()))
    m, g = config.model, config.grpo
    workdir = out / "train"
    train = stage_run(config, "grpo", mesh, workdir)
    model, tokenizer = load_checkpoint(m.init_checkpoint, "model.init_checkpoint", m, mesh)
    cfg = grpo_config(config)
    items, dropped = usable_items(read_items(g.data, "grpo.data"), GenerativeRewardModel(model, tokenizer),
                                  cfg.rollout, max_tokens=g.max_prompt_len + g.max_new_tokens)
    items, summary_filter = too_easy_filtered(config, items, (model, tokenizer), cfg, mesh)
    summary: dict[str, Any] = {"stage": "grpo", "init_checkpoint": m.init_checkpoint, "items": len(items),
                               "dropped_items": dropped, "too_easy_filter": summary_filter,
                               "prompts_per_step": cfg.prompts_per_step,
                               "group_size": cfg.group_size, "beta": g.beta, "epsilon": g.epsilon}
    if len(items) < cfg.prompts_per_step:
        raise StageError(f"config field 'grpo.batch_size': {g.batch_size} rollouts = {cfg.prompts_per_step} prompts "
                         f"x G={cfg.group_size} per update, but grpo.data has {len(items)} usable items "
                         f"(dropped: {dropped})")
    log.info("GRPO: %d items, %d prompts x G=%d per update, %d updates, beta=%g", len(items),
             cfg.prompts_per_step, cfg.group_size, g.steps, g.beta)
    # reference=None: the driver uses the initial params, i.e. the frozen init_checkpoint, as the KL reference.
    policy, info = grpo(model, tokenizer, items, train, cfg)
    summary.update(info, final_metrics=last_metrics(workdir))
    if not info["preempted"]:  # after SIGTERM the checkpoint is saved; the same command resumes
        summary["model"] = save_model(policy, tokenizer, m.init_checkpoint, out / "model", m.param_dtype)
    write_json(out / "summary.json", summary)
    return summary


def main(argv: list[str]) -> int:
    return run_cli("spct grpo", argv, __doc__, run)
