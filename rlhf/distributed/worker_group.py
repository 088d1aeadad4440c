"""Worker groups: N Ray actors (the data-parallel ranks of one role) called as if they were one process.

This is the only layer that waits on Ray futures. Every call has a timeout; a rank that raised, died
or hung surfaces as `WorkerError` naming role, rank and method, as soon as it is known (a dead rank
does not wait out the timeout of the ranks blocked in a collective with it).

    groups = RoleGroups.create(plan, {"actor": ActorWorker, ...}, init_kwargs={...})
    batch = groups["actor"].call("generate", prompts)        # SPLIT: sharded and re-joined in order
    future = groups["critic"].call_async("values", batch)    # run roles concurrently
    values = future.result()
    groups.shutdown()
"""
from __future__ import annotations

import functools
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlhf.data.batch import RolloutBatch
from rlhf.distributed.placement import PlacementPlan, RankSlot, create_placement_groups
from rlhf.workers.base import THREADS_ENV, Dispatch, dispatch_mode
from rlhf.workers.hybrid import HybridWorker

DEFAULT_CALL_TIMEOUT_S = 1800.0


class WorkerError(RuntimeError):
    """A rank of a worker group failed: it raised, died, or did not answer within the timeout."""

    def __init__(self, role: str, rank: int, method: str, reason: str) -> None:
        super().__init__(f"worker {role!r} rank {rank} failed in {method!r}: {reason}")
        self.role, self.rank, self.method, self.reason = role, rank, method, reason


class WorkerTimeoutError(WorkerError):
    """A rank did not answer within the call timeout (hung, or stuck in a collective)."""


class WorkerDiedError(WorkerError):
    """A rank's process died (killed, out of memory, its node lost): a fresh group may recover."""


def shard_sizes(n: int, parts: int) -> list[int]:
    """Contiguous near-equal shard sizes: the first n % parts shards get one extra item."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def split_arg(value: Any, parts: int) -> list[Any]:
    """Cut a RolloutBatch, list/tuple or tensor into `parts` contiguous shards (order preserved)."""
    sizes = shard_sizes(len(value), parts)
    bounds = [sum(sizes[:i]) for i in range(parts + 1)]
    if isinstance(value, RolloutBatch):
        return [value.select(slice(bounds[i], bounds[i + 1])) for i in range(parts)]
    if isinstance(value, (list, tuple, torch.Tensor)):
        return [value[bounds[i]:bounds[i + 1]] for i in range(parts)]
    raise TypeError(f"SPLIT dispatch needs a RolloutBatch, list or tensor first argument, got {type(value).__name__}")


def concat_results(results: list[Any]) -> Any:
    """Join per-rank results of a SPLIT call in rank order."""
    first = results[0]
    if isinstance(first, RolloutBatch):
        return RolloutBatch.concat([r for r in results if len(r)] or results[:1])
    if isinstance(first, torch.Tensor):
        return torch.cat(results, dim=0)
    if isinstance(first, (list, tuple)):
        return [item for r in results for item in r]
    if isinstance(first, dict):
        return {k: concat_results([r[k] for r in results]) for k in first}
    raise TypeError(f"cannot concatenate SPLIT results of type {type(first).__name__}")


@dataclass
class GroupCall:
    """Pending results of one method call on every rank of a group."""

    role: str
    method: str
    refs: list[ray.ObjectRef]
    mode: Dispatch
    timeout_s: float

    def result(self) -> Any:
        values = wait_all(self.role, self.method, self.refs, self.timeout_s)
        if self.mode is Dispatch.SPLIT:
            return concat_results(values)
        return values[0] if self.mode in (Dispatch.RANK0, Dispatch.SPLIT_RANK0) else values


def wait_all(role: str, method: str, refs: list[ray.ObjectRef], timeout_s: float) -> list[Any]:
    """Results of `refs` (rank order); the first failure raises WorkerError at once."""
    rank_of = {ref: rank for rank, ref in enumerate(refs)}
    results: dict[int, Any] = {}
    pending = list(refs)
    deadline = time.monotonic() + timeout_s
    while pending:
        remaining = deadline - time.monotonic()
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(remaining, 0.0))
        if not ready:
            ranks = sorted(rank_of[r] for r in pending)
            raise WorkerTimeoutError(role, ranks[0], method,
                                     f"no answer within {timeout_s:g} s (ranks still pending: {ranks})")
        ref = ready[0]
        try:
            results[rank_of[ref]] = ray.get(ref, timeout=0)
        except RayTaskError as err:
            raise WorkerError(role, rank_of[ref], method, f"raised {err.cause!r}") from err.cause
        except RayActorError as err:
            raise WorkerDiedError(role, rank_of[ref], method, f"the worker process died ({type(err).__name__})") from err
        except (GetTimeoutError, RayError) as err:
            raise WorkerError(role, rank_of[ref], method, f"{type(err).__name__}: {err}") from err
    return [results[rank] for rank in range(len(refs))]


def _worker_env(env_vars: dict[str, str] | None) -> dict[str, str]:
    """The environment of a group's actors: `env_vars`, plus the run's thread count and PYTHONPATH when the
    driver has them (user tasks and reward functions given by dotted path import from there)."""
    env = {name: os.environ[name] for name in (THREADS_ENV, "PYTHONPATH") if os.environ.get(name)}
    return {**env, **(env_vars or {})}


class WorkerGroup:
    """The ranks of one role, placed on their slots of the plan's placement groups."""

    def __init__(self, role: str, worker_cls: type, slots: Sequence[RankSlot], placement_groups: list,
                 *, seed: int = 0, init_kwargs: dict | None = None, env_vars: dict[str, str] | None = None,
                 call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S, master_addr: str | None = None) -> None:
        self.role, self.worker_cls, self.call_timeout_s = role, worker_cls, call_timeout_s
        self.world_size = len(slots)
        remote_cls = ray.remote(worker_cls)
        self.workers = [
            remote_cls.options(
                num_cpus=slot.num_cpus, num_gpus=slot.num_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_groups[slot.node_slot], slot.bundle),
                runtime_env={"env_vars": _worker_env(env_vars)},
            ).remote(role, slot.rank, self.world_size, seed, **(init_kwargs or {}))
            for slot in slots
        ]
        self._setup_rendezvous(master_addr)

    def _setup_rendezvous(self, master_addr: str | None) -> None:
        loopback = master_addr is None and single_host()
        if master_addr is None:
            master_addr = "127.0.0.1" if loopback else self.call_rank(0, "node_ip")
        port = self.call_rank(0, "free_port", master_addr)
        init_file = os.path.join(tempfile.gettempdir(), f"rlhf-rendezvous-{self.role}-{uuid.uuid4().hex}")
        self.call("set_master", master_addr, port, loopback, init_file if loopback else None)

    def call_async(self, method: str, *args, timeout_s: float | None = None, **kwargs) -> GroupCall:
        """Start `method` on every rank per its declared dispatch; `.result()` waits and gathers."""
        mode = dispatch_mode(self.worker_cls, method)
        if mode in (Dispatch.SPLIT, Dispatch.SPLIT_RANK0):
            if not args:
                raise TypeError(f"{self.role}.{method} is a SPLIT method: pass the data as first argument")
            shards = split_arg(args[0], self.world_size)
            refs = [self._remote(w, method)(shard, *args[1:], **kwargs) for w, shard in zip(self.workers, shards)]
        else:
            refs = [self._remote(w, method)(*args, **kwargs) for w in self.workers]
        return GroupCall(self.role, method, refs, mode, timeout_s or self.call_timeout_s)

    def _remote(self, worker, method: str):
        """The Ray method that runs `method` on `worker`."""
        return getattr(worker, method).remote

    def call(self, method: str, *args, timeout_s: float | None = None, **kwargs) -> Any:
        """Run `method` on the group and wait for its gathered result."""
        return self.call_async(method, *args, timeout_s=timeout_s, **kwargs).result()

    def call_rank(self, rank: int, method: str, *args, timeout_s: float | None = None, **kwargs) -> Any:
        """Run `method` on one rank only (setup and diagnostics)."""
        ref = self._remote(self.workers[rank], method)(*args, **kwargs)
        return wait_all(self.role, method, [ref], timeout_s or self.call_timeout_s)[0]

    def ping(self, timeout_s: float = 60.0) -> list[dict]:
        """Health check: every rank answers with its identity and placement within `timeout_s`."""
        return self.call("ping", timeout_s=timeout_s)

    def shutdown(self) -> None:
        for worker in self.workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:  # already dead
                pass
        self.workers = []


class HostedRoleGroup(WorkerGroup):
    """One role of a hybrid device group (rlhf/workers/hybrid.py): the calls of a WorkerGroup of that
    role (`worker_cls` declares their dispatch), run by the `host` group's processes, which host it
    together with other roles. Shutting it down shuts the host down."""

    def __init__(self, role: str, worker_cls: type, host: WorkerGroup) -> None:
        # no super().__init__: that starts actors; these are the host's
        self.role, self.worker_cls, self.host = role, worker_cls, host
        self.call_timeout_s, self.world_size, self.workers = host.call_timeout_s, host.world_size, host.workers

    def _remote(self, worker, method: str):
        dispatch_mode(self.worker_cls, method)  # AttributeError here, in the driver, for an unknown method
        return functools.partial(worker.call_role.remote, self.role, method)

    def shutdown(self) -> None:
        self.host.shutdown()
        self.workers = []


def host_slots(plan: PlacementPlan, group) -> list[RankSlot]:
    """The slots of a hybrid device group's host processes: one per bundle, holding its whole device
    and every hosted role's CPU share."""
    return [RankSlot(role=group.name, rank=s.rank, group=group.name, node_slot=s.node_slot, bundle=s.bundle,
                     num_gpus=1.0 if plan.use_gpu else 0.0, num_cpus=group.bundle_resources["CPU"])
            for s in plan.role_slots(group.roles[0])]


def host_env(env_vars: dict[str, str] | None, cpus: float) -> dict[str, str]:
    """A host process's environment: torch threads = its whole CPU share unless the run fixed a count."""
    env = dict(env_vars or {})
    if not env.get(THREADS_ENV) and not os.environ.get(THREADS_ENV):
        env[THREADS_ENV] = str(max(1, math.ceil(cpus - 1e-9)))
    return env


def single_host() -> bool:
    """True when every alive Ray node has the same address: collectives can stay on loopback."""
    return len({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}) <= 1


class RoleGroups:
    """All worker groups of a run and the placement groups they live in; `shutdown()` frees both."""

    def __init__(self, plan: PlacementPlan, groups: dict[str, WorkerGroup], placement_groups: dict[str, list]):
        self.plan, self.groups, self.placement_groups = plan, groups, placement_groups

    @classmethod
    def create(cls, plan: PlacementPlan, worker_classes: dict[str, type], *, seed: int = 0,
               init_kwargs: dict[str, dict] | None = None, env_vars: dict[str, str] | None = None,
               call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S, placement_timeout_s: float = 60.0) -> "RoleGroups":
        """Create the placement groups of `plan`, then one worker group per role in `worker_classes`
        (in the hybrid layout, one host group per device group of several roles and a HostedRoleGroup
        per role on it)."""
        pgs = create_placement_groups(plan, timeout_s=placement_timeout_s)
        groups: dict[str, WorkerGroup] = {}
        try:
            for device_group in plan.groups:
                roles = [r for r in device_group.roles if r in worker_classes]
                if plan.hosted_together(device_group) and len(roles) > 1:
                    if any((init_kwargs or {}).get(r) for r in roles):
                        raise ValueError(f"roles {roles} hosted in one process take no init_kwargs")
                    host = WorkerGroup(device_group.name, HybridWorker, host_slots(plan, device_group),
                                       pgs[device_group.name], seed=seed,
                                       init_kwargs={"hosted": {r: worker_classes[r] for r in roles},
                                                    "offload": {r: device_group.idle_offload.get(r, "none")
                                                                for r in roles}},
                                       env_vars=host_env(env_vars, device_group.bundle_resources["CPU"]),
                                       call_timeout_s=call_timeout_s)
                    groups.update({r: HostedRoleGroup(r, worker_classes[r], host) for r in roles})
                    continue
                for role in roles:
                    groups[role] = WorkerGroup(
                        role, worker_classes[role], plan.role_slots(role), pgs[device_group.name], seed=seed,
                        init_kwargs=(init_kwargs or {}).get(role), env_vars=env_vars, call_timeout_s=call_timeout_s)
        except BaseException:
            cls(plan, groups, pgs).shutdown()
            raise
        return cls(plan, {r: groups[r] for r in worker_classes}, pgs)

    def __getitem__(self, role: str) -> WorkerGroup:
        return self.groups[role]

    def __contains__(self, role: str) -> bool:
        return role in self.groups

    def shutdown(self) -> None:
        from ray.util import remove_placement_group

        for group in self.groups.values():
            group.shutdown()
        for pg in (pg for pgs in self.placement_groups.values() for pg in pgs):
            try:
                remove_placement_group(pg)
            except Exception:  # already removed
                pass
        self.groups, self.placement_groups = {}, {}
