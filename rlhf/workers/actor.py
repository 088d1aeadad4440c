"""The actor: the policy being trained. Generates rollouts, scores their log-probs, takes PPO updates.

Generation (`generate`, from `SamplingMixin`) uses the HF `generate` of the engine's own module, so no
weight sync is needed in this layout (DESIGN.md §5).
"""
from __future__ import annotations

import torch

from rlhf.algorithms import aggregate_loss, approx_kl, entropy_bonus, get_policy_loss
from rlhf.config.algorithm import PolicyLossConfig, UpdateSchedule
from rlhf.config.engine import EngineConfig
from rlhf.data.batch import RolloutBatch
from rlhf.models import ModelOptions, load_causal_lm, load_tokenizer, response_logprobs, response_logprobs_and_entropy
from rlhf.workers.base import Dispatch, dispatch
from rlhf.workers.faults import maybe_crash
from rlhf.workers.inference import forward_in_chunks
from rlhf.workers.sampling import SamplingMixin
from rlhf.workers.trainable import TrainableWorker


class ActorWorker(SamplingMixin, TrainableWorker):
    @dispatch(Dispatch.ALL)
    def init_model(self, model_path: str, options: ModelOptions, engine_cfg: EngineConfig, micro_batch_size: int,
                   grad_accum_steps: int, tokenizer_path: str | None = None) -> None:
        from rlhf.engine import TrainEngine

        self.tokenizer = load_tokenizer(tokenizer_path or model_path, padding_side="left")
        model = load_causal_lm(model_path, options)
        self.engine = TrainEngine(model, engine_cfg, micro_batch_size, grad_accum_steps)
        self.forward_batch_size = micro_batch_size

    @dispatch(Dispatch.SPLIT)
    def logprobs(self, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
        """[B, T] log-probs of the responses under the current policy (no grad)."""
        self.engine.eval()
        return forward_in_chunks(
            batch, self.forward_batch_size, self.engine.cfg.zero_stage == 3, self.device,
            lambda micro: response_logprobs(self.engine, micro.input_ids_BS, micro.attention_mask_BS,
                                            micro.response_len, temperature))

    @dispatch(Dispatch.SPLIT_RANK0)
    def update(self, batch: RolloutBatch, loss_cfg: PolicyLossConfig, schedule: UpdateSchedule, step: int,
               temperature: float = 1.0) -> dict[str, float]:
        """PPO (or another registered policy loss) over this rank's shard; returns global metrics."""
        maybe_crash("actor_update", step)
        policy_loss = get_policy_loss(loss_cfg.name)
        hyper = loss_cfg.hyper()

        def micro_loss(micro: RolloutBatch, num_tokens, num_seqs):
            counts = dict(agg=loss_cfg.agg, num_tokens=num_tokens, num_seqs=num_seqs)
            logprobs_BT, entropy_BT = response_logprobs_and_entropy(
                self.engine, micro.input_ids_BS, micro.attention_mask_BS, micro.response_len, temperature)
            loss, metrics = policy_loss(logprobs_BT, micro.old_logprobs_BT, micro.advantages_BT, micro.mask_BT,
                                        **counts, **hyper)
            metrics["entropy"] = aggregate_loss(entropy_BT.detach(), micro.mask_BT)
            if loss_cfg.entropy_coef:
                loss = loss + entropy_bonus(entropy_BT, micro.mask_BT, loss_cfg.entropy_coef, **counts)
            if loss_cfg.kl_loss_coef:
                kl_BT = approx_kl(logprobs_BT, micro.ref_logprobs_BT, loss_cfg.kl_loss_estimator, micro.mask_BT)
                loss = loss + loss_cfg.kl_loss_coef * aggregate_loss(kl_BT, micro.mask_BT, **counts)
                metrics["kl_loss"] = aggregate_loss(kl_BT.detach(), micro.mask_BT)
            return loss, metrics

        return {f"actor/{k}": v for k, v in self.run_update(batch, schedule, step, micro_loss).items()}
