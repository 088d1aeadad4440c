"""aggregate_loss, the policy-loss registry (PPO, IS, CISPO, DRO), value_loss and entropy_bonus.

Each loss is checked three ways: its value and its gradient against the per-token references in
`_reference.py` (the gradient there is derived by hand, not by autograd), hand-computed tokens, and the
micro-batch property: splitting a batch row-wise and summing the micro-batch losses computed with the
GLOBAL num_tokens / num_seqs reproduces the full-batch loss and gradient, for every aggregation mode.
"""
import itertools
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.algorithms import (POLICY_LOSSES, aggregate_loss, entropy_bonus, get_policy_loss, ppo_policy_loss,
                             value_loss)

from . import _reference as ref
from ._data import LAYOUTS, assert_matches, bools, case, logprobs_like, make_mask, randn, rows

AGGS = ref.AGG_MODES
POLICY_NAMES = ("ppo", "importance_sampling", "cispo", "dro")
SHAPES = ((1, 1), (1, 6), (3, 4), (6, 7), (11, 9))
SEEDS = range(4)
CASES = list(itertools.product(SHAPES, LAYOUTS))

# (registry name, hyper-parameters, per-token reference)
POLICY_VARIANTS = [
    ("ppo", {}, ref.ppo_token),
    ("ppo", dict(clip_eps_low=0.2, clip_eps_high=0.28), ref.ppo_token),
    ("ppo", dict(clip_eps_low=0.1, clip_eps_high=0.3, dual_clip=3.0), ref.ppo_token),
    ("importance_sampling", {}, ref.importance_sampling_token),
    ("cispo", dict(clip_eps_low=0.2, clip_eps_high=0.28), ref.cispo_token),
    ("cispo", dict(clip_eps_low=1.0, clip_eps_high=4.0), ref.cispo_token),
    ("dro", {}, ref.dro_token),
    ("dro", dict(beta=0.3), ref.dro_token),
]
VARIANT_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in hyper.items()) or 'defaults'}"
               for name, hyper, _ in POLICY_VARIANTS]


def _policy_inputs(seed, B, T, layout, dtype=torch.float64, spread=0.3):
    old = logprobs_like(seed, B, T, dtype)
    logp = (old + randn(seed + 1, B, T, dtype=dtype, scale=spread)).clamp(max=0.0)
    adv = randn(seed + 2, B, T, dtype=dtype)
    # with B < 3 there is no guaranteed full row, so keep every row non-empty there (no all-padding batch)
    mask = make_mask(seed, B, T, layout, allow_empty=B >= 3).to(dtype)
    return logp, old, adv, mask


def _global_normalizers(mask):
    n_row = mask.sum(-1)
    return int(mask.sum().item()), int((n_row > 0).sum().item())


def _call(fn, logp, *args, **kwargs):
    """Run a loss with logp (or values) as a fresh leaf; returns (loss, grad, metrics)."""
    leaf = logp.detach().clone().requires_grad_(True)
    loss, metrics = fn(leaf, *args, **kwargs)
    assert loss.dim() == 0, f"loss must be a 0-dim tensor, got shape {tuple(loss.shape)}"
    loss.backward()
    return loss, leaf.grad, metrics


# ==================================================================================== aggregate_loss
@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("agg", AGGS)
def test_aggregate_loss_matches_reference(shape, layout, agg):
    for seed in SEEDS:
        with case(seed=seed):
            B, T = shape
            loss = randn(seed, B, T, scale=2.0)
            mask = make_mask(seed, B, T, layout, allow_empty=B >= 3)  # B >= 3 always has a full row
            n_tok, n_seq = _global_normalizers(mask)
            for num_tokens, num_seqs in ((None, None), (n_tok + 5, n_seq + 2)):
                for m in (mask, mask.bool()):
                    leaf = loss.clone().requires_grad_(True)
                    out = aggregate_loss(leaf, m, agg=agg, num_tokens=num_tokens, num_seqs=num_seqs)
                    assert_matches(out, ref.aggregate_loss(rows(loss), bools(mask), agg, num_tokens, num_seqs))
                    out.backward()
                    weights = ref.aggregation_weights(bools(mask), agg, num_tokens, num_seqs)
                    assert_matches(leaf.grad, weights, msg="grad")


def test_aggregate_loss_hand_computed():
    # Per-token loss rows [1, 2, 3], [4, ·, ·], [·, ·, ·] (· = padding, holding garbage).
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, 60.0], [7.0, 8.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.float64)
    # token-mean: (1+2+3+4)/4 = 2.5; seq-mean-token-mean: (2 + 4)/2 = 3 (the empty row is not a sequence);
    # seq-mean-token-sum: (6 + 4)/2 = 5.
    assert aggregate_loss(loss, mask).item() == pytest.approx(2.5)  # token-mean is the default
    assert aggregate_loss(loss, mask, agg="seq-mean-token-mean").item() == pytest.approx(3.0)
    assert aggregate_loss(loss, mask, agg="seq-mean-token-sum").item() == pytest.approx(5.0)
    # explicit normalizers replace the batch's own counts: 10/8, 6/4, 10/4
    assert aggregate_loss(loss, mask, num_tokens=8).item() == pytest.approx(1.25)
    assert aggregate_loss(loss, mask, agg="seq-mean-token-mean", num_seqs=4).item() == pytest.approx(1.5)
    assert aggregate_loss(loss, mask, agg="seq-mean-token-sum", num_seqs=4).item() == pytest.approx(2.5)


def test_aggregate_loss_unknown_mode_lists_valid_names():
    with pytest.raises(ValueError) as excinfo:
        aggregate_loss(torch.zeros(2, 2), torch.ones(2, 2), agg="token-sum-of-squares")
    for name in AGGS:
        assert name in str(excinfo.value)


# ==================================================================================== micro-batch property
def _micro_batches(seed, mask, max_parts=4):
    """A random row partition (rows shuffled), every part holding at least one non-empty row."""
    rng = random.Random(seed)
    nonempty = [i for i, row in enumerate(bools(mask)) if any(row)]
    empty = [i for i, row in enumerate(bools(mask)) if not any(row)]
    rng.shuffle(nonempty)
    k = rng.randint(1, min(max_parts, len(nonempty)))
    cuts = sorted(rng.sample(range(1, len(nonempty)), k - 1)) if k > 1 else []
    parts = [nonempty[a:b] for a, b in zip([0] + cuts, cuts + [len(nonempty)])]
    for i in empty:
        parts[rng.randrange(len(parts))].append(i)
    return [torch.tensor(sorted(p)) for p in parts]


def _assert_micro_batch_invariance(fn, first, others, mask, parts, **kwargs):
    """Σ_parts fn(part, global normalizers) == fn(full batch) in value and in gradient wrt `first`."""
    n_tok, n_seq = _global_normalizers(mask)
    full_leaf = first.detach().clone().requires_grad_(True)
    full, _ = fn(full_leaf, *others, mask, **kwargs)
    full.backward()
    split_leaf = first.detach().clone().requires_grad_(True)
    total = 0.0
    for idx in parts:
        part_loss, _ = fn(split_leaf[idx], *(o[idx] for o in others), mask[idx],
                          num_tokens=n_tok, num_seqs=n_seq, **kwargs)
        total = total + part_loss
    total.backward()
    torch.testing.assert_close(total.detach(), full.detach(), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(split_leaf.grad, full_leaf.grad, atol=1e-10, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(2, 10), T=st.integers(1, 8), layout=st.sampled_from(LAYOUTS),
       agg=st.sampled_from(AGGS), variant=st.integers(0, len(POLICY_VARIANTS) - 1))
def test_policy_losses_are_micro_batch_invariant(seed, B, T, layout, agg, variant):
    name, hyper, _ = POLICY_VARIANTS[variant]
    logp, old, adv, mask = _policy_inputs(seed, B, T, layout)
    _assert_micro_batch_invariance(get_policy_loss(name), logp, (old, adv), mask, _micro_batches(seed, mask),
                                   agg=agg, **hyper)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("name,hyper,token_fn", POLICY_VARIANTS, ids=VARIANT_IDS)
def test_every_policy_loss_and_agg_is_micro_batch_invariant(seed, agg, name, hyper, token_fn):
    logp, old, adv, mask = _policy_inputs(seed, 9, 6, "mixed")
    _assert_micro_batch_invariance(get_policy_loss(name), logp, (old, adv), mask, _micro_batches(seed, mask),
                                   agg=agg, **hyper)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("clip_eps", [0.2, None])
def test_value_loss_is_micro_batch_invariant(seed, agg, clip_eps):
    values, old_values, returns, mask = _value_inputs(seed, 9, 6, "mixed")
    _assert_micro_batch_invariance(value_loss, values, (old_values, returns), mask, _micro_batches(seed, mask),
                                   agg=agg, clip_eps=clip_eps)


@pytest.mark.parametrize("agg", AGGS)
def test_aggregate_loss_is_micro_batch_invariant(agg):
    loss = randn(0, 8, 5)
    mask = make_mask(0, 8, 5, "mixed")
    _assert_micro_batch_invariance(lambda x, m, **kw: (aggregate_loss(x, m, **kw), None), loss, (), mask,
                                   _micro_batches(0, mask), agg=agg)


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("name,hyper,token_fn", POLICY_VARIANTS, ids=VARIANT_IDS)
def test_all_padding_micro_batch_contributes_zero(agg, name, hyper, token_fn):
    # A micro-batch whose rows are all empty (e.g. truncated responses) must add 0, not NaN, to the sum.
    logp, old, adv, _ = _policy_inputs(0, 3, 4, "right")
    mask = torch.zeros(3, 4, dtype=torch.float64)
    loss, grad, _ = _call(get_policy_loss(name), logp, old, adv, mask, agg=agg, num_tokens=10, num_seqs=4, **hyper)
    assert loss.item() == 0.0
    assert (grad == 0).all()
    values, old_values, returns, _ = _value_inputs(0, 3, 4, "right")
    loss, grad, _ = _call(value_loss, values, old_values, returns, mask, agg=agg, num_tokens=10, num_seqs=4)
    assert loss.item() == 0.0 and (grad == 0).all()


@pytest.mark.parametrize("agg", AGGS)
def test_all_padding_batch_with_default_normalizers_is_zero_not_nan(agg):
    # Like masked_mean over nothing: no valid token anywhere gives a 0 loss (and no NaN to poison a sum).
    mask = torch.zeros(2, 3, dtype=torch.float64)
    assert aggregate_loss(randn(0, 2, 3), mask, agg=agg).item() == 0.0
    logp, old, adv, _ = _policy_inputs(0, 2, 3, "right")
    for name, hyper, _ in POLICY_VARIANTS:
        loss, grad, _ = _call(get_policy_loss(name), logp, old, adv, mask, agg=agg, **hyper)
        assert loss.item() == 0.0 and (grad == 0).all(), name
    values, old_values, returns, _ = _value_inputs(0, 2, 3, "right")
    loss, grad, _ = _call(value_loss, values, old_values, returns, mask, agg=agg)
    assert loss.item() == 0.0 and (grad == 0).all()


# ==================================================================================== policy losses vs reference
def test_policy_registry_names_and_unknown_name():
    for name in POLICY_NAMES:
        assert name in POLICY_LOSSES
        assert get_policy_loss(name) is POLICY_LOSSES[name]
    with pytest.raises((KeyError, ValueError)) as excinfo:
        get_policy_loss("ppo2")
    for name in POLICY_NAMES:
        assert name in str(excinfo.value)


@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("name,hyper,token_fn", POLICY_VARIANTS, ids=VARIANT_IDS)
def test_policy_loss_and_gradient_match_reference(shape, layout, agg, name, hyper, token_fn):
    for seed in SEEDS:
        with case(seed=seed):
            B, T = shape
            logp, old, adv, mask = _policy_inputs(seed, B, T, layout)
            loss, grad, _ = _call(get_policy_loss(name), logp, old, adv, mask, agg=agg, **hyper)
            exp_loss, exp_grad, _ = ref.loss_and_grad(token_fn, bools(mask), [rows(logp), rows(old), rows(adv)],
                                                      agg, **hyper)
            assert_matches(loss, exp_loss, msg="loss")
            assert_matches(grad, exp_grad, msg="d loss / d logprobs")


@pytest.mark.parametrize("name,hyper,token_fn", POLICY_VARIANTS, ids=VARIANT_IDS)
def test_policy_loss_float32(name, hyper, token_fn):
    logp, old, adv, mask = _policy_inputs(3, 7, 9, "mixed", dtype=torch.float32)
    loss, grad, _ = _call(get_policy_loss(name), logp, old, adv, mask, **hyper)
    exp_loss, exp_grad, _ = ref.loss_and_grad(token_fn, bools(mask), [rows(logp), rows(old), rows(adv)], **hyper)
    assert_matches(loss, exp_loss, torch.float32)
    assert_matches(grad, exp_grad, torch.float32)


@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("hyper", [{}, dict(clip_eps_low=0.1, clip_eps_high=0.3, dual_clip=2.5)])
def test_ppo_metrics_match_reference(shape, layout, hyper):
    for seed in SEEDS:
        with case(seed=seed):
            logp, old, adv, mask = _policy_inputs(seed, *shape, layout, spread=0.5)
            _, _, metrics = _call(ppo_policy_loss, logp, old, adv, mask, **hyper)
            expected = ref.ppo_metrics(rows(logp), rows(old), bools(mask), rows(adv), **hyper)
            for key, value in expected.items():
                assert key in metrics, f"missing metric {key}"
                assert torch.is_tensor(metrics[key]) and metrics[key].dim() == 0, f"{key} must be a 0-dim tensor"
                assert_matches(metrics[key], value, msg=key)


def test_registry_ppo_is_ppo_policy_loss():
    logp, old, adv, mask = _policy_inputs(1, 5, 6, "holes", spread=0.5)
    for hyper in ({}, dict(clip_eps_low=0.1, clip_eps_high=0.3, dual_clip=2.0)):
        for agg in AGGS:
            a, _ = ppo_policy_loss(logp, old, adv, mask, agg=agg, **hyper)
            b, _ = get_policy_loss("ppo")(logp, old, adv, mask, agg=agg, **hyper)
            torch.testing.assert_close(a, b)


def test_ppo_hand_computed():
    # Five tokens, ε = 0.2 both sides (ratio r = exp(logp − old)):
    #   A= 1, r=1.5: max(−1.5, −1.2) = −1.2  clipped (r > 1.2), gradient 0
    #   A=−1, r=0.5: max( 0.5,  0.8) =  0.8  clipped (r < 0.8), gradient 0
    #   A= 1, r=0.9: max(−0.9, −0.9) = −0.9  inside the range,   gradient −A·r = −0.9
    #   A=−2, r=1.1: max( 2.2,  2.2) =  2.2  inside the range,   gradient −A·r = 2.2
    #   A=−1, r=4.0: max( 4.0,  1.2) =  4.0  unclipped (the PPO hole for A<0), gradient −A·r = 4
    # token-mean: (−1.2 + 0.8 − 0.9 + 2.2 + 4)/5 = 4.9/5 = 0.98; clip_frac 2/5;
    # ratio mean (1.5+0.5+0.9+1.1+4)/5 = 1.6, max 4, min 0.5.
    # With dual_clip c=3 the last token becomes min(4, 1·3) = 3 with gradient 0: loss 3.9/5 = 0.78, dual frac 1/5.
    old = torch.full((1, 6), -1.0, dtype=torch.float64)
    ratios = torch.tensor([[1.5, 0.5, 0.9, 1.1, 4.0, 1.0]], dtype=torch.float64)
    logp = old + ratios.log()
    adv = torch.tensor([[1.0, -1.0, 1.0, -2.0, -1.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.float64)  # the last token is padding
    loss, grad, metrics = _call(ppo_policy_loss, logp, old, adv, mask)
    assert loss.item() == pytest.approx(0.98)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, -0.9, 2.2, 4.0, 0.0]], dtype=torch.float64) / 5)
    assert metrics["clip_frac"].item() == pytest.approx(0.4)
    assert metrics["ratio_mean"].item() == pytest.approx(1.6)
    assert metrics["ratio_max"].item() == pytest.approx(4.0)
    assert metrics["ratio_min"].item() == pytest.approx(0.5)
    loss, grad, metrics = _call(ppo_policy_loss, logp, old, adv, mask, dual_clip=3.0)
    assert loss.item() == pytest.approx(0.78)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, -0.9, 2.2, 0.0, 0.0]], dtype=torch.float64) / 5)
    assert metrics["dual_clip_frac"].item() == pytest.approx(0.2)
    assert metrics["clip_frac"].item() == pytest.approx(0.4)


@pytest.mark.parametrize("dual_clip", [1.0, 0.5, 0.0, -2.0])
def test_ppo_dual_clip_must_exceed_one(dual_clip):
    logp, old, adv, mask = _policy_inputs(0, 2, 3, "right")
    with pytest.raises(ValueError):
        ppo_policy_loss(logp, old, adv, mask, dual_clip=dual_clip)


@pytest.mark.parametrize("name,hyper,token_fn", POLICY_VARIANTS, ids=VARIANT_IDS)
def test_ratio_one_gives_minus_mean_advantage_and_reinforce_gradient(name, hyper, token_fn):
    # logp == old: every ratio is 1, so PPO/IS reduce to −mean(A) with gradient −A/N (REINFORCE); CISPO's
    # gradient is the same −clip(1)·A/N = −A/N. Gradient descent then raises logp where A > 0.
    _, old, adv, mask = _policy_inputs(5, 6, 7, "mixed")
    n = mask.sum()
    loss, grad, metrics = _call(get_policy_loss(name), old.clone(), old, adv, mask, **hyper)
    if name in ("ppo", "importance_sampling"):
        assert loss.item() == pytest.approx(-(adv * mask).sum().item() / n.item(), abs=1e-10)
    if name == "dro":  # −(logp·A − 0) aggregated
        assert loss.item() == pytest.approx(-(old * adv * mask).sum().item() / n.item(), abs=1e-10)
    torch.testing.assert_close(grad, -adv * mask / n)
    assert ((grad * adv)[mask.bool()] <= 0).all()  # descent step −grad moves logp along the sign of A


def test_ppo_ratio_one_metrics():
    _, old, adv, mask = _policy_inputs(5, 6, 7, "mixed")
    _, _, metrics = _call(ppo_policy_loss, old.clone(), old, adv, mask)
    assert metrics["clip_frac"].item() == 0
    assert metrics["approx_kl"].item() == 0 and metrics["approx_kl_k3"].item() == 0
    for key in ("ratio_mean", "ratio_max", "ratio_min"):
        assert metrics[key].item() == pytest.approx(1.0)


def test_clipped_region_has_zero_gradient():
    # A > 0 with r > 1 + ε_high and A < 0 with r < 1 − ε_low sit in the flat part of the clipped objective.
    old = torch.zeros(1, 4, dtype=torch.float64) - 2.0
    logp = old + torch.tensor([[math.log(1.5), math.log(0.6), math.log(1.25), math.log(0.85)]], dtype=torch.float64)
    adv = torch.tensor([[2.0, -3.0, 1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.float64)
    _, grad, _ = _call(ppo_policy_loss, logp, old, adv, mask, clip_eps_low=0.1, clip_eps_high=0.3)
    # ε_low = 0.1, ε_high = 0.3: token 0 (A>0, r=1.5 > 1.3), token 1 (A<0, r=0.6 < 0.9) and token 3 (A<0,
    # r=0.85 < 0.9) are clipped → gradient 0; token 2 (r=1.25 inside) keeps −A·r/N = −1.25/4.
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, -1.25 / 4, 0.0]], dtype=torch.float64))
    # CISPO keeps a gradient there: −clip(r)·A/N with the clipped ratio as a constant weight.
    _, grad, _ = _call(get_policy_loss("cispo"), logp, old, adv, mask, clip_eps_low=0.1, clip_eps_high=0.3)
    torch.testing.assert_close(grad, torch.tensor([[-1.3 * 2.0, 0.9 * 3.0, -1.25 * 1.0, 0.9 * 1.0]],
                                                  dtype=torch.float64) / 4)


def test_importance_sampling_and_dro_hand_computed():
    # logp = −1, old = −1.5 → r = e^{0.5} = 1.6487; A = 2. IS: l = −r·A = −3.2974, dl/dlogp = −r·A.
    # DRO (β = 0.05): l = −(logp·A − ½β(logp − old)²) = −(−2 − 0.025·0.25) = 2.00625,
    #                 dl/dlogp = −(A − β(logp − old)) = −(2 − 0.025) = −1.975.
    logp = torch.tensor([[-1.0]], dtype=torch.float64)
    old = torch.tensor([[-1.5]], dtype=torch.float64)
    adv = torch.tensor([[2.0]], dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.float64)
    loss, grad, _ = _call(get_policy_loss("importance_sampling"), logp, old, adv, mask)
    assert loss.item() == pytest.approx(-2 * math.exp(0.5))
    assert grad.item() == pytest.approx(-2 * math.exp(0.5))
    loss, grad, _ = _call(get_policy_loss("dro"), logp, old, adv, mask)
    assert loss.item() == pytest.approx(2.00625)
    assert grad.item() == pytest.approx(-1.975)


@pytest.mark.parametrize("name,hyper,token_fn", POLICY_VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("agg", AGGS)
def test_empty_rows_no_nan_in_policy_losses(name, hyper, token_fn, agg):
    logp, old, adv, mask = _policy_inputs(2, 5, 4, "right")
    mask[1] = 0
    mask[4] = 0
    loss, grad, metrics = _call(get_policy_loss(name), logp, old, adv, mask, agg=agg, **hyper)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert (grad[~mask.bool()] == 0).all()
    for key, value in metrics.items():
        assert torch.isfinite(torch.as_tensor(value)).all(), f"metric {key} is {value}"


# ==================================================================================== value loss
def _value_inputs(seed, B, T, layout, dtype=torch.float64):
    old_values = randn(seed, B, T, dtype=dtype)
    values = old_values + randn(seed + 1, B, T, dtype=dtype, scale=0.4)
    returns = randn(seed + 2, B, T, dtype=dtype)
    mask = make_mask(seed, B, T, layout, allow_empty=B >= 3).to(dtype)
    return values, old_values, returns, mask


@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("clip_eps", [0.2, 0.05, None])
def test_value_loss_matches_reference(shape, layout, agg, clip_eps):
    for seed in SEEDS:
        with case(seed=seed):
            values, old_values, returns, mask = _value_inputs(seed, *shape, layout)
            loss, grad, metrics = _call(value_loss, values, old_values, returns, mask, clip_eps=clip_eps, agg=agg)
            columns = [rows(values), rows(old_values), rows(returns)]
            exp_loss, exp_grad, outs = ref.loss_and_grad(ref.value_token, bools(mask), columns, agg, clip_eps=clip_eps)
            assert_matches(loss, exp_loss, msg="value loss")
            assert_matches(grad, exp_grad, msg="d loss / d values")
            clipped = outs[2]
            assert_matches(metrics["value_clip_frac"], ref.masked_mean(clipped, bools(mask)), msg="value_clip_frac")


def test_value_loss_hand_computed():
    # ε = 0.2:
    #   V=1.5, V_old=1, R=1: ½·max(0.5², (1.2−1)²) = ½·0.25 = 0.125, unclipped, gradient V − R = 0.5
    #   V=1.5, V_old=1, R=2: ½·max(0.5², (1.2−2)²) = ½·0.64 = 0.32,  clipped, gradient 0
    #   V=0.9, V_old=1, R=0: inside the range, ½·0.81 = 0.405, gradient 0.9
    # token-mean: 0.85/3; value_clip_frac 1/3. Without clipping: ½(0.25 + 0.25 + 0.81)/3 = 0.655/3.
    values = torch.tensor([[1.5, 1.5, 0.9, 5.0]], dtype=torch.float64)
    old_values = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    returns = torch.tensor([[1.0, 2.0, 0.0, -5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.float64)
    loss, grad, metrics = _call(value_loss, values, old_values, returns, mask)
    assert loss.item() == pytest.approx(0.85 / 3)
    torch.testing.assert_close(grad, torch.tensor([[0.5, 0.0, 0.9, 0.0]], dtype=torch.float64) / 3)
    assert metrics["value_clip_frac"].item() == pytest.approx(1 / 3)
    loss, grad, metrics = _call(value_loss, values, old_values, returns, mask, clip_eps=None)
    assert loss.item() == pytest.approx(0.655 / 3)
    torch.testing.assert_close(grad, torch.tensor([[0.5, -0.5, 0.9, 0.0]], dtype=torch.float64) / 3)
    assert metrics["value_clip_frac"].item() == 0


@pytest.mark.parametrize("agg", AGGS)
def test_value_loss_empty_rows_no_nan(agg):
    values, old_values, returns, mask = _value_inputs(1, 4, 3, "right")
    mask[0] = 0
    loss, grad, metrics = _call(value_loss, values, old_values, returns, mask, agg=agg)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and torch.isfinite(metrics["value_clip_frac"])
    assert (grad[~mask.bool()] == 0).all()


# ==================================================================================== entropy bonus
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("seed", range(3))
def test_entropy_bonus_is_minus_coef_times_aggregate(agg, seed):
    entropy = randn(seed, 6, 5).abs()
    mask = make_mask(seed, 6, 5, "mixed")
    n_tok, n_seq = _global_normalizers(mask)
    for num_tokens, num_seqs in ((None, None), (n_tok + 3, n_seq + 1)):
        leaf = entropy.clone().requires_grad_(True)
        out = entropy_bonus(leaf, mask, coef=0.01, agg=agg, num_tokens=num_tokens, num_seqs=num_seqs)
        assert_matches(out, -0.01 * ref.aggregate_loss(rows(entropy), bools(mask), agg, num_tokens, num_seqs))
        out.backward()
        weights = ref.aggregation_weights(bools(mask), agg, num_tokens, num_seqs)
        assert_matches(leaf.grad, [[-0.01 * w for w in row] for row in weights])
        # gradient descent on the bonus raises entropy on every valid token
        assert (leaf.grad[mask.bool()] < 0).all()


def test_explicit_normalizers_are_used_as_given():
    # The spec: N_tok = num_tokens / N_seq = num_seqs when given — also for a fractional or tensor value
    # (e.g. a normalizer already divided by the data-parallel world size). Σ loss·mask = 10, rows sums 6, 4.
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, 60.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.float64)
    assert aggregate_loss(loss, mask, num_tokens=torch.tensor(8.0)).item() == pytest.approx(10 / 8)
    assert aggregate_loss(loss, mask, num_tokens=2.5).item() == pytest.approx(10 / 2.5)
    assert aggregate_loss(loss, mask, num_tokens=0.5).item() == pytest.approx(10 / 0.5)
    assert aggregate_loss(loss, mask, agg="seq-mean-token-sum", num_seqs=0.5).item() == pytest.approx(10 / 0.5)
    assert aggregate_loss(loss, mask, agg="seq-mean-token-mean", num_seqs=0.5).item() == pytest.approx(6 / 0.5)
