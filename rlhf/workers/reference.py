"""The reference: the frozen initial policy whose log-probs anchor the KL penalty."""
from __future__ import annotations

import torch

from rlhf.config.engine import EngineConfig
from rlhf.data.batch import RolloutBatch
from rlhf.models import ModelOptions, load_causal_lm, response_logprobs
from rlhf.workers.base import BaseWorker, Dispatch, dispatch
from rlhf.workers.inference import forward_in_chunks


class ReferenceWorker(BaseWorker):
    @dispatch(Dispatch.ALL)
    def init_model(self, model_path: str, options: ModelOptions, engine_cfg: EngineConfig,
                   micro_batch_size: int) -> None:
        """Forward-only engine: engine_cfg.zero_stage 0 (replica) or 3 (sharded)."""
        from rlhf.engine import InferenceEngine

        self.engine = InferenceEngine(load_causal_lm(model_path, options), engine_cfg, micro_batch_size)
        self.forward_batch_size = micro_batch_size

    @dispatch(Dispatch.SPLIT)
    def logprobs(self, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
        """[B, T] reference log-probs of the response tokens, at the sampling temperature."""
        return forward_in_chunks(
            batch, self.forward_batch_size, self.engine.cfg.zero_stage == 3, self.device,
            lambda micro: response_logprobs(self.engine, micro.input_ids_BS, micro.attention_mask_BS,
                                            micro.response_len, temperature), padding_free=self.padding_free,
            max_tokens=self.forward_max_tokens)
