"""In-process stand-ins for worker groups: the same `call`/`call_async` interface, no Ray.

Used by controller tests (fake workers that record what each stage receives) and by the benchmark's
"without Ray" baseline. One worker instance plays a single data-parallel rank; calls run at once,
so `call_async(...).result()` just returns what the call produced (or raises WorkerError).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf.distributed.worker_group import WorkerError, concat_results, split_arg
from rlhf.workers.base import Dispatch, dispatch_mode


@dataclass
class DoneCall:
    value: Any = None
    error: BaseException | None = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class LocalWorkerGroup:
    """Worker instances (ranks) of one role living in this process."""

    def __init__(self, role: str, workers: list[Any]) -> None:
        self.role, self.workers, self.world_size = role, list(workers), len(workers)
        self.worker_cls = type(self.workers[0])

    def call_async(self, method: str, *args, timeout_s: float | None = None, **kwargs) -> DoneCall:
        mode = dispatch_mode(self.worker_cls, method)
        results = []
        for rank, worker in enumerate(self.workers):
            rank_args = args
            if mode in (Dispatch.SPLIT, Dispatch.SPLIT_RANK0):
                rank_args = (split_arg(args[0], self.world_size)[rank], *args[1:])
            try:
                results.append(getattr(worker, method)(*rank_args, **kwargs))
            except Exception as exc:  # same contract as the Ray group: name role, rank, method
                error = WorkerError(self.role, rank, method, f"raised {exc!r}")
                error.__cause__ = exc
                return DoneCall(error=error)
        if mode is Dispatch.SPLIT:
            return DoneCall(concat_results(results))
        return DoneCall(results[0] if mode in (Dispatch.RANK0, Dispatch.SPLIT_RANK0) else results)

    def call(self, method: str, *args, timeout_s: float | None = None, **kwargs) -> Any:
        return self.call_async(method, *args, **kwargs).result()

    def shutdown(self) -> None:
        self.workers = []


class LocalRoleGroups(dict):
    """{role: LocalWorkerGroup} with the `shutdown()` of `RoleGroups`."""

    def shutdown(self) -> None:
        for group in self.values():
            group.shutdown()
