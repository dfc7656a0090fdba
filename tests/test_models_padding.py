"""models.padding.pad_rows: the one routine that turns token lists into (ids, mask) for every caller."""
import numpy as np
import pytest

from spct_jax.models.padding import MASK_DTYPE, pad_rows

ROWS = [[5, 6, 7], [8], []]


def test_right_padding_puts_tokens_first():
    ids, mask = pad_rows(ROWS, pad_id=0, length=4)
    assert ids.dtype == np.int32 and mask.dtype == MASK_DTYPE == np.bool_
    assert ids.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0]]
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False], [False] * 4]


def test_left_padding_puts_tokens_last():
    ids, mask = pad_rows(ROWS, pad_id=9, length=4, side="left")
    assert ids.tolist() == [[9, 5, 6, 7], [9, 9, 9, 8], [9, 9, 9, 9]]
    assert mask.tolist() == [[False, True, True, True], [False, False, False, True], [False] * 4]


def test_length_defaults_to_the_longest_row_rounded_to_multiple():
    assert pad_rows(ROWS, pad_id=0)[0].shape == (3, 3)
    assert pad_rows(ROWS, pad_id=0, multiple=8)[0].shape == (3, 8)
    assert pad_rows([[1] * 8], pad_id=0, multiple=8)[0].shape == (1, 8)  # already a multiple: unchanged
    assert pad_rows([], pad_id=0)[0].shape == (0, 0)
    with pytest.raises(ValueError, match="multiple"):
        pad_rows(ROWS, pad_id=0, multiple=0)


def test_num_rows_adds_all_padding_filler_rows():
    ids, mask = pad_rows([[1, 2]], pad_id=3, length=2, num_rows=3)
    assert ids.tolist() == [[1, 2], [3, 3], [3, 3]]
    assert mask.tolist() == [[True, True], [False, False], [False, False]]
    with pytest.raises(ValueError, match="fewer than"):
        pad_rows(ROWS, pad_id=0, num_rows=2)


def test_an_empty_row_is_all_padding_on_either_side():
    for side in ("right", "left"):
        ids, mask = pad_rows([[]], pad_id=4, length=2, side=side)
        assert ids.tolist() == [[4, 4]] and not mask.any()


def test_a_row_longer_than_length_is_an_error_not_a_cut():
    with pytest.raises(ValueError, match="row 0 has 3 tokens, more than length 2"):
        pad_rows([[1, 2, 3]], pad_id=0, length=2)
    with pytest.raises(ValueError, match="side"):
        pad_rows(ROWS, pad_id=0, side="middle")


def test_accepts_tuples_and_arrays():
    ids, _ = pad_rows([(1, 2), np.asarray([3], np.int64)], pad_id=0, length=2)
    assert ids.tolist() == [[1, 2], [3, 0]]
