"""Advantage estimation: GAE with a critic, and critic-free estimators behind one registry.

Shape key: B rows, T response tokens. All outputs are 0 on padding. Padding may sit anywhere in a
row: the recursions skip masked tokens, so "the next token" always means the next VALID token of the
same row (for right-padded rows, simply t + 1), and nothing flows past a row's last valid token.

Critic-free estimators share one signature,
    fn(rewards, mask, group_ids, gamma=1.0, eps=1e-6) -> (advantages_BT, returns_BT),
where `group_ids[B]` marks samples of the same prompt (any ids, in any order).
"""
from __future__ import annotations

import torch

from rlhf.algorithms.masked import masked_sum, masked_whiten
from rlhf.algorithms.registry import Registry

ADVANTAGE_ESTIMATORS = Registry("advantage estimator")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016) over each row's valid tokens.

    δ_t = r_t + γ·V_next − V_t (V_next = 0 past the row's last valid token);
    A_t = δ_t + γλ·A_next; returns_t = A_t + V_t. Returns `(advantages_BT, returns_BT)`.
    """
    valid_BT = mask.bool()
    zeros_B = torch.zeros_like(rewards[:, 0])
    next_value_B, next_advantage_B = zeros_B, zeros_B
    advantages = []
    for t in reversed(range(rewards.shape[1])):
        delta_B = rewards[:, t] + gamma * next_value_B - values[:, t]
        advantage_B = delta_B + gamma * lam * next_advantage_B
        valid_B = valid_BT[:, t]
        advantages.append(torch.where(valid_B, advantage_B, zeros_B))
        next_value_B = torch.where(valid_B, values[:, t], next_value_B)
        next_advantage_B = torch.where(valid_B, advantage_B, next_advantage_B)
    advantages_BT = torch.stack(advantages[::-1], dim=1)
    returns_BT = torch.where(valid_BT, advantages_BT + values, torch.zeros_like(advantages_BT))
    return advantages_BT, returns_BT


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go G_t = r_t + γ·G_next over valid tokens `[B, T]` (GAE with V = 0 and λ = 1)."""
    returns_BT, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)
    return returns_BT


def group_mean_std(scores: torch.Tensor, group_ids: torch.Tensor,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row statistics of the row's group: (mean `[B]`, unbiased std `[B]`, group size `[B]`).

    Only rows with `valid[B]` True count as samples (rows of pure padding are not samples). A group
    of fewer than two samples has mean 0 and std 1: no baseline can be formed from one sample.
    """
    weight_B = torch.ones_like(scores) if valid is None else valid.to(scores.dtype)
    _, group_B = torch.unique(group_ids, return_inverse=True)
    n_groups = int(group_B.max()) + 1 if group_B.numel() else 0
    count_G = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device).index_add_(0, group_B, weight_B)
    mean_G = torch.zeros_like(count_G).index_add_(0, group_B, scores * weight_B) / count_G.clamp(min=1)
    sq_G = torch.zeros_like(count_G).index_add_(0, group_B, (scores - mean_G[group_B]).square() * weight_B)
    std_G = (sq_G / (count_G - 1).clamp(min=1)).sqrt()
    single_G = count_G < 2
    mean_G = torch.where(single_G, torch.zeros_like(mean_G), mean_G)
    std_G = torch.where(single_G, torch.ones_like(std_G), std_G)
    return mean_G[group_B], std_G[group_B], count_G[group_B]


def _sequence_scores(rewards: torch.Tensor, mask: torch.Tensor):
    """R_i = Σ_t r_t over row i's valid tokens `[B]`, and whether row i has any valid token `[B]`."""
    return masked_sum(rewards, mask, dim=-1), mask.bool().any(dim=-1)


def _broadcast(values_B: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A per-row value `[B]` written on every valid token `[B, T]`, 0 on padding."""
    return torch.where(mask.bool(), values_B[:, None].expand(mask.shape), torch.zeros_like(values_B)[:, None])


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(rewards, mask, group_ids, gamma=1.0, eps=1e-6):
    """GRPO (Shao et al. 2024): A_i = (R_i − mean_g)/(std_g + eps), R_i = Σ_t r_t of row i."""
    scores_B, valid_B = _sequence_scores(rewards, mask)
    mean_B, std_B, _ = group_mean_std(scores_B, group_ids, valid_B)
    return _broadcast((scores_B - mean_B) / (std_B + eps), mask), _broadcast(scores_B, mask)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo_advantages(rewards, mask, group_ids, gamma=1.0, eps=1e-6):
    """Dr. GRPO (Liu et al. 2025): A_i = R_i − mean_g, no std division (avoids difficulty bias)."""
    scores_B, valid_B = _sequence_scores(rewards, mask)
    mean_B, _, _ = group_mean_std(scores_B, group_ids, valid_B)
    return _broadcast(scores_B - mean_B, mask), _broadcast(scores_B, mask)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_advantages(rewards, mask, group_ids, gamma=1.0, eps=1e-6):
    """RLOO (Ahmadian et al. 2024): A_i = R_i − mean of the other samples of the group
    = G/(G−1)·(R_i − mean_g); a singleton group has baseline 0."""
    scores_B, valid_B = _sequence_scores(rewards, mask)
    mean_B, _, count_B = group_mean_std(scores_B, group_ids, valid_B)
    scale_B = torch.where(count_B > 1, count_B / (count_B - 1).clamp(min=1), torch.ones_like(count_B))
    return _broadcast(scale_B * (scores_B - mean_B), mask), _broadcast(scores_B, mask)


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
def reinforce_pp_advantages(rewards, mask, group_ids, gamma=1.0, eps=1e-6):
    """REINFORCE++ (Hu 2025): per-token reward-to-go, whitened over the whole batch."""
    returns_BT = discounted_returns(rewards, mask, gamma)
    return masked_whiten(returns_BT, mask), returns_BT


@ADVANTAGE_ESTIMATORS.register("reinforce_pp_baseline")
def reinforce_pp_baseline_advantages(rewards, mask, group_ids, gamma=1.0, eps=1e-6):
    """REINFORCE++-baseline: reward-to-go minus the group's mean return, then batch whitening."""
    returns_BT = discounted_returns(rewards, mask, gamma)
    scores_B, valid_B = _sequence_scores(rewards, mask)
    mean_B, _, _ = group_mean_std(scores_B, group_ids, valid_B)
    return masked_whiten(returns_BT - mean_B[:, None], mask), returns_BT


def get_advantage_estimator(name: str):
    """The critic-free estimator registered as `name` (error lists the valid names)."""
    return ADVANTAGE_ESTIMATORS[name]
