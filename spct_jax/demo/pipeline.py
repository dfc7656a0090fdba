"""`spct demo`: the whole SPCT pipeline on CPU with a tiny model on the toy task, reported like the paper's Table 3.

    stage 0  cold start   SFT on imperfect teacher trajectories (the paper's "pretrained GRM")
    stage 1  RFT          N_RFT = 3 own samples per item, reject wrong / too easy, hinted sampling, SFT
    stage 2  GRPO         +-1 rule reward (Eq. 11), G = 4, k3 KL (beta = 0.08) to the RFT model
    stage 3  meta RM      on Eq.-10 labels of sampled trajectories: the frozen cold-start LM's likelihood of a
                          trajectory, scale and bias fit by BCE (default), or the paper's last-token scalar head
    stage 4  evaluation   held-out split: greedy per stage; Voting@k and MetaRM@k at T = 0.5; no-principles ablation

Outputs in `workdir`: report.md, results.json, scaling.png, learning_curves.png, log.txt, per-stage checkpoints.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spct_jax.data.batching import SFTRecord
from spct_jax.demo.config import DemoConfig
from spct_jax.demo.tokenizer import train_toy_tokenizer
from spct_jax.demo.toy import (TEMPLATE, TEMPLATE_NO_PRINCIPLES, comparison_drills, teacher_trajectory, toy_prompt,
                               toy_splits)
from spct_jax.demo.report import write_outputs
from spct_jax.demo import significance as sig
from spct_jax.eval.metrics import roc_auc
from spct_jax.grm.likelihood_meta_rm import LikelihoodMetaRM, MetaInput, fit_likelihood_meta_rm
from spct_jax.grm.scorer import GenerativeRewardModel, item_seed
from spct_jax.grm.trajectories import RolloutConfig
from spct_jax.grm.rules import is_correct
from spct_jax.grm.voting import nested_votes
from spct_jax.models.config import ModelConfig
from spct_jax.models.scalar_head import ScalarRM, save_scalar_rm
from spct_jax.models.transformer import init_model
from spct_jax.models.weights import save_pretrained
from spct_jax.train.config import GRPOLossConfig, OptimizerConfig
from spct_jax.train.grpo import GRPOConfig, filter_too_easy
from spct_jax.train.metarm import METARM_SALT, evaluate_metarm, held_out_metrics, metarm_examples
from spct_jax.train.rft import RFTConfig, rejective_sampling, write_rft_dataset
from spct_jax.train.stages import StageRun, grpo, sft, train_metarm

log = logging.getLogger("spct.demo")


def teacher_records(items, rng: np.random.Generator, cfg: DemoConfig, *, no_principles_fraction: float) -> list[SFTRecord]:
    out = []
    for item in items:
        perm = [int(i) for i in rng.permutation(item.num_responses)]
        principles = rng.random() >= no_principles_fraction
        out.append(SFTRecord(uid=f"{item.uid}#t", messages=[{"role": "user", "content": toy_prompt(item, perm, principles=principles)}],
                             target=teacher_trajectory(item, perm, rng, error_rate=cfg.teacher_error_rate,
                                                       principles=principles, error_types=cfg.teacher_error_types)))
    return out


class DemoStopped(Exception):
    """A stage was stopped by SIGTERM (the training loop saves and returns early): the demo stops there."""


def stopped_if_preempted(stage: str, result):
    """Pass a stage driver's (model, info) through, or stop the demo when SIGTERM cut the stage short: the later
    stages must not run on a half-trained model and report its numbers as the demo's."""
    _, info = result
    if info["preempted"]:
        raise DemoStopped(f"stage {stage} was stopped by SIGTERM after {info['steps']} steps; nothing after it ran")
    return result


def correct(judgements, items) -> list[int]:
    """1 where a judgement's best response is the item's ground-truth best, per item."""
    return [int(j.best == it.best) for j, it in zip(judgements, items)]


def accuracy(judgements, items) -> float:
    return float(np.mean(correct(judgements, items)))


def voted_correct(judgements, items, k: int, *, seed: int,
                  meta_scores: Sequence[Sequence[float]] | None = None) -> list[int]:
    """Per item, 1 where Voting@k over the first k of the samples already drawn is right; with `meta_scores` (per
    item, one per sample) MetaRM@k with the voting module's k_meta. `seed` is the seed the samples were scored with:
    the tie-break seed is then the scorer's, so the vote over all samples is the judgement's own."""
    run = ("voting", k, None) if meta_scores is None else ("metarm", k, None)
    return [int(nested_votes([s.scores for s in j.samples], [run], seed=(seed, item_seed(it)),
                             meta_scores=None if meta_scores is None else meta_scores[i],
                             num_responses=it.num_responses)[0].best == it.best)
            for i, (j, it) in enumerate(zip(judgements, items))]


def voted_accuracy(judgements, items, k: int, *, seed: int,
                   meta_scores: Sequence[Sequence[float]] | None = None) -> float:
    return float(np.mean(voted_correct(judgements, items, k, seed=seed, meta_scores=meta_scores)))


def meta_scores_of(judgements) -> list[list[float]]:
    """The meta RM's score of every drawn sample, per item."""
    return [[s.meta_score for s in j.samples] for j in judgements]


def random_filter_control(judgements, items, k: int, *, seed: int, draws: int = 20) -> dict[str, float]:
    """MetaRM@k with the meta RM replaced by seeded uniform scores: keeping a random k/2 of the k samples.

    A meta RM helps only if it beats this: at k = 8 or 32 a random half alone moves accuracy by a few points
    either way on 300 items, so MetaRM@k - Voting@k is read against this control's mean and spread."""
    accs = []
    for d in range(draws):
        fake = [np.random.default_rng([seed, 23, d, i]).random(k) for i in range(len(items))]  # [items][k]
        accs.append(voted_accuracy(judgements, items, k, seed=seed, meta_scores=fake))
    return {"mean": float(np.mean(accs)), "sd": float(np.std(accs)), "draws": float(draws)}


def meta_score_auc(judgements, items) -> dict[str, float]:
    """ROC-AUC of the meta RM's scores for "this sample is correct by Eq. 10" over every held-out sample, and its
    mean within items that have both correct and wrong samples (the ranking MetaRM@k actually uses)."""
    labels, scores, within = [], [], []
    for j, it in zip(judgements, items):
        lab = [s.scores is not None and is_correct(s.scores, it.gt_rewards()) for s in j.samples]
        sc = [s.meta_score for s in j.samples]
        labels += lab
        scores += sc
        if 0 < sum(lab) < len(lab):
            within.append(roc_auc(lab, sc))
    pooled = roc_auc(labels, scores) if 0 < sum(labels) < len(labels) else float("nan")
    return {"auc": float(pooled), "within_item_auc": float(np.mean(within)) if within else float("nan"),
            "mixed_items": float(len(within))}


def likelihood_metarm(cold, tok, *, train: list, held_out: list, work: Path, results: dict) -> LikelihoodMetaRM:
    """Stage 3 with the demo's default head: the frozen cold-start LM's mean log-likelihood of a trajectory, read
    after the GRM's own prompt, with scale and bias fit by BCE (grm/likelihood_meta_rm.py says why)."""
    def inputs(pairs):
        return [MetaInput(item=it, perm=tuple(t.perm), text=t.text) for it, t in pairs], [t.correct for _, t in pairs]

    x, y = inputs(train)
    rm, fit = fit_likelihood_meta_rm(cold, tok, x, y, template=TEMPLATE)
    hx, hy = inputs(held_out)
    scores = rm.scores(hx)
    results["stats"]["metarm_balance"] = {"train": {"positives": int(sum(y)), "negatives": len(y) - int(sum(y))},
                                          "held_out": {"positives": int(sum(hy)), "negatives": len(hy) - int(sum(hy))}}
    results["metarm"] = {"head": "likelihood", "scale": rm.scale, "bias": rm.bias, "fit": dataclasses.asdict(fit),
                         **held_out_metrics(hy, scores)}
    rm.save(work / "models" / "metarm", lm_path="../cold_start", fit=fit)
    return rm


def last_token_metarm(cold, tok, *, splits, rft_plain, guided, held: int, run: StageRun, seed: int, work: Path,
                      results: dict) -> ScalarRM:
    """Stage 3 with the paper's head: a last-token scalar head on the cold-start backbone, fine-tuned by BCE on the
    meta-RM template's rendering of each trajectory (App. G (c))."""
    ex_rft, bal_rft = metarm_examples(splits["rft"], rft_plain, tok, origin="rft", max_len=1024)
    ex_guided, bal_guided = metarm_examples(splits["metarm"], guided, tok, origin="guided", max_len=1024)
    train_ex, held_ex = ex_rft + ex_guided[:-held], ex_guided[-held:]
    results["stats"]["metarm_balance"] = {"rft": dataclasses.asdict(bal_rft), "guided": dataclasses.asdict(bal_guided)}
    rm = ScalarRM.from_decoder(cold, seed=seed)
    rm, _ = stopped_if_preempted("metarm", train_metarm(rm, train_ex, run, pad_id=tok.pad_id))
    results["metarm"] = {"head": "last_token", **evaluate_metarm(rm, held_ex, pad_id=tok.pad_id)}
    save_scalar_rm(rm, work / "models" / "metarm")
    return rm


def run(cfg: DemoConfig, *, progress: bool = True) -> dict:
    t_start = time.perf_counter()
    work = Path(cfg.workdir)
    if work.exists():
        shutil.rmtree(work)  # a demo run always starts clean; training stages resume only within one run
    work.mkdir(parents=True)
    handler = logging.FileHandler(work / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    splits = toy_splits(cfg.seed, cfg.split_sizes, cfg.toy)
    tok = train_toy_tokenizer(work / "tokenizer", seed=cfg.seed, config=cfg.toy)
    mcfg = ModelConfig(family="llama", vocab_size=tok.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                       num_layers=cfg.num_layers, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                       head_dim=cfg.d_model // cfg.num_heads, tie_embeddings=True, pad_token_id=tok.pad_id,
                       bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, max_position_embeddings=1024)
    log.info("splits %s; vocab %d", {k: len(v) for k, v in splits.items()}, tok.vocab_size)
    rng = np.random.default_rng([cfg.seed, 17])
    bs = cfg.batch_size

    def stage_run(name, steps, lr, batch_size=bs, seed_offset=0):
        return StageRun(workdir=str(work / name), steps=steps, batch_size=batch_size, seed=cfg.seed + seed_offset,
                        optimizer=OptimizerConfig(learning_rate=lr, total_steps=steps, warmup_steps=min(10, steps // 5),
                                                  schedule="cosine", end_lr_ratio=0.1, weight_decay=0.0),
                        progress_bar=progress, length_multiple=cfg.length_multiple,
                        length_segments=cfg.length_segments)

    rollout = RolloutConfig(temperature=cfg.rollout_temperature, max_new_tokens=cfg.max_new_tokens, template=TEMPLATE)
    # per_item: one 0/1 correctness vector over the held-out items per method (demo/significance.py's keys), so
    # every difference can be re-tested and several runs pooled (`spct demo --summarize`).
    results: dict = {"stages": {}, "scaling": {"voting": {}, "metarm": {}}, "ablation": {},
                     "controls": {"metarm_random": {}}, "seed": cfg.seed,
                     "config": dataclasses.asdict(cfg), "stats": {},
                     "per_item": {"uids": [it.uid for it in splits["eval"]]}}
    per_item = results["per_item"]

    def export(model, name):
        """An HF folder with the tokenizer, so `spct score --model runs/demo/models/<stage>` works."""
        folder = work / "models" / name
        save_pretrained(model, folder)
        for f in (work / "tokenizer").iterdir():
            shutil.copy(f, folder / f.name)

    def greedy(model, name):
        grm = GenerativeRewardModel(model, tok, template=TEMPLATE)
        js = grm.score(splits["eval"], k=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                       progress=False)
        per_item[sig.greedy_key(name)] = correct(js, splits["eval"])
        acc = float(np.mean(per_item[sig.greedy_key(name)]))
        kinds = sorted({it.meta["kind"] for it in splits["eval"]})
        results["stages"][name] = {
            "greedy": acc, "parse_rate": float(np.mean([j.num_valid for j in js])),
            "by_kind": {kd: accuracy(*zip(*[(j, it) for j, it in zip(js, splits["eval"]) if it.meta["kind"] == kd]))
                        for kd in kinds}}
        log.info("%s greedy accuracy %.3f", name, acc)

    # -- stage 0: cold start ------------------------------------------------------------------------------------
    log.info("stage 0: cold-start SFT on teacher trajectories (error rate %.2f)", cfg.teacher_error_rate)
    model = init_model(mcfg, seed=cfg.seed)
    records = teacher_records(splits["sft"], rng, cfg, no_principles_fraction=cfg.no_principles_fraction)
    drills = comparison_drills(cfg.seed, int(len(records) * cfg.drill_fraction))
    records += [SFTRecord(uid=f"drill-{i}", messages=[{"role": "user", "content": prompt}], target=target)
                for i, (prompt, target) in enumerate(drills)]
    cold_run = stage_run("cold_start", cfg.cold_start_steps, cfg.cold_start_lr)
    cold, info = stopped_if_preempted("cold_start", sft(model, tok, records, cold_run))
    results["stats"]["cold_start"] = info
    export(cold, "cold_start")
    greedy(cold, "cold_start")

    # -- stage 1: RFT ---------------------------------------------------------------------------------------------
    log.info("stage 1: rejective sampling (N_RFT = %d) + SFT", cfg.n_rft)
    rft_res = rejective_sampling(GenerativeRewardModel(cold, tok, template=TEMPLATE), splits["rft"],
                                 RFTConfig(n_rft=cfg.n_rft, hinted=cfg.hinted, rollout=rollout, seed=cfg.seed),
                                 progress=progress)
    write_rft_dataset(rft_res, work / "rft" / "rft_data.jsonl")
    results["stats"]["rft"] = rft_res.stats.as_dict()
    log.info("RFT stats %s", rft_res.stats.as_dict())
    mix = teacher_records(splits["sft"][: cfg.rft_teacher_mix], rng, dataclasses.replace(cfg, teacher_error_rate=0.0),
                          no_principles_fraction=cfg.no_principles_fraction)
    rft_model, _ = stopped_if_preempted("rft", sft(cold, tok, [e.sft_record() for e in rft_res.examples] + mix,
                                                   stage_run("rft", cfg.rft_steps, cfg.rft_lr, seed_offset=1)))
    export(rft_model, "rft")
    greedy(rft_model, "rft")

    # -- stage 2: GRPO -------------------------------------------------------------------------------------------
    log.info("stage 2: GRPO (G = 4, beta = %.3f, rollouts at T = %.2f)", cfg.grpo_beta, cfg.grpo_temperature)
    gcfg = GRPOConfig(prompts_per_step=cfg.grpo_prompts_per_step, loss=GRPOLossConfig(beta=cfg.grpo_beta),
                      rollout=dataclasses.replace(rollout, temperature=cfg.grpo_temperature), seed=cfg.seed)
    rl_items = splits["rl"]
    if cfg.rl_filter_too_easy:
        keep, report = filter_too_easy(GenerativeRewardModel(cold, tok, template=TEMPLATE), rl_items, seed=cfg.seed,
                                       cfg=gcfg.rollout, progress=progress)
        if len(keep) < cfg.grpo_prompts_per_step:
            raise RuntimeError(f"the too-easy filter left {len(keep)} RL items, fewer than one update's "
                               f"{cfg.grpo_prompts_per_step} prompts")
        rl_items = [rl_items[i] for i in keep]
        results["stats"]["rl_filter"] = report.as_dict()
        log.info("too-easy filter (cold start, 3 samples): removed %d of %d RL items", report.too_easy, report.items)
    rl_model, _ = stopped_if_preempted("grpo", grpo(rft_model, tok, rl_items,
                                                    stage_run("grpo", cfg.grpo_steps, cfg.grpo_lr, seed_offset=2),
                                                    gcfg, template=TEMPLATE))
    export(rl_model, "rl")
    greedy(rl_model, "rl")

    # -- stage 3: meta RM ----------------------------------------------------------------------------------------
    log.info("stage 3: meta RM (%s head)", cfg.metarm_head)
    guided = GenerativeRewardModel(rl_model, tok, template=TEMPLATE).trajectories(
        splits["metarm"], cfg.n_rft, seed=cfg.seed, cfg=dataclasses.replace(rollout, temperature=cfg.eval_temperature),
        salt=METARM_SALT, progress=progress)
    guided_pairs = [(it, t) for it, ts in zip(splits["metarm"], guided) for t in ts]
    held = max(1, len(guided_pairs) // 4)  # hold out the last quarter of guided samples for AUC
    if cfg.metarm_head == "likelihood":
        train_pairs = [(it, t) for it, ts in zip(splits["rft"], rft_res.plain) for t in ts] + guided_pairs[:-held]
        rm = likelihood_metarm(cold, tok, train=train_pairs, held_out=guided_pairs[-held:], work=work,
                               results=results)
    else:
        rm = last_token_metarm(cold, tok, splits=splits, rft_plain=rft_res.plain, guided=guided, held=held,
                               run=stage_run("metarm", cfg.metarm_steps, cfg.metarm_lr, seed_offset=3),
                               seed=cfg.seed, work=work, results=results)
    log.info("meta RM (%s) held-out %s", cfg.metarm_head, results["metarm"])

    # -- stage 4: inference-time scaling --------------------------------------------------------------------------
    log.info("stage 4: Voting@k / MetaRM@k on %d held-out items", len(splits["eval"]))
    kmax = max(cfg.ks)
    grm = GenerativeRewardModel(rl_model, tok, meta_rm=rm, template=TEMPLATE)
    eval_seed = cfg.seed + 100
    js = grm.score(splits["eval"], k=kmax, temperature=cfg.eval_temperature, max_new_tokens=cfg.max_new_tokens,
                   seed=eval_seed, progress=progress)
    for k in cfg.ks:
        per_item[sig.voting_key(k)] = voted_correct(js, splits["eval"], k, seed=eval_seed)
        results["scaling"]["voting"][str(k)] = float(np.mean(per_item[sig.voting_key(k)]))
    for k in cfg.metarm_ks:
        per_item[sig.metarm_key(k)] = voted_correct(js, splits["eval"], k, seed=eval_seed,
                                                    meta_scores=meta_scores_of(js))
        results["scaling"]["metarm"][str(k)] = float(np.mean(per_item[sig.metarm_key(k)]))
        results["controls"]["metarm_random"][str(k)] = random_filter_control(js, splits["eval"], k, seed=eval_seed)
    results["metarm"]["eval_samples"] = meta_score_auc(js, splits["eval"])
    results["parse_rate_sampled"] = float(np.mean([s.scores is not None for j in js for s in j.samples]))
    ablation = GenerativeRewardModel(rl_model, tok, template=TEMPLATE_NO_PRINCIPLES).score(
        splits["eval"], k=cfg.ablation_k, temperature=cfg.eval_temperature, max_new_tokens=cfg.max_new_tokens,
        seed=eval_seed, progress=progress)
    per_item[sig.no_principles_key(cfg.ablation_k)] = voted_correct(ablation, splits["eval"], cfg.ablation_k,
                                                                     seed=eval_seed)
    results["ablation"][f"no_principles_voting_{cfg.ablation_k}"] = float(
        np.mean(per_item[sig.no_principles_key(cfg.ablation_k)]))
    results["signal"] = sig.signal(per_item, sig.phenomena(cfg.ks, cfg.metarm_ks, cfg.ablation_k), seed=cfg.seed)
    results["wall_seconds"] = time.perf_counter() - t_start
    write_outputs(work, results, js[:20], splits["eval"][:20])
    return results


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="spct demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a seconds-long reduced run (what CI tests)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--summarize", nargs="+", metavar="DIR",
                    help="run nothing: print one markdown summary (accuracy per seed and mean, each phenomenon's "
                         "interval and verdict per seed and pooled) of finished runs' DIR/results.json")
    args = ap.parse_args(argv)
    if args.summarize:
        from spct_jax.demo.summary import main as summarize

        return summarize(args.summarize)
    cfg = DemoConfig.quick(args.workdir, args.seed) if args.quick else DemoConfig(seed=args.seed, workdir=args.workdir)
    # Our own handler: libraries (absl via orbax) may already own the root logger, so basicConfig can be a no-op.
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(console)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        results = run(cfg, progress=not args.no_progress)
    except DemoStopped as e:
        log.error("%s", e)
        return 143  # 128 + SIGTERM
    print((Path(args.workdir) / "report.md").read_text())
    print(json.dumps({k: results[k] for k in ("stages", "scaling", "ablation", "wall_seconds", "seed")}, indent=1))
    return 0
