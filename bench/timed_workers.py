"""The real worker classes with a stopwatch around each stage method, for per-stage times.

Same classes in both setups (Ray actors and the in-process baseline), so both pay the same wrapper.
`functools.wraps` copies the `@dispatch` mode onto the wrapper, so the worker group fans calls out
exactly as for the plain class. Imported inside Ray actors: the bench passes PYTHONPATH to them.
Thread counts are pinned by the workers' own base (`rlhf.workers.base.THREADS_ENV`).
"""
from __future__ import annotations

import functools
import os
import resource
import time

import torch

from rlhf.workers.actor import ActorWorker
from rlhf.workers.base import Dispatch, dispatch
from rlhf.workers.critic import CriticWorker
from rlhf.workers.reference import ReferenceWorker
from rlhf.workers.reward import RewardWorker


class BenchMixin:
    """Per-method wall times inside the worker, and its pid / peak RSS."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._bench_seconds: dict[str, float] = {}

    @dispatch(Dispatch.ALL)
    def bench_take_timings(self) -> dict[str, float]:
        """Seconds per stage method since the last call (then reset)."""
        out, self._bench_seconds = self._bench_seconds, {}
        return out

    @dispatch(Dispatch.ALL)
    def bench_info(self) -> dict:
        return {"role": self.role, "pid": os.getpid(), "threads": torch.get_num_threads(),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _timed(method):
    @functools.wraps(method)  # copies __dict__, i.e. the dispatch mode
    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            name = method.__name__
            self._bench_seconds[name] = self._bench_seconds.get(name, 0.0) + time.perf_counter() - start
    return wrapper


def _timed_class(base: type, methods: tuple[str, ...]) -> type:
    attrs = {name: _timed(getattr(base, name)) for name in methods}
    return type(f"Timed{base.__name__}", (BenchMixin, base), {**attrs, "__module__": __name__})


TimedActorWorker = _timed_class(ActorWorker, ("generate", "update"))
TimedCriticWorker = _timed_class(CriticWorker, ("values", "update"))
TimedReferenceWorker = _timed_class(ReferenceWorker, ("logprobs",))
TimedRewardWorker = _timed_class(RewardWorker, ("score",))

TIMED_WORKERS = {"actor": TimedActorWorker, "critic": TimedCriticWorker, "reference": TimedReferenceWorker,
                 "reward": TimedRewardWorker}
# worker-side stage name ← (role, method)
STAGES = {"generate": ("actor", "generate"), "reference": ("reference", "logprobs"), "values": ("critic", "values"),
          "reward": ("reward", "score"), "actor_update": ("actor", "update"), "critic_update": ("critic", "update")}
