"""DPO (sigmoid with label smoothing, IPO) against a slow per-pair loop, a hand case, and micro-batch
invariance: with the global pair count as normalizer, shards' losses and gradients sum to the full batch's."""
import math

import pytest
import torch

from rlhf.algorithms.preference import dpo_loss, sequence_logprobs

from . import _reference as ref
from ._data import assert_matches, randn


def four(seed, B, dtype):
    return [randn(seed + i, B, dtype=dtype, scale=3.0, shift=-8.0) for i in range(4)]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("B", [1, 5, 32])
@pytest.mark.parametrize("loss_type, smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_matches_the_slow_reference(seed, B, loss_type, smoothing):
    for dtype in (torch.float64, torch.float32):
        pc, pr, rc, rr = four(seed, B, dtype)
        loss, metrics = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type=loss_type, label_smoothing=smoothing)
        expected, margins, accuracies = ref.dpo_loss(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), 0.1,
                                                     loss_type, smoothing)
        assert_matches(loss, expected, dtype, "loss")
        assert_matches(metrics["rewards/margins"], margins, dtype, "margins")
        assert_matches(metrics["rewards/accuracies"], accuracies, dtype, "accuracies")


def test_hand_computed():
    # β = 0.1; chosen log-ratio −1 − (−2) = 1, rejected −3 − (−2) = −1: Δ = 2, h = 0.2.
    one = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    args = (one(-1.0), one(-3.0), one(-2.0), one(-2.0))
    loss, metrics = dpo_loss(*args, beta=0.1)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-12)  # 0.598139
    smoothed, _ = dpo_loss(*args, beta=0.1, label_smoothing=0.1)
    assert float(smoothed) == pytest.approx(0.9 * 0.598138869381 + 0.1 * 0.798138869381, abs=1e-9)
    ipo, _ = dpo_loss(*args, beta=0.1, loss_type="ipo")
    assert float(ipo) == pytest.approx((2 - 5) ** 2)  # (Δ − 1/(2β))²
    assert float(metrics["rewards/chosen"]) == pytest.approx(0.1) and float(metrics["rewards/rejected"]) == pytest.approx(-0.1)
    assert float(metrics["rewards/margins"]) == pytest.approx(0.2) and float(metrics["rewards/accuracies"]) == 1.0


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_shards_with_the_global_count_sum_to_the_full_batch_loss_and_gradient(loss_type):
    pc, pr, rc, rr = four(7, 12, torch.float64)
    full_pc = pc.clone().requires_grad_()
    loss, _ = dpo_loss(full_pc, pr, rc, rr, beta=0.5, loss_type=loss_type)
    loss.backward()
    shard_pc = pc.clone().requires_grad_()
    total = sum(dpo_loss(shard_pc[s], pr[s], rc[s], rr[s], beta=0.5, loss_type=loss_type, num_pairs=12)[0]
                for s in (slice(0, 5), slice(5, 6), slice(6, 12)))
    total.backward()
    torch.testing.assert_close(total, loss)
    torch.testing.assert_close(shard_pc.grad, full_pc.grad)


def test_extreme_margins_stay_finite_and_bad_arguments_are_named():
    big = torch.tensor([1e4, -1e4], dtype=torch.float32)
    loss, _ = dpo_loss(big, -big, torch.zeros(2), torch.zeros(2), beta=1.0, label_smoothing=0.1)
    assert torch.isfinite(loss)
    for kwargs, message in (({"loss_type": "hinge"}, "unknown DPO loss_type 'hinge'"), ({"beta": 0.0}, "beta must be > 0"),
                            ({"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)")):
        with pytest.raises(ValueError, match=message):
            dpo_loss(big, big, big, big, **{"beta": 0.1, **kwargs})


def test_sequence_logprobs_sum_response_tokens_only():
    logprobs_BS = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, -9.0]])
    mask_BS = torch.tensor([[0, 1, 1], [1, 1, 0]])
    assert sequence_logprobs(logprobs_BS, mask_BS).tolist() == [-5.0, -0.75]
