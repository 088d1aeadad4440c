"""Forward passes of a rank's shard in micro-batches, safe under ZeRO-3.

Under ZeRO-3 every forward gathers parameters collectively, so every rank of the role must run the
same number of forwards even when SPLIT gave them shards of different sizes: ranks with fewer
micro-batches run extra forwards on a one-row dummy and drop the result.
"""
from __future__ import annotations

from typing import Callable

import torch

from rlhf.data.batch import RolloutBatch
from rlhf.workers.collectives import all_reduce_max


def forward_in_chunks(batch: RolloutBatch, chunk_size: int, collective: bool, device: torch.device,
                      forward: Callable[[RolloutBatch], torch.Tensor]) -> torch.Tensor:
    """Concatenate `forward(micro)` over micro-batches of `chunk_size` rows (results moved to CPU)."""
    micros = batch.split(chunk_size) if len(batch) else []
    n_forwards = lockstep_forwards(len(micros), collective)
    outputs = []
    with torch.no_grad():
        for i in range(n_forwards):
            micro = micros[i] if i < len(micros) else _dummy(batch)
            result = forward(micro.to(device)).float().cpu()
            if i < len(micros):
                outputs.append(result)
    if not outputs:
        return torch.zeros(0, batch.response_len)
    return torch.cat(outputs)


def lockstep_forwards(n_local: int, collective: bool) -> int:
    """How many forwards this rank runs: its own `n_local`, or under ZeRO-3 (`collective`) the most that
    any rank of the role runs, so that every parameter all-gather has all ranks in it."""
    if not collective:
        return n_local
    return int(all_reduce_max(torch.tensor([n_local])).item())


def _dummy(batch: RolloutBatch) -> RolloutBatch:
    if len(batch) == 0:
        raise ValueError("a rank with an empty shard cannot join a ZeRO-3 forward: give every rank "
                         "at least one row (batch size >= data-parallel size)")
    return batch.select(slice(0, 1))
