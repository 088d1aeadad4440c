"""Truncated importance sampling against hand-computed weights, and why scaling advantages is TIS."""
import math

import pytest
import torch

from rlhf.algorithms import apply_tis, get_policy_loss, tis_weights


def test_tis_weights_by_hand():
    old_BT = torch.tensor([[math.log(0.5), math.log(0.9), 0.0], [math.log(0.2), 0.0, 0.0]])
    rollout_BT = torch.tensor([[math.log(0.25), math.log(0.3), 0.0], [math.log(0.4), 0.0, 0.0]])
    mask_BT = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    weights_BT, metrics = tis_weights(old_BT, rollout_BT, mask_BT, cap=2.5)
    # ratios 0.5/0.25 = 2, 0.9/0.3 = 3 → capped at 2.5, 0.2/0.4 = 0.5; padding 0
    torch.testing.assert_close(weights_BT, torch.tensor([[2.0, 2.5, 0.0], [0.5, 0.0, 0.0]]))
    assert metrics["rollout/tis_weight_mean"] == pytest.approx((2.0 + 2.5 + 0.5) / 3)
    assert metrics["rollout/tis_capped_frac"] == pytest.approx(1 / 3)
    assert metrics["rollout/tis_ratio_mean"] == pytest.approx((2.0 + 3.0 + 0.5) / 3)
    with pytest.raises(ValueError, match="cap must be >= 1"):
        tis_weights(old_BT, rollout_BT, mask_BT, cap=0.5)


def test_weights_carry_no_gradient():
    old_BT = torch.zeros(1, 2, requires_grad=True)
    weights_BT, _ = tis_weights(old_BT, torch.full((1, 2), -0.1), torch.ones(1, 2), cap=2.0)
    assert not weights_BT.requires_grad


@pytest.mark.parametrize("loss_name, hyper", [("ppo", dict(clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=3.0)),
                                              ("importance_sampling", {}),
                                              ("cispo", dict(clip_eps_low=0.2, clip_eps_high=0.2))])
def test_scaled_advantages_give_the_weighted_per_token_gradient(loss_name, hyper):
    """∇ loss(A·w) = Σ_t w_t ∇ loss_t(A): a slow loop over tokens, one token's loss at a time."""
    g = torch.Generator().manual_seed(0)
    B, T = 3, 5
    mask_BT = (torch.rand(B, T, generator=g) > 0.2).float()
    old_BT = -torch.rand(B, T, generator=g)
    logp_BT = (old_BT + 0.4 * torch.randn(B, T, generator=g)).requires_grad_()
    adv_BT = torch.randn(B, T, generator=g)
    w_BT = torch.rand(B, T, generator=g) * 2
    loss_fn = get_policy_loss(loss_name)
    counts = dict(agg="token-mean", num_tokens=mask_BT.sum(), num_seqs=B)
    loss, _ = loss_fn(logp_BT, old_BT, apply_tis(adv_BT, w_BT), mask_BT, **counts, **hyper)
    (grad,) = torch.autograd.grad(loss, logp_BT)
    expected = torch.zeros(B, T)
    for b in range(B):
        for t in range(T):
            if not mask_BT[b, t]:
                continue
            one = torch.zeros(B, T)
            one[b, t] = 1.0
            loss_t, _ = loss_fn(logp_BT, old_BT, adv_BT, mask_BT * one, **counts, **hyper)
            expected += w_BT[b, t] * torch.autograd.grad(loss_t, logp_BT)[0]
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5)
