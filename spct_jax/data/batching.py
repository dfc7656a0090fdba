"""Tokenise (prompt messages, target text) pairs for SFT, then bucket, pad and collate them deterministically.

Token layout of one example:
    input_ids = encode_chat(messages, add_generation_prompt=True) + encode(target) + [eos]
encode_chat adds BOS where the chat format wants it, exactly as for sampling prompts. The
prompt and the target are encoded separately, so the prompt/target boundary is exactly where the model starts
generating at inference time.

Loss-mask convention: loss_mask[t] = 1 iff token t is a target token (the target or the final eos), i.e. a
token the model must predict from position t - 1. A trainer computes, per row,
    sum_t loss_mask[t] * -log softmax(logits[t - 1])[input_ids[t]]
i.e. logits[:, :-1] against input_ids[:, 1:] weighted by loss_mask[:, 1:]. loss_mask[0] is always 0; prompt
and padding positions are 0. attention_mask[t] is True for real tokens and False for the right padding (bool, as
spct_jax.models.padding builds every mask).

Truncation policy, for an example longer than max_len (applied in order, stopping as soon as it fits):
  1. Drop the earliest conversation turns of `messages`. System messages at the start and the final message
     (the query, or the whole GRM prompt) are kept; turns go one exchange at a time (a turn plus any
     assistant turns after it) so the remaining conversation still starts with a user turn.
  2. If the record names a `trim_span` - the character range of the final message's content that holds the
     conversation context embedded in a GRM prompt - cut characters from the left of that span (the earliest
     context) and put `trim_marker` in their place, cutting as little as fits.
  3. If it still does not fit, drop the example and report it.
The target is never cut, and nothing outside `trim_span` in the final message (the GRM instructions and the
responses to be scored) is ever cut. Every trim and every drop is listed in the TokenizeReport.

Padding is deterministic: a row depends only on its example and the bucket length, never on the batch it is
in, so the same item yields the same tokens at any batch size.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from spct_jax.models.padding import pad_rows


class Tokenizer(Protocol):
    pad_id: int
    eos_id: int
    bos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class SFTRecord:
    """One training pair: the prompt as chat messages and the assistant text to learn.

    trim_span: optional (start, end) character offsets into messages[-1]["content"] that may be cut from the
        left when the example is too long (see the module docstring); None means the final message is never cut.
    """

    uid: str
    messages: Sequence[Mapping[str, str]]
    target: str
    trim_span: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Example:
    uid: str
    input_ids: np.ndarray  # int32 [L]
    loss_mask: np.ndarray  # float32 [L], see the module docstring for the alignment
    prompt_len: int
    turns_dropped: int = 0
    chars_trimmed: int = 0

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclasses.dataclass
class TokenizeReport:
    """uid -> why, for every example dropped, and uid -> what was cut, for every example truncated."""

    dropped: dict[str, str] = dataclasses.field(default_factory=dict)
    truncated: dict[str, str] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        return f"{len(self.truncated)} truncated, {len(self.dropped)} dropped"


def _encode_prompt(tok: Tokenizer, messages: list[dict]) -> list[int]:
    # The same call the sampler's prompts go through (GenerativeRewardModel.prompt_ids), so training prompts and
    # inference prompts are token-identical, BOS included exactly when the chat format wants it.
    return list(tok.encode_chat(list(messages), add_generation_prompt=True))


def _drop_one_exchange(messages: list[dict]) -> int:
    """Remove the earliest non-system turn plus any assistant turns after it; returns how many were removed."""
    start = 0
    while start < len(messages) - 1 and messages[start]["role"] == "system":
        start += 1
    removed = 0
    while start < len(messages) - 1 and (removed == 0 or messages[start]["role"] != "user"):
        del messages[start]
        removed += 1
    return removed


def tokenize(record: SFTRecord, tok: Tokenizer, *, max_len: int,
             trim_marker: str = "[...]") -> Example | str:
    """The Example, or the reason it cannot fit in max_len tokens (see the truncation policy above)."""
    if not record.messages:
        return "no prompt messages"
    target_ids = tok.encode(record.target) + [tok.eos_id]
    budget = max_len - len(target_ids)
    if budget <= 0:
        return f"the target alone needs {len(target_ids)} tokens (with eos), max_len is {max_len}"
    messages = [dict(m) for m in record.messages]
    prompt = _encode_prompt(tok, messages)
    dropped = 0
    while len(prompt) > budget:
        n = _drop_one_exchange(messages)
        if n == 0:
            break
        dropped += n
        prompt = _encode_prompt(tok, messages)
    trimmed = 0
    if len(prompt) > budget and record.trim_span is not None:
        content = messages[-1]["content"]
        start, end = record.trim_span
        if not 0 <= start <= end <= len(content):
            return f"trim_span {record.trim_span} is outside the final message ({len(content)} chars)"

        def cut(k: int) -> list[int]:
            msgs = messages[:-1] + [{**messages[-1], "content": content[:start] + trim_marker + content[start + k:]}]
            return _encode_prompt(tok, msgs)

        if end > start and len(cut(end - start)) <= budget:
            lo, hi = 1, end - start  # invariant: cut(hi) fits; find the least k that fits
            while lo < hi:
                mid = (lo + hi) // 2
                if len(cut(mid)) <= budget:
                    hi = mid
                else:
                    lo = mid + 1
            trimmed, prompt = hi, cut(hi)
    if len(prompt) > budget:
        return (f"the prompt needs {len(prompt)} tokens even after dropping {dropped} turns and all of its "
                f"trimmable context; {budget} are left after the {len(target_ids)}-token target (max_len {max_len})")
    ids = np.asarray(prompt + target_ids, dtype=np.int32)
    mask = np.zeros(len(ids), dtype=np.float32)
    mask[len(prompt):] = 1.0
    return Example(record.uid, ids, mask, len(prompt), dropped, trimmed)


def tokenize_all(records: Iterable[SFTRecord], tok: Tokenizer, *, max_len: int, trim_marker: str = "[...]",
                 ) -> tuple[list[Example], TokenizeReport]:
    examples: list[Example] = []
    report = TokenizeReport()
    for r in records:
        out = tokenize(r, tok, max_len=max_len, trim_marker=trim_marker)
        if isinstance(out, str):
            report.dropped[r.uid] = out
            continue
        if out.turns_dropped or out.chars_trimmed:
            report.truncated[r.uid] = f"dropped {out.turns_dropped} turns, cut {out.chars_trimmed} context chars"
        examples.append(out)
    return examples, report


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n: padded training lengths (fewer compiled shapes than exact
    lengths, less padding than powers of two)."""
    return -(-n // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Padded lengths, ascending; the last one is the longest example accepted."""

    lengths: tuple[int, ...]

    def __post_init__(self):
        if not self.lengths or list(self.lengths) != sorted(set(self.lengths)) or self.lengths[0] <= 0:
            raise ValueError(f"bucket lengths must be positive and strictly increasing, got {self.lengths}")

    @classmethod
    def multiples(cls, max_len: int, step: int = 64) -> "Buckets":
        """step, 2*step, ... up to max_len (max_len itself is the last bucket even if not a multiple)."""
        return cls(tuple(range(step, max_len, step)) + (max_len,))

    @classmethod
    def powers_of_two(cls, max_len: int, min_len: int = 64) -> "Buckets":
        out, n = [], min_len
        while n < max_len:
            out.append(n)
            n *= 2
        return cls(tuple(out) + (max_len,))

    @property
    def max_len(self) -> int:
        return self.lengths[-1]

    def of(self, length: int) -> int:
        for b in self.lengths:
            if length <= b:
                return b
        raise ValueError(f"length {length} exceeds the largest bucket {self.max_len}")


def collate(examples: Sequence[Example], bucket_len: int, *, pad_id: int = 0, rows: int | None = None,
            ) -> dict[str, np.ndarray]:
    """Right-pad to bucket_len: input_ids int32 [B, T], loss_mask float32 [B, T], attention_mask bool [B, T].

    rows: pad the batch to this many rows with all-padding rows (masks 0), for static shapes under jit.
    pad_id only fills masked positions; pass the tokenizer's so padded rows read naturally.
    """
    n = len(examples) if rows is None else rows
    if n < len(examples):
        raise ValueError(f"rows={rows} is fewer than the {len(examples)} examples")
    for ex in examples:  # checked here too, so the error names the example rather than its row
        if len(ex) > bucket_len:
            raise ValueError(f"example {ex.uid!r} has {len(ex)} tokens, more than bucket_len {bucket_len}")
    ids, attn = pad_rows([ex.input_ids for ex in examples], pad_id=pad_id, length=bucket_len, num_rows=n)  # [B, T]
    loss = np.zeros((n, bucket_len), dtype=np.float32)  # [B, T]
    for i, ex in enumerate(examples):
        loss[i, :len(ex)] = ex.loss_mask
    return {"input_ids": ids, "loss_mask": loss, "attention_mask": attn}


def batches(examples: Iterable[Example], batch_size: int, buckets: Buckets, *, pad_id: int = 0,
            fill_rows: bool = True) -> Iterator[tuple[list[str], dict[str, np.ndarray]]]:
    """(uids, collated arrays) per batch; each example goes to its own length's bucket, never a batch's.

    Examples keep their input order within a bucket; a batch is emitted as soon as its bucket holds batch_size
    examples, and the partial batches follow at the end in bucket order. With fill_rows every batch has
    batch_size rows (the missing ones are padding with zero masks).
    """
    pending: dict[int, list[Example]] = {b: [] for b in buckets.lengths}
    for ex in examples:
        b = buckets.of(len(ex))
        pending[b].append(ex)
        if len(pending[b]) == batch_size:
            yield [e.uid for e in pending[b]], collate(pending[b], b, pad_id=pad_id)
            pending[b] = []
    for b, rest in pending.items():
        if rest:
            yield [e.uid for e in rest], collate(rest, b, pad_id=pad_id, rows=batch_size if fill_rows else None)
