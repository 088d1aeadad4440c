"""The memory planner (rlhf/distributed/memory.py): parameter counts of real architectures from their
published hyper-parameters (no download), the byte terms against real CPU measurements of a tiny Llama,
and the plan-level check that refuses an impossible plan with a message saying what to change.

Exact parameter counts come from building the architecture on the meta device (shapes only, ~1 s for
8B). CPU measurements are exact where torch exposes the bytes (parameters, gradients, AdamW state) and
bounded where the formula is a documented upper bound (activations: saved-tensor hooks).
"""
import re

import pytest
import torch
from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config,
                          LlamaConfig, OPTConfig, Qwen2Config, Qwen3Config)

from rlhf.config.engine import EngineConfig
from rlhf.config.placement import NodeSpec, RolePlacement
from rlhf.config.ppo import PPOConfig
from rlhf.distributed.memory import (GIB, check_memory, count_parameters, describe_memory, estimate_memory,
                                     estimate_role_memory, load_model_configs, model_shape, suggest_remedies)
from rlhf.distributed.placement import PlanError

ROLES = ("actor", "critic", "reward", "reference")


def llama3_8b():
    """Meta-Llama-3-8B's published config.json."""
    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)


def qwen25_05b():
    """Qwen2.5-0.5B's published config.json."""
    return Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)


def qwen3_06b():
    return Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)


def tiny_llama(**kw):
    args = dict(vocab_size=256, hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                attn_implementation="sdpa")
    return LlamaConfig(**{**args, **kw})


def meta_count(config, auto_cls=AutoModelForCausalLM) -> int:
    if auto_cls is AutoModelForSequenceClassification:
        config = config.__class__(**{**config.to_dict(), "num_labels": 1})
    with torch.device("meta"):
        model = auto_cls.from_config(config)
    return sum(p.numel() for p in model.parameters())


def ppo_config(colocate=None, num_nodes=1, devices_per_node=1, zero_stage=0, dtype="bf16", cluster=(),
               **rollout) -> PPOConfig:
    """The 8B-style run used below: bf16, gradient checkpointing, 512 + 512 tokens, micro-batch 2."""
    cfg = PPOConfig()
    for role in ROLES:
        setattr(cfg.placement, role, RolePlacement(num_nodes=num_nodes, devices_per_node=devices_per_node,
                                                   colocate=colocate))
        setattr(cfg.engines, role, EngineConfig(zero_stage=zero_stage, dtype=dtype))
    cfg.placement.cluster = list(cluster)
    cfg.actor.options.gradient_checkpointing = cfg.critic.options.gradient_checkpointing = True
    cfg.data.max_prompt_len, cfg.rollout.max_new_tokens = 512, 512
    cfg.rollout.prompts_per_step = rollout.get("prompts_per_step", 64)
    cfg.rollout.samples_per_prompt = rollout.get("samples_per_prompt", 1)
    cfg.algorithm.update.micro_batch_size = 2
    cfg.engines.forward_micro_batch_size = 4
    return cfg


# --- parameter counts -------------------------------------------------------------------------------


@pytest.mark.parametrize("make, published", [(llama3_8b, 8.03e9), (qwen25_05b, 0.494e9), (qwen3_06b, 0.596e9),
                                             (GPT2Config, 0.124e9)],
                         ids=["llama3-8b", "qwen2.5-0.5b", "qwen3-0.6b", "gpt2"])
def test_parameter_count_matches_the_architecture(make, published):
    config = make()
    estimate = count_parameters(config)
    assert estimate == meta_count(config)  # the closed form is exact, not just within 10 %
    assert abs(estimate - published) / published < 0.01
    # Critic / reward model: the same backbone with a 1-label score head instead of the LM head.
    assert count_parameters(config, head="scalar") == meta_count(config, AutoModelForSequenceClassification)


def test_llama3_8b_published_numbers():
    assert count_parameters(llama3_8b()) == 8_030_261_248
    assert count_parameters(qwen25_05b()) == 494_032_768


def test_architecture_without_a_formula_is_counted_on_meta():
    config = OPTConfig(vocab_size=1000, hidden_size=64, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4,
                       word_embed_proj_dim=64, max_position_embeddings=128)
    assert model_shape(config).exact_parameters is not None
    assert count_parameters(config) == meta_count(config)


def test_lora_trainable_parameters_match_peft():
    from peft import LoraConfig, get_peft_model

    config = tiny_llama()
    model = get_peft_model(AutoModelForCausalLM.from_config(config),
                           LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model_shape(config).lora_parameters(8) == trainable


# --- bytes against a real CPU model -------------------------------------------------------------------


def tiny_run(dtype="fp32", micro=4, prompt=32, response=32, checkpointing=False) -> PPOConfig:
    cfg = PPOConfig()
    cfg.engines.critic = EngineConfig(dtype=dtype)
    cfg.engines.actor = EngineConfig(dtype=dtype)
    cfg.data.max_prompt_len, cfg.rollout.max_new_tokens = prompt, response
    cfg.algorithm.update.micro_batch_size = micro
    cfg.critic.options.gradient_checkpointing = checkpointing
    return cfg


def test_weights_grads_and_adamw_state_match_a_real_tiny_llama():
    """fp32 training: weights 4 B/param, grads 4 B/param, AdamW 8 B/param (two moments; the weights
    are the master copy) — compared with the bytes torch actually holds after one step."""
    config = tiny_llama()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    estimate = estimate_role_memory(tiny_run(), "actor", config)

    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert estimate.weights_gib * GIB == param_bytes

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, config.vocab_size, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    optimizer.step()
    moment_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                       for k, t in s.items() if k != "step")
    assert estimate.grads_gib * GIB == grad_bytes
    assert estimate.optimizer_gib * GIB == moment_bytes


def _saved_activation_bytes(model, ids) -> int:
    """Bytes autograd saves for backward in one forward (parameters excluded, storages deduplicated)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids)
    return sum(storages.values())


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_training_activations_bound_the_measured_saved_tensors(dtype):
    """The critic's backbone (no logits) on a micro-batch: the documented 10·H + 4·I per token and
    layer (+ the fp32 RMSNorm upcast in bf16) must not be below what autograd really saves, and not far
    above it (≤ 25 %: a plan refused for a 25 % overestimate is still a plan the user can fix)."""
    config = tiny_llama(num_hidden_layers=3)
    torch.manual_seed(0)
    backbone = AutoModel.from_config(config).to(torch.float32 if dtype == "fp32" else torch.bfloat16)
    cfg = tiny_run(dtype=dtype, micro=4, prompt=32, response=32)
    ids = torch.randint(0, config.vocab_size, (4, 64))
    measured = _saved_activation_bytes(backbone, ids)
    estimate = estimate_role_memory(cfg, "critic", config).activations_gib * GIB
    assert measured <= estimate <= 1.25 * measured, (measured, estimate)


def test_gradient_checkpointing_estimate_bounds_the_measurement():
    config = tiny_llama(num_hidden_layers=3)
    backbone = AutoModel.from_config(config)
    (getattr(backbone, "activation_checkpointing_enable", None) or backbone.gradient_checkpointing_enable)()
    backbone.train()
    ids = torch.randint(0, config.vocab_size, (4, 64))
    measured = _saved_activation_bytes(backbone, ids)
    full = estimate_role_memory(tiny_run(), "critic", config).activations_gib * GIB
    checkpointed = estimate_role_memory(tiny_run(checkpointing=True), "critic", config).activations_gib * GIB
    assert measured <= checkpointed < full


# --- plan-level checks --------------------------------------------------------------------------------


def test_8b_four_model_ppo_on_one_24gb_gpu_is_refused_with_what_to_change():
    cfg = ppo_config(colocate="all", cluster=[NodeSpec(gpus=1, cpus=8, gpu_memory_gb=24)])
    configs = {"actor": llama3_8b(), "reward": llama3_8b()}
    with pytest.raises(PlanError) as info:
        check_memory(cfg, configs)
    message = str(info.value)
    for role in ROLES:
        assert role in message
    assert "24 GiB" in message and "over by" in message
    for remedy in ("offload_optimizer=true", "offload_params=true", "zero_stage=3", "colocate=null",
                   "devices_per_node=2", "max_new_tokens=", "prompts_per_step="):
        assert remedy in message, remedy
    savings = [float(s) for s in re.findall(r": -(\d+\.\d) GiB", message)]
    assert savings and savings == sorted(savings, reverse=True)  # ranked, largest saving first
    assert "No single change is enough" in message  # 286 GiB on 24: several changes are needed


def test_same_8b_setup_on_2x8_gpus_with_zero3_fits():
    cluster = [NodeSpec(gpus=8, cpus=64, gpu_memory_gb=80)] * 2
    configs = {"actor": llama3_8b(), "reward": llama3_8b()}
    groups = check_memory(ppo_config(colocate="all", num_nodes=2, devices_per_node=8, zero_stage=3,
                                     cluster=cluster), configs)
    assert len(groups) == 1 and groups[0].num_devices == 16 and groups[0].total_gib < 80
    assert groups[0].gpu_memory_gib == 80  # read from placement.cluster
    # Without ZeRO-3 the replicated 8B actor alone (16 B/param with AdamW) exceeds 80 GiB.
    with pytest.raises(PlanError, match="zero_stage=3"):
        check_memory(ppo_config(colocate="all", num_nodes=2, devices_per_node=8, zero_stage=0), configs,
                     gpu_memory_gb=80)


def test_colocated_roles_add_up():
    configs = {"actor": qwen25_05b(), "reward": qwen25_05b()}
    separate = check_memory(ppo_config(), configs, gpu_memory_gb=80)
    together = check_memory(ppo_config(colocate="shared"), configs, gpu_memory_gb=80)
    assert len(separate) == 4 and len(together) == 1
    assert together[0].total_gib == pytest.approx(sum(g.total_gib for g in separate))
    assert {e.role for e in together[0].estimates} == set(ROLES)


def test_zero_stages_shard_what_they_should():
    config = qwen25_05b()

    def actor(stage, dp, **engine):
        cfg = ppo_config(devices_per_node=dp)
        cfg.engines.actor = EngineConfig(zero_stage=stage, dtype="bf16", **engine)
        return estimate_role_memory(cfg, "actor", config)

    one = actor(0, 1)
    assert actor(0, 8).weights_gib == one.weights_gib  # plain data parallel: full replicas
    assert actor(3, 8).weights_gib == pytest.approx(one.weights_gib / 8)  # ZeRO-3 shards the weights
    assert actor(2, 8).weights_gib == one.weights_gib and actor(2, 8).grads_gib == pytest.approx(one.grads_gib / 8)
    assert actor(1, 8).grads_gib == one.grads_gib
    assert actor(1, 8).optimizer_gib == pytest.approx(one.optimizer_gib / 8)
    assert one.optimizer_gib == pytest.approx(6 * one.weights_gib)  # 12 B/param vs 2 B/param in bf16
    offloaded = actor(3, 8, offload_optimizer=True, offload_params=True)
    assert offloaded.weights_gib == offloaded.optimizer_gib == 0
    assert offloaded.cpu_gib == pytest.approx((one.weights_gib + one.optimizer_gib) / 8)
    assert offloaded.offload == "optimizer+params"


def test_forward_only_roles_hold_no_grads_or_optimizer_and_rule_reward_holds_nothing():
    cfg = ppo_config()
    cfg.reward_role.use_task_reward, cfg.task.name = True, "arithmetic"
    estimates = estimate_memory(cfg, {"actor": qwen25_05b()})
    assert estimates["reference"].grads_gib == estimates["reference"].optimizer_gib == 0
    assert estimates["reward"].total_gib == 0
    assert estimates["actor"].kv_cache_gib > 0 and estimates["critic"].kv_cache_gib == 0


def test_kv_cache_follows_the_published_formula():
    cfg = ppo_config(prompts_per_step=64, samples_per_prompt=4, devices_per_node=2)
    shape = model_shape(llama3_8b())
    kv_bytes = 2 * 32 * 8 * 128 * 1024 * (64 * 4 // 2) * 2  # 2 × L × kv_heads × head_dim × S × rows × bf16
    assert shape.kv_bytes_per_token(2) * 1024 * 128 == kv_bytes
    assert estimate_role_memory(cfg, "actor", shape).kv_cache_gib * GIB >= kv_bytes


def test_each_suggested_change_saves_what_it_claims():
    cfg = ppo_config(colocate="all")
    configs = {"actor": qwen25_05b(), "reward": qwen25_05b()}
    group = check_memory(cfg, configs, gpu_memory_gb=1000)[0]
    remedies = {r.change: r for r in suggest_remedies(cfg, configs, group)}
    before = estimate_memory(cfg, configs)["actor"]
    offload = remedies["engines.actor.offload_optimizer=true engines.actor.zero_stage=1"]
    cfg_offload = ppo_config(colocate="all")
    cfg_offload.engines.actor = EngineConfig(zero_stage=1, dtype="bf16", offload_optimizer=True)
    after = estimate_memory(cfg_offload, configs)["actor"]
    assert after.optimizer_gib == 0 and after.cpu_gib == before.optimizer_gib
    # The net saving: the AdamW state leaves the GPU, ZeRO-1's communication buckets arrive.
    assert offload.saving_gib == pytest.approx(before.optimizer_gib - (after.overhead_gib - before.overhead_gib))
    assert remedies["placement.critic.colocate=null"].saving_gib == pytest.approx(
        estimate_memory(cfg, configs)["critic"].total_gib)


def test_describe_memory_and_load_model_configs(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "sft")
    cfg = ppo_config(colocate="all")
    cfg.actor.path, cfg.reward.path = str(tmp_path / "sft"), str(tmp_path / "sft")
    configs = load_model_configs(cfg)
    assert set(configs) == set(ROLES) and configs["actor"].hidden_size == 128
    table = describe_memory(cfg, configs, gpu_memory_gb=24)
    for word in ("role", "ZeRO", "offload", "weights", "grads", "optim", "activ", "KV", "total", "fits", *ROLES):
        assert word in table
    assert "DOES NOT FIT" in describe_memory(cfg, {"actor": llama3_8b(), "reward": llama3_8b()}, gpu_memory_gb=24)


def test_missing_gpu_memory_is_a_clear_error():
    with pytest.raises(ValueError, match="gpu_memory_gb"):
        check_memory(ppo_config(), {"actor": qwen25_05b(), "reward": qwen25_05b()})


def test_recipe_hub_models_plan_offline_from_their_published_configs():
    """HF_HUB_OFFLINE is set for tests: the hub is unreachable, the published config stands in."""
    from rlhf.distributed.memory import PUBLISHED_CONFIGS

    cfg = ppo_config()
    cfg.actor.path = cfg.reward.path = "meta-llama/Llama-3.1-8B-Instruct"
    configs = load_model_configs(cfg)
    assert count_parameters(configs["actor"]) == count_parameters(llama3_8b()) == 8_030_261_248
    qwen = PUBLISHED_CONFIGS["Qwen/Qwen2.5-0.5B-Instruct"]
    assert count_parameters(qwen25_05b()) == count_parameters(Qwen2Config(**{k: v for k, v in qwen.items()
                                                                          if k != "model_type"}))
    cfg.actor.path = "no-such-org/no-such-model"
    with pytest.raises(OSError):
        load_model_configs(cfg)


def test_a_hybrid_host_peaks_at_its_largest_phase_and_offloading_idle_roles_lowers_it():
    """Issue 17: roles in one process run in turn, so the device holds the active role whole and the
    others only what `offload_when_idle` keeps (rlhf/distributed/hybrid_memory.py) — checked against the
    colocated sum, term by term."""
    configs = {"actor": qwen25_05b(), "reward": qwen25_05b()}
    colocated = check_memory(ppo_config(colocate="shared"), configs, gpu_memory_gb=80)[0]
    cfg = ppo_config()
    cfg.placement.layout = "hybrid"
    kept = check_memory(cfg, configs, gpu_memory_gb=80)[0]
    assert kept.group == "hybrid" and set(kept.phases) == set(ROLES)
    by_role = {e.role: e for e in kept.estimates}
    # nothing offloaded: only the idle roles' activations / KV cache are not there
    for role, peak in kept.phases.items():
        idle = sum(e.weights_gib + e.grads_gib + e.optimizer_gib + e.overhead_gib for r, e in by_role.items() if r != role)
        assert peak == pytest.approx(by_role[role].total_gib + idle)
        assert peak <= colocated.total_gib
    assert kept.total_gib == pytest.approx(max(kept.phases.values()))
    for role in ROLES:
        cfg.placement.role(role).offload_when_idle = "all" if role in ("reference", "reward", "critic") else "optimizer"
    light = check_memory(cfg, configs, gpu_memory_gb=80)[0]
    actor = by_role["actor"]
    others = sum(by_role[r].overhead_gib for r in ("critic", "reference", "reward"))
    assert light.phases["actor"] == pytest.approx(actor.total_gib + others)  # the rest keep only overhead
    critic_phase = by_role["critic"].total_gib + actor.weights_gib + actor.overhead_gib + sum(
        by_role[r].overhead_gib for r in ("reference", "reward"))
    assert light.phases["critic"] == pytest.approx(critic_phase)  # the idle actor keeps its weights
    assert light.total_gib < kept.total_gib
    text = describe_memory(cfg, configs, gpu_memory_gb=80)
    assert "hybrid host, peak per phase" in text and "actor " in text


def test_a_hybrid_host_that_does_not_fit_suggests_offloading_its_idle_roles():
    configs = {"actor": llama3_8b(), "reward": llama3_8b()}
    cfg = ppo_config()
    cfg.placement.layout = "hybrid"
    with pytest.raises(PlanError) as err:
        check_memory(cfg, configs, gpu_memory_gb=80)
    assert "placement.critic.offload_when_idle=all" in str(err.value)
    assert "placement.critic.colocate=critic" in str(err.value)  # in the hybrid layout null means the host


def test_idle_offload_needs_the_hybrid_layout_and_an_engine_that_can_release():
    from rlhf.config.placement import PlacementConfig

    with pytest.raises(ValueError, match=r"placement.critic.offload_when_idle='all' is invalid: expected 'none' "
                                         r"unless placement.layout=hybrid"):
        PlacementConfig(critic=RolePlacement(offload_when_idle="all"))
    cfg = ppo_config(zero_stage=3)
    cfg.actor.path, cfg.data.train, cfg.reward.path = "a", "d", "r"
    cfg.placement.layout, cfg.placement.actor.offload_when_idle = "hybrid", "optimizer"
    with pytest.raises(ValueError, match=r"placement.actor.offload_when_idle.*zero_stage=3.*offload_optimizer"):
        cfg.validate()
    cfg = ppo_config()
    cfg.actor.path, cfg.data.train, cfg.reward.path = "a", "d", "r"
    cfg.placement.layout, cfg.placement.reference.offload_when_idle = "hybrid", "optimizer"
    with pytest.raises(ValueError, match=r"placement.reference.offload_when_idle.*forward-only role"):
        cfg.validate()
