"""Multi-turn episodes as token sequences, and their assembly into the rollout batch's tensors.

An episode's response block is the concatenation, in order, of the policy's turns (token ids exactly as
sampled: token-in/token-out, never re-tokenized) and the environment's observations (text encoded in the
policy's tokens). Per token it records whether the policy sampled it — the loss mask covers those only;
observation tokens are context, never trained on — and the sampler's log-prob (0 elsewhere). Each turn's
reward sits at that turn's last sampled token; the episode's last turn's reward therefore sits at its last
sampled token, where a single-turn response's score sits.

`assemble` lays B episodes out as `RolloutBatch` does (shape key: rlhf/data/batch.py): the prompt
left-padded into the S block, the response block right-padded to T.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from rlhf.algorithms.kl import last_valid_index

END_REASONS = ("done", "max_turns", "max_tokens", "env_error", "env_timeout")


@dataclass
class Episode:
    prompt_ids: list[int]
    group_id: int
    reference: Any = None
    tokens: list[int] = field(default_factory=list)  # the response block: policy and environment tokens
    sampled: list[bool] = field(default_factory=list)  # per token: the policy sampled it
    logprobs: list[float] = field(default_factory=list)  # per token: the sampler's log-prob (0 if not sampled)
    turn_rewards: list[tuple[int, float]] = field(default_factory=list)  # (its turn's last sampled token, reward)
    turns: int = 0  # policy turns taken
    end_reason: str | None = None  # one of END_REASONS once it ended
    gold: float = math.nan
    error: str = ""  # what the environment raised, for env_error

    @property
    def done(self) -> bool:
        return self.end_reason is not None

    @property
    def context(self) -> list[int]:
        """What the policy sees at its next turn: the prompt and everything since."""
        return self.prompt_ids + self.tokens

    def add_policy_turn(self, ids: Sequence[int], logprobs: Sequence[float]) -> None:
        if len(ids) != len(logprobs):
            raise ValueError(f"a policy turn of {len(ids)} tokens came with {len(logprobs)} log-probs")
        self.tokens += list(ids)
        self.sampled += [True] * len(ids)
        self.logprobs += [float(x) for x in logprobs]
        self.turns += 1

    def add_observation(self, ids: Sequence[int]) -> None:
        self.tokens += list(ids)
        self.sampled += [False] * len(ids)
        self.logprobs += [0.0] * len(ids)

    def reward_turn(self, reward: float) -> None:
        """Give the latest policy turn its reward (at its last sampled token)."""
        last = max((i for i, s in enumerate(self.sampled) if s), default=None)
        if last is None:
            raise ValueError("a reward before the policy's first turn has no token to sit on")
        self.turn_rewards.append((last, float(reward)))

    def end(self, reason: str) -> None:
        if reason not in END_REASONS:
            raise ValueError(f"unknown end reason {reason!r}; valid: {END_REASONS}")
        if self.end_reason is None:
            self.end_reason = reason

    @property
    def total_reward(self) -> float:
        return sum(r for _, r in self.turn_rewards)


def assemble(episodes: Sequence[Episode], pad_id: int) -> dict[str, torch.Tensor]:
    """The tensors of a RolloutBatch for `episodes` (rows in order):
    input_ids_BS / attention_mask_BS [B, S] long, mask_BT / old_logprobs_BT / turn_rewards_BT [B, T] float,
    scores_B (the episode's total reward) / gold_B [B] float, truncated_B [B] bool (ended by max_tokens),
    group_ids_B [B] long."""
    B = len(episodes)
    P = max((len(e.prompt_ids) for e in episodes), default=0)
    T = max((len(e.tokens) for e in episodes), default=0)
    input_ids_BS = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention_mask_BS = torch.zeros(B, P + T, dtype=torch.long)
    mask_BT, old_logprobs_BT, turn_rewards_BT = (torch.zeros(B, T) for _ in range(3))
    for b, e in enumerate(episodes):
        p, t = len(e.prompt_ids), len(e.tokens)
        input_ids_BS[b, P - p:P] = torch.tensor(e.prompt_ids, dtype=torch.long)
        attention_mask_BS[b, P - p:P + t] = 1
        if t:
            input_ids_BS[b, P:P + t] = torch.tensor(e.tokens, dtype=torch.long)
            mask_BT[b, :t] = torch.tensor(e.sampled, dtype=torch.float32)
            old_logprobs_BT[b, :t] = torch.tensor(e.logprobs, dtype=torch.float32)
        for position, reward in e.turn_rewards:
            turn_rewards_BT[b, position] += reward
    return {
        "input_ids_BS": input_ids_BS, "attention_mask_BS": attention_mask_BS, "mask_BT": mask_BT,
        "old_logprobs_BT": old_logprobs_BT, "turn_rewards_BT": turn_rewards_BT,
        "scores_B": torch.tensor([e.total_reward for e in episodes], dtype=torch.float32),
        "gold_B": torch.tensor([e.gold for e in episodes], dtype=torch.float32),
        "truncated_B": torch.tensor([e.end_reason == "max_tokens" for e in episodes], dtype=torch.bool),
        "group_ids_B": torch.tensor([e.group_id for e in episodes], dtype=torch.long),
    }


def split_final_reward(turn_rewards_BT: torch.Tensor, mask_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(final_B, earlier_BT): each row's reward at its last sampled token (where a single response's score
    sits), and the rewards of its earlier turns (the same tensor with that entry zeroed);
    final_B + earlier_BT.sum(-1) = the episode's total."""
    if mask_BT.shape[1] == 0:
        return torch.zeros(len(mask_BT)), turn_rewards_BT.clone()
    last_B, has_B = last_valid_index(mask_BT)
    index_B1 = last_B.unsqueeze(1)
    final_B = turn_rewards_BT.gather(1, index_B1).squeeze(1) * has_B
    earlier_BT = turn_rewards_BT.scatter(1, index_B1, turn_rewards_BT.gather(1, index_B1) * ~has_B.unsqueeze(1))
    return final_B, earlier_BT
