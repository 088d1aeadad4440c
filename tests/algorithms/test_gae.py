"""Generalized advantage estimation against the backward loop (and the closed-form sum) in `_reference.py`."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.algorithms import gae

from . import _reference as ref
from ._data import LAYOUTS, SEEDS, SHAPES, assert_matches, assert_padding_zero, bools, case, make_mask, randn, rows

CASES = list(itertools.product(SHAPES, LAYOUTS))
GAMMA_LAM = [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (0.5, 0.7), (1.0, 0.0), (0.0, 0.5)]


def _inputs(seed, B, T, layout, dtype=torch.float64):
    rewards = randn(seed, B, T, dtype=dtype)
    values = randn(seed + 1, B, T, dtype=dtype, scale=0.5)
    mask = make_mask(seed, B, T, layout).to(dtype)
    return rewards, values, mask


@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("gamma,lam", GAMMA_LAM)
def test_gae_matches_reference(shape, layout, gamma, lam):
    for seed in SEEDS:
        with case(seed=seed):
            for dtype in (torch.float64, torch.float32):
                rewards, values, mask = _inputs(seed, *shape, layout, dtype)
                adv, ret = gae(rewards, values, mask, gamma, lam)
                exp_adv, exp_ret = ref.gae(rows(rewards), rows(values), bools(mask), gamma, lam)
                assert_matches(adv, exp_adv, dtype, "advantages")
                assert_matches(ret, exp_ret, dtype, "returns")
                assert_padding_zero(adv, mask, "advantages")
                assert_padding_zero(ret, mask, "returns")


@pytest.mark.parametrize("seed", SEEDS)
def test_references_agree_with_each_other(seed):
    # The backward recursion and the closed-form Σ (γλ)^l δ_{t+l} are two independent readings of the spec.
    rewards, values, mask = _inputs(seed, 6, 8, "mixed")
    for gamma, lam in GAMMA_LAM:
        recursion, _ = ref.gae(rows(rewards), rows(values), bools(mask), gamma, lam)
        closed_form = ref.gae_by_sum(rows(rewards), rows(values), bools(mask), gamma, lam)
        torch.testing.assert_close(torch.tensor(recursion), torch.tensor(closed_form))
        adv, _ = gae(rewards, values, mask, gamma, lam)
        assert_matches(adv, closed_form)


def test_hand_computed_gae():
    # rewards [0, 0, 1], values [0.5, 0.6, 0.7], γ = 0.9, λ = 0.8 (γλ = 0.72):
    #   t=2: δ = 1 + 0.9·0 − 0.7 = 0.3                 A = 0.3
    #   t=1: δ = 0 + 0.9·0.7 − 0.6 = 0.03              A = 0.03 + 0.72·0.3   = 0.246
    #   t=0: δ = 0 + 0.9·0.6 − 0.5 = 0.04              A = 0.04 + 0.72·0.246 = 0.21712
    # returns = A + V = [0.71712, 0.846, 1.0]
    expected_adv = [0.21712, 0.246, 0.3]
    expected_ret = [0.71712, 0.846, 1.0]
    # Row 0: right-padded with garbage in the padding. Row 1: left-padded. Row 2: a hole at t=1.
    # Row 3: empty. All three non-empty rows hold the same valid sequence, so they share the numbers.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0],
                            [9.0, 0.0, 0.0, 1.0],
                            [0.0, 7.0, 0.0, 1.0],
                            [3.0, 3.0, 3.0, 3.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7, 4.0],
                           [8.0, 0.5, 0.6, 0.7],
                           [0.5, -6.0, 0.6, 0.7],
                           [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.float64)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    z = 0.0
    torch.testing.assert_close(adv, torch.tensor([expected_adv + [z], [z] + expected_adv,
                                                  [expected_adv[0], z] + expected_adv[1:], [z] * 4],
                                                 dtype=torch.float64))
    torch.testing.assert_close(ret, torch.tensor([expected_ret + [z], [z] + expected_ret,
                                                  [expected_ret[0], z] + expected_ret[1:], [z] * 4],
                                                 dtype=torch.float64))


# ------------------------------------------------------------------------------------- properties
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(1, 8), T=st.integers(1, 10), layout=st.sampled_from(LAYOUTS))
def test_gamma_lambda_one_is_reward_to_go_minus_value(seed, B, T, layout):
    rewards, values, mask = _inputs(seed, B, T, layout)
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    m = bools(mask)
    for i in range(B):
        valid = ref.valid_positions(m[i])
        for j, t in enumerate(valid):
            reward_to_go = sum(rewards[i, k].item() for k in valid[j:])
            assert adv[i, t].item() == pytest.approx(reward_to_go - values[i, t].item(), abs=1e-9)
            assert ret[i, t].item() == pytest.approx(reward_to_go, abs=1e-9)  # returns = A + V = reward-to-go


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(1, 8), T=st.integers(1, 10), layout=st.sampled_from(LAYOUTS),
       gamma=st.sampled_from([0.0, 0.5, 0.99, 1.0]))
def test_lambda_zero_is_one_step_td_error(seed, B, T, layout, gamma):
    rewards, values, mask = _inputs(seed, B, T, layout)
    adv, ret = gae(rewards, values, mask, gamma, 0.0)
    m = bools(mask)
    for i in range(B):
        valid = ref.valid_positions(m[i])
        for j, t in enumerate(valid):
            v_next = values[i, valid[j + 1]].item() if j + 1 < len(valid) else 0.0
            td = rewards[i, t].item() + gamma * v_next - values[i, t].item()
            assert adv[i, t].item() == pytest.approx(td, abs=1e-9)
    torch.testing.assert_close(ret, (adv + values) * mask)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), layout=st.sampled_from(LAYOUTS))
def test_padding_inputs_are_ignored(seed, layout):
    rewards, values, mask = _inputs(seed, 5, 7, layout)
    padding = ~mask.bool()
    rewards2, values2 = rewards.clone(), values.clone()
    rewards2[padding] = 123.0
    values2[padding] = -77.0
    for a, b in zip(gae(rewards, values, mask, 0.97, 0.9), gae(rewards2, values2, mask, 0.97, 0.9)):
        torch.testing.assert_close(a, b)


def test_all_padding_batch_no_nan():
    rewards, values = torch.randn(3, 4), torch.randn(3, 4)
    adv, ret = gae(rewards, values, torch.zeros(3, 4), 1.0, 0.95)
    assert (adv == 0).all() and (ret == 0).all()


def test_bool_mask_same_as_float():
    rewards, values, mask = _inputs(2, 5, 6, "holes")
    for a, b in zip(gae(rewards, values, mask, 0.9, 0.8), gae(rewards, values, mask.bool(), 0.9, 0.8)):
        torch.testing.assert_close(a, b)
