"""Token lists -> padded model inputs: the one routine every caller (scoring, training batches) uses to build
`input_ids` and `attention_mask`.

Mask dtype: bool, always. The models read `attention_mask.astype(bool)` (Decoder.hidden_states, ScalarRM), so a
bool mask is what they take without a conversion, and one dtype means one compiled program per shape.

Side: "right" puts each row's tokens at columns [0, n) (training batches, whose loss masks are aligned to the
row's start); "left" puts them at [T - n, T) (prompts for generation, and the scorer, whose last column is then
every row's last token).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

MASK_DTYPE = np.bool_


def pad_rows(rows: Sequence[Sequence[int]], *, pad_id: int, length: int | None = None, num_rows: int | None = None,
             side: Literal["right", "left"] = "right", multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [B, T], mask bool [B, T]) with mask True exactly on each row's tokens and ids `pad_id` elsewhere.

    length: T; None = the longest row rounded up to `multiple` (a row longer than `length` is an error, never cut).
    num_rows: B; None = len(rows). Rows past len(rows) are all padding (mask all False): fillers for static shapes.
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', not {side!r}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, not {multiple}")
    longest = max((len(r) for r in rows), default=0)
    if length is None:
        length = -(-longest // multiple) * multiple  # ceil to a multiple
    b = len(rows) if num_rows is None else num_rows
    if b < len(rows):
        raise ValueError(f"num_rows={num_rows} is fewer than the {len(rows)} rows")
    ids = np.full((b, length), pad_id, np.int32)  # [B, T]
    mask = np.zeros((b, length), MASK_DTYPE)  # [B, T]
    for r, row in enumerate(rows):
        n = len(row)
        if n > length:
            raise ValueError(f"row {r} has {n} tokens, more than length {length}")
        cols = slice(0, n) if side == "right" else slice(length - n, length)
        ids[r, cols] = row
        mask[r, cols] = True
    return ids, mask


__all__ = ["MASK_DTYPE", "pad_rows"]
