"""The PPO controller: one process driving the actor, critic, reward and reference worker groups.

One step (DESIGN.md §3), as `train_step` reads:
    rollout   actor samples G responses for each of P prompts        → tokens, old log-probs, mask
    score     reference log-probs, critic values, reward scores      (concurrently)
    advantage KL-penalized token rewards → GAE (or a critic-free estimator) → whitening
    update    actor PPO-clip and critic value regression             (concurrently)
    sync      the actor's new weights to its rollout engines          (versioned; no copy for HF generate)
How this departs from the paper: log-probs are computed at the sampling temperature, losses use a
global token normalizer, and the critic may warm up alone for the first steps.

The controller never waits on Ray itself: worker groups (`rlhf.distributed`) return futures, so the
same code runs on in-process fake groups in tests. Every K steps a checkpoint holds the actor and
critic training state and the controller state (step, KL controller, data position); a resumed run
replays exactly the uninterrupted one because every random stream is a function of (seed, step, rank).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rlhf.algorithms import (AdaptiveKLController, FixedKLController, apply_tis, approx_kl, explained_variance, gae,
                             get_advantage_estimator, kl_penalized_rewards, masked_mean, masked_var, masked_whiten,
                             shape_scores, tis_weights)
from rlhf.config.ppo import PPOConfig
from rlhf.data.batch import RolloutBatch
from rlhf.data.sampler import ResumableSampler
from rlhf.models import SamplingParams
from rlhf.trainers import preemption
from rlhf.trainers.async_rollout import AsyncRollouts, async_summary
from rlhf.trainers.ppo_eval import EvaluationMixin, _mix, _raw_prompts, outcome_counts
from rlhf.trainers.ppo_eval import RewardHackingError  # noqa: F401  (its home before the split: rlhf.cli, tests)
from rlhf.trainers.checkpoint import CheckpointManager
from rlhf.workers.faults import maybe_crash
from rlhf.trainers.metrics import MetricsLogger, plot_curves, read_jsonl, summary_table, write_summary
from rlhf.trainers.monitor import RewardHackingMonitor
from rlhf.trainers.non_finite import NonFiniteRunError, stop_named_on_non_finite
from rlhf.trainers.rollout_store import write_rollout_shard
from rlhf.envs.episode import split_final_reward

logger = logging.getLogger(__name__)

PLOT_KEYS = ["reward/mean", "gold/mean", "kl/mean", "eval/gold_sampled", "eval/gold_greedy", "actor/loss",
             "critic/loss", "actor/entropy", "actor/clip_frac", "critic/explained_variance"]


class RewardFunctionError(RuntimeError):
    """The task's reward function failed on more than `reward_role.max_fn_failure_frac` of a batch."""


FN_FAILURE_KINDS = ("errors", "timeouts", "non_finite")  # fn_failures_B codes 1, 2, 3 (rlhf/workers/reward_fn.py)


@dataclass
class ControllerState:
    """Everything besides the model/optimizer states needed to continue a run exactly."""

    step: int = 0  # PPO steps completed
    kl_controller: dict = field(default_factory=dict)
    sampler: dict = field(default_factory=dict)
    consecutive_bad_steps: int = 0
    bad_steps: int = 0
    initial_eval: dict = field(default_factory=dict)
    hacking: dict = field(default_factory=dict)  # RewardHackingMonitor state
    reward_fn_failures: dict = field(default_factory=dict)  # kind → rows scored by the fallback, whole run
    reward_outcomes: dict = field(default_factory=dict)  # the task scorer's outcome → training rows, whole run
    save_deferred: bool = False  # a checkpoint fell due during a streak of skipped steps: save at the next good one
    policy_version: int = 0  # actor updates applied: the version a rollout sampled ahead records
    async_counts: dict = field(default_factory=dict)  # batches, staleness_sum, wait, drop (rlhf/trainers/async_rollout.py)


class PPOTrainer(EvaluationMixin):
    """Runs `cfg` with worker `groups` (Ray `RoleGroups` or in-process fakes) writing into `stage_dir`.

    `train_prompts` / `eval_prompts` are sequences of PromptExample-like items (`.input_ids`,
    `.reference`); `run_dir` holds the run-wide metrics.jsonl and summary.json.
    """

    def __init__(self, cfg: PPOConfig, groups, train_prompts, eval_prompts=None, *, run_dir: str | Path,
                 stage: str = "ppo", episodes=None) -> None:
        self.cfg, self.groups, self.stage = cfg, groups, stage
        self.episodes = episodes  # an EpisodeRunner (rlhf/trainers/episodes.py) when ppo.env is set
        self.train_prompts, self.eval_prompts = train_prompts, list(eval_prompts or [])
        self.run_dir = Path(run_dir)
        self.stage_dir = self.run_dir / stage
        self.checkpoints = CheckpointManager(self.stage_dir / "checkpoints", cfg.trainer.keep_last)
        self.sampler = ResumableSampler(len(train_prompts), cfg.rollout.prompts_per_step, seed=cfg.trainer.seed,
                                        drop_last=True)
        kl = cfg.algorithm.kl
        self.kl_ctl = AdaptiveKLController(kl.coef, kl.target, kl.horizon) if kl.adaptive else FixedKLController(kl.coef)
        self.state = ControllerState()
        self.hacking = RewardHackingMonitor(cfg.trainer.hacking_patience, cfg.trainer.hacking_gold_tolerance)
        self.metrics: MetricsLogger | None = None
        self.weight_version = 0  # the rollout engines' weights: the actor's updates at the last sync
        self.sampling_weight_version = 0  # the weight version that sampled the batch of the step in progress
        self.async_rollouts = AsyncRollouts(self)  # batches sampled ahead (trainer.max_staleness)

    # --- the run -------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train for `trainer.total_steps`, evaluating and checkpointing on schedule; returns the summary."""
        resume_step = None
        if resume:  # records after the checkpoint (or all of them, if none) belong to the lost attempt
            resume_step = self.state.step if self.restore_latest() else -1
        self.metrics = MetricsLogger(self.run_dir, self.stage, tensorboard=self.cfg.trainer.tensorboard,
                                     wandb=self.cfg.trainer.wandb, wandb_project=self.cfg.trainer.wandb_project,
                                     total_steps=self.cfg.trainer.total_steps, progress=self.cfg.trainer.progress,
                                     config=_jsonable(asdict(self.cfg)), resume_step=resume_step,
                                     console_every=max(1, self.cfg.trainer.total_steps // 20))
        try:
            with preemption.handling():
                self._run_steps()
            return self.finish()
        finally:
            self.metrics.close()

    def _run_steps(self) -> None:
        """The initial evaluation, then steps until `total_steps`, evaluating and saving on schedule. A
        preemption signal (rlhf/trainers/preemption.py) ends it after the step in flight, checkpointed."""
        self.sync_weights()  # engines start from the actor's path: a resumed run's need its weights
        if self.state.step == 0 and not self.state.initial_eval:
            self.state.initial_eval = self.evaluate(0)
            self.metrics.log(0, self.state.initial_eval)
        while self.state.step < self.cfg.trainer.total_steps:
            step = self.state.step + 1
            metrics = self.train_step(step)
            if self._due(step, self.cfg.trainer.eval_every):
                metrics.update(self.evaluate(step))
            self.metrics.log(step, metrics)
            self.state.step = step
            self._check_hacking(step)
            maybe_crash("after_step", step)
            saved = self._save_if_due(step)
            if preemption.requested() and step < self.cfg.trainer.total_steps:
                raise preemption.Preempted(self.stage, step, saved or self.save_checkpoint())

    def _due(self, step: int, every: int) -> bool:
        return step == self.cfg.trainer.total_steps or (every > 0 and step % every == 0)

    def _save_if_due(self, step: int) -> Path | None:
        """Save on schedule, but never during a streak of skipped (non-finite) steps: that save waits
        for the next good step, so `keep_last` cannot prune good checkpoints for ones of a failing run."""
        if not (self._due(step, self.cfg.trainer.save_every) or self.state.save_deferred):
            return None
        if self.state.consecutive_bad_steps:
            self.state.save_deferred = True
            logger.warning("step %d: checkpoint deferred to the next step with finite numbers", step)
            return None
        self.state.save_deferred = False
        return self.save_checkpoint()

    def train_step(self, step: int) -> dict[str, float]:
        """One PPO step: rollout → score → advantages → update. A step with non-finite numbers is skipped."""
        timer = StageTimer()
        with timer("generate"):
            batch = self.rollout(step)
        with timer("score"):
            batch = self.score(batch)
        if self.cfg.trainer.save_rollouts:
            with timer("save_rollouts"):
                write_rollout_shard(self.stage_dir, step, batch, self.sampling_weight_version)
        with timer("advantages"):
            batch = self.compute_advantages(batch)
        metrics = self.rollout_metrics(batch)
        if not self._finite(batch, metrics):
            return {**metrics, **timer.metrics(), "bad_steps": float(self.state.bad_steps), "skipped": 1.0}
        with timer("update"):
            metrics.update(self.update(batch, step))
        if step > self.cfg.trainer.critic_warmup_steps:
            self.state.policy_version += 1
            with timer("sync"):
                metrics.update(self.sync_weights())
        self.kl_ctl.update(metrics["kl/mean"], len(batch))
        tokens = float(batch.mask_BT.sum())
        return {**metrics, **timer.metrics(), "perf/tokens_per_s": tokens / max(timer.total, 1e-9),
                "bad_steps": float(self.state.bad_steps), "skipped": 0.0}

    # --- stages --------------------------------------------------------------------------------
    def rollout(self, step: int) -> RolloutBatch:
        """Actor generates `samples_per_prompt` responses for the next prompt batch — or, with
        `trainer.max_staleness`, the batch sampled for this step earlier (rlhf/trainers/async_rollout.py)."""
        if self.cfg.trainer.max_staleness or self.async_rollouts.ahead:
            batch, self.sampling_weight_version = self.async_rollouts.take(step)
            return batch
        examples = [self.train_prompts[i] for i in self.sampler.next_batch()]
        params = self.rollout_params(step)
        batch = self.finish_rollout(self._sample(examples, params), examples, params.n)
        if self.cfg.rollout.recompute(self.cfg.engines.actor.dtype):
            self._recompute_old_logprobs(batch)
        self.sampling_weight_version = self.weight_version
        return batch

    def rollout_params(self, step: int) -> SamplingParams:
        """Step `step`'s sampling parameters: its seed is a function of (run seed, step) only."""
        return self._sampling(seed=_mix(self.cfg.trainer.seed, step))

    def finish_rollout(self, batch: RolloutBatch, examples, n: int, recomputed: bool = False) -> RolloutBatch:
        """Global group ids and the raw prompts of a sampled batch; with `recomputed` (the actor recomputed
        old log-probs after sampling) the sampler/trainer gap metrics as `_recompute_old_logprobs` gives."""
        # Each rank numbered its own prompts: renumber globally (rows keep prompt-major order).
        batch.group_ids_B = torch.arange(len(examples)).repeat_interleave(n)
        batch.raw_prompts = _raw_prompts(examples, n)
        if recomputed:
            self._use_train_logprobs(batch, batch.rollout_logprobs_BT, batch.old_logprobs_BT)
        return batch

    def _sample(self, examples, params) -> RolloutBatch:
        """`params.n` responses per example — or, with an environment, `params.n` episodes per example,
        scored by their environments (scores_B, gold_B, turn_rewards_BT set)."""
        if self.episodes is not None:
            return self.episodes.run(self.groups["actor"], examples, params, seed=params.seed or 0)
        return self.groups["actor"].call("generate", [(list(e.input_ids), e.reference) for e in examples], params)

    def _recompute_old_logprobs(self, batch: RolloutBatch) -> None:
        """Old log-probs from the actor's training forward; the sampler's only measure the gap:
        rollout/logprob_abs_diff = mean |log π_sampler − log π_train| over response tokens, and
        rollout/kl_rollout_vs_train = the k3 estimate of KL(π_sampler ‖ π_train) on the sampled tokens."""
        sampler_BT = batch.old_logprobs_BT
        train_BT = self.groups["actor"].call("logprobs", batch, self.cfg.rollout.temperature).to(sampler_BT.dtype)
        self._use_train_logprobs(batch, sampler_BT, train_BT)

    def _use_train_logprobs(self, batch: RolloutBatch, sampler_BT: torch.Tensor, train_BT: torch.Tensor) -> None:
        """The training forward's log-probs become the old ones; the sampler's are kept only for the
        rollout correction. Sets the two gap metrics (see `_recompute_old_logprobs`)."""
        mask_BT = batch.mask_BT
        batch.extra["rollout/logprob_abs_diff"] = float(masked_mean((sampler_BT - train_BT).abs(), mask_BT))
        batch.extra["rollout/kl_rollout_vs_train"] = float(masked_mean(approx_kl(sampler_BT, train_BT, "k3", mask_BT),
                                                                       mask_BT))
        batch.old_logprobs_BT = torch.where(mask_BT.bool(), train_BT, 0.0)
        # only the correction reads them later
        batch.rollout_logprobs_BT = sampler_BT if self.cfg.algorithm.rollout_correction.mode != "off" else None

    def sync_weights(self) -> dict[str, float]:
        """Push the actor's current weights to its rollout engines (`sync/*` metrics); each later
        rollout is checked against this version (a stale one is a StaleWeightsError)."""
        metrics = dict(self.groups["actor"].call("sync_rollout_weights"))
        self.weight_version = int(metrics.get("sync/weight_version", self.weight_version))
        return metrics

    def score(self, batch: RolloutBatch) -> RolloutBatch:
        """Reference log-probs, critic values and reward scores, computed concurrently."""
        temperature = self.cfg.rollout.temperature
        ref = self.groups["reference"].call_async("logprobs", batch, temperature)
        values = self.groups["critic"].call_async("values", batch) if "critic" in self.groups else None
        scores = self.groups["reward"].call_async("score", batch) if "reward" in self.groups else None
        batch.ref_logprobs_BT = ref.result()
        batch.values_BT = values.result() if values is not None else None
        if scores is None:  # an environment scored its episodes while they ran
            return batch
        scored = scores.result()
        batch.scores_B, batch.gold_B = scored["scores_B"].float(), scored["gold_B"].float()
        failures = self._fn_failures(scored, "reward")
        batch.extra.update(failures)
        batch.extra.update(outcome_counts(scored, "reward", self.state.reward_outcomes))
        self._check_fn_failures(failures, len(batch))
        return batch

    def _fn_failures(self, scored: dict, prefix: str) -> dict[str, float]:
        """Rows whose task-reward score is the fallback, by kind (`<prefix>/fn_<kind>`, and the fraction);
        added to the run's totals (summary.json `reward_fn_<kind>`). {} when no reward function ran."""
        failures_B = scored.get("fn_failures_B")
        if failures_B is None:
            return {}
        counts = {kind: int((failures_B == code).sum()) for code, kind in enumerate(FN_FAILURE_KINDS, start=1)}
        totals = self.state.reward_fn_failures
        for kind, n in counts.items():
            totals[kind] = totals.get(kind, 0) + n
        return {**{f"{prefix}/fn_{kind}": float(n) for kind, n in counts.items()},
                f"{prefix}/fn_failure_frac": float((failures_B > 0).float().mean()) if len(failures_B) else 0.0}

    def _check_fn_failures(self, counts: dict[str, float], rows: int) -> None:
        """RewardFunctionError when more than `max_fn_failure_frac` of the batch got the fallback score."""
        limit = self.cfg.reward_role.max_fn_failure_frac
        if not counts or counts["reward/fn_failure_frac"] <= limit:
            return
        stats = self.groups["reward"].call("reward_fn_stats")
        examples = [e for rank in (stats if isinstance(stats, list) else [stats]) for e in rank.get("examples", [])]
        detail = ", ".join(f"{kind} {int(counts[f'reward/fn_{kind}'])}" for kind in FN_FAILURE_KINDS)
        source = "reward server" if self.cfg.reward_role.server_url else "task's reward function"
        raise RewardFunctionError(
            f"step {self.state.step + 1}: the {source} failed on "
            f"{counts['reward/fn_failure_frac']:.0%} of {rows} rows ({detail}) > reward_role.max_fn_failure_frac="
            f"{limit:g}; their score would be the fallback {self.cfg.reward_role.fn_fallback:g}. First failures: "
            f"{examples[:3] or 'see the reward worker log'}")

    def compute_advantages(self, batch: RolloutBatch) -> RolloutBatch:
        """KL-penalized token rewards, then advantages and returns (GAE, or a critic-free estimator)."""
        algo = self.cfg.algorithm
        final_B, earlier_BT = batch.scores_B, None
        if batch.turn_rewards_BT is not None:  # episodes: the last turn's reward is shaped like a score
            final_B, earlier_BT = split_final_reward(batch.turn_rewards_BT, batch.mask_BT)
        shaped_B = shape_scores(final_B, batch.truncated_B, algo.reward.normalize_mean,
                                algo.reward.normalize_std, algo.reward.clip, algo.reward.missing_eos_penalty)
        kl_coef = self.kl_ctl.value if algo.kl.in_reward else 0.0
        batch.rewards_BT, batch.kl_BT = kl_penalized_rewards(shaped_B, batch.old_logprobs_BT, batch.ref_logprobs_BT,
                                                             batch.mask_BT, kl_coef, algo.kl.estimator)
        if earlier_BT is not None:  # earlier turns' rewards at their own turns' last sampled tokens
            batch.rewards_BT = batch.rewards_BT + earlier_BT
        adv = algo.advantage
        if adv.needs_critic:
            advantages_BT, batch.returns_BT = gae(batch.rewards_BT, batch.values_BT, batch.mask_BT, adv.gamma, adv.lam)
            if adv.whiten:
                advantages_BT = masked_whiten(advantages_BT, batch.mask_BT)
        else:  # critic-free estimators normalise within groups / the batch themselves
            advantages_BT, batch.returns_BT = get_advantage_estimator(adv.estimator)(
                batch.rewards_BT, batch.mask_BT, batch.group_ids_B, adv.gamma, adv.eps)
        if algo.rollout_correction.mode == "tis":
            weights_BT, tis = tis_weights(batch.old_logprobs_BT, batch.rollout_logprobs_BT, batch.mask_BT,
                                          algo.rollout_correction.cap)
            advantages_BT = apply_tis(advantages_BT, weights_BT)
            batch.extra.update(tis)
        batch.advantages_BT = advantages_BT
        batch.extra["shaped_scores_mean"] = float(shaped_B.mean())
        return batch

    def update(self, batch: RolloutBatch, step: int) -> dict[str, float]:
        """Actor and critic updates, concurrently; only the critic during its warm-up steps."""
        algo = self.cfg.algorithm
        critic = None
        if "critic" in self.groups:
            critic = self.groups["critic"].call_async("update", batch, algo.value_loss, algo.update, step)
        actor = None
        if step > self.cfg.trainer.critic_warmup_steps:
            actor = self.groups["actor"].call_async("update", batch, algo.policy_loss, algo.update, step,
                                                    self.cfg.rollout.temperature)
        metrics = {}
        with stop_named_on_non_finite(self.stage, self.checkpoints):  # raised before it was applied
            if critic is not None:
                metrics.update(critic.result())
            if actor is not None:
                metrics.update(actor.result())
        return metrics

    # --- metrics and checks ---------------------------------------------------------------------
    def rollout_metrics(self, batch: RolloutBatch) -> dict[str, float]:
        mask_BT = batch.mask_BT
        lengths_B = mask_BT.sum(-1)
        kl_B = batch.kl_BT.sum(-1)
        m = {
            "reward/mean": float(batch.scores_B.mean()), "reward/std": float(batch.scores_B.std(unbiased=False)),
            "reward/shaped_mean": batch.extra["shaped_scores_mean"],
            "kl/mean": float(kl_B.mean()), "kl/coef": float(self.kl_ctl.value),
            "advantages/mean": float(masked_mean(batch.advantages_BT, mask_BT)),
            "advantages/std": float(masked_var(batch.advantages_BT, mask_BT).sqrt()),
            "returns/mean": float(masked_mean(batch.returns_BT, mask_BT)),
            "returns/std": float(masked_var(batch.returns_BT, mask_BT).sqrt()),
            "response_length/mean": float(lengths_B.mean()), "response_length/max": float(lengths_B.max()),
            "response_length/truncated_frac": float(batch.truncated_B.float().mean()),
        }
        if not torch.isnan(batch.gold_B).all():
            m["gold/mean"] = float(batch.gold_B.mean())
        m.update({k: v for k, v in batch.extra.items()
                  if k.startswith(("rollout/", "reward/fn_", "reward/outcome_", "episode/", "async/"))})
        if batch.values_BT is not None:
            m["critic/values_mean"] = float(masked_mean(batch.values_BT, mask_BT))
            m["critic/explained_variance"] = float(explained_variance(batch.values_BT, batch.returns_BT, mask_BT))
        return m

    def _finite(self, batch: RolloutBatch, metrics: dict[str, float]) -> bool:
        """False (and counted) when any number the update would use is NaN/inf."""
        tensors = [batch.scores_B, batch.old_logprobs_BT, batch.ref_logprobs_BT, batch.advantages_BT,
                   batch.returns_BT] + ([batch.values_BT] if batch.values_BT is not None else [])
        if all(bool(torch.isfinite(t).all()) for t in tensors):
            self.state.consecutive_bad_steps = 0
            return True
        self.state.bad_steps += 1
        self.state.consecutive_bad_steps += 1
        logger.warning("step skipped: non-finite rewards/values/log-probs (%d consecutive)",
                       self.state.consecutive_bad_steps)
        if self.state.consecutive_bad_steps >= self.cfg.trainer.max_consecutive_bad_steps:
            latest = self.checkpoints.latest()
            raise NonFiniteRunError(
                f"{self.state.consecutive_bad_steps} consecutive steps had NaN/inf rewards, values or log-probs "
                f"(trainer.max_consecutive_bad_steps={self.cfg.trainer.max_consecutive_bad_steps}); "
                f"the last good checkpoint is {latest or 'none yet'}")
        return False

    def _sampling(self, seed: int, greedy: bool = False, n: int | None = None,
                  temperature: float | None = None) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(max_new_tokens=r.max_new_tokens, temperature=temperature or r.temperature,
                              top_p=r.top_p, top_k=r.top_k, greedy=greedy, n=n or r.samples_per_prompt,
                              stop_strings=tuple(r.stop_strings), seed=seed, dtype=r.dtype)

    # --- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        step = self.state.step
        self.state.kl_controller = self.kl_ctl.state_dict()
        self.state.sampler = self.sampler.state_dict()

        def write(directory: Path) -> None:
            for role in ("actor", "critic"):
                if role in self.groups:
                    self.groups[role].call("save_checkpoint", str(directory / role))
                    maybe_crash(f"checkpoint_write_{role}", step)
            self.async_rollouts.save(directory)
            (directory / "controller.json").write_text(json.dumps(asdict(self.state), indent=1))

        return self.checkpoints.save(step, write)

    def restore_latest(self) -> bool:
        """Load the newest complete checkpoint (partial ones are deleted); False if there is none."""
        removed = self.checkpoints.remove_partial()
        if removed:
            logger.warning("removed incomplete checkpoint(s) left by a crash: %s", [p.name for p in removed])
        latest = self.checkpoints.latest_valid()
        if latest is None:
            return False
        for role in ("actor", "critic"):
            if role in self.groups:
                self.groups[role].call("load_checkpoint", str(latest / role))
        self.state = ControllerState(**json.loads((latest / "controller.json").read_text()))
        self.kl_ctl.load_state_dict(self.state.kl_controller)
        self.hacking.load_state_dict(self.state.hacking)
        self.sampler.load_state_dict(self.state.sampler)
        self.async_rollouts.load(latest)
        logger.info("resumed from %s (step %d)", latest, self.state.step)
        return True

    # --- the end -------------------------------------------------------------------------------
    def finish(self) -> dict[str, float]:
        """Export HF directories, plot the curves, write and print the summary."""
        final = self.stage_dir / "final"
        self.groups["actor"].call("export_hf", str(final))
        if "critic" in self.groups:
            self.groups["critic"].call("export_hf", str(self.stage_dir / "final_critic"))
        history = read_jsonl(self.run_dir / "metrics.jsonl", stage=self.stage)  # includes steps before a resume
        last_eval = next((r for r in reversed(history) if any(k.startswith("eval/") for k in r)), {})
        summary = {"steps": self.state.step, "bad_steps": self.state.bad_steps}
        for role in ("actor", "critic"):  # trained roles: with LoRA only the adapter (and a critic's head)
            if role in self.groups:
                counts = self.groups[role].call("parameter_counts")
                summary.update({f"{role}_trainable_parameters": counts["trainable"], f"{role}_parameters": counts["total"]})
        summary.update({f"reward_fn_{kind}": n for kind, n in self.state.reward_fn_failures.items()})
        summary.update(async_summary(self.cfg.trainer.max_staleness, self.state.async_counts))
        summary.update({f"reward_outcome_{name}": n for name, n in sorted(self.state.reward_outcomes.items())})
        for name in ("gold_sampled", "gold_greedy", "reward_sampled", "reward_greedy"):
            key = f"eval/{name}"
            if key in self.state.initial_eval or key in last_eval:
                label = {"gold_sampled": "gold_reward", "gold_greedy": "gold_greedy",
                         "reward_sampled": "eval_reward", "reward_greedy": "eval_reward_greedy"}[name]
                summary[f"{label}_initial"] = self.state.initial_eval.get(key, math.nan)
                summary[f"{label}_final"] = last_eval.get(key, math.nan)
                summary[f"{label}_gain"] = summary[f"{label}_final"] - summary[f"{label}_initial"]
        if "eval/gold_sampled" in last_eval:
            summary.update(rm_gold_corr_final=last_eval.get("hacking/rm_gold_corr", math.nan),
                           hacking_alarm=int(self.hacking.alarm_step is not None),
                           hacking_alarm_step=self.hacking.alarm_step,
                           hacking_divergent_evals=self.hacking.divergent_total)
        plot_curves(history, PLOT_KEYS, self.stage_dir / "curves.png")
        write_summary(self.run_dir / "summary.json", self.stage, summary)
        print(summary_table(summary, title=f"{self.stage} summary"))
        return summary


class StageTimer:
    """Wall time per named stage of a step, reported as `time/<stage>` seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - self.start

        return _Span()

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def metrics(self) -> dict[str, float]:
        return {**{f"time/{k}": v for k, v in self.seconds.items()}, "time/step": self.total}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))
