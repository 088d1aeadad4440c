"""The DPO stage's worker: the policy being trained and its frozen reference, in one rank.

Each `train_step` is one optimizer update on a global batch of preference pairs (SPLIT over the ranks,
then micro-batches); per micro-batch the reference's sequence log-probs are computed once (no grad),
then the policy's, and the DPO loss (rlhf/algorithms/preference.py) is normalised by the GLOBAL pair
count, so the update does not depend on ranks or micro-batches. Chosen and rejected go through one
forward ([2B, S]). `generate` (SamplingMixin) gives the stage's gold evaluation.
"""
from __future__ import annotations

import dataclasses

import torch

from rlhf.algorithms import logprobs_from_logits
from rlhf.algorithms.preference import dpo_loss, sequence_logprobs
from rlhf.config.engine import EngineConfig
from rlhf.data.collate import collate_preferences
from rlhf.models import ModelOptions, load_causal_lm
from rlhf.workers.base import Dispatch, dispatch
from rlhf.workers.inference import lockstep_forwards
from rlhf.workers.sampling import SamplingMixin
from rlhf.workers.supervised import SupervisedWorker
from rlhf.workers.trainable import UpdateTracker


def pair_logprobs(module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """([B], [B]) summed response-token log-probs of the chosen and rejected sides of a right-padded
    PreferenceBatch (shape key: rlhf/data/collate.py), both sides in one forward."""
    ids_2S = torch.cat([batch.chosen_input_ids_BS, batch.rejected_input_ids_BS])
    mask_2S = torch.cat([batch.chosen_attention_mask_BS, batch.rejected_attention_mask_BS])
    prompt_lens_2 = torch.cat([batch.prompt_lens_B, batch.prompt_lens_B])
    logits = module(input_ids=ids_2S, attention_mask=mask_2S, use_cache=False).logits[:, :-1]
    token_logprobs = logprobs_from_logits(logits, ids_2S[:, 1:])  # [2B, S-1]: log p(token t+1 | ≤ t)
    positions = torch.arange(1, ids_2S.shape[1], device=ids_2S.device)
    response = (positions[None, :] >= prompt_lens_2[:, None]) & mask_2S[:, 1:].bool()
    sums = sequence_logprobs(token_logprobs.float(), response)
    B = len(batch.prompt_lens_B)
    return sums[:B], sums[B:]


class DPOWorker(SamplingMixin, SupervisedWorker):
    """Policy (trained, `self.engine`) and reference (frozen, `self.reference`)."""

    @dispatch(Dispatch.ALL)
    def init_model(self, model_path: str, options: ModelOptions, engine_cfg: EngineConfig, micro_batch_size: int,
                   grad_accum_steps: int, tokenizer_path: str | None = None, reference_path: str | None = None,
                   reference_options: ModelOptions | None = None) -> None:
        from rlhf.engine import InferenceEngine

        self._setup(load_causal_lm(model_path, options), tokenizer_path or model_path, engine_cfg,
                    micro_batch_size, grad_accum_steps)
        ref_options = dataclasses.replace(reference_options or options, lora_rank=0)  # the reference never trains
        # ZeRO-3 shards the reference like the policy; otherwise each rank holds it whole (stage 0).
        ref_engine = dataclasses.replace(engine_cfg, zero_stage=3 if engine_cfg.zero_stage == 3 else 0,
                                         offload_optimizer=False,
                                         offload_params=engine_cfg.offload_params and engine_cfg.zero_stage == 3)
        self.reference = InferenceEngine(load_causal_lm(reference_path or model_path, ref_options), ref_engine,
                                         micro_batch_size)

    def _collate(self, examples):
        return collate_preferences(examples, self.tokenizer.pad_token_id, padding_side="right").to(self.device)

    @dispatch(Dispatch.SPLIT_RANK0)
    def train_step(self, examples: list, beta: float, loss_type: str = "sigmoid",
                   label_smoothing: float = 0.0) -> dict[str, float]:
        """One update on the global batch of pairs; returns loss, rewards/{chosen,rejected,margins,accuracies},
        logps/{chosen,rejected}, grad_norm, lr."""
        micros = self._micro_batches(examples)
        count = self._global_count(len(examples))

        def loss_fn(micro):
            batch = self._collate(micro)
            with torch.no_grad():
                ref_chosen_B, ref_rejected_B = pair_logprobs(self.reference.module, batch)
            chosen_B, rejected_B = pair_logprobs(self.engine, batch)
            loss, metrics = dpo_loss(chosen_B, rejected_B, ref_chosen_B, ref_rejected_B, beta=beta,
                                     loss_type=loss_type, label_smoothing=label_smoothing, num_pairs=count)
            metrics.update({"logps/chosen": chosen_B.detach().mean(), "logps/rejected": rejected_B.detach().mean()})
            return loss, metrics

        tracker = UpdateTracker()
        self.accumulate(micros, loss_fn, len, tracker)
        return tracker.reduce(updates=1)

    @dispatch(Dispatch.SPLIT)
    def pair_logprobs(self, examples: list) -> dict[str, torch.Tensor]:
        """{"chosen_B", "rejected_B", "ref_chosen_B", "ref_rejected_B"}: summed response log-probs of
        held-out pairs under the policy and the reference (no grad), in example order."""
        self.engine.eval()
        micros = self._micro_batches(examples)
        out = {"chosen_B": [], "rejected_B": [], "ref_chosen_B": [], "ref_rejected_B": []}
        with torch.no_grad():
            for i in range(lockstep_forwards(len(micros), self.engine.cfg.zero_stage == 3)):
                batch = self._collate(micros[i] if i < len(micros) else examples[:1])
                policy, reference = pair_logprobs(self.engine.module, batch), pair_logprobs(self.reference.module, batch)
                if i < len(micros):
                    for key, value in zip(out, (*policy, *reference)):
                        out[key].append(value.float().cpu())
        return {key: torch.cat(values) if values else torch.zeros(0) for key, values in out.items()}
