"""Releasing a role's device memory while another role of the same process runs (the hybrid layout).

`release(what)` moves a role's states to host memory, `restore()` brings them back where they were;
between the two the role must not run (rlhf/workers/hybrid.py guarantees it). `what`:
    "optimizer"  the optimizer's states and fp32 master weights, and the gradients (trained roles)
    "all"        those and the weights themselves

ZeRO-1/2 engines use DeepSpeed's own `offload_states` / `reload_states` (it knows its flat buffers);
ZeRO-0 engines and plain modules move their tensors in place (`.data` swaps, so every reference the
optimizer and the engine hold stays valid). ZeRO-3 is refused by the config (DeepSpeed offloads its
states only with its FusedAdam; `engines.<role>.offload_optimizer/offload_params` is the ZeRO-3 way).
On a CPU-only machine the moves are to the device the tensors are already on: the code path runs
(tests/engine/test_idle_offload.py), the memory does not change.
"""
from __future__ import annotations

from typing import Iterable

import torch

IDLE_STATES = ("optimizer", "all")


def move_tensors(tensors: Iterable[torch.Tensor], device: torch.device) -> int:
    """Move each tensor's storage to `device` in place (`.data` swap); returns the bytes moved."""
    moved = 0
    for tensor in tensors:
        if tensor.device != device:
            tensor.data = tensor.data.to(device, non_blocking=False)
        moved += tensor.numel() * tensor.element_size()
    return moved


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors a torch optimizer keeps per parameter (Adam's exp_avg, exp_avg_sq, step)."""
    return [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]


def gradients(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None]


class IdleStates:
    """Which states of a role are away from its device, and how to bring them back."""

    def __init__(self) -> None:
        self.released: str | None = None
        self.device: torch.device | None = None

    def check(self, what: str) -> None:
        if what not in IDLE_STATES:
            raise ValueError(f"release: what={what!r}, expected one of {list(IDLE_STATES)}")
        if self.released is not None:
            raise RuntimeError(f"release({what!r}) while {self.released!r} is already released: restore first")
