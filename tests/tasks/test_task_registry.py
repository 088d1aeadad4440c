"""The task registry, and the import rule of rlhf/tasks and rlhf/data (DESIGN.md §2)."""
import os
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


def test_dotted_path_tasks_import_from_the_current_directory_and_tell_workers(monkeypatch, tmp_path):
    """A module next to where the command runs (not on sys.path) is found, and its directory is put on
    PYTHONPATH so worker processes started later import it too."""
    import sys

    (tmp_path / "my_tasks_for_registry_test.py").write_text(
        "class Shout:\n    name = 'shout'\n    def __init__(self, level=1):\n        self.level = level\n"
        "    def reward(self, response, reference):\n        return float(response.isupper())\n"
        "    def write_files(self, out_dir):\n        return {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    monkeypatch.delitem(sys.modules, "my_tasks_for_registry_test", raising=False)
    task = get_task("my_tasks_for_registry_test:Shout", level=3)
    assert task.level == 3 and task.reward("ABC", None) == 1.0
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/somewhere/else"]


@pytest.mark.parametrize("path, message", [
    ("no_such_module_xyz:Task", r"task 'no_such_module_xyz:Task': importing 'no_such_module_xyz' failed .*"
                                r"install it, or put its directory on PYTHONPATH"),
    ("json:NoSuchThing", r"module 'json' \(.*json.*\) has no attribute 'NoSuchThing'"),
    ("json:", r"expected a dotted path 'package.module:attribute'"),
])
def test_dotted_path_errors_name_the_path_and_the_cause(path, message):
    with pytest.raises(ValueError, match=message):
        get_task(path)


def test_a_module_that_raises_on_import_is_reported_as_such(monkeypatch, tmp_path):
    (tmp_path / "broken_user_module_xyz.py").write_text("raise RuntimeError('config missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"importing 'broken_user_module_xyz' raised RuntimeError: config missing"):
        registry.import_object("broken_user_module_xyz:f", "reward function")
