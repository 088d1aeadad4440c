"""Direct preference optimisation: losses on sequence log-probabilities, no reward model.

Shape key: B preference pairs. Each input `[B]` is the SUM of a response's token log-probabilities
(response tokens only, prompt and padding excluded) under the policy π or the frozen reference π_ref,
for the chosen (w) and the rejected (l) response of each pair.

    implicit reward  r = β·(log π(y) − log π_ref(y))          (rewards/chosen, rewards/rejected)
    margin           h = r_w − r_l = β·Δ,   Δ = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))
    sigmoid (DPO, Rafailov et al. 2023), label smoothing ε (conservative DPO: the label is wrong with p = ε):
                     loss = −(1 − ε)·log σ(h) − ε·log σ(−h)
    ipo (Azar et al. 2023): loss = (Δ − 1/(2β))²   — regresses Δ to a finite target instead of pushing it to ∞

The loss is Σ over pairs / `num_pairs`: passing the GLOBAL number of pairs makes the micro-batch and
data-parallel shards' losses sum to the full-batch loss (as for the other losses, rlhf/algorithms/losses.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             num_pairs: int | float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, metrics) of B pairs; metrics are detached means over these pairs (see the module docstring)."""
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {list(DPO_LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_ratio_B = policy_chosen - ref_chosen
    rejected_ratio_B = policy_rejected - ref_rejected
    delta_B = chosen_ratio_B - rejected_ratio_B
    if loss_type == "sigmoid":
        h_B = beta * delta_B
        loss_B = -(1.0 - label_smoothing) * F.logsigmoid(h_B) - label_smoothing * F.logsigmoid(-h_B)
    else:
        loss_B = (delta_B - 1.0 / (2.0 * beta)).square()
    denominator = len(loss_B) if num_pairs is None else num_pairs
    loss = loss_B.sum() / denominator
    chosen_reward_B, rejected_reward_B = (beta * chosen_ratio_B).detach(), (beta * rejected_ratio_B).detach()
    metrics = {"rewards/chosen": chosen_reward_B.mean(), "rewards/rejected": rejected_reward_B.mean(),
               "rewards/margins": (chosen_reward_B - rejected_reward_B).mean(),
               "rewards/accuracies": (chosen_reward_B > rejected_reward_B).float().mean()}
    return loss, metrics


def sequence_logprobs(token_logprobs_BS: torch.Tensor, response_mask_BS: torch.Tensor) -> torch.Tensor:
    """[B] sum of per-token log-probs `[B, S]` over response tokens (`response_mask_BS` 1 there, else 0)."""
    return (token_logprobs_BS * response_mask_BS.to(token_logprobs_BS.dtype)).sum(-1)
