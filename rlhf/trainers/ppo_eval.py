"""Evaluation in the PPO controller: greedy and sampled responses on the held-out prompts, and the
reward-hacking check that follows each evaluation (a mixin of `PPOTrainer`, rlhf/trainers/ppo.py)."""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger("rlhf.trainers.ppo")


class RewardHackingError(RuntimeError):
    """The reward-hacking monitor raised its alarm and `trainer.stop_on_reward_hacking` is set."""


def outcome_counts(scored: dict, prefix: str, totals: dict | None = None) -> dict[str, float]:
    """`<prefix>/outcome_<name>`: rows per outcome of the task's scorer (e.g. the code sandbox's "passed",
    "timeout", "violation"), added to `totals` when given; {} when the scorer names none."""
    counts: dict[str, int] = {}
    for name in scored.get("outcomes_B") or []:
        counts[name] = counts.get(name, 0) + 1
    if totals is not None:
        for name, n in counts.items():
            totals[name] = totals.get(name, 0) + n
    return {f"{prefix}/outcome_{name}": float(n) for name, n in sorted(counts.items())}


def _mix(*parts: int) -> int:
    """A deterministic 31-bit seed from integers (not Python's salted hash)."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % (2 ** 31 - 1)
    return value


def _raw_prompts(examples, n: int) -> list:
    """Each example's prompt as the dataset gave it (None where unknown), repeated for its n samples."""
    return [getattr(e, "raw_prompt", None) for e in examples for _ in range(n)]


class EvaluationMixin:
    """`evaluate` and `_check_hacking` for PPOTrainer (its cfg, groups, sampling helpers, monitor and checkpoints)."""

    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy and sampled responses on the held-out prompts: reward-model score and gold accuracy,
        and the reward-hacking monitor's view of the sampled ones (`hacking/*`, when gold exists). The
        sampled figures are means over `trainer.eval_samples_per_prompt` samples of every prompt."""
        if not self.eval_prompts:
            return {}
        temperature = self.cfg.trainer.eval_temperature or self.cfg.rollout.temperature
        out = {}
        for name, params in (("greedy", self._sampling(seed=0, greedy=True, n=1)),
                             ("sampled", self._sampling(seed=_mix(self.cfg.trainer.seed, -1),
                                                        n=self.cfg.trainer.eval_samples_per_prompt,
                                                        temperature=temperature))):
            batch = self._sample(self.eval_prompts, params)
            batch.raw_prompts = _raw_prompts(self.eval_prompts, params.n)
            scored = (self.groups["reward"].call("score", batch) if "reward" in self.groups
                      else {"scores_B": batch.scores_B, "gold_B": batch.gold_B})
            out.update({f"eval/{name}/{k[len('episode/'):]}": v for k, v in batch.extra.items()
                        if k.startswith("episode/")})
            scores_B, gold_B = scored["scores_B"].float(), scored["gold_B"].float()  # the monitor reads the last: sampled
            out.update({k.replace("eval/fn_", f"eval/reward_fn_{name}_"): v
                        for k, v in self._fn_failures(scored, "eval").items() if k != "eval/fn_failure_frac"})
            out.update(outcome_counts(scored, f"eval/{name}"))
            out[f"eval/reward_{name}"] = float(scores_B.mean())
            if not torch.isnan(gold_B).all():
                out[f"eval/gold_{name}"] = float(gold_B.mean())
            out[f"eval/response_length_{name}"] = float(batch.mask_BT.sum(-1).mean())
        if "eval/gold_sampled" in out:
            out.update(self.hacking.observe(step, out["eval/reward_sampled"], out["eval/gold_sampled"],
                                            scores_B, gold_B))
            self.state.hacking = self.hacking.state_dict()
        return out

    def _check_hacking(self, step: int) -> None:
        """Warn at the reward-hacking alarm; stop there when `trainer.stop_on_reward_hacking`."""
        if not self.hacking.alarmed or self.hacking.previous_step != step:
            return
        good = self.hacking.last_good_step
        kept = [p for p in self.checkpoints.complete_checkpoints()
                if good is not None and self.checkpoints.step_of(p) <= good]
        where = (f"the last good checkpoint is {kept[-1]}" if kept else
                 f"no checkpoint at or before step {good} is kept (trainer.keep_last={self.cfg.trainer.keep_last})")
        message = f"reward hacking suspected: {self.hacking.describe()}; {where}"
        logger.warning(message)
        if self.cfg.trainer.stop_on_reward_hacking:
            raise RewardHackingError(message + " (trainer.stop_on_reward_hacking=true)")
