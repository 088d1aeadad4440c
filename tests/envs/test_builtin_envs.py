"""The built-in environments: the calculator tool (and its task's transcripts) and guess-the-number."""
import pytest

from rlhf.envs import available_envs, make_env
from rlhf.envs.calculator import evaluate
from rlhf.tasks import get_task


def test_builtins_are_registered():
    assert {"calculator", "guess_number"} <= set(available_envs())


@pytest.mark.parametrize("expression, value", [("23+58+17+44", 142), ("2*3+4*5-1", 25), ("7", 7), ("10-20", -10),
                                               ("", None), ("2+", None), ("-3", None), ("2**8", None),
                                               ("__import__('os')", None), ("1" * 10, None)])
def test_calculator_evaluates_only_plain_integer_expressions(expression, value):
    assert evaluate(expression) == value


def test_calculator_episode_call_then_answer():
    env = make_env("calculator", "23+58+17+44=", "142", seed=0)
    call = env.step("(23+58+17+44)")
    assert (call.observation, call.reward, call.done) == ("=142 ", 0.0, False)
    bad = env.step("(23+abc)")
    assert bad.observation == "=? " and bad.metrics["malformed_calls"] == 1.0
    answer = env.step(" 142 ")
    assert (answer.reward, answer.done) == (1.0, True)
    assert answer.metrics == {"gold": 1.0, "answered": 1.0, "tool_calls": 2.0, "malformed_calls": 1.0}


def test_calculator_wrong_or_garbled_answer_scores_zero():
    for action in ("141", "one hundred", "142 143", ""):
        result = make_env("calculator", "p", 142, seed=0).step(action)
        assert result.done and result.reward == 0.0 and result.metrics["gold"] == 0.0


def test_guess_number_rewards_few_turns():
    env = make_env("guess_number", "p", "11", seed=0, turn_penalty=0.3)
    assert env.step("8").observation == ">" and env.step("12").observation == "<"
    hit = env.step("11")
    assert hit.done and hit.reward == pytest.approx(0.4) and hit.metrics["gold"] == 1.0
    late = make_env("guess_number", "p", "1", seed=0, turn_penalty=0.5, min_hit_reward=0.2)
    for _ in range(4):
        late.step("2")
    assert late.step("1").reward == 0.2


def test_tool_use_task_transcripts_and_split():
    task = get_task("tool_use", num_train_prompts=200, num_eval_prompts=50, sft_direct_prob=0.5, seed=1)
    assert not set(task.train_problems) & set(task.eval_problems)
    rows = task.sft_rows()
    tool = [r for r in rows if r["uses_tool"]]
    assert 0.35 < len(tool) / len(rows) < 0.65
    r = tool[0]
    expression = r["prompt"][:-1]
    assert r["response"] == f"({expression})<eos>={r['answer']} {r['answer']}"
    assert all(r["response"] == r["answer"] for r in rows if not r["uses_tool"])
    assert task.reward("142", "142") == 1.0 and task.reward("(1+1)", "2") == 0.0
    with pytest.raises(ValueError, match="terms must be >= 2"):
        get_task("tool_use", terms=1)


def test_tool_use_transcript_replays_in_the_calculator():
    """The demo transcript is exactly what an episode of the environment produces for the same turns."""
    task = get_task("tool_use", num_train_prompts=20, num_eval_prompts=5, sft_direct_prob=0.0)
    row = task.sft_rows()[0]
    call, rest = row["response"].split("<eos>")
    env = make_env("calculator", row["prompt"], row["answer"], seed=0)
    reply = env.step(call)
    assert rest.startswith(reply.observation)
    final = env.step(rest[len(reply.observation):])
    assert final.done and final.reward == 1.0


def test_guess_number_task_games_replay_in_the_environment():
    """Every demo game is a legal episode of the environment: each guess answered as written, the last a hit;
    bisection games take at most ceil(log2(16)) + 1 turns."""
    import random

    task = get_task("guess_number", num_train_prompts=50, num_eval_prompts=10, sft_random_prob=0.5, seed=2)
    rng = random.Random(0)
    for secret in task.train_secrets[:20]:
        for bisect in (True, False):
            turns = task.transcript(secret, rng, bisect).split("<eos>")
            env = make_env("guess_number", task.prompt, str(secret), seed=0)
            for i, turn in enumerate(turns):
                guess, feedback = (turn, "") if i == 0 else (turn[1:], turn[0])
                if i:
                    assert feedback == previous.observation
                previous = env.step(guess)
            assert previous.done and previous.metrics["gold"] == 1.0
            if bisect:
                assert len(turns) <= 5
    with pytest.raises(ValueError, match="high must be > low"):
        get_task("guess_number", low=5, high=5)
