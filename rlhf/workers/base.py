"""The common base of every role's Ray actor, and how worker methods declare their dispatch.

A worker is a plain class; `rlhf.distributed.WorkerGroup` wraps it with `ray.remote`, places one
instance per data-parallel rank and calls its methods as if the group were one process. Each public
method declares how the group feeds it and gathers its results (STYLE.md item 4):

    ALL    every rank gets the same arguments; the caller gets the list of per-rank results
    RANK0  every rank gets the same arguments (collectives need them all); the caller gets rank 0's
    SPLIT  the first argument (a RolloutBatch, list or tensor) is cut into contiguous near-equal shards,
           one per rank; the per-rank results are concatenated back in rank order
    SPLIT_RANK0  sharded like SPLIT; the caller gets rank 0's result (e.g. an update whose metrics the
           ranks already all-reduced)
"""
from __future__ import annotations

import enum
import os
import random
import socket
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)
DISPATCH_ATTR = "_rlhf_dispatch"
# torch intra-op threads of every worker, when set (the run's `torch_threads`; forwarded to every actor
# by rlhf.distributed.WorkerGroup). Unset: what Ray gave the process (OMP_NUM_THREADS = its CPU share).
THREADS_ENV = "RLHF_TORCH_THREADS"


# Set on every rank of a single-host group (unless already set): sockets of gloo and NCCL on loopback.
LOOPBACK_ENV = {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}


class Dispatch(str, enum.Enum):
    ALL = "all"
    RANK0 = "rank0"
    SPLIT = "split"
    SPLIT_RANK0 = "split_rank0"


def dispatch(mode: Dispatch) -> Callable[[F], F]:
    """Declare how a worker-group call of this method is fanned out and gathered."""

    def mark(fn: F) -> F:
        setattr(fn, DISPATCH_ATTR, Dispatch(mode))
        return fn

    return mark


def dispatch_mode(cls: type, method: str) -> Dispatch:
    """The declared mode of `cls.method` (ALL when undeclared); AttributeError for unknown methods."""
    fn = getattr(cls, method, None)
    if fn is None or method.startswith("_"):
        raise AttributeError(f"{cls.__name__} has no public method {method!r}")
    return getattr(fn, DISPATCH_ATTR, Dispatch.ALL)


def seed_everything(seed: int) -> None:
    """Seed Python, torch (CPU and CUDA) for reproducible runs."""
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class BaseWorker:
    """One data-parallel rank of one role.

    Sets the environment DeepSpeed/torch.distributed read (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT), the device and the seeds. Under Ray each actor sees only its own GPU(s) through
    CUDA_VISIBLE_DEVICES, so its local device is always `cuda:0`. The process group itself is
    initialised by the role's engine when the model is built (`rlhf.engine.init_distributed`).
    """

    # Forward-only passes (log-probs, values, scores) group rows by length and trim each micro-batch's
    # padding (rlhf/workers/inference.py): the same values, less work. False computes at the batch's
    # full width: kept for the comparisons in tests/ and bench/padding_free.py.
    padding_free = True
    # Forward-only passes packed to this many padded tokens per micro-batch instead of a row count
    # (`ppo.engines.forward_max_tokens_per_micro_batch`, set by `set_forward_token_budget`); None = rows.
    forward_max_tokens: int | None = None

    def __init__(self, role: str, rank: int, world_size: int, seed: int = 0) -> None:
        self.role, self.rank, self.world_size = role, rank, world_size
        self.seed = seed
        if os.environ.get(THREADS_ENV):
            torch.set_num_threads(int(os.environ[THREADS_ENV]))
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0")
        # Same seed on every rank: identical model init across data-parallel ranks.
        seed_everything(seed)

    def release_idle(self, what: str) -> int:
        """Move this role's states off its device while another role of the process runs (the hybrid
        layout, rlhf/workers/hybrid.py); bytes moved. A no-op before the model exists or when released."""
        engine = getattr(self, "engine", None)
        if engine is None or not hasattr(engine, "idle") or engine.idle.released is not None:
            return 0
        return engine.release(what)

    def restore_idle(self) -> None:
        """Bring back what `release_idle` moved."""
        engine = getattr(self, "engine", None)
        if engine is not None and hasattr(engine, "idle"):
            engine.restore()

    @dispatch(Dispatch.ALL)
    def set_forward_token_budget(self, max_tokens: int | None) -> None:
        """Pack this rank's forward-only micro-batches to `max_tokens` padded tokens (None = row counts)."""
        self.forward_max_tokens = max_tokens

    @dispatch(Dispatch.ALL)
    def free_port(self, host: str) -> int:
        """A TCP port free on this node at `host` (asked of rank 0 to host the process-group store)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])

    @dispatch(Dispatch.ALL)
    def node_ip(self) -> str:
        """This node's address as Ray sees it (the rendezvous address on multi-node clusters)."""
        import ray

        return ray.util.get_node_ip_address()

    @dispatch(Dispatch.ALL)
    def set_master(self, master_addr: str, master_port: int, loopback: bool, init_file: str | None = None) -> None:
        """Where the ranks meet. On one machine (`loopback`) nothing listens beyond 127.0.0.1: the
        rendezvous goes through `init_file`, and gloo and NCCL bind their sockets to the loopback
        interface (NCCL's bootstrap otherwise listens on the first non-loopback interface; its data
        goes over NVLink/PCIe/shared memory on one host anyway). A user's own *_SOCKET_IFNAME wins."""
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        if loopback:
            for name, value in LOOPBACK_ENV.items():
                os.environ.setdefault(name, value)
            if init_file:
                os.environ["RLHF_DIST_INIT_METHOD"] = f"file://{init_file}"

    @dispatch(Dispatch.ALL)
    def ping(self) -> dict:
        """Identity and placement of this rank: role, rank, pid, node id, GPU ids Ray assigned."""
        info = {"role": self.role, "rank": self.rank, "world_size": self.world_size, "pid": os.getpid(),
                "device": str(self.device), "torch_threads": torch.get_num_threads()}
        try:
            import ray

            context = ray.get_runtime_context()
            info.update(node_id=context.get_node_id(), gpu_ids=[str(g) for g in ray.get_gpu_ids()],
                        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
        except Exception:  # outside Ray (unit tests of a worker in-process)
            info.update(node_id=None, gpu_ids=[], cuda_visible_devices=None)
        return info
