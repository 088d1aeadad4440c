"""The `code` environment: the code task (rlhf/tasks/code.py) played over turns, with the test results
as feedback.

Each policy turn is an attempt: its program (`program_source`: the body after the prompt's header, or a
whole definition) runs against the problem's unit tests in the sandbox (rlhf/envs/sandbox.py, one
process per attempt, with the sandbox's time, CPU, memory and output limits). All tests passed, or the
last of `max_attempts`, ends the episode with reward = the fraction of tests passed, less
`retry_penalty` per earlier attempt; otherwise the environment answers with what went wrong and the
function's header again, and the policy writes the body anew:

    # return x plus 3          ← the prompt
    def f(x):
        return x + 4           ← attempt 1 (sampled)
    # 0/3 tests passed         ← the environment's answer (context, never trained on)
    def f(x):
        return x + 3           ← attempt 2 (sampled): reward 1 − 0.1

Metrics on the last step: `gold` (1 when every test passed), `pass_rate`, `attempts`. A hostile or
broken program scores 0 with its sandbox outcome named in the feedback; it never stops the episode
runner (the sandbox contains it). Registered as "code": `ppo.env.name=code` with the code task's prompts.
"""
from __future__ import annotations

from typing import Any

from rlhf.envs.base import StepResult, register_env
from rlhf.envs.sandbox import Program, ProgramResult, SandboxLimits, run_programs
from rlhf.tasks.code import parse_reference, program_source


@register_env("code")
class CodeEnv:
    def __init__(self, prompt: str, reference: Any, seed: int, max_attempts: int = 2, retry_penalty: float = 0.1,
                 timeout_s: float = 10.0, cpu_s: int = 3, memory_mb: int = 256) -> None:
        if max_attempts < 1:
            raise ValueError(f"code env: max_attempts must be >= 1, got {max_attempts}")
        if not 0.0 <= retry_penalty < 1.0:
            raise ValueError(f"code env: retry_penalty must be in [0, 1), got {retry_penalty}")
        self.reference = parse_reference(reference)
        self.max_attempts, self.retry_penalty = int(max_attempts), float(retry_penalty)
        self.limits = SandboxLimits(timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb, workers=1)
        self.attempts = 0

    def reset(self) -> str | None:
        return None  # the prompt (a comment and the header) is the first observation

    def step(self, action: str) -> StepResult:
        self.attempts += 1
        ref = self.reference
        tests = tuple((list(args), expected) for args, expected in ref["tests"])
        [result] = run_programs([Program(program_source(action, ref), ref["entry_point"], tests)], self.limits)
        metrics = {"gold": float(result.reason == "passed"), "pass_rate": result.score,
                   "attempts": float(self.attempts)}
        if result.reason == "passed" or self.attempts >= self.max_attempts:
            reward = result.score * (1.0 - self.retry_penalty * (self.attempts - 1))
            return StepResult(None, max(reward, 0.0), True, metrics)
        return StepResult(feedback(result, ref["header"]), 0.0, False, metrics)


def feedback(result: ProgramResult, header: str) -> str:
    """What the policy reads after a failed attempt: the tests passed (or the sandbox's outcome), then the
    header to write the body again."""
    if result.reason == "failed_tests":
        said = f"{result.passed}/{result.total} tests passed"
    else:
        said = f"{result.reason}"
    return f"\n# {said}\n{header}"
