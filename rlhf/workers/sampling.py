"""Sampling through a worker's rollout engine: the actor's rollouts and the SFT stage's gold evaluation.

The engine (rlhf/rollout/) is `HFEngine` on the worker's own module unless the actor started another
one (`ActorWorker.init_rollout`, e.g. vLLM); either way the batch is assembled by
`rlhf.rollout.sample_rollouts`, and an engine holding other weights than the actor's current version
is a StaleWeightsError naming the rank (DESIGN.md §5).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from rlhf.data.batch import RolloutBatch
from rlhf.models import SamplingParams
from rlhf.rollout import HFEngine, RolloutEngine, RolloutEngineError, StaleWeightsError, sample_rollouts
from rlhf.workers.base import Dispatch, dispatch


class SamplingMixin:
    """`generate` for a worker with `self.engine` (a causal LM), `self.tokenizer`, `self.rank`."""

    rollout_engine: RolloutEngine | None = None
    last_probe: tuple[list[int], int] | None = None  # (prompt + response ids, prompt length) of the last rollout's row 0

    def _sampler(self) -> RolloutEngine:
        if self.rollout_engine is None:
            zero3_multi_rank = self.engine.cfg.zero_stage == 3 and self.world_size > 1
            self.rollout_engine = HFEngine(lambda: self.engine.module, self.tokenizer, synced_gpus=zero3_multi_rank)
        return self.rollout_engine

    def weight_version(self) -> int:
        """The version of the weights being trained: optimizer updates taken (restored on resume)."""
        return int(self.engine.global_steps)

    @dispatch(Dispatch.SPLIT)
    def generate(self, items: list[tuple[Any, Any]], params: SamplingParams,
                 recompute_temperature: float | None = None) -> RolloutBatch:
        """Sample `params.n` responses per (prompt, reference) item of this rank's shard.

        A seeded call gives every rank its own stream (seed + rank), a function of the seed only. With
        `recompute_temperature` (an actor sampling ahead of its update, rlhf/trainers/async_rollout.py)
        the old log-probs are recomputed here, with the weights that sampled: `old_logprobs_BT` holds the
        training forward's and `rollout_logprobs_BT` the sampler's."""
        self.engine.eval()
        if params.seed is not None:
            params = dataclasses.replace(params, seed=params.seed + 7919 * self.rank)
        engine = self._sampler()
        if engine.shares_actor_weights:  # samples with the live module: never stale
            engine.weight_version = self.weight_version()
        where = f"{self.role} rank {self.rank} ({engine.name} engine)"
        try:
            engine.wake_up()
            batch = sample_rollouts(engine, self.tokenizer, [prompt for prompt, _ in items], params,
                                    references=[reference for _, reference in items],
                                    expected_version=self.weight_version(), where=where)
        except (StaleWeightsError, ValueError):
            raise
        except Exception as err:
            if engine.shares_actor_weights:
                raise
            raise RolloutEngineError(f"{where}: generate failed: {type(err).__name__}: {err}") from err
        batch = batch.to("cpu")
        if recompute_temperature is not None:
            sampler_BT = batch.old_logprobs_BT
            batch.old_logprobs_BT = self.logprobs(batch, recompute_temperature).to(sampler_BT.dtype).cpu()
            batch.rollout_logprobs_BT = sampler_BT
        if len(batch):
            valid = batch.attention_mask_BS[0].bool()
            self.last_probe = (batch.input_ids_BS[0][valid].tolist(), int(valid[:batch.prompt_len].sum()))
        return batch
