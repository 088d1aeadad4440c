"""Asynchronous rollout: batches sampled before the update that precedes their step (`ppo.trainer.max_staleness`).

With max_staleness = s ≥ 1, step k takes the batch sampled for it earlier and, before its update, asks
the actor for the batches of steps up to k + s. A worker runs its calls in the order they were
submitted, so the batch of step k + s is sampled with the weights after step k − 1's update, while the
reference, critic and reward model score batch k and the critic trains on it (on the actor's rank the
sampling runs before its update; with a rollout engine of its own, e.g. vLLM, the engine's time overlaps
the other roles' work). Step k + s trains on it with the policy after step k + s − 1: s updates later.
The first s steps are fresher (nothing to be behind), and so are steps after the critic's warm-up or a
skipped step (no update, no new version).

Versions. The policy version v counts the actor updates applied (`ControllerState.policy_version`);
each batch keeps the v that sampled it and the actor's weight version (optimizer steps, the number the
rollout engines check and saved rollouts record). A batch's staleness is v_now − v_batch when it is
trained on; `async/staleness_mean` logs it per step, summary.json `async_staleness_mean` over the run.

The loss (unchanged; only its old log-probs are older). With behaviour log-probs log π_b from the
weights that sampled, the PPO ratio at the update is against them:

    r_t(θ) = π_θ(a_t | s_t) / π_b(a_t | s_t),   L = −min(r_t · A_t, clip(r_t, 1 − ε, 1 + ε) · A_t)

so a stale batch starts its first minibatch at r ≠ 1 and the clip bounds how far the update moves from
the policy that acted (the importance correction of off-policy PPO). When old log-probs are recomputed
(a separate rollout engine, a non-fp32 actor) the actor does it right after sampling, with the same
weights, so π_b is the training forward of the sampling version and the sampler's own log-probs feed
`algorithm.rollout_correction` as in the synchronous loop. The KL penalty uses π_b as well.

A batch more than s updates behind when its step comes (possible after `max_staleness` was lowered on
resume) follows `trainer.staleness_policy`: "wait" re-samples the same prompts with the current weights,
"drop" discards it and samples the next prompts; counted in `async/waited` / `async/dropped`.

Exact resume: a checkpoint holds the batches sampled ahead (`rollouts_ahead.pt`, written with the
checkpoint, atomically) and the data sampler's position after them; the resumed run trains on those
same batches and samples the next ones exactly as the uninterrupted run does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from rlhf.data.batch import RolloutBatch

AHEAD_FILE = "rollouts_ahead.pt"


@dataclass
class AheadRollout:
    """One step's batch, sampled (or being sampled) before that step."""

    step: int  # the PPO step that trains on it
    indices: list[int]  # its prompts (positions in the training prompts)
    version: int  # policy version (actor updates applied) of the weights that sampled it
    weight_version: int  # the actor's weight version (optimizer steps) of those weights
    call: Any = None  # the pending worker call, until `result()` resolved it
    finish: Callable[[RolloutBatch], RolloutBatch] | None = None  # applied once to the sampled batch
    batch: RolloutBatch | None = None

    def result(self) -> RolloutBatch:
        if self.batch is None:
            batch = self.call.result()
            self.batch = self.finish(batch) if self.finish is not None else batch
            self.call = self.finish = None
        return self.batch


class AsyncRollouts:
    """The batches sampled ahead, and how step k gets its batch (see the module docstring).

    `trainer` is the PPOTrainer: its actor group, data sampler, sampling parameters and controller state.
    """

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.ahead: list[AheadRollout] = []

    # --- step k's batch ----------------------------------------------------------------------------
    def take(self, step: int) -> tuple[RolloutBatch, int]:
        """Step `step`'s batch and the weight version that sampled it, after asking for the batches of
        the next `max_staleness` steps."""
        t = self.trainer
        entry = self._pop(step) or self._submit(step, t.sampler.next_batch())
        staleness = t.state.policy_version - entry.version
        limit, policy = t.cfg.trainer.max_staleness, t.cfg.trainer.staleness_policy
        counts = t.state.async_counts
        if staleness > limit:
            counts[policy] = counts.get(policy, 0) + 1
            entry = self._submit(step, entry.indices if policy == "wait" else t.sampler.next_batch())
            staleness = 0
        for ahead in range(step + 1, min(step + limit, t.cfg.trainer.total_steps) + 1):
            if not any(e.step == ahead for e in self.ahead):
                self.ahead.append(self._submit(ahead, t.sampler.next_batch()))
        batch = entry.result()
        counts["batches"] = counts.get("batches", 0) + 1
        counts["staleness_sum"] = counts.get("staleness_sum", 0) + staleness
        batch.extra.update({"async/staleness_mean": float(staleness), "async/sampling_version": float(entry.version),
                            "async/waited": float(counts.get("wait", 0)), "async/dropped": float(counts.get("drop", 0))})
        return batch, entry.weight_version

    def _pop(self, step: int) -> AheadRollout | None:
        for i, entry in enumerate(self.ahead):
            if entry.step == step:
                return self.ahead.pop(i)
        return None

    def _submit(self, step: int, indices: list[int]) -> AheadRollout:
        """Start sampling step `step`'s batch on the actor, with its weights as they are now; old
        log-probs, when recomputed, are recomputed there right after (same weights)."""
        t = self.trainer
        examples = [t.train_prompts[i] for i in indices]
        params = t.rollout_params(step)
        recompute = t.cfg.rollout.temperature if t.cfg.rollout.recompute(t.cfg.engines.actor.dtype) else None
        extra = {} if recompute is None else {"recompute_temperature": recompute}
        call = t.groups["actor"].call_async("generate", [(list(e.input_ids), e.reference) for e in examples], params,
                                            **extra)
        return AheadRollout(step, list(indices), t.state.policy_version, t.weight_version, call=call,
                            finish=lambda batch: t.finish_rollout(batch, examples, params.n,
                                                                  recomputed=recompute is not None))

    # --- checkpoints -------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write the batches sampled ahead into a checkpoint being written (waits for those in flight)."""
        if not self.ahead:
            return
        entries = [{"step": e.step, "indices": e.indices, "version": e.version, "weight_version": e.weight_version,
                    "batch": {f.name: getattr(e.result(), f.name) for f in dataclasses.fields(RolloutBatch)}}
                   for e in self.ahead]
        torch.save(entries, Path(directory) / AHEAD_FILE)

    def load(self, directory: Path) -> None:
        """The batches a checkpoint holds (none when it has no `rollouts_ahead.pt`)."""
        path = Path(directory) / AHEAD_FILE
        self.ahead = []
        if path.is_file():
            self.ahead = [AheadRollout(e["step"], list(e["indices"]), e["version"], e["weight_version"],
                                       batch=RolloutBatch(**e["batch"])) for e in torch.load(path, weights_only=True)]


def async_summary(max_staleness: int, counts: dict) -> dict[str, float]:
    """summary.json's `async_*` keys (none for a synchronous run that never sampled ahead)."""
    if not max_staleness and not counts:
        return {}
    batches = counts.get("batches", 0)
    return {"async_max_staleness": max_staleness,
            "async_staleness_mean": counts.get("staleness_sum", 0) / batches if batches else 0.0,
            "async_waited": counts.get("wait", 0), "async_dropped": counts.get("drop", 0)}
