"""Correcting for the rollout/trainer mismatch: truncated importance sampling (TIS).

Shape key: B rows, T response tokens (rlhf/algorithms/__init__.py). When a separate engine samples
(vLLM, or bf16 kernels), the tokens come from π_rollout while PPO's old log-probs are recomputed by
the trainer, π_old. The PPO gradient is an expectation under π_old, so each token's policy-gradient
term is re-weighted by (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy
RL training"):

    w_t = min( π_old(y_t) / π_rollout(y_t), C ) = min( exp(log π_old − log π_rollout), C ),   C ≥ 1

a constant (no gradient). Truncating at C bounds the variance that rare tokens the sampler
over-produced would add. The trainer applies it by scaling each token's advantage by w_t
(`apply_tis`): for the policy losses that are linear in the advantage per token (PPO-clip, dual-clip,
plain importance sampling, CISPO) that is exactly w_t · ∇ loss_t, because w_t ≥ 0 commutes with the
min/max of clipping.
"""
from __future__ import annotations

import torch

from rlhf.algorithms.masked import masked_mean

ROLLOUT_CORRECTIONS = ("off", "tis")


def tis_weights(old_logprobs_BT: torch.Tensor, rollout_logprobs_BT: torch.Tensor, mask_BT: torch.Tensor,
                cap: float) -> tuple[torch.Tensor, dict[str, float]]:
    """[B, T] weights min(exp(old − rollout), cap) on valid tokens (0 on padding), detached; and metrics:
    their mean, the fraction capped, and the mean raw ratio (how far the sampler is from the trainer)."""
    if not cap >= 1.0:
        raise ValueError(f"tis cap must be >= 1 (a weight never shrinks every token), got {cap}")
    ratio_BT = torch.exp((old_logprobs_BT - rollout_logprobs_BT).detach().float())
    weights_BT = torch.clamp(ratio_BT, max=cap) * mask_BT
    metrics = {"rollout/tis_weight_mean": float(masked_mean(weights_BT, mask_BT)),
               "rollout/tis_capped_frac": float(masked_mean((ratio_BT > cap).float(), mask_BT)),
               "rollout/tis_ratio_mean": float(masked_mean(ratio_BT, mask_BT))}
    return weights_BT, metrics


def apply_tis(advantages_BT: torch.Tensor, weights_BT: torch.Tensor) -> torch.Tensor:
    """Advantages re-weighted token by token: A_t · w_t (see the module doc for why this is TIS)."""
    return advantages_BT * weights_BT
