"""Tool use: the policy may call a calculator before it answers.

Syntax (one policy turn each): a call is the expression in parentheses, `(23+58+17+44)`, digits and
`+ - *` only; the environment answers `=<value> ` and the episode goes on. Any other turn is the final
answer, compared with the reference as an integer: reward 1 when it is right, else 0; done. A malformed
call (parentheses around anything else) is answered `=? `. Metrics on the last step: `gold` (the answer
was right), `tool_calls` and `malformed_calls` in the episode, `answered` (it gave a final answer at all).
"""
from __future__ import annotations

import re
from typing import Any

from rlhf.envs.base import StepResult, register_env

_CALL = re.compile(r"\s*\((.*)\)\s*")
_EXPRESSION = re.compile(r"\d{1,9}([+\-*]\d{1,9}){0,15}")
_ANSWER = re.compile(r"\s*(-?\d{1,12})\s*")


def evaluate(expression: str) -> int | None:
    """The value of `expression` (integers joined by + - *, * binding tighter), or None if it is not one."""
    if not _EXPRESSION.fullmatch(expression):
        return None
    total, sign = 0, 1
    for term in re.split(r"([+\-])", expression):
        if term in "+-":
            sign = 1 if term == "+" else -1
            continue
        product = 1
        for factor in term.split("*"):
            product *= int(factor)
        total += sign * product
    return total


@register_env("calculator")
class CalculatorEnv:
    def __init__(self, prompt: str, reference: Any, seed: int) -> None:
        try:
            self.answer = int(str(reference).strip())
        except ValueError:
            raise ValueError(f"calculator: the reference must be the integer answer, got {reference!r}") from None
        self.tool_calls = self.malformed = 0

    def reset(self) -> str | None:
        return None

    def step(self, action: str) -> StepResult:
        call = _CALL.fullmatch(action)
        if call is not None:
            value = evaluate(call.group(1).replace(" ", ""))
            self.tool_calls += 1
            if value is None:
                self.malformed += 1
                return StepResult("=? ", 0.0, False, self._metrics(gold=0.0, answered=0.0))
            return StepResult(f"={value} ", 0.0, False, self._metrics(gold=0.0, answered=0.0))
        match = _ANSWER.fullmatch(action)
        right = match is not None and int(match.group(1)) == self.answer
        return StepResult(None, float(right), True, self._metrics(gold=float(right), answered=1.0))

    def _metrics(self, gold: float, answered: float) -> dict[str, float]:
        return {"gold": gold, "answered": answered, "tool_calls": float(self.tool_calls),
                "malformed_calls": float(self.malformed)}
