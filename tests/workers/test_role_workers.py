"""The four role workers as Ray actors on CPU (gloo, fp32): one full PPO round trip, and data-parallel
ZeRO-2/ZeRO-3 actors taking the same update as a single rank on the same global batch."""
import pytest
import torch
from safetensors.torch import load_file

from rlhf.algorithms import gae, kl_penalized_rewards, masked_whiten
from rlhf.config.algorithm import PolicyLossConfig, UpdateSchedule, ValueLossConfig
from rlhf.config.engine import EngineConfig
from rlhf.config.placement import PlacementConfig, RolePlacement
from rlhf.distributed.placement import plan_placement
from rlhf.distributed.worker_group import RoleGroups
from rlhf.models import ModelOptions, SamplingParams
from rlhf.models.tiny import build_tiny_model, build_tiny_reward_model, build_tiny_tokenizer
from rlhf.workers.actor import ActorWorker
from rlhf.workers.critic import CriticWorker
from rlhf.workers.reference import ReferenceWorker
from rlhf.workers.reward import RewardWorker

TINY = dict(num_layers=2, hidden_size=32, num_heads=2)
PROMPTS = [("12+34=", "46"), ("5+5=", "10"), ("71+18=", "89"), ("3+40=", "43")]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("role_models")
    build_tiny_tokenizer(root / "tok")
    return {"lm": str(build_tiny_model(root / "lm", root / "tok", seed=0, **TINY)),
            "rm": str(build_tiny_reward_model(root / "rm", root / "tok", seed=1, **TINY))}


def cpu_plan(**roles):
    cfg = PlacementConfig(use_gpu=False, **{r: RolePlacement(cpus_per_rank=0.1, **kw) for r, kw in roles.items()})
    return plan_placement(cfg, list(roles))


def exported_weights(group, path):
    group.call("export_hf", str(path))
    return load_file(str(path / "model.safetensors"))


def test_one_ppo_round_trip_through_the_four_roles(ray_cluster, tiny_dirs, tmp_path):
    plan = cpu_plan(actor={}, critic={}, reward={}, reference={})
    groups = RoleGroups.create(plan, {"actor": ActorWorker, "critic": CriticWorker, "reward": RewardWorker,
                                      "reference": ReferenceWorker}, seed=0, call_timeout_s=600)
    try:
        opts, engine = ModelOptions(), EngineConfig(lr=1e-3)
        schedule = UpdateSchedule(epochs=2, num_minibatches=2, micro_batch_size=2)
        for role, args in {"actor": (tiny_dirs["lm"], opts, engine, 2, 2),
                           "critic": (tiny_dirs["rm"], opts, engine, 2, 2),
                           "reference": (tiny_dirs["lm"], opts, EngineConfig(), 4)}.items():
            groups[role].call("init_model", *args)
        groups["reward"].call("init_model", tiny_dirs["rm"], opts, EngineConfig(), 4, task="arithmetic",
                              task_kwargs={"num_train_prompts": 10, "num_eval_prompts": 10})

        params = SamplingParams(max_new_tokens=6, temperature=1.0, n=2, seed=0)
        batch = groups["actor"].call("generate", PROMPTS, params)
        assert len(batch) == 8 and batch.old_logprobs_BT.shape == batch.mask_BT.shape
        # Concurrent scoring stage, as the controller runs it.
        ref_future = groups["reference"].call_async("logprobs", batch, 1.0)
        values_future = groups["critic"].call_async("values", batch)
        score_future = groups["reward"].call_async("score", batch)
        batch.ref_logprobs_BT, batch.values_BT = ref_future.result(), values_future.result()
        scored = score_future.result()
        batch.scores_B, batch.gold_B = scored["scores_B"], scored["gold_B"]
        assert torch.isfinite(batch.scores_B).all() and set(batch.gold_B.tolist()) <= {0.0, 1.0}
        # Reference = the same initial weights as the actor: identical log-probs, zero KL.
        torch.testing.assert_close(batch.ref_logprobs_BT, batch.old_logprobs_BT, atol=1e-5, rtol=0)

        batch.rewards_BT, batch.kl_BT = kl_penalized_rewards(batch.scores_B, batch.old_logprobs_BT,
                                                             batch.ref_logprobs_BT, batch.mask_BT, 0.05)
        advantages_BT, batch.returns_BT = gae(batch.rewards_BT, batch.values_BT, batch.mask_BT, 1.0, 0.95)
        batch.advantages_BT = masked_whiten(advantages_BT, batch.mask_BT)

        actor_before = exported_weights(groups["actor"], tmp_path / "actor0")
        critic_before = exported_weights(groups["critic"], tmp_path / "critic0")
        actor_future = groups["actor"].call_async("update", batch, PolicyLossConfig(), schedule, 0)
        critic_future = groups["critic"].call_async("update", batch, ValueLossConfig(), schedule, 0)
        actor_metrics, critic_metrics = actor_future.result(), critic_future.result()
        for key in ("actor/clip_frac", "actor/approx_kl", "actor/entropy", "actor/grad_norm", "actor/lr", "actor/loss"):
            assert key in actor_metrics and actor_metrics[key] == actor_metrics[key]  # present, not NaN
        assert "critic/value_clip_frac" in critic_metrics
        # The first minibatch is on-policy (ratio 1); later ones are not, so approx_kl > 0 after updates.
        assert actor_metrics["actor/approx_kl"] > 0

        actor_after = exported_weights(groups["actor"], tmp_path / "actor1")
        critic_after = exported_weights(groups["critic"], tmp_path / "critic1")
        assert any(not torch.equal(actor_before[k], actor_after[k]) for k in actor_before)
        assert any(not torch.equal(critic_before[k], critic_after[k]) for k in critic_before)
        # The exported actor is a normal HF directory that reloads.
        from transformers import AutoModelForCausalLM
        AutoModelForCausalLM.from_pretrained(tmp_path / "actor1")
    finally:
        groups.shutdown()


def fixed_batch(tiny_dirs):
    """An 8-row batch with advantages, built in-process from the tiny policy."""
    from rlhf.models import generate_rollouts, load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_dirs["lm"])
    batch = generate_rollouts(load_causal_lm(tiny_dirs["lm"]), tok, [p for p, _ in PROMPTS],
                              SamplingParams(max_new_tokens=5, n=2, seed=3))
    g = torch.Generator().manual_seed(0)
    batch.advantages_BT = torch.randn(batch.mask_BT.shape, generator=g) * batch.mask_BT
    return batch


@pytest.mark.parametrize("stage", [2, 3])
def test_data_parallel_zero_actor_matches_single_rank(ray_cluster, tiny_dirs, tmp_path, stage):
    batch = fixed_batch(tiny_dirs)
    schedule = UpdateSchedule(epochs=1, num_minibatches=1, micro_batch_size=2, shuffle=False)
    weights = {}
    for name, ranks, zero in (("single", 1, 0), ("dp2", 2, stage)):
        groups = RoleGroups.create(cpu_plan(actor={"devices_per_node": ranks}), {"actor": ActorWorker},
                                   seed=0, call_timeout_s=600)
        try:
            engine = EngineConfig(zero_stage=zero, lr=1e-2, zero3_param_persistence_threshold=0)
            accum = schedule.grad_accum_steps(len(batch) // ranks)
            groups["actor"].call("init_model", tiny_dirs["lm"], ModelOptions(), engine, 2, accum)
            groups["actor"].call("update", batch, PolicyLossConfig(), schedule, 0)
            weights[name] = exported_weights(groups["actor"], tmp_path / name)
        finally:
            groups.shutdown()
    initial = load_file(str(next(iter(__import__("pathlib").Path(tiny_dirs["lm"]).glob("*.safetensors")))))
    assert any(not torch.equal(initial[k], weights["single"][k]) for k in initial)
    for key, value in weights["single"].items():
        torch.testing.assert_close(weights["dp2"][key], value, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("stage", [2, 3])
def test_data_parallel_zero_critic_and_reward_model_match_single_rank(ray_cluster, tiny_dirs, tmp_path, stage):
    """The scalar-head roles too: their forward once called the backbone and the head separately, which
    bypassed the root module's forward, and under ZeRO-3 the critic's update then silently differed from
    ZeRO-0's (the actor's did not). The critic's value update and the reward model's training step on
    2 ranks must equal 1 rank's."""
    import json

    from rlhf.data import PreferenceDataset
    from rlhf.models import load_tokenizer
    from rlhf.workers.supervised import RewardModelWorker

    batch = fixed_batch(tiny_dirs)
    g = torch.Generator().manual_seed(1)
    batch.values_BT = torch.randn(batch.mask_BT.shape, generator=g) * batch.mask_BT
    batch.returns_BT = torch.randn(batch.mask_BT.shape, generator=g) * batch.mask_BT
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)})
                                  + "\n" for a, b in ((12, 34), (5, 5), (71, 18), (3, 40))))
    pairs = PreferenceDataset(str(pairs_file), load_tokenizer(tiny_dirs["rm"], padding_side="right"), max_len=16)
    examples = [pairs[i] for i in range(len(pairs))]
    schedule = UpdateSchedule(epochs=1, num_minibatches=1, micro_batch_size=2, shuffle=False)
    weights = {}
    for name, ranks, zero in (("single", 1, 0), ("dp2", 2, stage)):
        groups = RoleGroups.create(cpu_plan(critic={"devices_per_node": ranks}, reward={"devices_per_node": ranks}),
                                   {"critic": CriticWorker, "reward": RewardModelWorker}, seed=0, call_timeout_s=600)
        try:
            # Adam's eps well above the gradients' rounding noise: near-zero gradients must not turn summation
            # order into ±lr flips of single weights (measured: up to 7e-5 at eps 1e-8, ZeRO-2 RM)
            engine = EngineConfig(zero_stage=zero, lr=1e-2, adam_eps=1e-3, zero3_param_persistence_threshold=0)
            groups["critic"].call("init_model", tiny_dirs["rm"], ModelOptions(), engine, 2,
                                  schedule.grad_accum_steps(len(batch) // ranks))
            groups["critic"].call("update", batch, ValueLossConfig(), schedule, 0)
            groups["reward"].call("init_model", tiny_dirs["rm"], ModelOptions(), engine, 2 // ranks, 2)
            groups["reward"].call("train_step", examples)
            weights[name] = {role: exported_weights(groups[role], tmp_path / name / role) for role in ("critic", "reward")}
        finally:
            groups.shutdown()
    for role in ("critic", "reward"):
        initial = load_file(str(next(iter(__import__("pathlib").Path(tiny_dirs["rm"]).glob("*.safetensors")))))
        assert any(not torch.equal(initial[k], weights["single"][role][k]) for k in initial), role
        for key, value in weights["single"][role].items():
            torch.testing.assert_close(weights["dp2"][role][key], value, atol=1e-5, rtol=1e-4, msg=f"{role} {key}")
