"""Deterministic fault injection for crash-and-resume tests.

`RLHF_CRASH_AT="<point>@<step>"` makes the process SIGKILL itself when it reaches `point` at `step`
(e.g. "after_update@3", "checkpoint_write@4"). Unset in normal runs: `maybe_crash` is then a no-op.
A SIGKILL is what a preempted node or the OOM killer does: no Python cleanup runs.
`RLHF_CRASH_AT="term:<point>@<step>"` sends SIGTERM instead: what a scheduler sends before it preempts
(rlhf/trainers/preemption.py).
"""
from __future__ import annotations

import os
import signal

ENV = "RLHF_CRASH_AT"


def maybe_crash(point: str, step: int) -> None:
    value = os.environ.get(ENV)
    if value == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    elif value == f"term:{point}@{step}":
        os.kill(os.getpid(), signal.SIGTERM)
