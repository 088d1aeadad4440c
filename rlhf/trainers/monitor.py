"""The reward-hacking monitor: does the reward model still agree with the truth as PPO optimises it?

Wherever a gold signal exists (a task verifier on the held-out prompts), every evaluation gives two
numbers for the same sampled responses: the reward model's mean score and the gold accuracy. PPO is
healthy while they move together. Reward hacking is the policy finding what the reward model
rewards but the truth does not: the score keeps rising while gold accuracy falls.

    monitor = RewardHackingMonitor(patience=2, gold_tolerance=0.02)
    metrics = monitor.observe(step, reward=..., gold=..., scores_B=..., gold_B=...)
    # {"hacking/rm_gold_corr": ..., "hacking/divergent": 0|1, "hacking/streak": k, "hacking/alarm": 0|1}

An evaluation *diverges* when its reward rose and its gold accuracy fell by more than `gold_tolerance`
since the previous evaluation; `patience` divergent evaluations in a row raise the alarm. The last
evaluation before the streak is the last one known to be good (`last_good_step`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


def pearson(x_B: torch.Tensor, y_B: torch.Tensor) -> float:
    """Pearson correlation of two [B] tensors; NaN when either is constant or B < 2."""
    x_B, y_B = x_B.double().flatten(), y_B.double().flatten()
    if x_B.numel() < 2:
        return float("nan")
    dx, dy = x_B - x_B.mean(), y_B - y_B.mean()
    denominator = (dx.square().sum() * dy.square().sum()).sqrt()
    return float((dx * dy).sum() / denominator) if denominator > 0 else float("nan")


@dataclass
class RewardHackingMonitor:
    patience: int = 2  # divergent evaluations in a row that raise the alarm; 0 = never
    gold_tolerance: float = 0.02  # a gold drop up to this is noise (ppo.trainer.hacking_gold_tolerance)
    previous_reward: float | None = None
    previous_gold: float | None = None
    previous_step: int | None = None
    streak: int = 0  # divergent evaluations in a row, up to the latest
    divergent_total: int = 0
    last_good_step: int | None = None  # the evaluation before the current streak
    alarm_step: int | None = None  # the first evaluation at which the alarm was raised

    def observe(self, step: int, reward: float, gold: float, scores_B: torch.Tensor | None = None,
                gold_B: torch.Tensor | None = None) -> dict[str, float]:
        """Record one evaluation; returns its `hacking/*` metrics."""
        divergent = (self.previous_reward is not None and reward > self.previous_reward
                     and gold < self.previous_gold - self.gold_tolerance)
        if divergent:
            if self.streak == 0:
                self.last_good_step = self.previous_step
            self.streak += 1
            self.divergent_total += 1
        else:
            self.streak = 0
            self.last_good_step = step
        alarm = self.patience > 0 and self.streak >= self.patience
        if alarm and self.alarm_step is None:
            self.alarm_step = step
        self.previous_reward, self.previous_gold, self.previous_step = reward, gold, step
        metrics = {"hacking/divergent": float(divergent), "hacking/streak": float(self.streak),
                   "hacking/alarm": float(alarm)}
        if scores_B is not None and gold_B is not None:
            metrics["hacking/rm_gold_corr"] = pearson(scores_B, gold_B)
        return metrics

    @property
    def alarmed(self) -> bool:
        return self.patience > 0 and self.streak >= self.patience

    def describe(self) -> str:
        return (f"reward-model score rose while gold accuracy fell for {self.streak} evaluations in a row "
                f"(up to step {self.previous_step}; last good evaluation at step {self.last_good_step})")

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)
