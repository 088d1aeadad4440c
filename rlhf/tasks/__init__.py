"""rlhf.tasks — built-in tasks: data generators and verifiable (gold) rewards (DESIGN.md §2, §7).

Imports only the standard library (and torch where a task needs it). Tasks register by name:

    from rlhf.tasks import get_task
    task = get_task("arithmetic", seed=0)
    paths = task.write_files("data/arithmetic")   # JSONL files for the rlhf.data loaders
    task.reward("81", "81")                        # 1.0
"""
from rlhf.tasks.registry import Task, available_tasks, get_task, register_task, write_jsonl
from rlhf.tasks import arithmetic  # noqa: E402,F401  (registers "arithmetic")
from rlhf.tasks.arithmetic import ArithmeticConfig, ArithmeticTask, arithmetic_reward, parse_answer

__all__ = ["Task", "available_tasks", "get_task", "register_task", "write_jsonl", "ArithmeticConfig",
           "ArithmeticTask", "arithmetic_reward", "parse_answer"]
