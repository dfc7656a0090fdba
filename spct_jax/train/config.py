"""Training hyper-parameters: the optimizer, the GRPO loss and the loop, with the paper's values named.

Sources. [P] = "Inference-Time Scaling for Generalist Reward Modeling" (arXiv 2504.02495 v3), App. C.1:
  "The learning rate is 5×10^-6 for the RFT stage and 4×10^-7 for the RL stage, and the batch size is 1024 for
   the RFT stage and 512 for the RL stage. Both stages are trained for 900 steps."
  "The learning rate is 1×10^-5 and the batch size is 512 for the meta RM training."
  GRPO: G = 4, beta = 0.08 (27B; 0.002 for 16B) (§3.2 / App. C.1).
Everything the paper does not give (optimizer, betas, warmup, schedule, weight decay, clipping, epsilon) is marked
"ours" (common practice: AdamW, cosine/constant, clip 1.0; epsilon 0.2 is GRPO's default from DeepSeekMath/PPO).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

Schedule = Literal["constant", "cosine"]
Aggregation = Literal["seq_mean_token_mean", "token_mean", "seq_sum"]

# -- paper values, [P] App. C.1 ------------------------------------------------------------------------------
RFT_LEARNING_RATE = 5e-6
RFT_BATCH_SIZE = 1024
RL_LEARNING_RATE = 4e-7
RL_BATCH_SIZE = 512  # [P] does not say whether 512 counts prompts or rollouts ([P] §3.2, App. C.1 Eq. 15).
META_RM_LEARNING_RATE = 1e-5
META_RM_BATCH_SIZE = 512
PAPER_STEPS = 900  # RFT and RL; the meta RM's step count is not given.
GRPO_GROUP_SIZE = 4  # G, [P] §3.2: "We set G = 4 for a better trade-off between efficiency and performance."
GRPO_BETA_27B = 0.08  # [P] App. C.1: grid {0, 0.01, 0.02, 0.08}; 0.08 "the most stable" for DeepSeek-GRM-27B.
GRPO_BETA_16B = 0.002  # [P] App. C.1, DeepSeek-GRM-16B.
GRPO_EPSILON = 0.2  # ours: [P] is silent; PPO / DeepSeekMath GRPO default.


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup, then a constant or cosine schedule, after global-norm clipping.

    Defaults are the RFT stage's ([P] lr 5e-6, 900 steps); every other default is ours.
    """

    learning_rate: float = RFT_LEARNING_RATE
    warmup_steps: int = 0  # ours
    schedule: Schedule = "constant"  # ours; "cosine" decays to `end_lr_ratio * learning_rate` at total_steps.
    total_steps: int = PAPER_STEPS
    end_lr_ratio: float = 0.0  # ours; only used by "cosine".
    weight_decay: float = 0.0  # ours; decoupled (AdamW), applied to matrices only (not norms or biases).
    b1: float = 0.9  # ours
    b2: float = 0.95  # ours (the common LLM fine-tuning value)
    eps: float = 1e-8  # ours
    clip_norm: float | None = 1.0  # ours (common practice); None disables clipping.

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"field 'schedule': unknown {self.schedule!r}, expected 'constant' or 'cosine'")
        if self.learning_rate < 0 or self.warmup_steps < 0 or self.total_steps <= 0:
            raise ValueError("fields 'learning_rate', 'warmup_steps' must be >= 0 and 'total_steps' > 0")
        if self.schedule == "cosine" and self.warmup_steps >= self.total_steps:
            raise ValueError(f"field 'warmup_steps' ({self.warmup_steps}) must be < total_steps ({self.total_steps})")


# Stage presets. Batch size lives with the data pipeline; it is recorded next to each for reference.
RFT_OPTIMIZER = OptimizerConfig(learning_rate=RFT_LEARNING_RATE, total_steps=PAPER_STEPS)
RL_OPTIMIZER = OptimizerConfig(learning_rate=RL_LEARNING_RATE, total_steps=PAPER_STEPS)
META_RM_OPTIMIZER = OptimizerConfig(learning_rate=META_RM_LEARNING_RATE, total_steps=PAPER_STEPS)  # steps: ours


@dataclasses.dataclass(frozen=True)
class GRPOLossConfig:
    """The GRPO objective's knobs ([P] Eq. 15, "the original setting of GRPO")."""

    epsilon: float = GRPO_EPSILON
    beta: float = GRPO_BETA_27B
    aggregation: Aggregation = "seq_mean_token_mean"  # Eq. 15: 1/G sum_i 1/|o_i| sum_t
    group_size: int = GRPO_GROUP_SIZE


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """What `run_training` does around the step: how long, how often to log and to checkpoint, and where."""

    workdir: str
    total_steps: int
    checkpoint_every: int = 100  # ours
    keep_checkpoints: int = 3  # ours
    async_checkpointing: bool = True
    log_every: int = 1
    progress_bar: bool = True

    def __post_init__(self):
        if self.total_steps <= 0 or self.checkpoint_every <= 0 or self.keep_checkpoints <= 0 or self.log_every <= 0:
            raise ValueError("LoopConfig: total_steps, checkpoint_every, keep_checkpoints, log_every must be > 0")
