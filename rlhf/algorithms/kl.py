"""KL estimators, the KL-penalized token reward, and KL-coefficient controllers.

Shape key: B rows, T response tokens. `logprobs_BT` are the policy's (the sampler's) log-probs of the
sampled tokens, `ref_logprobs_BT` the frozen reference's. The estimators follow Schulman's note
"Approximating KL Divergence": with x = π_ref/π sampled from π, k1 = −log x, k2 = ½(log x)²,
k3 = (x − 1) − log x; all are unbiased or low-bias estimates of KL(π‖π_ref).
"""
from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def approx_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1",
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate `[B, T]`; 0 where `mask` is 0.

    k1 = logp − logp_ref (unbiased, can be negative); k2 = ½(logp − logp_ref)² (≥ 0, low variance);
    k3 = exp(logp_ref − logp) − 1 − (logp_ref − logp) (≥ 0, unbiased).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio.square()
    elif estimator == "k3":
        kl = torch.expm1(-log_ratio) + log_ratio
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}; valid names: {', '.join(KL_ESTIMATORS)}")
    if mask is not None:
        kl = torch.where(mask.bool(), kl, torch.zeros_like(kl))
    return kl


def last_valid_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a `[B, T]` mask: the index of each row's last valid token `[B]` and whether it has one `[B]`."""
    positions_T = torch.arange(1, mask.shape[-1] + 1, device=mask.device)
    weighted_BT = mask.bool().long() * positions_T
    return weighted_BT.argmax(dim=-1), weighted_BT.amax(dim=-1) > 0


def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float, estimator: str = "k1",
                         score_clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rewards `[B, T]` = −kl_coef·kl, plus each row's score `[B]` at its last valid token.

    This is the InstructGPT reward: the sequence-level score is credited to the token that ended the
    sequence, and every token pays for drifting from the reference. `score_clip` clamps scores to
    [−score_clip, score_clip] first. A row with no valid token gets no reward at all. Returns
    `(rewards_BT, kl_BT)`, both 0 on padding.
    """
    kl_BT = approx_kl(logprobs, ref_logprobs, estimator, mask)
    scores_B = scores.to(kl_BT.dtype)
    if score_clip is not None:
        scores_B = scores_B.clamp(-score_clip, score_clip)
    last_B, has_valid_B = last_valid_index(mask)
    rewards_BT = -kl_coef * kl_BT
    rewards_BT = rewards_BT.scatter_add(1, last_B[:, None], (scores_B * has_valid_B)[:, None])
    return rewards_BT, kl_BT


class FixedKLController:
    """A constant KL coefficient (β)."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient is fixed."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional control of β towards a target KL (Ziegler et al. 2019, "Fine-Tuning LMs from
    Human Preferences"): error = clip(KL/target − 1, ±0.2); β ← β·(1 + error·n_steps/horizon).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if init_kl_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs init_kl_coef >= 0, target > 0, horizon > 0; "
                             f"got {init_kl_coef}, {target}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move β after `n_steps` samples (or steps) whose mean KL was `current_kl`."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.target, self.horizon = (float(state[k]) for k in ("value", "target", "horizon"))
