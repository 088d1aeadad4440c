"""The task registry, and the import rule of rlhf/tasks and rlhf/data (DESIGN.md §2)."""
from pathlib import Path

import pytest

from rlhf.tasks import ArithmeticTask, Task, available_tasks, get_task, register_task
from rlhf.tasks import registry



def test_get_task_builds_registered_tasks_and_lists_valid_names():
    assert "arithmetic" in available_tasks()
    task = get_task("arithmetic", num_train_prompts=50, num_eval_prompts=10, seed=3)
    assert isinstance(task, ArithmeticTask) and isinstance(task, Task)
    assert task.config.seed == 3 and len(task.train_problems) == 50
    with pytest.raises(ValueError, match=r"unknown task 'sudoku'; valid tasks: \[.*'arithmetic'.*\]"):
        get_task("sudoku")
    with pytest.raises(ValueError, match=r"unknown arithmetic task option\(s\) \['digit'\]"):
        get_task("arithmetic", digit=3)


def test_register_task_plugs_in_a_new_task(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))  # leave the real registry untouched

    @register_task("echo")
    class EchoTask:
        name = "echo"

        def __init__(self, word="hi"):
            self.word = word

        def reward(self, response, reference):
            return float(response == reference)

        def write_files(self, out_dir):
            return {"prompts": registry.write_jsonl(Path(out_dir) / "p.jsonl", [{"prompt": self.word}])}

    task = get_task("echo", word="yo")
    assert task.reward("yo", "yo") == 1.0 and "echo" in available_tasks()
    assert task.write_files(tmp_path)["prompts"].read_text() == '{"prompt": "yo"}\n'
    with pytest.raises(ValueError, match="already registered"):
        register_task("echo", lambda: None)
