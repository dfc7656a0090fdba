"""`LikelihoodMetaRM`: a meta RM that scores a GRM trajectory by how likely a frozen LM finds it (not the paper's head).

The paper's meta RM ([P] §5, App. C.1) is a scalar head on the last token of an LM fine-tuned by BCE on Eq.-10 labels
(`spct_jax.models.scalar_head.ScalarRM`, `spct_jax.train.metarm`). At the demo's toy scale that head does not learn
to rank one item's samples (within-item ROC-AUC 0.49-0.52 over three seeds and seven variants; docs/demo.md), but
the cold-start GRM itself does: the mean log-probability it assigns to a sampled trajectory, read in the layout the
GRM was trained on, separates correct from wrong samples of the same item (within-item AUC 0.57-0.62, same note).
This module makes that a meta RM:

    score(item, perm, trajectory) = scale * mean_t log p_LM(y_t | GRM prompt(item, perm), y_<t) + bias

- the LM is frozen (typically the cold-start GRM, the paper's "pretrained GRM"); only `scale` and `bias` are
  learned, by maximum likelihood of Eq.-10 labels under BCE (the paper's meta-RM loss) with Newton's method;
- the mean runs over the trajectory's tokens only. The prompt's own log-probability varies with the response
  order, not with the trajectory, and summing it in removes the signal (same note: within-item AUC 0.51);
- a positive `scale` keeps the LM's ranking and a negative one reverses it, so the fit decides the direction; it
  cannot reorder samples otherwise. MetaRM@k uses only the ranking within an item.

Row layout of one scored sequence (right-padded; the target mask marks the trajectory's tokens):

    ids     [ <chat prefix> GRM prompt (item, perm) <assistant> | y_0 y_1 ... y_m <eos> | pad ... ]
    target  [  0 ...                                          0 |  1   1 ...  1    1  |  0  ... ]
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.prompts import build_prompt
from spct_jax.grm.voting import permute
from spct_jax.models.logprobs import sequence_logprobs
from spct_jax.models.padding import pad_rows
from spct_jax.models.transformer import Decoder
from spct_jax.roc import roc_auc
from spct_jax.sampling import length_bucketed_batches
from spct_jax.tokenizer import Tokenizer

CONFIG_NAME = "likelihood_meta_rm.json"
FORMAT = "spct-likelihood-meta-rm/1"


@dataclasses.dataclass(frozen=True)
class MetaInput:
    """One trajectory to score: the item, the response order it saw (perm[p] = original index) and its text."""
    item: PreferenceItem
    perm: tuple[int, ...]
    text: str


@dataclasses.dataclass(frozen=True)
class Fit:
    """The BCE fit's outcome, for logs and reports (the loss is the mean BCE per example, in nats)."""
    examples: int
    positives: int
    iterations: int
    loss: float
    loss_intercept_only: float  # the label entropy: what a constant score achieves
    auc: float  # of the raw feature on the training examples


@dataclasses.dataclass(frozen=True)
class LikelihoodMetaRM:
    lm: Decoder
    tokenizer: Tokenizer
    template: str  # the GRM prompt template the LM was trained with
    scale: float = 1.0
    bias: float = 0.0
    batch_size: int = 16

    def encode(self, x: MetaInput) -> tuple[list[int], int]:
        """(ids of prompt + trajectory, index of the trajectory's first token)."""
        user = build_prompt(x.item.context, permute(x.item.responses, x.perm), template=self.template)
        prompt = self.tokenizer.encode_chat([{"role": "user", "content": user}], add_generation_prompt=True)
        full = self.tokenizer.encode_chat([{"role": "user", "content": user}, {"role": "assistant", "content": x.text}],
                                          add_generation_prompt=False)
        if full[:len(prompt)] != prompt:
            raise ValueError(f"item {x.item.uid!r}: the tokenizer's chat template does not render the prompt as a prefix "
                             "of prompt + trajectory, so the trajectory's tokens cannot be located")
        return full, len(prompt)

    def features(self, inputs: Sequence[MetaInput]) -> np.ndarray:
        """Mean log p_LM of each trajectory's tokens [N] (float32). Rows are batched by length; each row's value
        depends on that row alone, so the result does not change with `batch_size`."""
        encoded = [self.encode(x) for x in inputs]
        graphdef, state = nnx.split(self.lm)
        out = np.zeros(len(encoded), np.float32)
        for idx, rows, length in length_bucketed_batches([len(seq) for seq, _ in encoded], self.batch_size):
            ids, mask = pad_rows([encoded[i][0] for i in idx], pad_id=self.tokenizer.pad_id, length=length,
                                 num_rows=rows)  # [rows, length], right-padded
            target = np.zeros((rows, length), bool)  # [rows, length]
            for r, i in enumerate(idx):
                seq, start_tok = encoded[i]
                target[r, start_tok:len(seq)] = True
            mask[len(idx):, 0] = True  # filler rows need one visible token
            res = _mean_target_logprob(graphdef, state, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(target))
            out[idx] = np.asarray(res)[: len(idx)]
        return out

    def scores(self, items: Sequence[PreferenceItem] | Sequence[MetaInput],
               trajectories: Sequence[Sequence[Any]] | None = None) -> np.ndarray:
        """Meta reward logits [N]: higher = more likely correct by Eq. 10.

        scores(items, trajectories) is the scorer's `MetaRM` interface (trajectories[i]: item i's samples, each
        with `.perm` and `.text`; N counts them item by item); scores(inputs) takes the `MetaInput`s directly."""
        inputs = list(items) if trajectories is None else [
            MetaInput(item=item, perm=tuple(t.perm), text=t.text)
            for item, ts in zip(items, trajectories, strict=True) for t in ts]
        return (self.scale * self.features(inputs) + self.bias).astype(np.float32)

    def save(self, folder: str | os.PathLike, *, lm_path: str | os.PathLike, fit: Fit | None = None) -> None:
        """Write the fitted scale and bias as JSON next to a reference to the LM (saved elsewhere, e.g. the demo's
        models/cold_start, or any `--model` value); a relative path is resolved against `folder` when loading."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        body = {"format": FORMAT, "lm": str(lm_path), "template": self.template, "scale": float(self.scale),
                "bias": float(self.bias), "fit": None if fit is None else dataclasses.asdict(fit)}
        tmp = folder / (CONFIG_NAME + ".partial")
        tmp.write_text(json.dumps(body, indent=1))
        tmp.replace(folder / CONFIG_NAME)


@functools.partial(jax.jit, static_argnums=0)
def _mean_target_logprob(graphdef, state, ids, mask, target):
    lm = nnx.merge(graphdef, state)
    # Logits are built 512 positions at a time (as in training): [B, T, V] whole would not fit for a 256k vocab.
    lp = sequence_logprobs(lm, ids, mask)  # [B, T]; lp[:, t] = log p(ids[t] | ids[<t]), 0 at t = 0
    # A trajectory never starts at position 0 (the prompt precedes it), so every target position has a logprob.
    return jnp.sum(jnp.where(target, lp, 0.0), axis=1) / jnp.maximum(1, jnp.sum(target, axis=1))  # [B]


def _bce(z: np.ndarray, y: np.ndarray) -> float:
    # log(1 + e^z) - y z, written to stay finite for large |z|.
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_scale_bias(feature: np.ndarray, labels: np.ndarray, *, max_iter: int = 50, tol: float = 1e-10,
                   ridge: float = 1e-6) -> tuple[float, float, int]:
    """Maximum-likelihood logistic regression of labels on one feature (BCE, Newton's method).

    The feature is standardised first so the Hessian is well conditioned; `ridge` keeps a separable or constant
    feature finite. Returns (scale, bias, iterations) in the feature's own units.
    """
    x = np.asarray(feature, np.float64)
    y = np.asarray(labels, np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"need one feature per label, got shapes {x.shape} and {y.shape}")
    mu, sd = x.mean(), x.std()
    sd = sd if sd > 0 else 1.0
    design = np.stack([(x - mu) / sd, np.ones_like(x)], axis=1)  # [N, 2]
    w = np.zeros(2)
    it = 0
    for it in range(1, max_iter + 1):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        grad = design.T @ (p - y) + ridge * w
        hess = (design * (p * (1 - p))[:, None]).T @ design + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.max(np.abs(step))) < tol:
            break
    scale = w[0] / sd
    return float(scale), float(w[1] - scale * mu), it


def fit_likelihood_meta_rm(lm: Decoder, tokenizer: Tokenizer, inputs: Sequence[MetaInput], labels: Sequence[bool], *,
                           template: str, batch_size: int = 16) -> tuple[LikelihoodMetaRM, Fit]:
    """Fit scale and bias on labelled trajectories (label = correct by Eq. 10); the LM is not changed."""
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} trajectories but {len(labels)} labels")
    rm = LikelihoodMetaRM(lm=lm, tokenizer=tokenizer, template=template, batch_size=batch_size)
    feat = rm.features(inputs)
    y = np.asarray(labels, np.float64)
    scale, bias, iters = fit_scale_bias(feat, y)
    pos = int(y.sum())
    base = float(np.clip(y.mean(), 1e-12, 1 - 1e-12))
    fit = Fit(examples=len(y), positives=pos, iterations=iters, loss=_bce(scale * feat + bias, y),
              loss_intercept_only=float(-(base * np.log(base) + (1 - base) * np.log(1 - base))),
              auc=float(roc_auc(y.astype(bool).tolist(), feat.tolist())) if 0 < pos < len(y) else float("nan"))
    return dataclasses.replace(rm, scale=scale, bias=bias), fit


def load_likelihood_meta_rm(folder: str | os.PathLike, *, load: Callable[[Any], tuple[Decoder, Tokenizer]] | None = None
                           ) -> LikelihoodMetaRM:
    """The likelihood meta RM in `folder` (local or gs://). load(spec) -> (lm, tokenizer) loads its LM (default
    `load_model(spec)`: float32 on one device); `grm/judge.py` passes one with a dtype and mesh, and reuses the GRM
    when both name the same checkpoint."""
    from spct_jax import paths
    from spct_jax.models.registry import load_model

    folder = paths.as_path(folder)
    path = folder / CONFIG_NAME
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if body.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' is {body.get('format')!r}, expected {FORMAT!r}")
    lm, tok = (load or load_model)(likelihood_lm_spec(folder, body["lm"]))
    return LikelihoodMetaRM(lm=lm, tokenizer=tok, template=body["template"], scale=float(body["scale"]),
                            bias=float(body["bias"]))


def likelihood_lm_spec(folder, lm: str) -> str:
    """The `--model` value of a likelihood meta RM's LM: a path relative to its folder (how the demo writes it)
    when that exists, else the value as written ("tiny-random", an absolute path, gs://...)."""
    from spct_jax import paths

    relative = paths.as_path(folder) / lm
    return str(relative) if not paths.is_remote(lm) and relative.exists() else lm


def is_likelihood_meta_rm(folder: str | os.PathLike) -> bool:
    from spct_jax import paths

    return (paths.as_path(folder) / CONFIG_NAME).is_file()


def load_meta_rm(folder: str | os.PathLike):
    """Either meta RM from its folder, in float32 on one device: a likelihood meta RM (`likelihood_meta_rm.json`)
    or an HF sequence-classification checkpoint (`ScalarRM`, the paper's). `grm.judge.load_meta_rm` loads either as
    a `MetaRM` with its tokenizer, dtype and mesh."""
    if is_likelihood_meta_rm(folder):
        return load_likelihood_meta_rm(folder)
    from spct_jax.models.scalar_head import load_scalar_rm

    return load_scalar_rm(folder)


__all__ = ["LikelihoodMetaRM", "MetaInput", "Fit", "fit_scale_bias", "fit_likelihood_meta_rm", "is_likelihood_meta_rm",
           "likelihood_lm_spec", "load_likelihood_meta_rm", "load_meta_rm"]
