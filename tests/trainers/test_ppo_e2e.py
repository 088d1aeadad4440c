"""PPO end to end on CPU with Ray actors and DeepSpeed engines: four roles, a critic-free run, and
SIGKILL during training and during checkpoint writing followed by resume, matching the uninterrupted run."""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))

from ppo_fixtures import build_assets, small_config  # noqa: E402

from rlhf.config.io import save_yaml  # noqa: E402
from rlhf.trainers.ppo_stage import run_ppo  # noqa: E402

ISSUE_METRICS = [
    "reward/mean", "reward/std", "gold/mean", "kl/mean", "kl/coef", "actor/entropy", "actor/loss",
    "actor/clip_frac", "actor/approx_kl", "critic/loss", "critic/value_clip_frac", "critic/explained_variance",
    "advantages/mean", "advantages/std", "returns/mean", "returns/std", "response_length/mean", "response_length/max",
    "response_length/truncated_frac", "time/generate", "time/score", "time/advantages", "time/update",
    "perf/tokens_per_s", "eval/gold_greedy", "eval/gold_sampled", "eval/reward_greedy",
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("ppo_assets"))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_four_role_ppo_runs_learns_and_reports(ray_cluster, assets, tmp_path):
    cfg = small_config(assets)
    summary = run_ppo(cfg, tmp_path)
    final, final_critic = tmp_path / "ppo" / "final", tmp_path / "ppo" / "final_critic"
    assert any(not torch.equal(v, weights(Path(assets["lm"]))[k]) for k, v in weights(final).items())
    assert any(not torch.equal(v, weights(Path(assets["rm"]))[k]) for k, v in weights(final_critic).items())
    assert (final / "tokenizer.json").exists()
    logged = set().union(*(r.keys() for r in records(tmp_path)))
    assert not [m for m in ISSUE_METRICS if m not in logged]
    png = (tmp_path / "ppo" / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) > (100, 100)
    stored = json.loads((tmp_path / "summary.json").read_text())["ppo"]
    assert stored["steps"] == 3 and "gold_reward_initial" in stored and "gold_greedy_final" in stored
    assert summary["steps"] == 3
    checkpoints = sorted(p.name for p in (tmp_path / "ppo" / "checkpoints").iterdir())
    assert checkpoints == ["step_00000002", "step_00000003"]  # save_every=1, keep_last=2, no leftovers


def test_critic_free_grpo_with_rule_reward_runs_three_roles(ray_cluster, assets, tmp_path):
    cfg = small_config(assets, trainer__total_steps=2, trainer__save_every=0)
    cfg.algorithm.advantage.estimator = "grpo"
    cfg.reward_role.use_task_reward = True
    cfg.reward.path = ""
    assert cfg.roles() == ["actor", "reference", "reward"]
    run_ppo(cfg, tmp_path)
    assert not (tmp_path / "ppo" / "final_critic").exists()
    rows = [r for r in records(tmp_path) if r["step"] >= 1]
    assert all(r["reward/mean"] == r["gold/mean"] for r in rows)  # the verifier is the reward
    assert all("critic/loss" not in r for r in rows)


RUNNER = """
import sys
from rlhf.config.io import load_yaml
from rlhf.config.ppo import PPOConfig
from rlhf.trainers.ppo_stage import run_ppo
run_ppo(load_yaml(PPOConfig, sys.argv[1]), sys.argv[2], resume=sys.argv[3] == "resume")
"""


def run_subprocess(config_path, run_dir, mode, crash_at=None, **extra_env):
    env = {**os.environ, "RLHF_CRASH_AT": crash_at or "", **extra_env}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-c", RUNNER, str(config_path), str(run_dir), mode], env=env,
                          capture_output=True, text=True, timeout=900)


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def test_kills_and_worker_death_then_resume_match_the_uninterrupted_run(ray_cluster, assets, tmp_path):
    """SIGKILL of the controller in training and mid-checkpoint, and a worker dying mid-update: each
    time the run resumes from the last complete checkpoint and ends exactly where an uninterrupted run does."""
    cfg = small_config(assets, trainer__total_steps=4, trainer__save_every=1, trainer__eval_every=2,
                       trainer__tensorboard=False)
    config_path = save_yaml(cfg, tmp_path / "ppo.yaml")
    reference_dir = tmp_path / "uninterrupted"
    run_ppo(cfg, reference_dir)  # in-process, on the session's Ray cluster

    crashed = tmp_path / "crashed"
    first = run_subprocess(config_path, crashed, "fresh", crash_at="after_step@2")  # logged step 2, no ckpt 2
    assert first.returncode == -9, first.stderr[-3000:]
    worker_death = run_subprocess(config_path, crashed, "resume", crash_at="actor_update@3")
    assert worker_death.returncode == 1, worker_death.stderr[-3000:]
    assert "worker 'actor' rank 0 failed in 'update'" in worker_death.stderr and "died" in worker_death.stderr
    checkpoints = crashed / "ppo" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000001", "step_00000002"]
    second = run_subprocess(config_path, crashed, "resume", crash_at="checkpoint_write_actor@4")
    assert second.returncode == -9, second.stderr[-3000:]
    assert any(p.name.startswith(".tmp-step_00000004") for p in checkpoints.iterdir())  # torn write left behind
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000002", "step_00000003"]
    third = run_subprocess(config_path, crashed, "resume")
    assert third.returncode == 0, third.stderr[-3000:]
    assert not any(p.name.startswith(".tmp-") for p in checkpoints.iterdir())

    # Issue 16 §10: with trainer.max_restarts the same process restarts the worker groups from the last
    # good checkpoint when a worker dies mid-update, and ends where the uninterrupted run does.
    restarted = tmp_path / "restarted"
    cfg.trainer.max_restarts = 1
    restart_config = save_yaml(cfg, tmp_path / "ppo_restarts.yaml")
    fourth = run_subprocess(restart_config, restarted, "fresh", crash_at="actor_update@3",
                            RLHF_CRASH_ONCE_FILE=str(tmp_path / "crashed_once"))
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert "restarting the worker groups from the last good checkpoint (restart 1 of" in fourth.stderr
    assert (tmp_path / "crashed_once").exists()  # the actor did die
    assert json.loads((restarted / "summary.json").read_text())["ppo"]["worker_restarts"] == 1

    for run in (crashed, restarted):
        for name in ("final", "final_critic"):
            expected, got = weights(reference_dir / "ppo" / name), weights(run / "ppo" / name)
            for key, value in expected.items():
                torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=f"{run.name} {name}:{key}")
        assert comparable(records(run)) == comparable(records(reference_dir)), run.name


def test_async_rollout_kill_and_resume_match_the_uninterrupted_async_run(ray_cluster, assets, tmp_path):
    """Issue 14: with max_staleness=1 the batch of step k+1 is sampled before update k (its old log-probs
    recomputed right after sampling, by the same weights: the gap to the sampler's is ~0), and a run
    killed after step 2, whose checkpoint holds the batch sampled for step 3, resumes to end exactly
    where the uninterrupted async run does."""
    cfg = small_config(assets, trainer__total_steps=4, trainer__save_every=1, trainer__eval_every=2,
                       trainer__tensorboard=False, trainer__max_staleness=1, rollout__recompute_logprobs=True)
    config_path = save_yaml(cfg, tmp_path / "ppo.yaml")
    reference_dir = tmp_path / "uninterrupted"
    summary = run_ppo(cfg, reference_dir)
    steps = [r for r in records(reference_dir) if r["step"] >= 1]
    assert [r["async/staleness_mean"] for r in steps] == [0.0, 1.0, 1.0, 1.0]
    assert all(r["rollout/logprob_abs_diff"] < 1e-5 for r in steps)  # recomputed by the weights that sampled
    assert summary["async_staleness_mean"] == 0.75

    crashed = tmp_path / "crashed"
    first = run_subprocess(config_path, crashed, "fresh", crash_at="after_step@3")  # logged step 3, no ckpt 3
    assert first.returncode == -9, first.stderr[-3000:]
    assert (crashed / "ppo" / "checkpoints" / "step_00000002" / "rollouts_ahead.pt").is_file()
    second = run_subprocess(config_path, crashed, "resume")
    assert second.returncode == 0, second.stderr[-3000:]
    for name in ("final", "final_critic"):
        expected, got = weights(reference_dir / "ppo" / name), weights(crashed / "ppo" / name)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=f"{name}:{key}")
    assert comparable(records(crashed)) == comparable(records(reference_dir))


def test_hybrid_layout_hosts_the_four_roles_in_one_process_and_resumes_a_separate_run(ray_cluster, assets, tmp_path):
    """Issue 17: `placement.layout=hybrid` hosts actor, critic, reference and reward in one process per
    rank (the same worker-group calls), idle roles releasing their states by `offload_when_idle` between
    phases (on CPU the moves go from the CPU to the CPU: the path runs, the numbers must not change); a
    run checkpointed in the separate layout resumes in the hybrid one and ends where the uninterrupted
    separate run does (same thread count: bit for bit)."""
    from rlhf.trainers.ppo_setup import start_worker_groups

    hybrid = small_config(assets, trainer__total_steps=3, trainer__save_every=1, trainer__eval_every=2,
                          trainer__tensorboard=False, placement__layout="hybrid")
    for role, policy in (("actor", "optimizer"), ("critic", "all"), ("reference", "all"), ("reward", "all")):
        hybrid.placement.role(role).offload_when_idle = policy
    groups = start_worker_groups(hybrid)
    try:
        seen = {role: groups[role].ping()[0] for role in ("actor", "critic", "reference", "reward")}
        switches = groups["actor"].host.call("phase_switches")[0]
    finally:
        groups.shutdown()
    assert len({info["pid"] for info in seen.values()}) == 1, seen  # one process hosts them all
    assert all(info["role"] == role for role, info in seen.items())  # each call reached its own role
    assert switches["count"] >= 4 and switches["released_bytes"] > 0, switches  # model loads switched roles
    assert switches["offload"] == {"actor": "optimizer", "critic": "all", "reference": "all", "reward": "all"}

    separate = small_config(assets, trainer__total_steps=3, trainer__save_every=1, trainer__eval_every=2,
                            trainer__tensorboard=False)
    reference_dir = tmp_path / "separate"
    run_ppo(separate, reference_dir)
    switched = tmp_path / "switched"
    separate.trainer.total_steps = 2
    run_ppo(separate, switched)
    summary = run_ppo(hybrid, switched, resume=True)
    assert summary["steps"] == 3
    assert [r["step"] for r in records(switched)] == [0, 1, 2, 3]
    for name in ("final", "final_critic"):
        expected, got = weights(reference_dir / "ppo" / name), weights(switched / "ppo" / name)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=f"{name}:{key}")
    assert comparable(records(switched)) == comparable(records(reference_dir))
