"""Every collective our code issues goes through here (a test checks that no other module calls one).

The rule this module owns: a collective's tensor must be on a device the process group's backend
accepts. NCCL takes only CUDA tensors; the roles' metric/count/normaliser reductions are small CPU
tensors. `rlhf.engine.distributed.backend_for` gives GPU ranks one group with gloo beside NCCL, so
CPU tensors stay on the CPU; when the group was created by someone else without a CPU backend (a
user's launcher, NCCL only), the tensor is copied to the rank's CUDA device for the collective and
the result copied back, so callers always get a tensor on the device they passed.

All functions are identities (or no-ops) without an initialised process group of more than one rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from rlhf.engine.distributed import backend_devices


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def communication_device(tensor_device: torch.device, backend: str | None = None) -> torch.device:
    """Where a tensor on `tensor_device` must be for a collective under `backend` (default: the
    current group's): the tensor's own device when the backend accepts it, else the rank's CUDA device
    (NCCL-only group), else the CPU."""
    served = backend_devices(backend if backend is not None else str(dist.get_backend()))
    if tensor_device.type in served:
        return tensor_device
    if "cuda" in served:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reduce(values: torch.Tensor, op) -> torch.Tensor:
    if not _active():
        return values
    device = communication_device(values.device)
    buffer = values.to(device, copy=True)
    dist.all_reduce(buffer, op=op)
    return buffer.to(values.device)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Σ over the ranks of the role, on `values`' device (a new tensor; identity without a group)."""
    return _reduce(values, dist.ReduceOp.SUM)


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise max over the ranks of the role, on `values`' device."""
    return _reduce(values, dist.ReduceOp.MAX)


def barrier() -> None:
    """Wait for every rank of the group; a no-op without one."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
