"""A multi-turn game with feedback: guess the secret number, told "higher" or "lower" after each guess.

The prompt names the range (e.g. `guess 1-16:`); the reference is the secret. Each policy turn should be
one integer; the environment answers `>` (the secret is higher), `<` (lower) or ends the episode on a hit.
Reward: on a hit, 1 − (turns − 1)·`turn_penalty` (finishing in few turns pays more, never below
`min_hit_reward`), else 0; a turn that is not one integer is answered `?` and costs its turn. Gold on the
last step: 1 if the secret was found.
"""
from __future__ import annotations

import re
from typing import Any

from rlhf.envs.base import StepResult, register_env

_INTEGER = re.compile(r"\s*(-?\d{1,9})\s*")


@register_env("guess_number")
class GuessNumberEnv:
    def __init__(self, prompt: str, reference: Any, seed: int, turn_penalty: float = 0.1,
                 min_hit_reward: float = 0.2) -> None:
        try:
            self.secret = int(str(reference).strip())
        except ValueError:
            raise ValueError(f"guess_number: the reference must be the secret integer, got {reference!r}") from None
        self.turn_penalty, self.min_hit_reward = float(turn_penalty), float(min_hit_reward)
        self.turns = 0

    def reset(self) -> str | None:
        return None  # the prompt is the first observation

    def step(self, action: str) -> StepResult:
        self.turns += 1
        match = _INTEGER.fullmatch(action)
        if match is None:
            return StepResult("?", 0.0, False, {"gold": 0.0, "malformed": 1.0, "turns": float(self.turns)})
        guess = int(match.group(1))
        if guess == self.secret:
            reward = max(self.min_hit_reward, 1.0 - (self.turns - 1) * self.turn_penalty)
            return StepResult(None, reward, True, {"gold": 1.0, "malformed": 0.0, "turns": float(self.turns)})
        return StepResult(">" if self.secret > guess else "<", 0.0, False,
                          {"gold": 0.0, "malformed": 0.0, "turns": float(self.turns)})
