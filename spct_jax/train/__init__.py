"""Training core: state and optimizer, the three stages' losses, pure sharded steps, checkpoints and the loop."""
from spct_jax.train.checkpoint import Checkpointer, install_sigterm_handler
from spct_jax.train.config import GRPOLossConfig, LoopConfig, OptimizerConfig
from spct_jax.train.loop import LoopResult, epoch_batches, run_training
from spct_jax.models.logprobs import sequence_logprobs, token_logprobs_from_logits  # re-exported for users
from spct_jax.train.losses import bce_loss, group_advantages, grpo_diagnostics, grpo_loss, k3_kl, nll_loss
from spct_jax.train.metrics import MetricsLogger, read_jsonl_metrics
from spct_jax.train.state import TrainState, create_train_state, make_optimizer
from spct_jax.train.steps import (LogprobFn, TrainStep, default_mesh, make_bce_step, make_grpo_step,
                                  make_logprob_fn, make_sft_step, make_train_step)

__all__ = [
    "Checkpointer", "install_sigterm_handler", "GRPOLossConfig", "LoopConfig", "OptimizerConfig", "LoopResult",
    "epoch_batches", "run_training", "bce_loss", "group_advantages", "grpo_diagnostics", "grpo_loss", "k3_kl",
    "nll_loss", "sequence_logprobs", "token_logprobs_from_logits", "MetricsLogger", "read_jsonl_metrics",
    "TrainState", "create_train_state", "make_optimizer", "LogprobFn", "TrainStep", "default_mesh", "make_bce_step",
    "make_grpo_step", "make_logprob_fn", "make_sft_step", "make_train_step",
]
