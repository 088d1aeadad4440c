"""Deterministic fault injection for crash-and-resume tests.

`RLHF_CRASH_AT="<point>@<step>"` makes the process SIGKILL itself when it reaches `point` at `step`
(e.g. "after_update@3", "checkpoint_write@4"). Unset in normal runs: `maybe_crash` is then a no-op.
A SIGKILL is what a preempted node or the OOM killer does: no Python cleanup runs.
`RLHF_CRASH_AT="term:<point>@<step>"` sends SIGTERM instead: what a scheduler sends before it preempts
(rlhf/trainers/preemption.py). With `RLHF_CRASH_ONCE_FILE=<path>` set too, only the first process
that reaches the point crashes (it creates the file): what a restarted worker group must survive.
"""
from __future__ import annotations

import os
import signal

ENV = "RLHF_CRASH_AT"


ONCE_ENV = "RLHF_CRASH_ONCE_FILE"  # with it, only the first process to reach the point crashes (and creates it)


def maybe_crash(point: str, step: int) -> None:
    value = os.environ.get(ENV)
    if value in (f"{point}@{step}", f"term:{point}@{step}") and os.environ.get(ONCE_ENV):
        try:  # a restarted worker replays the step: it must not crash again
            os.close(os.open(os.environ[ONCE_ENV], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    if value == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    elif value == f"term:{point}@{step}":
        os.kill(os.getpid(), signal.SIGTERM)
