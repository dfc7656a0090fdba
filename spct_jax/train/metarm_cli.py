"""`spct metarm --config C [--config.key=value ...]`: train the meta RM ([P] §5, App. C.1).

1. The GRM to be guided (model.init_checkpoint, normally the GRPO model) samples metarm.n_rft trajectories per
   item of metarm.data at inference.temperature (<= inference.max_new_tokens new tokens; items whose prompt
   exceeds inference.max_prompt_len, or that Eq. 10 cannot judge, are dropped and counted). They are sampled in
   chunks of metarm.chunk_items items, each written as it is done to run_dir/metarm/samples/ (train/sample_store.py):
   a SIGTERM on any host stops every host after the same chunk (exit 0, "preempted" in the summary) and a rerun
   resumes at the first unfinished chunk (one sampled from other items or with other settings is refused). Each
   trajectory is labelled correct / incorrect by Eq. 10 and rendered with the meta-RM template (App. G (c));
   examples longer than metarm.max_seq_len are dropped and counted in the class balance.
2. Hold-out: a seeded fraction of the ITEMS (metarm.holdout_fraction, 0.1 in configs/base.py, ours; at least one item when
   there are two or more) with all their trajectories, so no item is on both sides; the rest is trained on.
3. The meta RM is ScalarRM.from_decoder of meta_rm.init_checkpoint's backbone ([P]: Gemma-2-27B base), or of
   the GRM's own backbone when that field is empty; a fresh scalar head on the last token. BCE with metarm.*
   (learning_rate, batch_size, steps, num_microbatches), resumable under run_dir/metarm/train.
4. Reports the class balance of both splits and the held-out ROC-AUC and accuracy (at logit 0; AUC is NaN when
   the held-out labels are all one class), and saves run_dir/metarm/model with save_model (HF
   XForSequenceClassification, num_labels=1) plus the meta RM's tokenizer files (`spct score --meta-rm`).

Steps 3-4 are the paper's head, `metarm.head = "last_token"`. With `--config.metarm.head=likelihood` (ours) the
meta RM is the frozen LM of step 3 (meta_rm.init_checkpoint, else the GRM) read as a likelihood: a trajectory's
score is scale * its mean token log-probability after the GRM's prompt + bias, and only scale and bias are fit, by
BCE on the training items' trajectories (grm/likelihood_meta_rm.py). Nothing is trained by gradient steps;
run_dir/metarm/model then holds likelihood_meta_rm.json naming that LM. `spct score|eval run|serve --meta-rm`
load either head by what the folder holds.

Only the GRM's fresh samples are used; RFT keeps its non-hinted trajectories ([P] §5) in run_dir/rft/samples/,
but adding them here is not done yet.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import ml_collections
import numpy as np

from spct_jax.train.errors import StageError
from spct_jax.train.stage_common import (last_metrics, load_checkpoint, read_items, run_cli, save_model,
                                         stage_dir, stage_run, usable_items, write_json)

log = logging.getLogger("spct.metarm")


def holdout_split(n_items: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train item indices, held-out item indices): a seeded permutation, round(fraction * n) held out."""
    held = 0 if fraction == 0 or n_items < 2 else min(n_items - 1, max(1, round(fraction * n_items)))
    order = np.random.default_rng([seed, 5]).permutation(n_items).tolist()
    return sorted(order[held:]), sorted(order[:held])


def run(config: ml_collections.ConfigDict, mesh) -> dict[str, Any]:
    from spct_jax.grm.scorer import GenerativeRewardModel
    from spct_jax.models.scalar_head import ScalarRM
    from spct_jax.train.metarm import METARM_SALT, evaluate_metarm, metarm_examples
    from spct_jax.grm.trajectories import RolloutConfig, sampling_copy
    from spct_jax.train.sample_store import chunked_trajectories, open_stage_store, stored_trajectories
    from spct_jax.train.stages import train_metarm

    out = stage_dir(config, "metarm")
    write_json(out / "config.json", json.loads(config.to_json()))
    m, r, inf = config.model, config.metarm, config.inference
    workdir = out / "train"
    train = stage_run(config, "metarm", mesh, workdir)  # checks the batch split before sampling
    fraction = float(r.holdout_fraction)
    grm_model, tokenizer = load_checkpoint(m.init_checkpoint, "model.init_checkpoint", m, mesh)
    # The guided GRM only samples here: a compute-dtype copy on the mesh, dropped when sampling is done.
    grm = GenerativeRewardModel(sampling_copy(grm_model), tokenizer, mesh=mesh)
    rollout = RolloutConfig(temperature=inf.temperature, max_new_tokens=inf.max_new_tokens)
    items, dropped = usable_items(read_items(r.data, "metarm.data"), grm, rollout,
                                  max_tokens=inf.max_prompt_len + inf.max_new_tokens)
    if not items:
        raise StageError(f"config field 'metarm.data' = {r.data!r}: no usable item (dropped: {dropped})", exit_code=1)
    fingerprint = {"stage": "metarm", "init_checkpoint": m.init_checkpoint, "param_dtype": m.param_dtype,
                   "compute_dtype": m.compute_dtype, "seed": config.seed, "n_rft": r.n_rft, "salt": METARM_SALT,
                   "rollout": dataclasses.asdict(rollout)}  # what decides the trajectories besides the items
    store = open_stage_store(out / "samples", fingerprint, items, r.chunk_items)
    log.info("sampling %d items x %d trajectories at T=%g in %d chunks of <= %d items", len(items), r.n_rft,
             rollout.temperature, store.num_chunks, r.chunk_items)
    chunks = chunked_trajectories(grm, items, store, r.n_rft, seed=config.seed, cfg=rollout, salt=METARM_SALT,
                                  max_batch_rows=r.sample_rows)
    del grm
    if chunks.preempted:  # SIGTERM: every process stopped after the same written chunk; the same command resumes
        summary = {"stage": "metarm", "init_checkpoint": m.init_checkpoint, "items": len(items),
                   "dropped_items": dropped, "sampling": chunks.as_dict(), "preempted": True}
        write_json(out / "summary.json", summary)
        return summary
    trajs = stored_trajectories(store)  # every process reads the shards (process 0 wrote them; run_chunks synced)

    source = config.meta_rm.init_checkpoint or m.init_checkpoint
    if config.meta_rm.init_checkpoint:
        backbone, meta_tok = load_checkpoint(source, "meta_rm.init_checkpoint", m, mesh)
    else:
        # from_decoder shares the GRM's arrays; training copies params before its first (donating) step.
        backbone, meta_tok = grm_model, tokenizer
    train_idx, held_idx = holdout_split(len(items), fraction, config.seed)
    if r.head == "likelihood":
        return likelihood_head(config, out, items, trajs, train_idx, held_idx, backbone, meta_tok, source,
                               rollout.template, {"stage": "metarm", "head": "likelihood",
                                                  "init_checkpoint": m.init_checkpoint, "meta_rm_init": source,
                                                  "items": len(items), "dropped_items": dropped,
                                                  "sampling": chunks.as_dict(), "items_train": len(train_idx),
                                                  "items_held_out": len(held_idx)})

    def examples(idx: list[int]):
        return metarm_examples([items[i] for i in idx], [trajs[i] for i in idx], meta_tok, origin="guided",
                               max_len=r.max_seq_len)

    train_ex, train_bal = examples(train_idx)
    held_ex, held_bal = examples(held_idx)
    summary: dict[str, Any] = {
        "stage": "metarm", "head": "last_token", "init_checkpoint": m.init_checkpoint, "meta_rm_init": source,
        "items": len(items),
        "dropped_items": dropped, "sampling": chunks.as_dict(), "items_train": len(train_idx),
        "items_held_out": len(held_idx),
        "balance": {"train": {**dataclasses.asdict(train_bal), "positive_fraction": train_bal.positive_fraction},
                    "held_out": {**dataclasses.asdict(held_bal), "positive_fraction": held_bal.positive_fraction}}}
    log.info("class balance %s", summary["balance"])
    if not train_ex:
        raise StageError(f"no meta-RM training example (balance {summary['balance']}); check metarm.data and "
                         "metarm.max_seq_len", exit_code=1)

    rm = ScalarRM.from_decoder(backbone, seed=config.seed)
    if rm.config.pad_token_id is None:  # transformers picks the scored token by pad id; save_scalar_rm needs one
        rm.config = rm.config.replace(pad_token_id=meta_tok.pad_id)
    try:
        rm, info = train_metarm(rm, train_ex, train, pad_id=meta_tok.pad_id)
    except ValueError as e:  # e.g. fewer examples than one batch can split over the mesh
        raise StageError(f"metarm training: {e}", exit_code=1) from None
    summary.update(info, final_metrics=last_metrics(workdir))
    if info["preempted"]:  # SIGTERM: the checkpoint is saved; the same command resumes
        write_json(out / "summary.json", summary)
        return summary
    summary["held_out"] = evaluate_metarm(rm, held_ex, pad_id=meta_tok.pad_id) if held_ex else {"n": 0.0}
    log.info("held-out %s", summary["held_out"])
    dest = out / "model"
    _drop_other_head(dest)
    # Collective: every process calls it; the meta RM is written without gathering it on any host.
    summary["model"] = save_model(rm, meta_tok, source, dest, m.param_dtype)
    write_json(out / "summary.json", summary)
    return summary


def _drop_other_head(dest) -> None:
    """A rerun with the other head must not leave the first head's file behind: the loaders pick the head by the
    files a folder holds, and likelihood_meta_rm.json would shadow a fresh sequence-classification checkpoint."""
    from spct_jax import paths
    from spct_jax.grm.likelihood_meta_rm import CONFIG_NAME
    from spct_jax.train.stage_common import is_main_process

    stale = paths.as_path(dest) / CONFIG_NAME
    if is_main_process() and stale.exists():
        stale.unlink()


def likelihood_head(config, out, items, trajs, train_idx, held_idx, lm, tokenizer, source: str, template: str,
                    summary: dict[str, Any]) -> dict[str, Any]:
    """Fit the likelihood meta RM's scale and bias on the training items' trajectories (labels: Eq. 10), report its
    held-out ROC-AUC and accuracy, and save run_dir/metarm/model/likelihood_meta_rm.json pointing at `source`."""
    import shutil
    from pathlib import Path

    from spct_jax import paths
    from spct_jax.grm.likelihood_meta_rm import MetaInput, fit_likelihood_meta_rm
    from spct_jax.train.metarm import held_out_metrics
    from spct_jax.train.stage_common import is_main_process

    def labelled(idx: list[int]):
        pairs = [(items[i], t) for i in idx for t in trajs[i]]
        return ([MetaInput(item=item, perm=tuple(t.perm), text=t.text) for item, t in pairs],
                [bool(t.correct) for _, t in pairs])

    (x, y), (hx, hy) = labelled(train_idx), labelled(held_idx)
    summary["balance"] = {name: {"positives": sum(lab), "negatives": len(lab) - sum(lab),
                                 "positive_fraction": sum(lab) / len(lab) if lab else float("nan")}
                          for name, lab in (("train", y), ("held_out", hy))}
    log.info("class balance %s", summary["balance"])
    if not x:
        raise StageError(f"no meta-RM training trajectory (balance {summary['balance']}); check metarm.data",
                         exit_code=1)
    dest = out / "model"
    if paths.is_remote(str(dest)):
        raise StageError("metarm.head=likelihood writes its model folder locally only; give a local run_dir",
                         exit_code=2)
    rm, fit = fit_likelihood_meta_rm(lm, tokenizer, x, y, template=template, batch_size=config.metarm.sample_rows)
    summary["fit"] = dataclasses.asdict(fit)
    summary["scale"], summary["bias"] = rm.scale, rm.bias
    summary["held_out"] = held_out_metrics(hy, rm.scores(hx)) if hx else {"n": 0.0}
    log.info("held-out %s", summary["held_out"])
    # The LM is referenced, not copied: an absolute path for a local folder, so the model folder can be read from
    # any working directory; a preset name or gs:// path as given.
    lm_path = str(Path(source).resolve()) if not paths.is_remote(source) and Path(source).exists() else source
    if is_main_process():
        if Path(dest).is_dir():
            shutil.rmtree(dest)  # a folder of the other head would otherwise be loaded as that head
        rm.save(dest, lm_path=lm_path, fit=fit)
    summary["model"] = {"path": str(dest), "lm": lm_path}
    write_json(out / "summary.json", summary)
    return summary


def main(argv: list[str]) -> int:
    return run_cli("spct metarm", argv, __doc__, run)
