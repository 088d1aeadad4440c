"""The code task (rlhf/tasks/code.py): problems, programs from responses, batch scoring in the sandbox."""
import json

import pytest

from rlhf.tasks import get_task
from rlhf.tasks.code import CodeProblem, parse_reference, program_source, shipped_problems, template_problems, CodeConfig
from rlhf.workers.reward_fn import BatchRewardRunner, task_reward_runner


@pytest.fixture(scope="module")
def task():
    return get_task("code", max_constant=5, num_train_prompts=20, num_eval_prompts=6,
                    sandbox={"timeout_s": 120, "cpu_s": 2})


def test_template_problems_split_disjoint_and_seeded(task):
    train = {p.name for p in task.train_problems}
    held_out = {p.name for p in task.eval_problems}
    assert len(train) == 20 and len(held_out) == 6 and not train & held_out
    again = get_task("code", max_constant=5, num_train_prompts=20, num_eval_prompts=6)
    assert [p.reference for p in again.eval_problems] == [p.reference for p in task.eval_problems]
    other = get_task("code", max_constant=5, num_train_prompts=20, num_eval_prompts=6, seed=1)
    assert [p.name for p in other.eval_problems] != [p.name for p in task.eval_problems]


def test_every_reference_solution_passes_and_a_wrong_one_does_not(task):
    problems = task.train_problems + task.eval_problems
    scored = task.score_batch([p.solution for p in problems], [p.reference for p in problems])
    assert scored == [(1.0, "passed")] * len(problems)
    add3 = next(p for p in template_problems(CodeConfig(max_constant=5)) if p.name == "add_3")
    assert task.score_batch(["    return x + 4\n"], [add3.reference]) == [(0.0, "failed_tests")]


def test_shipped_problems_reference_solutions_pass():
    problems = shipped_problems()
    assert len(problems) >= 20 and all(len(p.tests) >= 3 for p in problems)
    shipped = get_task("code", source="shipped", sandbox={"timeout_s": 120})
    scored = shipped.score_batch([p.solution for p in problems], [p.reference for p in problems])
    assert [s for s, _ in scored] == [1.0] * len(problems)
    assert len(shipped.eval_problems) == len(problems) // 2 and not {p.name for p in shipped.eval_problems} & {
        p.name for p in shipped.train_problems}


def test_malformed_shipped_row_names_file_and_row(tmp_path):
    path = tmp_path / "problems.jsonl"
    good = {"name": "a", "comment": "c", "header": "def a():\n", "entry_point": "a", "solution": "    return 1\n",
            "tests": [[[], 1]]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "tests": None}) + "\n")
    with pytest.raises(ValueError, match=r"problems.jsonl: row 2: expected name, comment"):
        shipped_problems(path)


@pytest.mark.parametrize("response, expected", [
    ("    return x + 1\n", "def f(x):\n    return x + 1\n"),  # a body: the header goes first
    ("def f(x):\n    return x\n", "def f(x):\n    return x\n"),  # a whole program
    ("Here:\n```python\ndef f(x):\n    return 2\n```\nDone.", "def f(x):\n    return 2\n"),  # fenced
    ("    return x<eos>", "def f(x):\n    return x"),  # special tokens removed
])
def test_program_source(response, expected):
    assert program_source(response, {"entry_point": "f", "header": "def f(x):\n"}) == expected


def test_bad_reference_is_a_named_error():
    with pytest.raises(ValueError, match="entry_point, header and tests"):
        parse_reference('{"tests": []}')


def test_prompt_is_comment_then_header():
    p = CodeProblem("x", "does a\nthen b", "def f(x):\n", "f", "    return x\n", (([1], 1),))
    assert p.prompt == "# does a\n# then b\ndef f(x):\n"


def test_write_files_loadable(task, tmp_path):
    from rlhf.data.prompts import PromptDataset
    from rlhf.models.tiny import CODE_ALPHABET, build_tiny_tokenizer

    paths = task.write_files(tmp_path)
    tokenizer = build_tiny_tokenizer(tmp_path / "tok", alphabet=CODE_ALPHABET)
    data = PromptDataset(paths["eval_prompts"], tokenizer, require_reference=True, max_prompt_len=64)
    assert len(data) == 6
    example = data[0]
    assert tokenizer.decode(example.input_ids) == task.eval_problems[0].prompt  # one token per character
    assert parse_reference(example.reference)["tests"]


def test_options_validated():
    with pytest.raises(ValueError, match="unknown code task option"):
        get_task("code", digits=2)
    with pytest.raises(ValueError, match="templates must be"):
        get_task("code", templates=["nope"])
    with pytest.raises(TypeError):
        get_task("code", sandbox={"walltime": 3})  # not a SandboxLimits field


def test_batch_runner_names_outcomes_and_counts_only_sandbox_failures(task):
    runner = task_reward_runner(task, timeout_s=120.0, fallback=-1.0, limits=None)  # the sandbox's limits apply
    assert isinstance(runner, BatchRewardRunner)
    p = task.train_problems[0]
    scores = runner([p.solution, "    while True:\n        pass\n", "    import os; os.fork()\n"], [p.reference] * 3)
    assert scores == [1.0, 0.0, 0.0]
    assert runner.last_outcomes == ["passed", "cpu_time", "violation"]
    assert runner.failure_codes() == [0, 0, 0]  # the program's fault: a real score, not a fallback


def test_batch_runner_fallback_for_scorer_failures():
    runner = BatchRewardRunner(lambda responses, refs: [(1.0, "passed"), (0.0, "sandbox_error"), (float("nan"), "x")],
                               fallback=-1.0)
    assert runner(["a", "b", "c"], [0, 0, 0]) == [1.0, -1.0, -1.0]
    assert runner.failure_codes() == [0, 1, 3] and runner.stats.errors == 1 and runner.stats.non_finite == 1

    def broken(responses, refs):
        raise RuntimeError("no processes left")

    runner = BatchRewardRunner(broken, fallback=0.5)
    assert runner(["a", "b"], [0, 0]) == [0.5, 0.5]
    assert runner.failure_codes() == [1, 1] and runner.last_outcomes == ["scorer_error"] * 2
    assert "no processes left" in runner.stats.examples[0]
