"""The math of RLHF as pure torch functions (no Ray, DeepSpeed or config objects).

Shape key: B rows, T response tokens, V vocab; `mask` is 1 on valid tokens, 0 on padding, which may
sit anywhere. Functions take tensors and scalars only, so each is testable against a slow loop
(`tests/algorithms/`), and every output is 0 on padding and never NaN for all-padding rows.
"""
from rlhf.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    discounted_returns,
    gae,
    get_advantage_estimator,
    group_mean_std,
)
from rlhf.algorithms.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    approx_kl,
    kl_penalized_rewards,
    last_valid_index,
)
from rlhf.algorithms.logits import entropy_from_logits, logprobs_from_logits
from rlhf.algorithms.losses import (
    AGG_MODES,
    POLICY_LOSSES,
    aggregate_loss,
    entropy_bonus,
    get_policy_loss,
    pairwise_reward_loss,
    ppo_policy_loss,
    value_loss,
)
from rlhf.algorithms.masked import explained_variance, masked_mean, masked_sum, masked_var, masked_whiten
from rlhf.algorithms.rewards import shape_scores
from rlhf.algorithms.rollout_correction import ROLLOUT_CORRECTIONS, apply_tis, tis_weights
from rlhf.algorithms.registry import Registry, UnknownNameError

__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGG_MODES", "AdaptiveKLController", "FixedKLController", "KL_ESTIMATORS",
    "POLICY_LOSSES", "ROLLOUT_CORRECTIONS", "Registry", "UnknownNameError", "aggregate_loss", "apply_tis", "approx_kl",
    "discounted_returns", "entropy_bonus", "entropy_from_logits", "gae", "get_advantage_estimator",
    "get_policy_loss", "group_mean_std", "kl_penalized_rewards", "last_valid_index",
    "logprobs_from_logits", "masked_mean", "masked_sum", "masked_var", "masked_whiten",
    "pairwise_reward_loss", "ppo_policy_loss", "value_loss", "explained_variance", "shape_scores", "tis_weights",
]
