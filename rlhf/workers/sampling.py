"""Sampling from a worker's own causal-LM engine: the actor's rollouts and the SFT stage's gold evaluation.

Generation uses HF `generate` on the engine's module (KV cache, left-padded prompts, stop on EOS),
so no weight sync is needed (DESIGN.md §5).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from rlhf.data.batch import RolloutBatch
from rlhf.models import SamplingParams, generate_rollouts
from rlhf.workers.base import Dispatch, dispatch


class SamplingMixin:
    """`generate` for a worker with `self.engine` (a causal LM), `self.tokenizer`, `self.rank`."""

    @dispatch(Dispatch.SPLIT)
    def generate(self, items: list[tuple[Any, Any]], params: SamplingParams) -> RolloutBatch:
        """Sample `params.n` responses per (prompt, reference) item of this rank's shard.

        A seeded call gives every rank its own stream (seed + rank), a function of the seed only."""
        self.engine.eval()
        if params.seed is not None:
            params = dataclasses.replace(params, seed=params.seed + 7919 * self.rank)
        prompts = [prompt for prompt, _ in items]
        references = [reference for _, reference in items]
        batch = generate_rollouts(self.engine.module, self.tokenizer, prompts, params, references=references,
                                  synced_gpus=self.engine.cfg.zero_stage == 3 and self.world_size > 1)
        return batch.to("cpu")
