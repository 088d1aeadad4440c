"""Reductions across the ranks of one role (identity when the role has a single rank)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Σ over the ranks of the role (identity without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values
