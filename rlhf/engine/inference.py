"""`InferenceEngine`: a forward-only role (reference, reward) — plain eval module or ZeRO-3 shards.

Stage 0 is the module itself on this rank's device in the configured dtype: no DeepSpeed, no process
group needed. Stage 3 partitions the parameters over the role's ranks (DeepSpeed without an
optimizer), for models too large to replicate; DeepSpeed gathers them layer by layer in forward.
"""
from __future__ import annotations

import torch

from rlhf.config.engine import EngineConfig
from rlhf.engine.distributed import current_device, import_deepspeed, init_distributed
from rlhf.engine.ds_config import TORCH_DTYPES, build_deepspeed_config
from rlhf.engine.idle import IdleStates, move_tensors


class InferenceEngine:
    """Frozen `model` for forward passes under `torch.no_grad()`. `cfg.zero_stage` must be 0 or 3;
    the optimizer fields of `cfg` are ignored. `micro_batch_size` only feeds DeepSpeed's batch-size
    bookkeeping under ZeRO-3."""

    def __init__(self, model: torch.nn.Module, cfg: EngineConfig, micro_batch_size: int = 1):
        build_deepspeed_config(cfg, micro_batch_size, 1, 1, train=False)  # rejects stages 1/2 up front
        self.cfg = cfg
        model.requires_grad_(False)
        if cfg.zero_stage == 0:
            self._engine = None
            self._module = model.to(device=current_device(), dtype=TORCH_DTYPES[cfg.dtype]).eval()
        else:
            init_distributed()
            deepspeed = import_deepspeed()
            ds_config = build_deepspeed_config(cfg, micro_batch_size, 1, torch.distributed.get_world_size(),
                                               train=False)
            self._engine, _, _, _ = deepspeed.initialize(model=model, config=ds_config)
            self._engine.eval()
            self._module = self._engine.module
        self.idle = IdleStates()

    def release(self, what: str) -> int:
        """Move the weights to host memory ("all"; a frozen role has no optimizer: "optimizer" moves
        nothing) while another role of this process runs; returns the bytes moved (rlhf/engine/idle.py)."""
        self.idle.check(what)
        if self._engine is not None:
            raise ValueError("release: a ZeRO-3 forward-only role keeps its shards (use engines.<role>.offload_params)")
        self.idle.device = next(self._module.parameters()).device
        moved = move_tensors(self._module.parameters(), torch.device("cpu")) if what == "all" else 0
        self.idle.released = what
        return moved

    def restore(self) -> None:
        """Bring back what `release` moved (a no-op when nothing is released)."""
        if self.idle.released is not None:
            move_tensors(self._module.parameters(), self.idle.device)
            self.idle.released = None

    @property
    def module(self) -> torch.nn.Module:
        """The unwrapped model (under ZeRO-3 its parameters are shards)."""
        return self._module

    def forward(self, *args, **kwargs):
        """The model's forward under `torch.no_grad()`. Under ZeRO-3 this is collective: every rank
        of the role must call it the same number of times (each on its own rows)."""
        with torch.no_grad():
            if self._engine is not None:
                return self._engine(*args, **kwargs)
            return self._module(*args, **kwargs)

    __call__ = forward
