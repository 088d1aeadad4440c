"""Critic-free advantage estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++ ±baseline) against `_reference.py`."""
import itertools
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.algorithms import ADVANTAGE_ESTIMATORS, get_advantage_estimator

from . import _reference as ref
from ._data import LAYOUTS, SEEDS, SHAPES, assert_matches, assert_padding_zero, bools, case, make_mask, randn, rows

NAMES = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
GROUP_NAMES = ("grpo", "dr_grpo", "rloo")
CASES = list(itertools.product(SHAPES, LAYOUTS))


def make_group_ids(seed: int, mask: torch.Tensor) -> torch.Tensor:
    """Arbitrary, unsorted, non-contiguous prompt ids, so groups interleave; some groups are singletons.

    A row with no valid token gets a group of its own: whether such a row counts in its group's baseline is
    not pinned by the spec, so the reference comparison keeps it out of every other row's group.
    """
    rng = random.Random(seed)
    pool = [17, 3, 42, 99, 5, 1_000_003]
    ids = [rng.choice(pool) for _ in range(mask.shape[0])]
    for i, row in enumerate(bools(mask)):
        if not any(row):
            ids[i] = 500 + i
    return torch.tensor(ids, dtype=torch.long)


def _inputs(seed, B, T, layout, dtype=torch.float64):
    mask = make_mask(seed, B, T, layout).to(dtype)
    rewards = randn(seed, B, T, dtype=dtype)
    return rewards, mask, make_group_ids(seed, mask)


# ------------------------------------------------------------------------------------- registry
def test_registry_has_every_spec_name():
    for name in NAMES:
        assert name in ADVANTAGE_ESTIMATORS
        assert get_advantage_estimator(name) is ADVANTAGE_ESTIMATORS[name]


def test_unknown_estimator_lists_valid_names():
    with pytest.raises((KeyError, ValueError)) as excinfo:
        get_advantage_estimator("gae_but_misspelled")
    for name in NAMES:
        assert name in str(excinfo.value)


# ------------------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("name", NAMES)
def test_estimator_matches_reference(shape, layout, name):
    for seed in SEEDS:
        with case(seed=seed):
            fn = get_advantage_estimator(name)
            gammas = (1.0, 0.9, 0.5) if name.startswith("reinforce_pp") else (1.0,)
            for dtype, gamma in itertools.product((torch.float64, torch.float32), gammas):
                rewards, mask, group_ids = _inputs(seed, *shape, layout, dtype)
                adv, ret = fn(rewards, mask, group_ids, gamma=gamma, eps=1e-6)
                exp_adv, exp_ret = ref.ADVANTAGE_ESTIMATORS[name](rows(rewards), bools(mask), group_ids.tolist(),
                                                                  gamma, 1e-6)
                assert_matches(adv, exp_adv, dtype, f"{name} advantages")
                assert_matches(ret, exp_ret, dtype, f"{name} returns")
                assert_padding_zero(adv, mask, f"{name} advantages")
                assert_padding_zero(ret, mask, f"{name} returns")


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_eps_is_added_to_the_std(seed):
    rewards, mask, group_ids = _inputs(seed, 8, 5, "right")
    adv, _ = get_advantage_estimator("grpo")(rewards, mask, group_ids, eps=0.3)
    exp_adv, _ = ref.grpo(rows(rewards), bools(mask), group_ids.tolist(), eps=0.3)
    assert_matches(adv, exp_adv)


@pytest.mark.parametrize("name", NAMES)
def test_permuting_rows_permutes_the_outputs(name):
    # Group membership comes from the ids, never from row positions.
    rewards, mask, group_ids = _inputs(4, 9, 6, "mixed")
    fn = get_advantage_estimator(name)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    adv, ret = fn(rewards, mask, group_ids)
    adv_p, ret_p = fn(rewards[perm], mask[perm], group_ids[perm])
    torch.testing.assert_close(adv_p, adv[perm])
    torch.testing.assert_close(ret_p, ret[perm])


# ------------------------------------------------------------------------------------- by hand
def _outcome_rewards(scores, lengths, T):
    """One reward per row at its last valid token (the usual RLVR layout), right-padded."""
    rewards = torch.zeros(len(scores), T, dtype=torch.float64)
    mask = torch.zeros(len(scores), T, dtype=torch.float64)
    for i, (s, n) in enumerate(zip(scores, lengths)):
        mask[i, :n] = 1
        if n:
            rewards[i, n - 1] = s
    return rewards, mask


def test_hand_computed_group_estimators():
    # Group 7 = rows 0, 2, 3 with R = 1, 2, 3; group 4 = row 1 alone with R = 4.
    rewards, mask = _outcome_rewards([1.0, 4.0, 2.0, 3.0], [2, 1, 3, 2], T=3)
    group_ids = torch.tensor([7, 4, 7, 7])
    eps = 1e-6
    # GRPO: group mean 2, unbiased std sqrt((1 + 0 + 1)/2) = 1 → (R − 2)/(1 + eps); singleton → 4/(1 + eps).
    # Dr. GRPO: R − 2; singleton → 4.   RLOO: R − mean(others) = 1 − 2.5, 2 − 2, 3 − 1.5; singleton → 4.
    expected = {
        "grpo": [-1 / (1 + eps), 4 / (1 + eps), 0.0, 1 / (1 + eps)],
        "dr_grpo": [-1.0, 4.0, 0.0, 1.0],
        "rloo": [-1.5, 4.0, 0.0, 1.5],
    }
    for name, per_row in expected.items():
        adv, ret = get_advantage_estimator(name)(rewards, mask, group_ids, eps=eps)
        torch.testing.assert_close(adv, torch.tensor(per_row, dtype=torch.float64)[:, None] * mask)
        torch.testing.assert_close(ret, torch.tensor([1.0, 4.0, 2.0, 3.0], dtype=torch.float64)[:, None] * mask)


def test_hand_computed_reinforce_pp_returns():
    # rewards [0, 0, 1] with γ = 0.5: G = [0.25, 0.5, 1]. The second row has the same valid tokens around a
    # padding hole (t=1), so its discount counts valid steps only: G = [0.25, ·, 0.5, 1].
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 9.0, 0.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.float64)
    adv, ret = get_advantage_estimator("reinforce_pp")(rewards, mask, torch.tensor([0, 1]), gamma=0.5)
    torch.testing.assert_close(ret, torch.tensor([[0.25, 0.5, 1.0, 0.0], [0.25, 0.0, 0.5, 1.0]], dtype=torch.float64))
    # whitening over the 6 valid values {0.25, 0.5, 1} × 2: mean 7/12, unbiased var = 2·(1/9 + 1/144 + 25/144)/5
    mean = 7 / 12
    var = 2 * ((0.25 - mean) ** 2 + (0.5 - mean) ** 2 + (1 - mean) ** 2) / 5
    w = [(g - mean) / math.sqrt(var + 1e-8) for g in (0.25, 0.5, 1.0)]
    expected = torch.tensor([[w[0], w[1], w[2], 0.0], [w[0], 0.0, w[1], w[2]]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected)


def test_hand_computed_reinforce_pp_baseline():
    # Two rows of prompt 3 with R = 2 and 0 (group mean 1), one singleton row of prompt 8 with R = 1 (mean 0).
    # γ = 1: G row0 = [2, 2] (reward 2 at t=1), row1 = [0] then padding, row2 = [1, 1, 1] (reward 1 at t=2).
    rewards = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float64)
    adv, ret = get_advantage_estimator("reinforce_pp_baseline")(rewards, mask, torch.tensor([3, 3, 8]))
    expected_returns = torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(ret, expected_returns)
    # shifted: row0 [1, 1], row1 [−1], row2 [1, 1, 1] → valid values 1,1,−1,1,1,1: mean 4/6 = 2/3,
    # unbiased var = (5·(1/3)² + (5/3)²)/5 = (5/9 + 25/9)/5 = 2/3.
    s = 1 / math.sqrt(2 / 3 + 1e-8)
    hi, lo = (1 - 2 / 3) * s, (-1 - 2 / 3) * s
    torch.testing.assert_close(adv, torch.tensor([[hi, hi, 0.0], [lo, 0.0, 0.0], [hi, hi, hi]], dtype=torch.float64))


def test_grpo_normalizes_small_but_nonzero_spread():
    # R = [0, 1e-4] in one group: mean 5e-5, unbiased std = sqrt(2·(5e-5)²/1) = 7.0711e-5, so
    # A = ±5e-5/(7.0711e-5 + 1e-6) = ±0.69727 — GRPO scales a tiny spread up to order one (only eps limits it).
    rewards, mask = _outcome_rewards([0.0, 1e-4], [2, 3], T=3)
    adv, _ = get_advantage_estimator("grpo")(rewards, mask, torch.tensor([0, 0]), eps=1e-6)
    a = 5e-5 / (math.sqrt(2 * 5e-5 ** 2) + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([[-a], [a]], dtype=torch.float64) * mask)


@pytest.mark.parametrize("name", GROUP_NAMES)
@pytest.mark.parametrize("value", [1.0, 0.0, -3.0, 0.1])
def test_identical_rewards_in_a_group_give_zero_advantage(name, value):
    rewards, mask = _outcome_rewards([value] * 4 + [2.0], [3, 1, 2, 3, 2], T=3)
    group_ids = torch.tensor([5, 5, 5, 5, 6])
    adv, _ = get_advantage_estimator(name)(rewards, mask, group_ids)
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv[:4], torch.zeros(4, 3, dtype=torch.float64), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------- no NaN with empty rows
@pytest.mark.parametrize("name", NAMES)
def test_empty_rows_no_nan_anywhere(name):
    # An empty row inside a group, an empty singleton, and an all-empty group.
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.float64)
    rewards = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    group_ids = torch.tensor([1, 1, 1, 2, 3, 3])
    adv, ret = get_advantage_estimator(name)(rewards, mask, group_ids)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert_padding_zero(adv, mask)
    assert_padding_zero(ret, mask)
    # and a batch with no valid token at all
    adv, ret = get_advantage_estimator(name)(rewards, torch.zeros_like(mask), group_ids)
    assert (adv == 0).all() and (ret == 0).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(1, 10), T=st.integers(1, 8), layout=st.sampled_from(LAYOUTS),
       name=st.sampled_from(NAMES))
def test_random_batches_match_reference(seed, B, T, layout, name):
    rewards, mask, group_ids = _inputs(seed, B, T, layout)
    adv, ret = get_advantage_estimator(name)(rewards, mask, group_ids)
    exp_adv, exp_ret = ref.ADVANTAGE_ESTIMATORS[name](rows(rewards), bools(mask), group_ids.tolist())
    assert_matches(adv, exp_adv)
    assert_matches(ret, exp_ret)


@pytest.mark.parametrize("name", GROUP_NAMES)
def test_an_empty_row_is_not_a_sample_of_its_group(name):
    """A row with no valid token (batch padding) must not shift its group's baseline: the other rows
    get exactly the advantages they would get without it."""
    rewards, mask = _outcome_rewards([1.0, 0.0, 3.0], [2, 1, 2], T=3)
    group_ids = torch.tensor([7, 7, 7])
    padded_rewards = torch.cat([rewards, torch.full((1, 3), 9.0, dtype=rewards.dtype)])
    padded_mask = torch.cat([mask, torch.zeros(1, 3, dtype=mask.dtype)])
    adv, _ = get_advantage_estimator(name)(rewards, mask, group_ids)
    padded_adv, _ = get_advantage_estimator(name)(padded_rewards, padded_mask, torch.tensor([7, 7, 7, 7]))
    torch.testing.assert_close(padded_adv[:3], adv)
    assert (padded_adv[3] == 0).all()
