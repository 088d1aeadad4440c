"""From raw sequence scores to the score placed at the last token (before the KL penalty)."""
from __future__ import annotations

import torch


def shape_scores(scores: torch.Tensor, truncated: torch.Tensor | None = None, mean: float = 0.0, std: float = 1.0,
                 clip: float | None = None, missing_eos_penalty: float | None = None) -> torch.Tensor:
    """`[B]` scores → (scores − mean)/std, clamped to ±clip, then `missing_eos_penalty` for truncated rows.

    Normalising by the reward model's held-out mean/std makes the KL coefficient mean the same thing
    across reward models; the penalty stops the policy from gaming the reward model with responses
    that never end (their score is taken at an arbitrary cut).
    """
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    shaped_B = (scores.float() - mean) / std
    if clip is not None:
        shaped_B = shaped_B.clamp(-clip, clip)
    if missing_eos_penalty is not None and truncated is not None:
        shaped_B = torch.where(truncated.bool(), torch.full_like(shaped_B, missing_eos_penalty), shaped_B)
    return shaped_B
