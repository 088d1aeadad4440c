"""Rollout engines: what samples the actor's responses (DESIGN.md §5).

`RolloutEngine` is the token-in/token-out interface (rlhf/rollout/base.py); `HFEngine` samples with
the actor's own module (the default), `VLLMEngine` (rlhf/rollout/vllm_engine.py, imported lazily:
the only module that imports vllm) with vLLM and a synced copy of the weights. `sample_rollouts`
turns any engine's completions into the RolloutBatch PPO trains on.
"""
from rlhf.rollout.assemble import assemble_rollouts, sample_rollouts
from rlhf.rollout.base import (FINISH_REASONS, Completion, RolloutEngine, RolloutEngineError, StaleWeightsError,
                               WeightBucket, check_versions)
from rlhf.rollout.hf import HFEngine

__all__ = ["FINISH_REASONS", "Completion", "HFEngine", "RolloutEngine", "RolloutEngineError", "StaleWeightsError",
           "WeightBucket", "assemble_rollouts", "check_versions", "sample_rollouts"]
