"""The meta RM's data and training ([P] §5, App. C.1): a scalar head that predicts whether a GRM trajectory is correct.

Data: trajectories from non-hinted RFT sampling plus fresh samples from the GRM being guided (N = 3 per item, to
"alleviate the gap between training and inference policy"), each labelled by Eq. 10 and rendered with the meta-RM
template (App. G (c)). Both classes are kept; the balance is reported. Training is BCE on the last-token logit
(paper: lr 1e-5, batch 512) with the same pure, sharded step machinery as the other stages.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from spct_jax.data.schema import PreferenceItem
from spct_jax.roc import roc_auc
from spct_jax.grm.prompts import build_metarm_prompt
from spct_jax.grm.scorer import score_sequences
from spct_jax.grm.voting import permute
from spct_jax.grm.trajectories import Trajectory
from spct_jax.models.padding import pad_rows
from spct_jax.tokenizer import Tokenizer

# App. C.1: "The learning rate is 1 x 10^-5 and the batch size is 512 for the meta RM training."
PAPER_METARM_LR = 1e-5
PAPER_METARM_BATCH = 512
METARM_SALT = 7  # the guided GRM's samples are draws independent of RFT's (grm/trajectories.py, "One seed scheme")


@dataclasses.dataclass(frozen=True)
class MetaRMExample:
    uid: str
    ids: tuple[int, ...]  # chat-templated (user: context + responses, assistant: the trajectory)
    label: float  # 1.0 if the trajectory's scores are correct by Eq. 10
    origin: str  # "rft" (non-hinted RFT samples) or "guided" (samples of the GRM the meta RM will guide)


@dataclasses.dataclass(frozen=True)
class Balance:
    positives: int
    negatives: int
    dropped_too_long: int

    @property
    def positive_fraction(self) -> float:
        return self.positives / max(1, self.positives + self.negatives)


def metarm_examples(items: Sequence[PreferenceItem], trajectories: Sequence[Sequence[Trajectory]], tokenizer: Tokenizer,
                    *, origin: str, max_len: int) -> tuple[list[MetaRMExample], Balance]:
    """One example per trajectory, responses in the order that trajectory saw them."""
    out, dropped = [], 0
    for item, trajs in zip(items, trajectories):
        for t in trajs:
            user, assistant = build_metarm_prompt(item.context, permute(item.responses, t.perm), t.text)
            ids = tokenizer.encode_chat([{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
                                        add_generation_prompt=False)
            if len(ids) > max_len:
                dropped += 1  # reported in Balance, never silently
                continue
            out.append(MetaRMExample(uid=item.uid, ids=tuple(ids), label=1.0 if t.correct else 0.0, origin=origin))
    pos = sum(e.label > 0.5 for e in out)
    return out, Balance(positives=pos, negatives=len(out) - pos, dropped_too_long=dropped)


def metarm_batch(examples: Sequence[MetaRMExample], idx: Sequence[int], *, pad_id: int, length: int) -> dict[str, np.ndarray]:
    """Right-padded ids int32 / mask bool [B, T] and labels [B]; the scalar head reads the last real token of each row."""
    chosen = [examples[int(i)] for i in idx]
    ids, mask = pad_rows([e.ids for e in chosen], pad_id=pad_id, length=length)  # [B, T]
    labels = np.asarray([e.label for e in chosen], np.float32)  # [B]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def evaluate_metarm(rm, examples: Sequence[MetaRMExample], *, pad_id: int) -> dict[str, float]:
    """Held-out ROC-AUC (positive = correct trajectory) and accuracy at logit 0."""
    scores = score_sequences(rm, [e.ids for e in examples], pad_id=pad_id)
    return held_out_metrics([e.label > 0.5 for e in examples], scores)


def held_out_metrics(labels: Sequence[bool], scores: np.ndarray) -> dict[str, float]:
    """ROC-AUC of meta scores (logits) for correct trajectories (nan with one class), accuracy at logit 0, count."""
    labels = np.asarray(labels, bool)
    auc = roc_auc(labels.tolist(), np.asarray(scores).tolist()) if 0 < labels.sum() < len(labels) else float("nan")
    return {"auc": float(auc), "accuracy": float(np.mean((np.asarray(scores) > 0) == labels)), "n": float(len(labels))}
