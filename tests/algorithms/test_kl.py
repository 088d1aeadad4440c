"""approx_kl (k1/k2/k3) and kl_penalized_rewards against the loop references."""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.algorithms import approx_kl, kl_penalized_rewards

from . import _reference as ref
from ._data import (LAYOUTS, SEEDS, SHAPES, assert_matches, assert_padding_zero, bools, case, logprobs_like,
                    make_mask, randn, rows)

ESTIMATORS = ("k1", "k2", "k3")
CASES = list(itertools.product(SHAPES, LAYOUTS))


@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_approx_kl_matches_reference(shape, layout, estimator):
    for seed in SEEDS:
        with case(seed=seed):
            B, T = shape
            for dtype in (torch.float64, torch.float32):
                logp, logp_ref = logprobs_like(seed, B, T, dtype), logprobs_like(seed + 100, B, T, dtype)
                mask = make_mask(seed, B, T, layout).to(dtype)
                out = approx_kl(logp, logp_ref, estimator=estimator, mask=mask)
                assert_matches(out, ref.approx_kl(rows(logp), rows(logp_ref), estimator, bools(mask)), dtype)
                assert_padding_zero(out, mask, f"approx_kl {estimator}")
                # without a mask every position is an estimate
                assert_matches(approx_kl(logp, logp_ref, estimator=estimator),
                               ref.approx_kl(rows(logp), rows(logp_ref), estimator, None), dtype)
                # a bool mask means the same as a float one
                assert_matches(approx_kl(logp, logp_ref, estimator=estimator, mask=mask.bool()), rows(out), dtype)


def test_default_estimator_is_k1():
    logp, logp_ref = logprobs_like(0, 2, 3), logprobs_like(1, 2, 3)
    torch.testing.assert_close(approx_kl(logp, logp_ref), logp - logp_ref)


def test_hand_computed_estimators():
    # logp = −1, logp_ref = −2: log-ratio logp − ref = 1.
    # k1 = 1;  k2 = ½·1² = 0.5;  k3 = exp(ref − logp) − 1 − (ref − logp) = e^{−1} − 1 + 1 = 0.36787944...
    logp = torch.tensor([[-1.0, -0.5]], dtype=torch.float64)
    logp_ref = torch.tensor([[-2.0, -0.5]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    assert approx_kl(logp, logp_ref, "k1", mask)[0].tolist() == pytest.approx([1.0, 0.0])
    assert approx_kl(logp, logp_ref, "k2", mask)[0].tolist() == pytest.approx([0.5, 0.0])
    assert approx_kl(logp, logp_ref, "k3", mask)[0].tolist() == pytest.approx([math.exp(-1), 0.0])
    # the other direction: logp − ref = −1 → k1 = −1, k2 = 0.5, k3 = e − 1 − 1 = 0.71828...
    assert approx_kl(logp_ref, logp, "k1")[0, 0].item() == pytest.approx(-1.0)
    assert approx_kl(logp_ref, logp, "k2")[0, 0].item() == pytest.approx(0.5)
    assert approx_kl(logp_ref, logp, "k3")[0, 0].item() == pytest.approx(math.e - 2)


def test_unknown_estimator_lists_valid_names():
    logp = torch.zeros(1, 2)
    with pytest.raises(ValueError) as excinfo:
        approx_kl(logp, logp, estimator="k4")
    for name in ESTIMATORS:
        assert name in str(excinfo.value)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), spread=st.sampled_from([1e-4, 0.1, 1.0, 5.0, 20.0]))
def test_k2_k3_nonnegative_and_all_zero_when_equal(seed, spread):
    logp = randn(seed, 5, 6, scale=spread, shift=-2.0)
    logp_ref = randn(seed + 1, 5, 6, scale=spread, shift=-2.0)
    assert (approx_kl(logp, logp_ref, "k2") >= 0).all()
    assert (approx_kl(logp, logp_ref, "k3") >= 0).all()
    for estimator in ESTIMATORS:
        assert (approx_kl(logp, logp.clone(), estimator) == 0).all()


# ------------------------------------------------------------------------------------- kl_penalized_rewards
@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("estimator,score_clip", [("k1", None), ("k2", 0.5), ("k3", None), ("k1", 1.0)])
def test_kl_penalized_rewards_match_reference(shape, layout, estimator, score_clip):
    for seed in SEEDS:
        with case(seed=seed):
            B, T = shape
            for dtype in (torch.float64, torch.float32):
                logp, logp_ref = logprobs_like(seed, B, T, dtype), logprobs_like(seed + 7, B, T, dtype)
                scores = randn(seed, B, dtype=dtype, scale=2.0)
                mask = make_mask(seed, B, T, layout).to(dtype)
                kl_coef = 0.1 + 0.05 * seed
                rewards, kl = kl_penalized_rewards(scores, logp, logp_ref, mask, kl_coef, estimator=estimator,
                                                   score_clip=score_clip)
                exp_rewards, exp_kl = ref.kl_penalized_rewards(rows(scores), rows(logp), rows(logp_ref), bools(mask),
                                                               kl_coef, estimator, score_clip)
                assert_matches(rewards, exp_rewards, dtype, "rewards")
                assert_matches(kl, exp_kl, dtype, "kl")
                assert_padding_zero(rewards, mask, "rewards")
                assert_padding_zero(kl, mask, "kl")


def test_kl_penalized_rewards_hand_computed():
    # Row 0 right-padded (valid t=0,1), row 1 left-padded (valid t=1,2), row 2 with a hole (valid t=0,2),
    # row 3 empty. k1 with kl_coef 0.5.
    logp = torch.tensor([[-1.0, -2.0, -3.0],
                         [-1.0, -1.0, -1.0],
                         [-0.5, -9.0, -0.5],
                         [-1.0, -1.0, -1.0]], dtype=torch.float64)
    logp_ref = torch.tensor([[-1.5, -1.0, -3.0],
                             [-1.0, -2.0, -0.5],
                             [-1.0, -9.0, -1.5],
                             [-2.0, -2.0, -2.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1], [0, 0, 0]], dtype=torch.float64)
    scores = torch.tensor([10.0, -3.0, 2.0, 5.0], dtype=torch.float64)
    rewards, kl = kl_penalized_rewards(scores, logp, logp_ref, mask, kl_coef=0.5)
    # kl = logp − ref on valid tokens: row0 [0.5, −1, ·], row1 [·, 1, −0.5], row2 [0.5, ·, 1], row3 all ·
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0], [0.0, 1.0, -0.5], [0.5, 0.0, 1.0], [0.0, 0.0, 0.0]],
                                                dtype=torch.float64))
    # −0.5·kl, plus the score at the last valid token: row0 t=1: 0.5 + 10; row1 t=2: 0.25 − 3;
    # row2 t=2: −0.5 + 2; row3 has no valid token, so its score 5 goes nowhere.
    expected = torch.tensor([[-0.25, 10.5, 0.0], [0.0, -0.5, -2.75], [-0.25, 0.0, 1.5], [0.0, 0.0, 0.0]],
                            dtype=torch.float64)
    torch.testing.assert_close(rewards, expected)
    # score_clip=2.5 clamps 10 → 2.5 and −3 → −2.5; 2 is inside.
    rewards, _ = kl_penalized_rewards(scores, logp, logp_ref, mask, kl_coef=0.5, score_clip=2.5)
    expected[0, 1], expected[1, 2] = 0.5 + 2.5, 0.25 - 2.5
    torch.testing.assert_close(rewards, expected)


def test_kl_penalized_rewards_zero_coef_places_only_scores():
    mask = make_mask(3, 6, 5, "mixed")
    logp, logp_ref = logprobs_like(1, 6, 5), logprobs_like(2, 6, 5)
    scores = torch.arange(1.0, 7.0, dtype=torch.float64)
    rewards, _ = kl_penalized_rewards(scores, logp, logp_ref, mask, kl_coef=0.0)
    # the total reward of each row is its score (or 0 for an empty row)
    expected_totals = [s if any(m) else 0.0 for s, m in zip(scores.tolist(), bools(mask))]
    assert rewards.sum(-1).tolist() == pytest.approx(expected_totals)
    assert int((rewards != 0).sum()) == sum(1 for total in expected_totals if total != 0)
