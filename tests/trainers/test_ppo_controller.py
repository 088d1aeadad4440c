"""The PPO controller on in-process fake worker groups: stage order, the batch fields each stage adds,
critic-free runs, critic warm-up, and NaN handling. No Ray, no models: fast and exact."""
import json
import logging
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from ppo_fixtures import small_config  # noqa: E402

from rlhf.data.batch import RolloutBatch  # noqa: E402
from rlhf.distributed.local import LocalRoleGroups, LocalWorkerGroup  # noqa: E402
from rlhf.trainers.ppo import NonFiniteRunError, PPOTrainer, RewardFunctionError  # noqa: E402
from rlhf.workers.base import Dispatch, dispatch  # noqa: E402

T = 3  # response tokens


class Prompt:
    def __init__(self, i):
        self.input_ids, self.reference = [10 + i % 7, 11], str(i)


class Recorder:
    """Remembers, in order, which role method ran and which batch fields were set when it ran."""

    def __init__(self):
        self.calls = []

    def note(self, role, method, batch=None):
        fields = None if batch is None else sorted(
            k for k, v in vars(batch).items() if v is not None and k not in ("extra",))
        self.calls.append((role, method, fields))


class FakeActor:
    def __init__(self, rec, nan_steps=()):
        self.rec, self.nan_steps, self.updates, self.generations = rec, set(nan_steps), [], 0

    @dispatch(Dispatch.SPLIT)
    def generate(self, items, params):
        self.generations += 1
        B = len(items) * params.n
        g = torch.Generator().manual_seed(params.seed)
        mask = torch.ones(B, T)
        mask[0, 2:] = 0  # one short response
        batch = RolloutBatch(input_ids_BS=torch.randint(4, 20, (B, 2 + T), generator=g),
                             attention_mask_BS=torch.ones(B, 2 + T, dtype=torch.long), mask_BT=mask,
                             old_logprobs_BT=-torch.rand(B, T, generator=g) * mask,
                             group_ids_B=torch.arange(len(items)).repeat_interleave(params.n),
                             truncated_B=torch.zeros(B, dtype=torch.bool),
                             responses=["x"] * B, references=[r for _, r in items for _ in range(params.n)])
        self.rec.note("actor", "generate", batch)
        self.sampled = (batch.old_logprobs_BT.clone(), mask.clone())
        return batch

    @dispatch(Dispatch.SPLIT)
    def logprobs(self, batch, temperature=1.0):
        """The 'training forward': the sampler's log-probs shifted by 0.05 on every response token."""
        self.rec.note("actor", "logprobs", batch)
        return batch.old_logprobs_BT - 0.05 * batch.mask_BT

    @dispatch(Dispatch.RANK0)
    def sync_rollout_weights(self):
        self.rec.note("actor", "sync_rollout_weights")
        return {"time/sync_worker": 0.0, "sync/weight_version": float(len(self.updates))}

    @dispatch(Dispatch.SPLIT_RANK0)
    def update(self, batch, loss_cfg, schedule, step, temperature=1.0):
        self.rec.note("actor", "update", batch)
        self.seen_old_logprobs = batch.old_logprobs_BT.clone()
        self.seen_advantages = batch.advantages_BT.clone()
        self.updates.append(step)
        return {"actor/loss": 0.5, "actor/clip_frac": 0.0, "actor/entropy": 1.0}

    @dispatch(Dispatch.RANK0)
    def export_hf(self, out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return out_dir

    @dispatch(Dispatch.RANK0)
    def parameter_counts(self):
        return {"trainable": 10, "total": 100}

    @dispatch(Dispatch.ALL)
    def save_checkpoint(self, d):
        Path(d).mkdir(parents=True)
        (Path(d) / "weights").write_text(str(self.updates))

    @dispatch(Dispatch.ALL)
    def load_checkpoint(self, d):
        self.updates = json.loads((Path(d) / "weights").read_text())


class FakeCritic(FakeActor):
    @dispatch(Dispatch.SPLIT)
    def values(self, batch):
        self.rec.note("critic", "values", batch)
        return torch.full(batch.mask_BT.shape, 0.1) * batch.mask_BT

    @dispatch(Dispatch.SPLIT_RANK0)
    def update(self, batch, loss_cfg, schedule, step):
        self.rec.note("critic", "update", batch)
        self.updates.append(step)
        return {"critic/loss": 0.1, "critic/value_clip_frac": 0.0}


class FakeReference:
    def __init__(self, rec):
        self.rec = rec

    @dispatch(Dispatch.SPLIT)
    def logprobs(self, batch, temperature):
        self.rec.note("reference", "logprobs", batch)
        return batch.old_logprobs_BT - 0.1 * batch.mask_BT


class FakeReward:
    def __init__(self, rec, nan_steps=()):
        self.rec, self.nan_steps, self.calls = rec, set(nan_steps), 0
        self.failures = None  # fn_failures_B codes to return (None: no reward function ran)

    @dispatch(Dispatch.ALL)
    def reward_fn_stats(self):
        return {"errors": 1, "timeouts": 0, "non_finite": 0, "examples": ["row 0: ValueError: bad row"]}

    @dispatch(Dispatch.SPLIT)
    def score(self, batch):
        self.rec.note("reward", "score", batch)
        self.calls += 1
        scores = torch.arange(len(batch), dtype=torch.float32)
        if self.calls in self.nan_steps:
            scores[1] = float("nan")
        out = {"scores_B": scores, "gold_B": (scores % 2 == 0).float()}
        if self.failures is not None:
            out["fn_failures_B"] = torch.tensor([self.failures[i % len(self.failures)] for i in range(len(batch))])
        return out


def make(tmp_path, with_critic=True, nan_calls=(), **overrides):
    assets = {"lm": "unused", "rm": "unused", "train": "unused", "eval": "unused"}
    cfg = small_config(assets, trainer__tensorboard=False, **overrides)
    if not with_critic:
        cfg.algorithm.advantage.estimator = "grpo"
    rec = Recorder()
    groups = LocalRoleGroups(actor=LocalWorkerGroup("actor", [FakeActor(rec)]),
                             reference=LocalWorkerGroup("reference", [FakeReference(rec)]),
                             reward=LocalWorkerGroup("reward", [FakeReward(rec, nan_calls)]))
    if with_critic:
        groups["critic"] = LocalWorkerGroup("critic", [FakeCritic(rec)])
    trainer = PPOTrainer(cfg, groups, [Prompt(i) for i in range(16)], [Prompt(100 + i) for i in range(4)],
                         run_dir=tmp_path)
    return trainer, rec, groups


def test_stage_order_and_fields_each_stage_adds(tmp_path):
    trainer, rec, _ = make(tmp_path, trainer__total_steps=1, trainer__eval_every=0)
    rec.calls.clear()
    metrics = trainer.train_step(1)
    order = [(role, method) for role, method, _ in rec.calls]
    assert order[0] == ("actor", "generate")
    assert set(order[1:4]) == {("reference", "logprobs"), ("critic", "values"), ("reward", "score")}
    assert set(order[4:6]) == {("critic", "update"), ("actor", "update")}
    assert order[6:] == [("actor", "sync_rollout_weights")]  # the new weights reach the rollout engines
    fields = {(role, method): f for role, method, f in rec.calls}
    scored = {"ref_logprobs_BT", "values_BT", "scores_B", "gold_B"}
    advantage = {"rewards_BT", "kl_BT", "advantages_BT", "returns_BT"}
    assert not (scored | advantage) & set(fields[("reference", "logprobs")])
    assert (scored | advantage) <= set(fields[("actor", "update")])
    assert (scored | advantage) <= set(fields[("critic", "update")])
    for key in ("reward/mean", "kl/mean", "kl/coef", "advantages/mean", "advantages/std", "returns/mean",
                "returns/std", "response_length/mean",
                "response_length/max", "response_length/truncated_frac", "critic/explained_variance",
                "gold/mean", "time/generate", "time/score", "time/update", "perf/tokens_per_s"):
        assert key in metrics, key


def test_critic_free_run_has_no_critic_and_uses_group_advantages(tmp_path):
    trainer, rec, groups = make(tmp_path, with_critic=False, trainer__total_steps=1, trainer__eval_every=0)
    assert "critic" not in groups and trainer.cfg.roles() == ["actor", "reference", "reward"]
    rec.calls.clear()
    trainer.train_step(1)
    assert all(role != "critic" for role, _, _ in rec.calls)


def test_critic_warmup_updates_only_the_critic_first(tmp_path):
    trainer, _, groups = make(tmp_path, trainer__total_steps=3, trainer__critic_warmup_steps=2,
                              trainer__eval_every=0, trainer__save_every=0)
    trainer.fit()
    assert groups["critic"].workers[0].updates == [1, 2, 3]
    assert groups["actor"].workers[0].updates == [3]


def test_non_finite_scores_skip_the_step_and_repeated_ones_stop_the_run(tmp_path):
    # Reward calls: 1 = initial eval greedy, 2 = eval sampled, then one per training step (3 = step 1).
    trainer, _, groups = make(tmp_path, nan_calls={4}, trainer__total_steps=3, trainer__eval_every=0,
                              trainer__save_every=0)
    trainer.fit()
    assert groups["actor"].workers[0].updates == [1, 3]  # step 2 skipped
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    step2 = next(r for r in records if r["step"] == 2)
    assert step2["skipped"] == 1.0 and step2["bad_steps"] == 1.0
    trainer, _, _ = make(tmp_path / "again", nan_calls={3, 4, 5}, trainer__total_steps=5, trainer__eval_every=0,
                         trainer__max_consecutive_bad_steps=3)
    with pytest.raises(NonFiniteRunError, match="3 consecutive steps"):
        trainer.fit()


def test_no_checkpoint_is_written_during_a_streak_of_skipped_steps(tmp_path):
    """Issue 16 §4: a save that falls due on a skipped (non-finite) step waits for the next good step,
    so keep_last never prunes a good checkpoint for one taken while the run was failing."""
    # Reward calls 1-2: the initial evaluation; call 2 + s scores step s. Steps 3 and 4 (the last) skipped:
    trainer, _, _ = make(tmp_path / "a", nan_calls={5, 6}, trainer__total_steps=4, trainer__eval_every=0,
                         trainer__save_every=1, trainer__keep_last=2)
    trainer.fit()
    assert [p.name for p in trainer.checkpoints.complete_checkpoints()] == ["step_00000001", "step_00000002"]
    # Step 2 skipped when a save falls due: the save comes at step 3, the next good step.
    trainer, _, _ = make(tmp_path / "b", nan_calls={4}, trainer__total_steps=5, trainer__eval_every=0,
                         trainer__save_every=2, trainer__keep_last=3)
    trainer.fit()
    assert [p.name for p in trainer.checkpoints.complete_checkpoints()] == ["step_00000003", "step_00000004",
                                                                             "step_00000005"]
    state = json.loads((trainer.checkpoints.complete_checkpoints()[0] / "controller.json").read_text())
    assert state["save_deferred"] is False and state["bad_steps"] == 1


def test_a_non_finite_gradient_in_an_update_stops_the_run_naming_the_last_good_checkpoint(tmp_path):
    from rlhf.engine.train import NonFiniteGradError

    trainer, _, groups = make(tmp_path, trainer__total_steps=3, trainer__eval_every=0, trainer__save_every=1)
    actor = groups["actor"].workers[0]
    plain_update = actor.update

    def update(batch, loss_cfg, schedule, step, temperature=1.0):
        if step == 2:
            raise NonFiniteGradError("non-finite gradients at optimizer update 2 (norm nan); DeepSpeed skipped the update")
        return plain_update(batch, loss_cfg, schedule, step, temperature)

    actor.update = update
    with pytest.raises(NonFiniteRunError, match=r"(?s)worker 'actor' rank 0.*last good checkpoint is .*step_00000001"):
        trainer.fit()
    assert [p.name for p in trainer.checkpoints.complete_checkpoints()] == ["step_00000001"]


def test_kl_penalty_and_scores_reach_the_rewards(tmp_path):
    trainer, _, _ = make(tmp_path, trainer__total_steps=1)
    batch = trainer.score(trainer.rollout(1))
    batch = trainer.compute_advantages(batch)
    kl_coef = trainer.cfg.algorithm.kl.coef
    # k1 KL = old - ref = 0.1 per valid token; the score sits at each row's last valid token.
    torch.testing.assert_close(batch.kl_BT, 0.1 * batch.mask_BT)
    expected = -kl_coef * batch.kl_BT
    expected[torch.arange(len(batch)), batch.mask_BT.sum(-1).long() - 1] += batch.scores_B
    torch.testing.assert_close(batch.rewards_BT, expected)


def test_checkpoint_resume_restores_controller_state(tmp_path):
    trainer, _, groups = make(tmp_path, trainer__total_steps=2, trainer__eval_every=0, trainer__save_every=1)
    trainer.fit()
    assert [p.name for p in trainer.checkpoints.complete_checkpoints()] == ["step_00000001", "step_00000002"]
    state = json.loads((trainer.checkpoints.latest() / "controller.json").read_text())
    assert state["step"] == 2 and state["sampler"]["position"] == 8
    # A fresh controller with more steps resumes at step 2 and replays the data order.
    again, _, groups2 = make(tmp_path, trainer__total_steps=3, trainer__eval_every=0, trainer__save_every=1)
    summary = again.fit(resume=True)
    assert groups2["actor"].workers[0].updates == [1, 2, 3]
    assert summary["steps"] == 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    assert math.isfinite(json.loads((tmp_path / "summary.json").read_text())["ppo"]["gold_reward_final"])


def test_resume_skips_a_damaged_latest_checkpoint_for_the_previous_one(tmp_path, caplog):
    """Issue 16 §6: before, a checkpoint whose files were damaged ended the run on load (or worse, loaded)."""
    trainer, _, _ = make(tmp_path, trainer__total_steps=2, trainer__eval_every=0, trainer__save_every=1)
    trainer.fit()
    latest = trainer.checkpoints.latest()
    (latest / "controller.json").write_text((latest / "controller.json").read_text().replace('"step": 2', '"step": 7'))
    again, _, groups = make(tmp_path, trainer__total_steps=3, trainer__eval_every=0, trainer__save_every=1)
    with caplog.at_level(logging.WARNING):
        summary = again.fit(resume=True)
    assert "step_00000002 is damaged (controller.json does not match the checksum" in caplog.text
    assert groups["actor"].workers[0].updates == [1, 2, 3]  # resumed after step 1: steps 2 and 3 ran again
    assert summary["steps"] == 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]  # the lost attempt's step-2 record was replaced, not duplicated


def test_advantage_and_return_stats_are_masked_std_not_rms(tmp_path):
    """A critic-free batch's advantages need not have mean 0: the std metric must not be an RMS."""
    from rlhf.algorithms import masked_var

    trainer, _, _ = make(tmp_path, with_critic=False, trainer__total_steps=1)
    batch = trainer.compute_advantages(trainer.score(trainer.rollout(1)))
    batch.advantages_BT = batch.advantages_BT + 3.0 * batch.mask_BT  # shift: the std must not change
    metrics = trainer.rollout_metrics(batch)
    expected = float(masked_var(batch.advantages_BT, batch.mask_BT).sqrt())
    assert metrics["advantages/std"] == pytest.approx(expected)
    assert metrics["advantages/mean"] > 2.0 and metrics["advantages/std"] < metrics["advantages/mean"]


class HackedReward(FakeReward):
    """Scores rise with every call; the gold accuracy of the sampled evaluations rises, then falls."""

    SAMPLED_EVAL_GOLD = {2: 0.5, 5: 0.75, 8: 0.5, 11: 0.25}  # reward call number -> gold fraction

    @dispatch(Dispatch.SPLIT)
    def score(self, batch):
        self.calls += 1
        B = len(batch)
        right = round(B * self.SAMPLED_EVAL_GOLD.get(self.calls, 0.5))
        return {"scores_B": torch.full((B,), float(self.calls)), "gold_B": (torch.arange(B) < right).float()}


@pytest.mark.parametrize("stop", [False, True])
def test_reward_hacking_alarm_is_logged_summarised_and_can_stop_the_run(tmp_path, stop):
    from rlhf.trainers.ppo import RewardHackingError

    trainer, _, groups = make(tmp_path, trainer__total_steps=4, trainer__eval_every=1, trainer__save_every=1,
                              trainer__hacking_patience=2, trainer__stop_on_reward_hacking=stop)
    groups["reward"] = LocalWorkerGroup("reward", [HackedReward(Recorder())])
    trainer.groups = groups
    if stop:  # gold fell at the evaluations of steps 2 and 3 while the score rose: step 1 was the last good one
        with pytest.raises(RewardHackingError, match=r"last good checkpoint is .*step_00000001"):
            trainer.fit()
        return
    summary = trainer.fit()
    records = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    assert [records[s]["hacking/alarm"] for s in range(5)] == [0, 0, 0, 1, 0]  # step 4: gold back to 0.5
    assert [records[s]["hacking/divergent"] for s in range(5)] == [0, 0, 1, 1, 0]
    assert summary["hacking_alarm"] == 1 and summary["hacking_alarm_step"] == 3
    assert summary["hacking_divergent_evals"] == 2
    assert summary["gold_reward_gain"] == pytest.approx(summary["gold_reward_final"] - summary["gold_reward_initial"])


@pytest.mark.parametrize("engine_dtype, rollout_dtype, forced, expected", [
    ("fp32", None, None, False), ("bf16", None, None, True), ("fp32", "bf16", None, True),
    ("fp32", None, True, True), ("bf16", None, False, False)])
def test_old_logprobs_are_recomputed_exactly_when_sampling_is_not_the_training_numerics(
        tmp_path, engine_dtype, rollout_dtype, forced, expected):
    trainer, rec, groups = make(tmp_path, rollout__dtype=rollout_dtype, rollout__recompute_logprobs=forced)
    trainer.cfg.engines.actor.dtype = engine_dtype
    assert trainer.cfg.rollout.recompute(engine_dtype) is expected
    metrics = trainer.train_step(1)
    methods = [(role, method) for role, method, _ in rec.calls]
    assert (("actor", "logprobs") in methods) is expected
    if expected:  # right after sampling, before any scorer sees the batch
        assert methods[:2] == [("actor", "generate"), ("actor", "logprobs")]
        assert metrics["rollout/logprob_abs_diff"] == pytest.approx(0.05, abs=1e-6)
        assert metrics["rollout/kl_rollout_vs_train"] > 0
        actor = groups["actor"].workers[0]
        sampler_BT, mask_BT = actor.sampled
        assert torch.equal(actor.seen_old_logprobs, sampler_BT - 0.05 * mask_BT)  # the update used the recomputed
    else:
        assert not any(k.startswith("rollout/") for k in metrics)


def test_tis_scales_each_tokens_advantage_by_the_capped_ratio(tmp_path):
    """The fake trainer's log-probs are the sampler's − 0.05, so every valid token's weight is e^−0.05
    (uncapped) and the update sees exactly the uncorrected advantages times it."""
    seen = {}
    for mode in ("off", "tis"):
        trainer, _, groups = make(tmp_path / mode, rollout__recompute_logprobs=True)
        trainer.cfg.algorithm.rollout_correction.mode = mode
        metrics = trainer.train_step(1)
        seen[mode] = groups["actor"].workers[0].seen_advantages
    torch.testing.assert_close(seen["tis"], seen["off"] * math.exp(-0.05))
    assert metrics["rollout/tis_weight_mean"] == pytest.approx(math.exp(-0.05))
    assert metrics["rollout/tis_capped_frac"] == 0.0


def test_reward_function_failures_are_counted_per_step_and_in_the_summary(tmp_path):
    trainer, _, groups = make(tmp_path, trainer__total_steps=2, trainer__eval_every=0, trainer__save_every=0)
    groups["reward"].workers[0].failures = [0, 1, 0, 2, 0, 0, 3, 0]  # 3 of 8 rows: under the 0.5 limit
    summary = trainer.fit()
    records = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    for step in (1, 2):
        r = records[step]
        assert (r["reward/fn_errors"], r["reward/fn_timeouts"], r["reward/fn_non_finite"]) == (1.0, 1.0, 1.0)
        assert r["reward/fn_failure_frac"] == 3 / 8
    # Evaluation batches (4 prompts: codes 0, 1, 0, 2) are counted too, under eval/.
    assert records[0]["eval/reward_fn_sampled_errors"] == records[0]["eval/reward_fn_greedy_timeouts"] == 1.0
    # 2 training batches (1 of each kind) + 2 evaluations × greedy and sampled (1 error, 1 timeout each)
    assert (summary["reward_fn_errors"], summary["reward_fn_timeouts"], summary["reward_fn_non_finite"]) == (6, 6, 2)


def test_a_reward_function_failing_on_most_rows_stops_the_run_naming_the_failures(tmp_path):
    trainer, _, groups = make(tmp_path, trainer__total_steps=2, trainer__eval_every=0)
    groups["reward"].workers[0].failures = [1, 1, 2, 0]  # 75% > 0.5
    with pytest.raises(RewardFunctionError, match=r"step 1: the task's reward function failed on 75% of 8 rows "
                                                  r"\(errors 4, timeouts 2, non_finite 0\) > reward_role."
                                                  r"max_fn_failure_frac=0.5.*row 0: ValueError: bad row"):
        trainer.fit()


def test_sigterm_stops_after_the_step_in_flight_with_a_checkpoint_and_resume_finishes(tmp_path):
    """Issue 16 §9: before, SIGTERM killed the controller mid-step and lost everything since the last
    scheduled checkpoint; now the step finishes, is checkpointed, and Preempted is raised."""
    import os
    import signal

    from rlhf.trainers.preemption import Preempted

    trainer, _, groups = make(tmp_path, trainer__total_steps=4, trainer__eval_every=0, trainer__save_every=0)
    actor = groups["actor"].workers[0]
    update = actor.update

    def update_then_signal(batch, loss_cfg, schedule, step, temperature=1.0):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step, as a scheduler's would
        return update(batch, loss_cfg, schedule, step, temperature)

    actor.update = update_then_signal
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match=r"stage ppo stopped after step 2 with checkpoint .*step_00000002"):
        trainer.fit()
    assert [p.name for p in trainer.checkpoints.complete_checkpoints()] == ["step_00000002"]  # none scheduled
    assert signal.getsignal(signal.SIGTERM) is before  # the trainer's handler is gone with it
    again, _, groups2 = make(tmp_path, trainer__total_steps=4, trainer__eval_every=0, trainer__save_every=0)
    assert again.fit(resume=True)["steps"] == 4
    assert groups2["actor"].workers[0].updates == [1, 2, 3, 4]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]


def test_the_sampled_evaluation_averages_over_several_samples_of_every_prompt(tmp_path):
    trainer, _, groups = make(tmp_path, trainer__eval_samples_per_prompt=3)
    reward = groups["reward"].workers[0]
    sizes, score = [], reward.score

    def recording_score(batch):
        sizes.append(len(batch))
        out = score(batch)
        out["gold_B"] = (torch.arange(len(batch)) < 3).float()  # the first prompt's samples are right
        return out

    reward.score = recording_score
    out = trainer.evaluate(0)
    assert sizes == [4, 12]  # greedy: one per prompt; sampled: 3 per prompt
    assert out["eval/gold_greedy"] == pytest.approx(3 / 4) and out["eval/gold_sampled"] == pytest.approx(3 / 12)
