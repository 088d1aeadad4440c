"""The critic: per-token values V(s_t) of rollouts, trained with the clipped value loss."""
from __future__ import annotations

import torch

from rlhf.algorithms import masked_mean, value_loss
from rlhf.config.algorithm import UpdateSchedule, ValueLossConfig
from rlhf.config.engine import EngineConfig
from rlhf.data.batch import RolloutBatch
from rlhf.models import ModelOptions, critic_values, load_critic, load_tokenizer
from rlhf.workers.base import Dispatch, dispatch
from rlhf.workers.inference import forward_in_chunks
from rlhf.workers.trainable import TrainableWorker


class CriticWorker(TrainableWorker):
    @dispatch(Dispatch.ALL)
    def init_model(self, model_path: str, options: ModelOptions, engine_cfg: EngineConfig, micro_batch_size: int,
                   grad_accum_steps: int, tokenizer_path: str | None = None, new_head_init: str = "zero") -> None:
        """Load from a reward-model dir (its head is kept: a good value init) or a causal-LM dir."""
        from rlhf.engine import TrainEngine

        self.tokenizer = load_tokenizer(tokenizer_path or model_path, padding_side="left")
        model = load_critic(model_path, options, new_head_init=new_head_init)
        self.engine = TrainEngine(model, engine_cfg, micro_batch_size, grad_accum_steps)
        self.forward_batch_size = micro_batch_size

    @dispatch(Dispatch.SPLIT)
    def values(self, batch: RolloutBatch) -> torch.Tensor:
        """[B, T] values of each response token's state (no grad)."""
        self.engine.eval()
        return forward_in_chunks(
            batch, self.forward_batch_size, self.engine.cfg.zero_stage == 3, self.device,
            lambda micro: critic_values(self.engine, micro.input_ids_BS, micro.attention_mask_BS,
                                        micro.response_len), padding_free=self.padding_free,
            max_tokens=self.forward_max_tokens)

    @dispatch(Dispatch.SPLIT_RANK0)
    def update(self, batch: RolloutBatch, loss_cfg: ValueLossConfig, schedule: UpdateSchedule,
               step: int) -> dict[str, float]:
        """Regress values on `returns_BT`, clipped around the rollout's `values_BT`."""

        def micro_loss(micro: RolloutBatch, num_tokens, num_seqs):
            values_BT = critic_values(self.engine, micro.input_ids_BS, micro.attention_mask_BS, micro.response_len)
            loss, metrics = value_loss(values_BT, micro.values_BT, micro.returns_BT, micro.mask_BT,
                                       loss_cfg.clip_eps, loss_cfg.agg, num_tokens, num_seqs)
            metrics["values_mean"] = masked_mean(values_BT.detach(), micro.mask_BT)
            return loss, metrics

        return {f"critic/{k}": v for k, v in self.run_update(batch, schedule, step, micro_loss).items()}
