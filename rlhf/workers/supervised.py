"""Workers of the supervised stages: SFT (response-token NLL) and reward-model training (Bradley–Terry).

Each `train_step` call is one optimizer update on a global batch: the group SPLITs the examples over
the data-parallel ranks, each rank collates its shard into micro-batches, and the loss is normalised
by the global count (response tokens for SFT, pairs for the reward model), so the update does not
depend on the number of ranks or micro-batches.
"""
from __future__ import annotations

import torch

from rlhf.algorithms import logprobs_from_logits, pairwise_reward_loss
from rlhf.config.engine import EngineConfig
from rlhf.data.collate import IGNORE_INDEX, collate_preferences, collate_sft
from rlhf.models import ModelOptions, load_causal_lm, load_reward_model, load_tokenizer, reward_scores
from rlhf.workers.base import Dispatch, dispatch
from rlhf.workers.collectives import all_reduce_sum
from rlhf.workers.inference import lockstep_forwards
from rlhf.workers.sampling import SamplingMixin
from rlhf.workers.trainable import TrainableWorker, UpdateTracker


class SupervisedWorker(TrainableWorker):
    """Common set-up: tokenizer, engine, micro-batching of example lists."""

    def _setup(self, model, tokenizer_path: str, engine_cfg: EngineConfig, micro_batch_size: int,
               grad_accum_steps: int) -> None:
        from rlhf.engine import TrainEngine

        self.tokenizer = load_tokenizer(tokenizer_path, padding_side="right")
        self.engine = TrainEngine(model, engine_cfg, micro_batch_size, grad_accum_steps)
        self.micro_batch_size = micro_batch_size

    def _micro_batches(self, examples: list) -> list[list]:
        return [examples[i:i + self.micro_batch_size] for i in range(0, len(examples), self.micro_batch_size)]

    def _global_count(self, local: float) -> torch.Tensor:
        return all_reduce_sum(torch.tensor([float(local)], dtype=torch.float64)).float().to(self.device)[0]


class SFTWorker(SamplingMixin, SupervisedWorker):
    """The policy being fine-tuned; `generate` (SamplingMixin) gives the stage's gold evaluation."""

    @dispatch(Dispatch.ALL)
    def init_model(self, model_path: str, options: ModelOptions, engine_cfg: EngineConfig, micro_batch_size: int,
                   grad_accum_steps: int, tokenizer_path: str | None = None) -> None:
        self._setup(load_causal_lm(model_path, options), tokenizer_path or model_path, engine_cfg,
                    micro_batch_size, grad_accum_steps)

    def _token_nll(self, examples) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ NLL of the response tokens of `examples` (with grad) and their count."""
        batch = collate_sft(examples, self.tokenizer.pad_token_id).to(self.device)
        logits_BSV = self.engine(input_ids=batch.input_ids_BS, attention_mask=batch.attention_mask_BS,
                                 use_cache=False).logits[:, :-1]
        labels_BS = batch.labels_BS[:, 1:]
        valid_BS = labels_BS != IGNORE_INDEX
        logprobs_BS = logprobs_from_logits(logits_BSV, labels_BS.clamp(min=0))
        return -torch.where(valid_BS, logprobs_BS, 0.0).sum(), valid_BS.sum()

    @dispatch(Dispatch.SPLIT_RANK0)
    def train_step(self, examples: list) -> dict[str, float]:
        """One update on the global batch; returns loss (mean NLL per response token), grad_norm, lr."""
        micros = self._micro_batches(examples)
        count = self._global_count(sum(sum(1 for t in e.labels[1:] if t != IGNORE_INDEX) for e in examples))

        def loss_fn(micro):
            nll, tokens = self._token_nll(micro)
            return nll / count, {}

        tracker = UpdateTracker()
        self.accumulate(micros, loss_fn, len, tracker)
        return tracker.reduce(updates=1)

    @dispatch(Dispatch.SPLIT_RANK0)
    def eval_loss(self, examples: list) -> dict[str, float]:
        """Mean NLL per response token over all ranks' examples, and its perplexity."""
        self.engine.eval()
        nll, tokens = 0.0, 0
        micros = self._micro_batches(examples)
        with torch.no_grad():
            for i in range(lockstep_forwards(len(micros), self.engine.cfg.zero_stage == 3)):
                micro_nll, micro_tokens = self._token_nll(micros[i] if i < len(micros) else examples[:1])
                if i < len(micros):  # the extra forwards of a rank with fewer micro-batches are dropped
                    nll, tokens = nll + float(micro_nll), tokens + int(micro_tokens)
        total = all_reduce_sum(torch.tensor([nll, tokens], dtype=torch.float64))
        mean = float(total[0] / total[1].clamp(min=1))
        return {"eval/loss": mean, "eval/perplexity": float(torch.exp(torch.tensor(mean)))}


class RewardModelWorker(SupervisedWorker):
    @dispatch(Dispatch.ALL)
    def init_model(self, model_path: str, options: ModelOptions, engine_cfg: EngineConfig, micro_batch_size: int,
                   grad_accum_steps: int, tokenizer_path: str | None = None) -> None:
        """Start from a causal-LM dir (new score head) or continue a reward-model dir."""
        model = load_reward_model(model_path, options, require_trained_head=False)
        self._setup(model, tokenizer_path or model_path, engine_cfg, micro_batch_size, grad_accum_steps)

    def _pair_scores(self, examples) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen_B, rejected_B) scores, both sides of every pair in one forward."""
        batch = collate_preferences(examples, self.tokenizer.pad_token_id).to(self.device)
        input_ids = torch.cat([batch.chosen_input_ids_BS, batch.rejected_input_ids_BS])
        attention = torch.cat([batch.chosen_attention_mask_BS, batch.rejected_attention_mask_BS])
        scores_2B = reward_scores(self.engine, input_ids, attention)
        return scores_2B[:len(examples)], scores_2B[len(examples):]

    @dispatch(Dispatch.SPLIT_RANK0)
    def train_step(self, examples: list, margin: float | None = None) -> dict[str, float]:
        """One update on the global batch of pairs; returns loss, accuracy, margin, grad_norm, lr."""
        micros = self._micro_batches(examples)
        count = self._global_count(len(examples))

        def loss_fn(micro):
            chosen_B, rejected_B = self._pair_scores(micro)
            mean_loss, accuracy = pairwise_reward_loss(chosen_B, rejected_B, margin)
            metrics = {"accuracy": accuracy, "margin": (chosen_B - rejected_B).detach().mean()}
            return mean_loss * len(micro) / count, metrics

        tracker = UpdateTracker()
        self.accumulate(micros, loss_fn, len, tracker)
        return tracker.reduce(updates=1)

    @dispatch(Dispatch.SPLIT)
    def score_pairs(self, examples: list) -> dict[str, torch.Tensor]:
        """{"chosen_B", "rejected_B"} scores of held-out pairs (no grad), in example order."""
        self.engine.eval()
        micros = self._micro_batches(examples)
        chosen, rejected = [], []
        with torch.no_grad():
            for i in range(lockstep_forwards(len(micros), self.engine.cfg.zero_stage == 3)):
                c, r = self._pair_scores(micros[i] if i < len(micros) else examples[:1])
                if i < len(micros):
                    chosen.append(c.float().cpu())
                    rejected.append(r.float().cpu())
        return {"chosen_B": torch.cat(chosen) if chosen else torch.zeros(0),
                "rejected_B": torch.cat(rejected) if rejected else torch.zeros(0)}
