"""The `code` environment (rlhf/tasks/code_env.py): attempts graded by the sandbox, feedback and a retry,
the reward of the last attempt, and a hostile attempt contained. Through the real command:
tests/recipes/test_recipes_cpu.py (code_sandbox with ppo.env.name=code)."""
import json

import pytest

import rlhf.tasks  # noqa: F401  (registers the "code" environment with rlhf.envs)
from rlhf.envs import make_env

REFERENCE = json.dumps({"entry_point": "f", "header": "def f(x):\n", "tests": [[[1], 4], [[2], 5], [[10], 13]]})
PROMPT = "# x plus 3\ndef f(x):\n"


def env(**kwargs):
    """The environment with the sandbox's default limits (10 s wall clock: room on a loaded machine)."""
    return make_env("code", PROMPT, REFERENCE, seed=0, **kwargs)


def test_a_right_first_attempt_ends_the_episode_with_full_reward():
    result = env().step("    return x + 3\n")
    assert result.done and result.reward == 1.0 and result.observation is None
    assert result.metrics == {"gold": 1.0, "pass_rate": 1.0, "attempts": 1.0}


def test_a_wrong_attempt_gets_feedback_and_the_retry_pays_less():
    game = env(retry_penalty=0.25)
    first = game.step("    return x + 4\n")
    assert not first.done and first.reward == 0.0
    assert first.observation == "\n# 0/3 tests passed\ndef f(x):\n"  # then the policy writes the body again
    second = game.step("    return x + 3\n")
    assert second.done and second.reward == pytest.approx(0.75) and second.metrics["gold"] == 1.0


def test_the_last_attempt_is_scored_by_the_fraction_of_tests_passed():
    game = env(max_attempts=2, retry_penalty=0.0)
    game.step("    return 4\n")
    last = game.step("    return 4 if x == 1 else x + 3\n")  # a whole program is fine too: all pass
    assert last.done and last.reward == 1.0
    partial = env(max_attempts=1).step("    return 4 if x == 1 else 0\n")
    assert partial.done and partial.reward == pytest.approx(1 / 3) and partial.metrics["gold"] == 0.0


def test_a_hostile_attempt_is_contained_and_named_in_the_feedback():
    game = env(cpu_s=1)  # the loop is stopped by its CPU limit (or the wall clock, on a starved machine)
    looping = game.step("    while True:\n        pass\n")
    assert not looping.done and looping.reward == 0.0
    assert looping.observation.startswith("\n# cpu_time") or looping.observation.startswith("\n# timeout")
    assert game.step("    import os\n    os._exit(3)\n").done  # the last attempt: reward 0, episode over


def test_bad_settings_and_references_are_refused():
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        env(max_attempts=0)
    with pytest.raises(ValueError, match="code reference must be JSON with entry_point, header and tests"):
        make_env("code", PROMPT, json.dumps({"tests": []}), seed=0)
