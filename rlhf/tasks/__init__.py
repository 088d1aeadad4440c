"""rlhf.tasks — built-in tasks: data generators and verifiable (gold) rewards (DESIGN.md §2, §7).

Imports only the standard library, torch, and `rlhf.data` where a task reads real data. Tasks register by name:

    from rlhf.tasks import get_task
    task = get_task("arithmetic", seed=0)
    paths = task.write_files("data/arithmetic")   # JSONL files for the rlhf.data loaders
    task.reward("81", "81")                        # 1.0
"""
from rlhf.tasks.registry import Task, available_tasks, get_task, register_task, write_jsonl
from rlhf.tasks import arithmetic, code, code_env, gsm8k, guess_number, tool_use  # noqa: E402,F401  (registers each by name)
from rlhf.tasks.arithmetic import ArithmeticConfig, ArithmeticTask, arithmetic_reward, parse_answer
from rlhf.tasks.code import CodeConfig, CodeTask
from rlhf.tasks.gsm8k import Gsm8kTask, gsm8k_reward

__all__ = ["Task", "available_tasks", "get_task", "register_task", "write_jsonl", "ArithmeticConfig",
           "ArithmeticTask", "arithmetic_reward", "parse_answer", "CodeConfig", "CodeTask", "Gsm8kTask", "gsm8k_reward"]
