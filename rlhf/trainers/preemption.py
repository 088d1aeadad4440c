"""Preemption: SIGTERM (or SIGUSR1) ends a run cleanly at the next step boundary (issue 16 §9).

Schedulers announce the end of an allocation with a signal: SLURM sends SIGTERM (with `--signal` it
can send it ahead of time, to the batch shell that launch/slurm/rlhf.sbatch forwards it from),
Kubernetes sends SIGTERM to the container's first process. While a trainer runs (`handling()`), the
signal only sets a flag; the trainer finishes the step in flight, saves a checkpoint and raises
`Preempted`, which the `rlhf` command turns into exit status 5 (`EXIT_PREEMPTED`). A launcher seeing 5
requeues the job with resume=true and nothing is lost but the partial step. A second signal while
saving is not special: the save completes first (it is atomic either way, rlhf/trainers/checkpoint.py).
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_requested = threading.Event()


class Preempted(RuntimeError):
    """The run was asked to stop by a signal; a checkpoint at `step` was saved (`checkpoint`)."""

    def __init__(self, stage: str, step: int, checkpoint):
        super().__init__(f"preempted by a signal: stage {stage} stopped after step {step} with checkpoint "
                         f"{checkpoint}; resume=true continues from it")
        self.stage, self.step, self.checkpoint = stage, step, checkpoint


def requested() -> bool:
    """Whether a preemption signal arrived since the current trainer started handling them."""
    return _requested.is_set()


def _on_signal(signum, frame) -> None:
    if not _requested.is_set():
        logger.warning("received %s: finishing the current step, saving a checkpoint, then exiting (status 5)",
                       signal.Signals(signum).name)
    _requested.set()


@contextlib.contextmanager
def handling():
    """Within the block, SIGTERM/SIGUSR1 set the flag `requested()` reads instead of killing the process.
    Only the main thread can install handlers; elsewhere (e.g. a test thread) this is a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    previous = {sig: signal.signal(sig, _on_signal) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
