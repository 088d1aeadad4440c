"""rlhf.envs — environments the policy acts in, and the sandbox that runs the programs it writes.

    from rlhf.envs import make_env, StepResult
    env = make_env("guess_number", prompt="guess 1-16:", reference=11, seed=0)
    env.step("8")          # StepResult(observation=">", reward=0.0, done=False, ...)

    from rlhf.envs.sandbox import Program, run_programs
    [result] = run_programs([Program("def add(a, b):\n    return a + b\n", "add", (([1, 2], 3),))])
    result.reason, result.score     # "passed", 1.0
"""
from rlhf.envs.base import Env, EnvGroup, StepResult, available_envs, env_class, make_env, make_env_group, register_env
from rlhf.envs import calculator, guess_number  # noqa: E402,F401  (registers "calculator", "guess_number")
from rlhf.envs.episode import END_REASONS, Episode, assemble

__all__ = ["Env", "EnvGroup", "StepResult", "available_envs", "env_class", "make_env", "make_env_group",
           "register_env", "END_REASONS",
           "Episode", "assemble"]
