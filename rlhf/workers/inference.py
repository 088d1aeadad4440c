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
                      forward: Callable[[RolloutBatch], torch.Tensor], padding_free: bool = True,
                      max_tokens: int | None = None) -> torch.Tensor:
    """Concatenate `forward(micro)` over micro-batches of `chunk_size` rows (results moved to CPU), in the
    batch's row order: `[B, T]` for per-token outputs, `[B]` for per-sequence ones.

    `padding_free`: rows are grouped by length (`RolloutBatch.by_length`) and each micro-batch trimmed to
    its own width (`RolloutBatch.trim`), so a short row is not computed at the batch's longest width; the
    values are the same (positions come from the attention mask), per-token outputs are zero-padded back
    to T. The number of forwards does not change, so ZeRO-3 ranks stay in lock-step.

    `max_tokens`: micro-batches of the length-sorted rows packed to at most that many padded tokens each
    (`RolloutBatch.split_by_tokens`) instead of `chunk_size` rows; ranks with fewer run dummy forwards.
    """
    padding_free = padding_free or max_tokens is not None
    order_B = batch.by_length() if padding_free and len(batch) > 1 else None
    rows = batch.select(order_B) if order_B is not None else batch
    if not len(rows):
        micros = []
    elif max_tokens is not None:
        micros = rows.split_by_tokens(max_tokens, setting="engines.forward_max_tokens_per_micro_batch")
    else:
        micros = rows.split(chunk_size)
    n_forwards = lockstep_forwards(len(micros), collective)
    outputs = []
    with torch.no_grad():
        for i in range(n_forwards):
            micro = micros[i] if i < len(micros) else _dummy(batch)
            result = forward((micro.trim() if padding_free else micro).to(device)).float().cpu()
            if i < len(micros):
                outputs.append(_pad_tokens(result, batch.response_len))
    if not outputs:
        return torch.zeros(0, batch.response_len)
    merged = torch.cat(outputs)
    if order_B is None:
        return merged
    restored = torch.empty_like(merged)
    restored[order_B] = merged
    return restored


def _pad_tokens(result: torch.Tensor, response_len: int) -> torch.Tensor:
    """A trimmed micro-batch's `[b, T']` output zero-padded to `[b, T]` (a `[b]` output as it is)."""
    if result.dim() != 2 or result.shape[1] == response_len:
        return result
    return torch.nn.functional.pad(result, (0, response_len - result.shape[1]))


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
