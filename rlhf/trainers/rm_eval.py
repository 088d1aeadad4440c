"""Held-out evaluation of a reward model from the scores of its preference pairs.

Reported: pairwise accuracy (chosen scored strictly higher), accuracy per pair tag (e.g. the
arithmetic near-miss type: the overall number depends on the mix of hard and easy negatives), the
margin distribution, the expected calibration error of P(chosen ≻ rejected) = σ(margin), and the score
distribution — whose mean/std PPO uses to normalise rewards.
"""
from __future__ import annotations

import torch


def expected_calibration_error(margins_B: torch.Tensor, bins: int = 10) -> float:
    """ECE of σ(margin) as the probability that `chosen` is preferred.

    Every pair is counted in both orders — (σ(m), outcome 1) and (1 − σ(m), outcome 0) — so a model
    that is right but over- or under-confident is penalised, not just one that is wrong. Bins are equal
    width on [0, 1]; ECE = Σ_b (n_b / N)·|mean outcome_b − mean probability_b|.
    """
    p = torch.sigmoid(margins_B.double())
    probs = torch.cat([p, 1 - p])
    outcomes = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    index = (probs * bins).long().clamp(max=bins - 1)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            ece += in_bin.double().mean() * (outcomes[in_bin].mean() - probs[in_bin].mean()).abs()
    return float(ece)


def reward_model_report(chosen_B: torch.Tensor, rejected_B: torch.Tensor, tags: list | None = None,
                        bins: int = 10) -> dict[str, float]:
    """Accuracy (overall and per tag), margin stats, ECE and score distribution of held-out pairs."""
    chosen_B, rejected_B = chosen_B.float(), rejected_B.float()
    margins_B = chosen_B - rejected_B
    correct_B = (margins_B > 0).float()
    scores = torch.cat([chosen_B, rejected_B])
    report = {
        "accuracy": float(correct_B.mean()), "margin_mean": float(margins_B.mean()),
        "margin_std": float(margins_B.std(unbiased=False)), "ece": expected_calibration_error(margins_B, bins),
        "score_mean": float(scores.mean()), "score_std": float(scores.std(unbiased=False)),
        "chosen_mean": float(chosen_B.mean()), "rejected_mean": float(rejected_B.mean()),
        "score_p05": float(scores.quantile(0.05)), "score_p50": float(scores.quantile(0.5)),
        "score_p95": float(scores.quantile(0.95)), "pairs": float(len(margins_B)),
    }
    for tag in sorted({t for t in tags or [] if t is not None}):
        mask_B = torch.tensor([t == tag for t in tags])
        report[f"accuracy/{tag}"] = float(correct_B[mask_B].mean())
    return report
