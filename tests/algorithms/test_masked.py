"""masked_sum / masked_mean / masked_var / masked_whiten against the loop references in `_reference.py`."""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.algorithms import masked_mean, masked_sum, masked_var, masked_whiten

from . import _reference as ref
from ._data import LAYOUTS, SEEDS, SHAPES, assert_matches, assert_padding_zero, bools, case, make_mask, randn, rows

DTYPES = (torch.float64, torch.float32)
CASES = list(itertools.product(SHAPES, LAYOUTS))


def _inputs(seed, B, T, layout, dtype=torch.float64, mask_bool=False):
    x = randn(seed, B, T, dtype=dtype, scale=3.0, shift=0.5)
    mask = make_mask(seed, B, T, layout)
    return x, (mask.bool() if mask_bool else mask.to(dtype))


# ------------------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("dim", [None, 0, 1, -1])
def test_masked_sum_and_mean_match_reference(shape, layout, dim):
    for seed in SEEDS:
        with case(seed=seed):
            for dtype, mask_bool in ((torch.float64, False), (torch.float32, True)):
                x, mask = _inputs(seed, *shape, layout, dtype, mask_bool)
                assert_matches(masked_sum(x, mask, dim=dim), ref.masked_sum(rows(x), bools(mask), dim), dtype, "sum")
                assert_matches(masked_mean(x, mask, dim=dim), ref.masked_mean(rows(x), bools(mask), dim), dtype, "mean")


@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("unbiased", [True, False])
def test_masked_var_matches_reference(shape, layout, unbiased):
    for seed in SEEDS:
        with case(seed=seed):
            for dtype, mask_bool in ((torch.float64, False), (torch.float32, True)):
                x, mask = _inputs(seed, *shape, layout, dtype, mask_bool)
                expected = ref.masked_var(rows(x), bools(mask), unbiased)
                assert_matches(masked_var(x, mask, unbiased=unbiased), expected, dtype)


@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_reference(shape, layout, shift_mean):
    for seed in SEEDS:
        with case(seed=seed):
            for dtype, mask_bool in ((torch.float64, False), (torch.float32, True)):
                x, mask = _inputs(seed, *shape, layout, dtype, mask_bool)
                out = masked_whiten(x, mask, shift_mean=shift_mean)
                assert_matches(out, ref.masked_whiten(rows(x), bools(mask), shift_mean), dtype)
                assert_padding_zero(out, mask, "masked_whiten")


# ------------------------------------------------------------------------------------- by hand
def test_hand_computed_statistics():
    # x = [[1, 2, 9], [4, 7, 7]], valid = 1, 2, 4 (the 9 and the 7s are padding).
    x = torch.tensor([[1.0, 2.0, 9.0], [4.0, 7.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.float64)
    # sum = 7, mean = 7/3; per row sums [3, 4], means [1.5, 4]; per column sums [5, 2, 0], means [2.5, 2, 0].
    assert masked_sum(x, mask).item() == pytest.approx(7.0)
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)
    assert masked_sum(x, mask, dim=1).tolist() == pytest.approx([3.0, 4.0])
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 4.0])
    assert masked_mean(x, mask, dim=0).tolist() == pytest.approx([2.5, 2.0, 0.0])  # empty column → 0
    # squared deviations from 7/3: 16/9 + 1/9 + 25/9 = 42/9 → unbiased 42/9/2 = 7/3, biased 42/9/3 = 14/9.
    assert masked_var(x, mask).item() == pytest.approx(7 / 3)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(14 / 9)


def test_hand_computed_whiten():
    # valid x = 1, 3, 5: mean 3, unbiased var (4 + 0 + 4)/2 = 4, std 2 → whitened −1, 0, 1 (up to the 1e-8).
    x = torch.tensor([[1.0, 3.0], [5.0, 100.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    s = 1 / math.sqrt(4 + 1e-8)
    torch.testing.assert_close(masked_whiten(x, mask), torch.tensor([[-2 * s, 0.0], [2 * s, 0.0]], dtype=torch.float64))
    # shift_mean=False adds the mean 3 back on valid tokens only: 3 − 2s, 3, 3 + 2s, and the padding stays 0.
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False),
                               torch.tensor([[3 - 2 * s, 3.0], [3 + 2 * s, 0.0]], dtype=torch.float64))


# ------------------------------------------------------------------------------------- edges: no NaN
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_valid_entries_give_zero_not_nan(dtype):
    x = torch.randn(3, 4, dtype=dtype)
    mask = torch.zeros(3, 4, dtype=dtype)
    assert masked_sum(x, mask).item() == 0
    assert masked_mean(x, mask).item() == 0
    assert masked_mean(x, mask, dim=1).tolist() == [0.0, 0.0, 0.0]
    assert masked_var(x, mask).item() == 0
    assert masked_var(x, mask, unbiased=False).item() == 0
    out = masked_whiten(x, mask)
    assert (out == 0).all()
    assert (masked_whiten(x, mask, shift_mean=False) == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_valid_entry(dtype):
    x = torch.tensor([[0.0, 0.0], [2.5, -7.0]], dtype=dtype)
    mask = torch.tensor([[0, 0], [1, 0]], dtype=dtype)
    assert masked_var(x, mask).item() == 0  # unbiased with n = 1: 0, not NaN or inf
    assert masked_var(x, mask, unbiased=False).item() == 0
    out = masked_whiten(x, mask)
    assert torch.isfinite(out).all() and (out == 0).all()  # x − mean = 0 at the only valid token
    expected = torch.tensor([[0.0, 0.0], [2.5, 0.0]], dtype=dtype)
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False), expected)


def test_mean_with_empty_row_along_dim_is_zero():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    mask = torch.tensor([[1, 1], [0, 0], [0, 1]])
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 0.0, 6.0])
    assert masked_sum(x, mask, dim=-1).tolist() == pytest.approx([3.0, 0.0, 6.0])


def test_padding_values_are_ignored():
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    other = x.clone()
    other[0, 2] = 1e6
    for fn in (masked_sum, masked_mean, masked_var):
        assert fn(x, mask).item() == fn(other, mask).item()
    torch.testing.assert_close(masked_whiten(x, mask), masked_whiten(other, mask))


# ------------------------------------------------------------------------------------- properties
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(1, 10), T=st.integers(1, 12), layout=st.sampled_from(LAYOUTS),
       scale=st.sampled_from([1e-2, 1.0, 50.0]))
def test_whitened_has_zero_mean_unit_unbiased_variance(seed, B, T, layout, scale):
    x = randn(seed, B, T, scale=scale, shift=3.0)
    mask = make_mask(seed, B, T, layout)
    out = masked_whiten(x, mask)
    assert_padding_zero(out, mask)
    n = int(mask.sum())
    var = ref.masked_var(rows(x), bools(mask))
    if n >= 2 and var > 1e-6:
        assert abs(ref.masked_mean(rows(out), bools(mask))) < 1e-6
        # exactly var / (var + 1e-8), i.e. 1 up to the epsilon
        assert ref.masked_var(rows(out), bools(mask), unbiased=True) == pytest.approx(var / (var + 1e-8), abs=1e-6)
    # whitening is invariant to a shift and a positive scale of the input (up to the 1e-8 epsilon)
    if n >= 2 and ref.masked_var(rows(x), bools(mask)) > 1e-2:
        torch.testing.assert_close(masked_whiten(2.0 * x - 5.0, mask), out, atol=1e-6, rtol=1e-6)
