"""Asynchronous rollout (`ppo.trainer.max_staleness`) on in-process fake worker groups: which weights
sampled each batch, the call order that makes it so, exact resume with batches sampled ahead, and the
staleness policy when the bound is lowered on resume. The real command: tests/recipes/test_recipes_cpu.py."""
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_ppo_controller import FakeActor, make  # noqa: E402

from rlhf.config.ppo import PPOConfig, TrainerConfig  # noqa: E402
from rlhf.trainers.preemption import Preempted  # noqa: E402
from rlhf.workers.base import Dispatch, dispatch  # noqa: E402


class VersionedActor(FakeActor):
    """A fake actor whose samples reveal the weights that made them: old log-probs are lowered by
    0.01 per update applied so far, and every generate call records (seed, updates so far)."""

    def __init__(self, rec):
        super().__init__(rec)
        self.sampled_with = []  # (seed, updates applied) per generate call, in call order
        self.trained_on = {}  # step → the old log-probs its update saw

    @dispatch(Dispatch.SPLIT)
    def generate(self, items, params, recompute_temperature=None):
        batch = super().generate(items, params)
        self.sampled_with.append((params.seed, len(self.updates)))
        batch.old_logprobs_BT = batch.old_logprobs_BT - 0.01 * len(self.updates) * batch.mask_BT
        if recompute_temperature is not None:  # the "training forward" (as FakeActor.logprobs), same weights
            batch.rollout_logprobs_BT = batch.old_logprobs_BT
            batch.old_logprobs_BT = batch.old_logprobs_BT - 0.05 * batch.mask_BT
        return batch

    @dispatch(Dispatch.SPLIT_RANK0)
    def update(self, batch, loss_cfg, schedule, step, temperature=1.0):
        self.trained_on[step] = batch.old_logprobs_BT.clone()
        return super().update(batch, loss_cfg, schedule, step, temperature)


def steps_seeds(trainer, steps):
    return [trainer.rollout_params(step).seed for step in range(1, steps + 1)]


def training(actor, trainer):
    """(seed, updates applied) of the actor's training rollouts (the evaluations' left out)."""
    seeds = set(steps_seeds(trainer, trainer.cfg.trainer.total_steps))
    return [(seed, v) for seed, v in actor.sampled_with if seed in seeds]


def make_async(tmp_path, **overrides):
    trainer, rec, groups = make(tmp_path, **overrides)
    actor = VersionedActor(rec)
    groups["actor"].workers = [actor]
    return trainer, rec, actor


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def comparable(records):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in records]


def actor_calls(rec):
    return [method for role, method, _ in rec.calls if role == "actor"]


def test_staleness_one_samples_each_batch_before_the_previous_update(tmp_path):
    trainer, rec, actor = make_async(tmp_path, trainer__total_steps=4, trainer__eval_every=0,
                                     trainer__save_every=0, trainer__max_staleness=1)
    sync, _, sync_actor = make_async(tmp_path / "sync", trainer__total_steps=4, trainer__eval_every=0,
                                     trainer__save_every=0)
    rec.calls.clear()
    summary = trainer.fit()
    sync.fit()
    # Batch k + 1 is asked for before update k: the actor's queue runs it with the weights before it.
    # (Around them: the first sync, and the greedy and sampled evaluations before step 1 and after step 4.)
    assert actor_calls(rec) == ["sync_rollout_weights", "generate", "generate",
                                "generate", "generate", "update", "sync_rollout_weights",
                                "generate", "update", "sync_rollout_weights", "generate", "update",
                                "sync_rollout_weights", "update", "sync_rollout_weights", "generate", "generate"]
    # The same prompts and seeds as the synchronous run, step for step; the weights one update older.
    assert training(actor, trainer) == [(s, v) for s, v in zip(steps_seeds(trainer, 4), [0, 0, 1, 2])]
    assert training(sync_actor, sync) == [(s, v) for s, v in zip(steps_seeds(sync, 4), [0, 1, 2, 3])]
    for step in (2, 3, 4):  # one version behind: 0.01 more than the synchronous run's old log-probs
        mask = sync_actor.trained_on[step] != 0
        torch.testing.assert_close(actor.trained_on[step][mask], sync_actor.trained_on[step][mask] + 0.01)
    records = [r for r in rows(tmp_path) if r["step"] >= 1]
    assert [r["async/staleness_mean"] for r in records] == [0.0, 1.0, 1.0, 1.0]
    assert [r["async/sampling_version"] for r in records] == [0.0, 0.0, 1.0, 2.0]
    assert all(r["async/dropped"] == 0 and r["async/waited"] == 0 for r in records)
    assert summary["async_staleness_mean"] == 0.75 and summary["async_max_staleness"] == 1
    assert not any(k.startswith("async") for k in json.loads((tmp_path / "sync" / "summary.json").read_text())["ppo"])


def test_staleness_zero_is_the_synchronous_loop(tmp_path):
    """max_staleness=0: each batch is sampled after the previous update and its sync, by the weights it is
    trained against (0.01 per update in the fake's log-probs: none behind), and no async metric appears."""
    trainer, rec, actor = make_async(tmp_path, trainer__total_steps=3, trainer__eval_every=2,
                                     trainer__max_staleness=0)
    rec.calls.clear()
    trainer.fit()
    evaluation = ["generate", "generate"]  # greedy and sampled
    step = ["generate", "update", "sync_rollout_weights"]
    assert actor_calls(rec) == ["sync_rollout_weights", *evaluation, *step, *step, *evaluation, *step, *evaluation]
    assert training(actor, trainer) == [(s, v) for s, v in zip(steps_seeds(trainer, 3), [0, 1, 2])]
    assert not any(k.startswith("async") for r in rows(tmp_path) for k in r)
    assert not any(k.startswith("async") for k in json.loads((tmp_path / "summary.json").read_text())["ppo"])


def test_recomputed_old_logprobs_come_from_the_sampling_weights(tmp_path):
    trainer, rec, actor = make_async(tmp_path, trainer__total_steps=3, trainer__eval_every=0,
                                     trainer__max_staleness=1, rollout__recompute_logprobs=True)
    trainer.fit()
    # Recomputed right after sampling, in the same call: no separate log-prob call on the actor.
    assert "logprobs" not in actor_calls(rec)
    records = [r for r in rows(tmp_path) if r["step"] >= 1]
    assert all(abs(r["rollout/logprob_abs_diff"] - 0.05) < 1e-6 for r in records)  # the fake forward's shift


def interrupt_after(trainer, actor, step):
    """SIGTERM during `step`'s update: the step finishes, is checkpointed with what was sampled ahead."""
    update = actor.update

    def update_then_signal(batch, loss_cfg, schedule, at, temperature=1.0):
        if at == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return update(batch, loss_cfg, schedule, at, temperature)

    actor.update = update_then_signal
    with pytest.raises(Preempted):
        trainer.fit()


def test_resume_with_batches_sampled_ahead_matches_the_uninterrupted_run(tmp_path):
    settings = dict(trainer__total_steps=5, trainer__eval_every=2, trainer__save_every=0, trainer__max_staleness=2)
    uninterrupted, _, reference = make_async(tmp_path / "whole", **settings)
    uninterrupted.fit()
    first, _, actor = make_async(tmp_path / "cut", **settings)
    interrupt_after(first, actor, 2)
    checkpoint = first.checkpoints.latest()
    ahead = torch.load(checkpoint / "rollouts_ahead.pt", weights_only=True)
    assert [(e["step"], e["version"]) for e in ahead] == [(3, 0), (4, 1)]  # sampled before updates 1 and 2
    resumed, _, actor = make_async(tmp_path / "cut", **settings)
    resumed.fit(resume=True)
    assert comparable(rows(tmp_path / "cut")) == comparable(rows(tmp_path / "whole"))
    for step in (3, 4, 5):  # the batches sampled before the interruption are the ones trained on
        torch.testing.assert_close(actor.trained_on[step], reference.trained_on[step])
    # Only step 5's batch was sampled after the resume (steps 3 and 4 came from the checkpoint), before
    # update 3 as in the uninterrupted run.
    assert training(actor, resumed) == [(steps_seeds(resumed, 5)[4], 2)] == training(reference, uninterrupted)[4:]


@pytest.mark.parametrize("policy", ["wait", "drop"])
def test_a_batch_older_than_a_lowered_bound_is_resampled_or_dropped(tmp_path, policy):
    first, _, actor = make_async(tmp_path, trainer__total_steps=4, trainer__eval_every=0, trainer__save_every=0,
                                 trainer__max_staleness=2)
    interrupt_after(first, actor, 2)  # ahead: step 3 sampled at version 0, step 4 at version 1
    resumed, _, actor = make_async(tmp_path, trainer__total_steps=4, trainer__eval_every=0, trainer__save_every=0,
                                   trainer__max_staleness=1, trainer__staleness_policy=policy)
    summary = resumed.fit(resume=True)
    records = {r["step"]: r for r in rows(tmp_path)}
    # Step 3's batch is 2 updates behind, step 4's too: both re-sampled (wait) or replaced (drop) now.
    assert [records[s]["async/staleness_mean"] for s in (3, 4)] == [0.0, 0.0]
    assert [records[s]["async/sampling_version"] for s in (3, 4)] == [2.0, 3.0]
    key = "async/waited" if policy == "wait" else "async/dropped"
    assert [records[s][key] for s in (3, 4)] == [1.0, 2.0]
    assert summary[f"async_{'waited' if policy == 'wait' else 'dropped'}"] == 2
    # One sample per step, with the current weights (2 and 3 updates applied).
    assert [v for _, v in training(actor, resumed)] == [2, 3]
    # 4 prompts a step from 16: steps 1-4 drew all 16 before the interruption. wait keeps the data order
    # (nothing drawn after the resume); drop draws a new batch per dropped one, into the next epoch.
    drawn = json.loads((resumed.checkpoints.latest() / "controller.json").read_text())["sampler"]
    assert (drawn["epoch"], drawn["position"]) == ((0, 16) if policy == "wait" else (1, 8))


def test_config_refuses_bad_staleness_settings():
    with pytest.raises(ValueError, match="trainer.max_staleness"):
        TrainerConfig(max_staleness=-1)
    with pytest.raises(ValueError, match="trainer.staleness_policy"):
        TrainerConfig(staleness_policy="later")
    cfg = PPOConfig()
    cfg.actor.path, cfg.data.train, cfg.env.name = "m", "d", "guess_number"
    cfg.reward_role.use_task_reward = False
    cfg.trainer.max_staleness = 1
    with pytest.raises(ValueError, match="trainer.max_staleness.*env.name"):
        cfg.validate()
