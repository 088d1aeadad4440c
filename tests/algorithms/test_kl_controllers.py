"""FixedKLController and AdaptiveKLController (Ziegler et al. 2019) against a float loop."""
import copy
import random

import pytest

from rlhf.algorithms import AdaptiveKLController, FixedKLController

from . import _reference as ref


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    assert ctl.value == 0.05
    for kl in (0.0, 1.0, 100.0):
        ctl.update(kl, 256)
    assert ctl.value == 0.05


def test_adaptive_hand_computed():
    # init 0.2, target 6, horizon 10000.
    # update(9, 512): error = clip(9/6 − 1, ±0.2) = clip(0.5) = 0.2
    #                 → 0.2·(1 + 0.2·512/10000) = 0.2·1.01024 = 0.202048
    # update(5.4, 1000): error = 5.4/6 − 1 = −0.1 → 0.202048·(1 − 0.1·0.1) = 0.202048·0.99 = 0.20002752
    # update(0, 100): error = clip(−1) = −0.2 → 0.20002752·(1 − 0.2·0.01) = 0.20002752·0.998 = 0.19962746...
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    assert ctl.value == 0.2
    ctl.update(9.0, 512)
    assert ctl.value == pytest.approx(0.202048, rel=1e-12)
    ctl.update(5.4, 1000)
    assert ctl.value == pytest.approx(0.20002752, rel=1e-12)
    ctl.update(0.0, 100)
    assert ctl.value == pytest.approx(0.20002752 * 0.998, rel=1e-12)


def test_adaptive_on_target_stays():
    ctl = AdaptiveKLController(0.1, target=3.0, horizon=1000)
    ctl.update(3.0, 64)
    assert ctl.value == pytest.approx(0.1, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_adaptive_matches_reference_loop(seed):
    rng = random.Random(seed)
    init, target, horizon = rng.uniform(0.01, 0.5), rng.uniform(0.5, 10), rng.choice([1000, 10000, 64])
    updates = [(rng.uniform(0, 3 * target), rng.choice([1, 32, 256])) for _ in range(40)]
    ctl = AdaptiveKLController(init, target=target, horizon=horizon)
    for (kl, n_steps), expected in zip(updates, ref.adaptive_kl_values(init, target, horizon, updates)):
        ctl.update(kl, n_steps)
        assert ctl.value == pytest.approx(expected, rel=1e-9)


def _as_floats(state):
    """A state dict with every number (or 0-dim tensor) as a float, so dicts compare by value."""
    return {k: float(v.item() if hasattr(v, "item") else v) if isinstance(v, (int, float)) or hasattr(v, "item")
            else v for k, v in state.items()}


def _value(ctl):
    v = ctl.value
    return float(v.item() if hasattr(v, "item") else v)


@pytest.mark.parametrize("make", [lambda: FixedKLController(0.07),
                                  lambda: AdaptiveKLController(0.1, target=2.0, horizon=500)])
def test_state_dict_round_trip_resumes_exactly(make):
    rng = random.Random(0)
    updates = [(rng.uniform(0, 5), rng.choice([8, 64])) for _ in range(20)]
    uninterrupted = make()
    for kl, n in updates:
        uninterrupted.update(kl, n)

    ctl = make()
    for kl, n in updates[:7]:
        ctl.update(kl, n)
    state = ctl.state_dict()
    assert isinstance(state, dict)
    saved = copy.deepcopy(state)
    resumed = make()  # a fresh controller, as after a restart, restored from the checkpoint
    if isinstance(resumed, AdaptiveKLController):
        resumed.update(4.0, 64)  # diverge first, so the restore must overwrite the value
    resumed.load_state_dict(saved)
    assert _value(resumed) == _value(ctl)
    for kl, n in updates[7:]:
        resumed.update(kl, n)
    assert _value(resumed) == _value(uninterrupted)
    # the state dict is a snapshot: later updates do not mutate it
    assert _as_floats(state) == _as_floats(saved)
