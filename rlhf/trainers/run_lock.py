"""One run per `run_dir`: an exclusive lock held for the whole pipeline (issue 16 §8).

Two `rlhf` processes writing one run directory (a double-submitted job, a resume started while the
first run still trains) interleave checkpoints and metrics.jsonl and corrupt both. The lock is an
`fcntl.flock` on `run_dir/.rlhf.lock`, so the kernel drops it when the holder dies however it dies
(SIGKILL included: no stale lock to clean up by hand); the file records the holder's pid, host and
start time for the error message of the process it refuses.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".rlhf.lock"


class RunDirLocked(RuntimeError):
    """Another process holds the run directory."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """Hold `run_dir`'s lock for the `with` block; RunDirLocked (naming the holder) if it is taken."""
    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise RunDirLocked(f"run_dir {run_dir} is in use by another rlhf process ({_holder(handle.read())}): "
                               "wait for it to end, or use another run_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        yield path
    finally:
        handle.close()  # closing releases the lock


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['host']}, since {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
