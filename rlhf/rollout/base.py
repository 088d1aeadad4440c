"""The rollout-engine interface: token ids in, sampled tokens with their log-probs and weight version out.

Shape key: P prompts, G = `SamplingParams.n` samples per prompt, B = P·G rows, T response tokens
(as in `rlhf.data.batch`). An engine returns one `Completion` per row, prompt-major: completions
p·G … p·G+G−1 answer prompt p. `assemble_rollouts` (rlhf/rollout/assemble.py) turns them into the
`RolloutBatch` the trainer consumes, so every engine feeds PPO through the same code.

Weight versions are how a stale rollout is caught: the actor bumps its version with every optimizer
update, pushes its weights with `update_weights(buckets, version)`, and every completion reports the
version of the weights that produced it. A completion whose version is not the actor's is a
`StaleWeightsError`, never a silent rollout from old weights (the most reported failure of separate
rollout engines in other frameworks).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from rlhf.models import SamplingParams

FINISH_REASONS = ("eos", "stop", "length")  # EOS token; a stop string; max_new_tokens reached

# One bucket of a weight sync: (parameter name as in the HF checkpoint, full CPU tensor) pairs.
WeightBucket = list[tuple[str, torch.Tensor]]


class RolloutEngineError(RuntimeError):
    """A rollout engine failed to start, generate or take weights."""


class StaleWeightsError(RolloutEngineError):
    """A rollout was sampled with weights other than the actor's current ones (a sync was skipped or failed)."""


@dataclass
class Completion:
    """One sampled response: its token ids (through EOS or the stop token), their sampler log-probs
    (log softmax(logits / temperature), float), why it ended, and the weight version that sampled it."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # one of FINISH_REASONS
    weight_version: int

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"Completion.finish_reason: got {self.finish_reason!r}, must be one of {FINISH_REASONS}")
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"Completion: {len(self.token_ids)} token ids but {len(self.logprobs)} log-probs")


class RolloutEngine(abc.ABC):
    """Samples responses for the actor. Implementations: `HFEngine` (the actor's own module),
    `VLLMEngine` (vLLM's offline engine, its own copy of the weights)."""

    name: str = "engine"
    shares_actor_weights: bool = False  # True: samples with the actor's live module; syncs move no bytes

    def __init__(self) -> None:
        self.weight_version = 0

    @abc.abstractmethod
    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """`params.n` completions per prompt, prompt-major (B = len(prompt_ids) · n)."""

    def update_weights(self, buckets: Iterable[WeightBucket], version: int) -> dict[str, float]:
        """Load the actor's weights, bucket by bucket; only when every bucket arrived is `version` the
        engine's. Returns sync metrics (seconds, bytes). The default: weights are shared, nothing moves."""
        for _ in buckets:
            pass
        self.weight_version = int(version)
        return {"bytes": 0.0}

    def sequence_logprobs(self, sequences: Sequence[Sequence[int]], start: int) -> list[list[float]]:
        """log p(token_t | tokens_<t) for t ≥ `start` of each sequence, at temperature 1 (verifies a sync)."""
        raise NotImplementedError(f"{type(self).__name__} does not score sequences")

    def sleep(self) -> None:
        """Free the KV cache (and weights where supported) while the actor trains; no-op by default."""

    def wake_up(self) -> None:
        """Restore what `sleep` freed before the next rollout; no-op by default."""

    def health(self) -> dict:
        """A cheap liveness report: engine name, weight version, whether it is asleep."""
        return {"engine": self.name, "weight_version": self.weight_version}

    def shutdown(self) -> None:
        """Release the engine's processes and memory; no-op by default."""


def check_versions(completions: Sequence[Completion], expected: int, where: str) -> None:
    """Raise StaleWeightsError if any completion was sampled with weights other than version `expected`."""
    stale = sorted({c.weight_version for c in completions if c.weight_version != expected})
    if stale:
        raise StaleWeightsError(
            f"{where}: rollout sampled with weight version(s) {stale} but the actor is at version {expected}: "
            "a weight sync was skipped or failed (see the sync metrics and the engine's log)")
