"""pairwise_reward_loss (Bradley–Terry) against the reference, by hand, and at extreme differences."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.algorithms import pairwise_reward_loss

from . import _reference as ref
from ._data import assert_matches, randn


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("B", [1, 2, 7, 33])
@pytest.mark.parametrize("margin_kind", ["none", "scalar", "per-pair"])
def test_matches_reference(seed, B, margin_kind):
    for dtype in (torch.float64, torch.float32):
        chosen, rejected = randn(seed, B, dtype=dtype, scale=3.0), randn(seed + 1, B, dtype=dtype, scale=3.0)
        margin = {"none": None, "scalar": 0.7, "per-pair": randn(seed + 2, B, dtype=dtype).abs()}[margin_kind]
        loss, accuracy = pairwise_reward_loss(chosen, rejected, margin=margin)
        ref_margin = margin.tolist() if torch.is_tensor(margin) else margin
        exp_loss, exp_acc = ref.pairwise_reward_loss(chosen.tolist(), rejected.tolist(), ref_margin)
        assert_matches(loss, exp_loss, dtype, "loss")
        assert_matches(accuracy, exp_acc, dtype, "accuracy")


def test_hand_computed():
    # c − r = [2, 0, −1]: −log σ(2) = log(1 + e^{−2}) = 0.126928, −log σ(0) = log 2 = 0.693147,
    # −log σ(−1) = log(1 + e) = 1.313262 → mean 0.711112.
    # accuracy: only 2 > 0 counts (a tie is not a win) → 1/3.
    chosen = torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)
    rejected = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    loss, accuracy = pairwise_reward_loss(chosen, rejected)
    expected = (math.log1p(math.exp(-2)) + math.log(2) + math.log1p(math.e)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert accuracy.item() == pytest.approx(1 / 3)
    # margin 1 shifts every difference down by 1: [1, −1, −2]; accuracy still compares c with r only.
    loss, accuracy = pairwise_reward_loss(chosen, rejected, margin=1.0)
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.e) + math.log1p(math.exp(2))) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert accuracy.item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_stable_for_large_differences(dtype):
    # c − r = −200: −log σ(−200) = 200 + log(1 + e^{−200}) ≈ 200 (a naive log(sigmoid) gives inf).
    # c − r = +200: ≈ e^{−200} ≈ 0.
    chosen = torch.tensor([-100.0, 100.0], dtype=dtype, requires_grad=True)
    rejected = torch.tensor([100.0, -100.0], dtype=dtype)
    loss, accuracy = pairwise_reward_loss(chosen, rejected)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(100.0, rel=1e-2 if dtype == torch.bfloat16 else 1e-6)
    assert accuracy.item() == pytest.approx(0.5)
    loss.backward()
    assert torch.isfinite(chosen.grad).all()
    # d/dc mean(−log σ(c − r)) = −σ(r − c)/B: −1/2 for the badly ranked pair, ~0 for the other
    assert chosen.grad[0].item() == pytest.approx(-0.5, rel=1e-2)
    assert abs(chosen.grad[1].item()) < 1e-6


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(1, 20))
def test_loss_decreases_when_chosen_rises(seed, B):
    chosen, rejected = randn(seed, B), randn(seed + 1, B)
    leaf = chosen.clone().requires_grad_(True)
    loss, _ = pairwise_reward_loss(leaf, rejected)
    loss.backward()
    assert (leaf.grad < 0).all()  # raising a chosen score always lowers the loss
    assert loss.item() > 0
