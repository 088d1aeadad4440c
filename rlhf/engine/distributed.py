"""Process-group set-up for the engines: torch.distributed initialised through DeepSpeed.

Every rank of a role is started (by a Ray actor, `torch.distributed.run`, or a test) with the five
environment variables below; DeepSpeed reads them. Without them DeepSpeed falls back to MPI
discovery and fails obscurely, so we check first and name what is missing.

DeepSpeed is imported lazily, after `DS_ACCELERATOR` is settled: it picks its accelerator once, at
first use, and on a machine without CUDA we pin it to the CPU accelerator (gloo) up front.
"""
from __future__ import annotations

import os

import torch

REQUIRED_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")


def import_deepspeed():
    """Import deepspeed, first setting DS_ACCELERATOR=cpu when CUDA is absent (and it is unset).

    On a GPU machine DeepSpeed's own detection is kept, so the variable is never forced there.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    return deepspeed


INIT_METHOD_ENV = "RLHF_DIST_INIT_METHOD"

# Where one world's ranks meet. A launcher sets these per world and must not let a new world inherit
# them from its own environment: two worlds sharing one rendezvous read each other's keys and connect
# to the wrong peers (gloo "Connection refused", or a hang).
RENDEZVOUS_ENV = REQUIRED_ENV + (INIT_METHOD_ENV,)


def rank_environment(rank: int, world_size: int, master_port: int, init_file: str | None = None,
                     base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of local rank `rank` of a fresh single-host world: `base` (default os.environ)
    without any inherited rendezvous, plus RANK/LOCAL_RANK/WORLD_SIZE, MASTER_ADDR=127.0.0.1 and
    `master_port`, and with `init_file` the file rendezvous (nothing listens on MASTER_PORT then)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in RENDEZVOUS_ENV}
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(master_port))
    if init_file is not None:
        env[INIT_METHOD_ENV] = f"file://{init_file}"
    return env


BACKEND_ENV = "RLHF_DIST_BACKEND"  # overrides the backend choice below (e.g. "nccl", "gloo", "cpu:gloo,cuda:nccl")
GPU_BACKEND = "cpu:gloo,cuda:nccl"


def backend_for(cuda: bool) -> str:
    """The process-group backend of a rank: "gloo" without CUDA; with CUDA one group with TWO backends,
    NCCL for CUDA tensors (DeepSpeed's gradient and ZeRO traffic, HF's synced generation) and gloo for
    CPU tensors (the metric, count and normaliser reductions of `rlhf.engine.collectives`).

    NCCL alone accepts only CUDA tensors: a CPU tensor in an NCCL-only group raises ("No backend type
    associated with device type cpu"), so every CPU reduction of a multi-rank role would crash.
    """
    return GPU_BACKEND if cuda else "gloo"


def default_backend() -> str:
    """$RLHF_DIST_BACKEND if set, else `backend_for` this machine."""
    return os.environ.get(BACKEND_ENV) or backend_for(torch.cuda.is_available())


def backend_devices(backend: str) -> frozenset[str]:
    """Device types whose tensors a backend string accepts in collectives: "nccl" → {cuda}, "gloo" →
    {cpu} (gloo's CUDA support is partial; we never rely on it), "cpu:gloo,cuda:nccl" → {cpu, cuda}."""
    backend = backend.lower()
    if ":" in backend:
        return frozenset(part.split(":")[0].strip() for part in backend.split(",") if ":" in part)
    return frozenset({"nccl": {"cuda"}, "gloo": {"cpu"}, "mpi": {"cpu", "cuda"}}.get(backend, {"cpu"}))


def init_distributed(backend: str | None = None) -> None:
    """Initialise torch.distributed (via `deepspeed.init_distributed`) from the environment.

    Reads RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and LOCAL_RANK; raises RuntimeError naming any
    that are missing. `backend` defaults to `default_backend()` (gloo on CPU, NCCL for CUDA tensors plus
    gloo for CPU tensors on GPU: see `backend_for`). On GPU the current device
    becomes cuda:LOCAL_RANK. Idempotent: a second call (or a call after someone else initialised
    torch.distributed) only makes sure DeepSpeed's comm layer wraps the existing process group.

    With RLHF_DIST_INIT_METHOD=file:///path (set by worker groups whose ranks share one machine) the
    ranks meet through a file instead of a TCP store: torch's TCP store listens on every interface,
    a file opens no port at all. Gloo's own sockets follow GLOO_SOCKET_IFNAME (loopback there).
    """
    already = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not already:
        missing = [key for key in REQUIRED_ENV if key not in os.environ]
        if missing:
            raise RuntimeError(
                f"init_distributed needs the environment variables {list(REQUIRED_ENV)}; missing {missing}. "
                "Set them for every rank (single process: RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 "
                "MASTER_ADDR=127.0.0.1 MASTER_PORT=<free port>)."
            )
    deepspeed = import_deepspeed()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    init_method = os.environ.get(INIT_METHOD_ENV) or None
    rendezvous = {}
    if init_method and not already:
        rendezvous = dict(init_method=init_method, rank=int(os.environ["RANK"]),
                          world_size=int(os.environ["WORLD_SIZE"]))
    deepspeed.init_distributed(dist_backend=backend or default_backend(), auto_mpi_discovery=False,
                               verbose=False, **rendezvous)


def current_device() -> torch.device:
    """The device this rank computes on: cuda:LOCAL_RANK with CUDA, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def rank() -> int:
    """Global rank, 0 when torch.distributed is not initialised."""
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    """World size, 1 when torch.distributed is not initialised."""
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank; a no-op without torch.distributed (`rlhf.engine.collectives.barrier`)."""
    from rlhf.engine import collectives

    collectives.barrier()
