"""What the trained roles (actor, critic) share: the engine, checkpoints, and the minibatch loop.

The loop consumes this rank's shard of a rollout batch for `epochs` passes of `num_minibatches`
optimizer updates each. Losses are normalised by GLOBAL counts (valid tokens / sequences of the
minibatch across all ranks, all-reduced here), so the update does not depend on how rows were split
over ranks and micro-batches (STYLE.md item 7; `TrainEngine.backward` keeps DeepSpeed from rescaling).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from rlhf.config.algorithm import UpdateSchedule
from rlhf.data.batch import RolloutBatch
from rlhf.models.lora import parameter_counts
from rlhf.workers.base import BaseWorker, Dispatch, dispatch
from rlhf.workers.collectives import all_reduce_max, all_reduce_sum

# loss_fn(micro_batch, num_tokens, num_seqs) -> (loss, metrics: name -> 0-dim tensor, masked mean)
MicroLoss = Callable[[RolloutBatch, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class NonFiniteLossError(FloatingPointError):
    """A micro-batch loss was NaN/inf on some rank; raised on every rank before any backward of it."""


class MetricSums:
    """Token-weighted sums of micro-batch metrics, reduced across ranks once at the end."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, float | torch.Tensor], weight: float) -> None:
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value) * weight
            self.weights[name] = self.weights.get(name, 0.0) + weight

    def reduce(self) -> dict[str, float]:
        names = sorted(self.sums)
        packed = torch.tensor([[self.sums[n], self.weights[n]] for n in names], dtype=torch.float64)
        packed = all_reduce_sum(packed.reshape(-1)).reshape(-1, 2) if names else packed
        return {n: float(s / w) if w else 0.0 for n, (s, w) in zip(names, packed.tolist())}


class UpdateTracker:
    """Metrics of the micro-batches and optimizer steps of one or more updates."""

    def __init__(self) -> None:
        self.metrics, self.optimizer = MetricSums(), MetricSums()
        self.loss_sum = 0.0  # Σ of this rank's micro-batch losses; Σ over ranks = Σ of update losses

    def add(self, loss: torch.Tensor, metrics: dict, weight: float, optimizer_stats: dict) -> None:
        self.loss_sum += float(loss.detach())
        self.metrics.add(metrics, weight=weight)
        if optimizer_stats:
            self.optimizer.add(optimizer_stats, weight=1.0)

    def reduce(self, updates: int) -> dict[str, float]:
        """Global metrics (collective: every rank must call it)."""
        loss = float(all_reduce_sum(torch.tensor([self.loss_sum], dtype=torch.float64))) / updates
        return {**self.metrics.reduce(), **self.optimizer.reduce(), "loss": loss}


class TrainableWorker(BaseWorker):
    """Base of ActorWorker and CriticWorker: owns `self.engine` (a TrainEngine) and `self.tokenizer`."""

    engine = None
    tokenizer = None

    def run_update(self, batch: RolloutBatch, schedule: UpdateSchedule, step: int, loss_fn: MicroLoss) -> dict[str, float]:
        """Epochs × minibatches × micro-batches over this rank's shard; returns metrics averaged over
        every micro-batch of every rank (weighted by valid tokens) plus grad_norm, lr and loss (the
        mean over optimizer updates of the full minibatch loss)."""
        schedule.grad_accum_steps(len(batch))  # validates that the shard divides evenly
        tracker = UpdateTracker()
        torch.manual_seed(self._stream_seed(step, -1))  # dropout etc.: replayable after a resume
        for epoch in range(schedule.epochs):
            order = self._row_order(len(batch), schedule.shuffle, step, epoch)
            for minibatch_rows in order.chunk(schedule.num_minibatches):
                minibatch = batch.select(minibatch_rows)
                num_tokens, num_seqs = self._global_counts(minibatch)
                micros = self._update_micro_batches(minibatch, schedule)
                self.accumulate(micros, lambda micro: loss_fn(micro, num_tokens, num_seqs),
                                lambda micro: micro.num_tokens(), tracker)
        return tracker.reduce(updates=schedule.epochs * schedule.num_minibatches)

    def _update_micro_batches(self, minibatch: RolloutBatch, schedule: UpdateSchedule) -> list[RolloutBatch]:
        """The minibatch's micro-batches on this rank's device; with `schedule.padding_free` of rows of
        similar length, each trimmed to its own width; with `schedule.max_tokens_per_micro_batch` packed to
        that many padded tokens each, as many on every rank (the most any rank needs). Every row is in
        exactly one, so the sum of the globally normalised micro-batch losses — the update — is the same."""
        budget = schedule.max_tokens_per_micro_batch
        if (schedule.padding_free or budget is not None) and len(minibatch) > 1:
            minibatch = minibatch.select(minibatch.by_length())
        if budget is None:
            micros = minibatch.split(schedule.micro_batch_size)
            return [(m.trim() if schedule.padding_free else m).to(self.device) for m in micros]
        setting = "algorithm.update.max_tokens_per_micro_batch"
        local = len(minibatch.split_by_tokens(budget, setting=setting))
        count = int(all_reduce_max(torch.tensor([local])).item())  # every rank the same number of passes
        return [m.trim().to(self.device) for m in minibatch.split_by_tokens(budget, count, setting=setting)]

    def accumulate(self, micros: list, loss_fn: Callable, weight_fn: Callable, tracker: "UpdateTracker") -> None:
        """Forward/backward every micro-batch of one optimizer update, then step.

        `loss_fn(micro)` → (loss already normalised by the GLOBAL count, metrics); `weight_fn(micro)`
        weighs the micro-batch's metrics. A non-finite loss on any rank raises on every rank before
        its backward, so no NaN gradient is ever applied. The last micro-batch is marked as the update's
        end, so an update may have any number of them (a token budget), not only grad_accum_steps.
        """
        self.engine.train()
        for i, micro in enumerate(micros):
            loss, metrics = loss_fn(micro)
            self._check_finite(loss)
            self.engine.backward(loss, last=i == len(micros) - 1)
            stats = self.engine.step()
            tracker.add(loss, metrics, weight_fn(micro), stats)

    def _row_order(self, rows: int, shuffle: bool, step: int, epoch: int) -> torch.Tensor:
        """This epoch's row permutation: a function of (seed, rank, step, epoch) only, so a resumed
        run replays exactly the order of the uninterrupted one."""
        if not shuffle:
            return torch.arange(rows)
        generator = torch.Generator().manual_seed(self._stream_seed(step, epoch))
        return torch.randperm(rows, generator=generator)

    def _stream_seed(self, step: int, epoch: int) -> int:
        mixed = self.seed
        for part in (self.rank, step, epoch):
            mixed = (mixed * 1_000_003 + part) % (2 ** 61 - 1)
        return mixed

    def _global_counts(self, minibatch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        local = torch.tensor([minibatch.mask_BT.sum().item(), (minibatch.mask_BT.sum(-1) > 0).sum().item()],
                             dtype=torch.float64)
        total = all_reduce_sum(local)
        return total[0].float().to(self.device), total[1].float().to(self.device)

    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = all_reduce_max(torch.tensor([0.0 if torch.isfinite(loss.detach()).item() else 1.0]))
        if bad.item():
            raise NonFiniteLossError(f"{self.role}: non-finite loss on some rank (this rank's loss: "
                                     f"{loss.item()}); no backward was taken for it")

    @dispatch(Dispatch.ALL)
    def save_checkpoint(self, ckpt_dir: str) -> None:
        """Full training state of the role (weights, optimizer, LR scheduler) into `ckpt_dir`."""
        self.engine.save_checkpoint(Path(ckpt_dir))

    @dispatch(Dispatch.ALL)
    def load_checkpoint(self, ckpt_dir: str) -> None:
        self.engine.load_checkpoint(Path(ckpt_dir))

    @dispatch(Dispatch.RANK0)
    def parameter_counts(self) -> dict[str, int]:
        """{"trainable", "total"} parameters of the role's model at full size (with LoRA: the adapter,
        plus a scalar head's trainable copy). What the summary reports, so "only the adapter trained" is checkable."""
        trainable, total = parameter_counts(self.engine.module)
        return {"trainable": trainable, "total": total}

    @dispatch(Dispatch.RANK0)
    def export_hf(self, out_dir: str) -> str:
        """HF-format directory of the current weights, with the tokenizer (collective; rank 0 writes). A
        LoRA model is written merged, its adapter under `adapter/` (rlhf/engine/export.py)."""
        return str(self.engine.export_hf(Path(out_dir), tokenizer=self.tokenizer))
