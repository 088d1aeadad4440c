"""The actor: the policy being trained. Generates rollouts, scores their log-probs, takes PPO updates.

Generation (`generate`, from `SamplingMixin`) goes through the rank's rollout engine: HF `generate` on
the engine's own module by default (no copy of the weights), or a colocated vLLM engine started by
`init_rollout`, which `sync_rollout_weights` feeds after every update (DESIGN.md §5).
"""
from __future__ import annotations

import time

import torch

from rlhf.algorithms import aggregate_loss, approx_kl, entropy_bonus, get_policy_loss
from rlhf.config.algorithm import PolicyLossConfig, UpdateSchedule
from rlhf.config.engine import EngineConfig
from rlhf.config.ppo import RolloutConfig
from rlhf.data.batch import RolloutBatch
from rlhf.engine.export import full_tensor_buckets
from rlhf.models import ModelOptions, load_causal_lm, load_tokenizer, response_logprobs, response_logprobs_and_entropy
from rlhf.models.lora import lora_merge_plan
from rlhf.rollout import RolloutEngineError, StaleWeightsError
from rlhf.rollout.weights import merged_lora_buckets
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

        self.model_path, self.tokenizer_path, self.options = model_path, tokenizer_path or model_path, options
        self.tokenizer = load_tokenizer(tokenizer_path or model_path, padding_side="left")
        model = load_causal_lm(model_path, options)
        self.engine = TrainEngine(model, engine_cfg, micro_batch_size, grad_accum_steps)
        self.forward_batch_size = micro_batch_size

    @dispatch(Dispatch.ALL)
    def init_rollout(self, cfg: RolloutConfig, max_model_len: int, seed: int = 0) -> dict:
        """Start this rank's rollout engine (`cfg.engine`; "hf" needs nothing); returns its health."""
        if cfg.engine == "vllm":
            from rlhf.models.generation import eos_token_ids
            from rlhf.rollout.vllm_engine import VLLMEngine

            context = getattr(self.engine.module.config, "max_position_embeddings", None)
            max_model_len = min(max_model_len, context) if context else max_model_len  # vLLM refuses more
            self.rollout_engine = VLLMEngine(
                self.model_path, eos_token_ids(self.engine.module, self.tokenizer), tokenizer_path=self.tokenizer_path,
                seed=seed + self.rank, cpu_kvcache_space_gib=cfg.vllm.cpu_kvcache_space_gib,
                **cfg.vllm.llm_options(self.engine.cfg.dtype, max_model_len))
            self.sync_bucket_bytes = cfg.vllm.sync_bucket_mb * 2 ** 20
            self.verify_sync = (cfg.vllm.verify_sync, cfg.vllm.verify_sync_tolerance)
        return self._sampler().health()

    @dispatch(Dispatch.RANK0)
    def sync_rollout_weights(self) -> dict[str, float]:
        """Push the current weights to this rank's rollout engine, versioned (collective under ZeRO-3:
        every rank gathers the same buckets). Returns rank 0's `sync/*` metrics."""
        engine, version = self._sampler(), self.weight_version()
        start = time.perf_counter()
        if engine.shares_actor_weights:
            stats = engine.update_weights([], version)
        else:
            engine.wake_up()
            buckets = full_tensor_buckets(self.engine.module, self.engine.cfg.zero_stage == 3,
                                          getattr(self, "sync_bucket_bytes", 256 * 2 ** 20))
            if self.options.lora_rank:
                buckets = merged_lora_buckets(buckets, lora_merge_plan(self.engine.module))
            try:
                stats = engine.update_weights(buckets, version)
            except Exception as err:
                raise RolloutEngineError(f"actor rank {self.rank}: weight sync to {engine.name} version {version} "
                                         f"failed: {type(err).__name__}: {err}") from err
        metrics = {"time/sync_worker": time.perf_counter() - start, "sync/bytes": stats.get("bytes", 0.0),
                   "sync/weight_version": float(version)}
        verify, tolerance = getattr(self, "verify_sync", (False, None))
        if verify and not engine.shares_actor_weights:  # every rank (a ZeRO-3 forward is collective)
            metrics["sync/probe_max_abs_diff"] = diff = self._probe_gap(engine)
            if tolerance is not None and not diff <= tolerance:
                raise StaleWeightsError(f"actor rank {self.rank}: after the sync to version {version} the {engine.name} "
                                        f"engine's log-probs of a probe differ from the actor's by {diff:.3g} > "
                                        f"rollout.vllm.verify_sync_tolerance={tolerance}: the weights did not arrive")
        return metrics

    def _probe_gap(self, engine) -> float:
        """max |log p_engine − log p_actor| over the response tokens of this rank's last rollout row."""
        sequence, start = self.last_probe or (list(range(min(16, len(self.tokenizer)))), 1)  # before any rollout
        engine_T = torch.tensor(engine.sequence_logprobs([sequence], start)[0])
        ids_1S = torch.tensor([sequence], device=self.device)
        self.engine.eval()
        with torch.no_grad():
            actor_T = response_logprobs(self.engine, ids_1S, torch.ones_like(ids_1S), len(sequence) - start, 1.0)[0]
        return float((actor_T.float().cpu() - engine_T).abs().max())

    @dispatch(Dispatch.SPLIT)
    def logprobs(self, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
        """[B, T] log-probs of the responses under the current policy (no grad)."""
        self.engine.eval()
        return forward_in_chunks(
            batch, self.forward_batch_size, self.engine.cfg.zero_stage == 3, self.device,
            lambda micro: response_logprobs(self.engine, micro.input_ids_BS, micro.attention_mask_BS,
                                            micro.response_len, temperature), padding_free=self.padding_free,
            max_tokens=self.forward_max_tokens)

    @dispatch(Dispatch.SPLIT_RANK0)
    def update(self, batch: RolloutBatch, loss_cfg: PolicyLossConfig, schedule: UpdateSchedule, step: int,
               temperature: float = 1.0) -> dict[str, float]:
        """PPO (or another registered policy loss) over this rank's shard; returns global metrics."""
        maybe_crash("actor_update", step)
        if self.rollout_engine is not None:
            self.rollout_engine.sleep()  # free its memory for training; woken by the next sync/generate
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
