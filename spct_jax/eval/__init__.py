"""Evaluation: the paper's benchmarks scored by their official rules from per-item predictions."""
from spct_jax.eval.benchmarks import BENCHMARKS, OVERALL_PARTS, overall, score_benchmark
from spct_jax.eval.metrics import TIE_RULES, expected_best_of_k, pick_credit, roc_auc
from spct_jax.eval.ppe import score_ppe
from spct_jax.eval.predictions import PredictionError, check_predictions, load_predictions
from spct_jax.eval.realmistake import score_realmistake
from spct_jax.eval.rewardbench import score_rewardbench
from spct_jax.eval.rmb import score_rmb

__all__ = [
    "BENCHMARKS", "OVERALL_PARTS", "PredictionError", "TIE_RULES", "check_predictions", "expected_best_of_k",
    "load_predictions", "overall", "pick_credit", "roc_auc", "score_benchmark", "score_ppe", "score_realmistake",
    "score_rewardbench", "score_rmb",
]
