"""The hybrid layout's worker: one process per rank hosting several roles (`placement.layout=hybrid`).

veRL's default on one node (actor, rollout and reference in one worker per GPU) and OpenRLHF's
`--colocate_all_models`: the roles of a device group live in one process per rank, each with its own
engine, instead of one process per role sharing the rank's devices. The controller does not know: it
still calls `groups["critic"].call_async("values", batch)`, and the role's worker group
(`rlhf.distributed.HostedRoleGroup`) sends `call_role("critic", "values", shard)` here. A Ray actor
runs one call at a time, so the hosted roles run in turn, each using all the rank's threads and
devices, where separate processes would run the three scorers at once on shared cores. Calls keep
their submission order, so the controller's async pipelining (rlhf/trainers/async_rollout.py) and
exact resume work unchanged; checkpoints are the roles' own, so a run resumes in either layout.

The hosted workers share the process: one torch.distributed process group (the first engine
initialises it, the others reuse it: `rlhf.engine.init_distributed` is idempotent), one device, one
set of torch threads (`RLHF_TORCH_THREADS`, by default the group's whole CPU share).

Phases. A call for role R makes R the active role: first every other hosted role whose
`placement.<role>.offload_when_idle` is not "none" releases what that policy names (optimizer states,
or everything, to host memory: rlhf/engine/idle.py), then R gets back what it released. Consecutive
calls of one role (the actor's generate, its update, its weight sync) switch nothing. The memory
planner counts the same phases (rlhf/distributed/memory.py `hybrid_phase_peaks`).
"""
from __future__ import annotations

import time
from typing import Any

from rlhf.workers.base import BaseWorker, Dispatch, dispatch


class HybridWorker(BaseWorker):
    """Rank `rank` of a device group, hosting `hosted` = {role: worker class} (each built as that role's
    rank `rank` of `world_size`, with the same seed)."""

    def __init__(self, role: str, rank: int, world_size: int, seed: int = 0,
                 hosted: dict[str, type] | None = None, offload: dict[str, str] | None = None) -> None:
        super().__init__(role, rank, world_size, seed)
        if not hosted:
            raise ValueError(f"HybridWorker {role!r} rank {rank}: no roles to host")
        self.hosted = {name: cls(name, rank, world_size, seed) for name, cls in hosted.items()}
        self.offload = {name: (offload or {}).get(name, "none") for name in self.hosted}
        self.active: str | None = None
        self.switches = {"count": 0, "released_bytes": 0, "seconds": 0.0}

    def call_role(self, role: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run `role`'s `method` on this rank (the arguments already split for this rank), after making
        `role` the active one (see Phases in the module docstring)."""
        worker = self.hosted.get(role)
        if worker is None:
            raise KeyError(f"{self.role} rank {self.rank} hosts {sorted(self.hosted)}, not {role!r}")
        if method.startswith("_") or not callable(getattr(worker, method, None)):
            raise AttributeError(f"{type(worker).__name__} has no public method {method!r}")
        self._activate(role)
        return getattr(worker, method)(*args, **kwargs)

    def _activate(self, role: str) -> None:
        if role == self.active:
            return
        start = time.perf_counter()
        for name, worker in self.hosted.items():
            if name != role and self.offload[name] != "none":
                self.switches["released_bytes"] += max(worker.release_idle(self.offload[name]), 0)
        self.hosted[role].restore_idle()
        self.active = role
        self.switches["count"] += 1
        self.switches["seconds"] += time.perf_counter() - start

    @dispatch(Dispatch.ALL)
    def hosted_roles(self) -> list[str]:
        return list(self.hosted)

    @dispatch(Dispatch.ALL)
    def phase_switches(self) -> dict:
        """How often the active role changed, the bytes released on the way and the seconds it took."""
        return {**self.switches, "active": self.active, "offload": dict(self.offload)}
