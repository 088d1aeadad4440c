"""Turning a PPOConfig into running worker groups: placement plan, Ray actors, loaded models."""
from __future__ import annotations

from rlhf.config.ppo import PPOConfig
from rlhf.distributed.placement import PlacementPlan, cluster_from_ray, plan_placement
from rlhf.distributed.worker_group import RoleGroups
from rlhf.workers.actor import ActorWorker
from rlhf.workers.critic import CriticWorker
from rlhf.workers.reference import ReferenceWorker
from rlhf.workers.reward import RewardWorker
from rlhf.workers.reward_fn import RewardFnLimits
from rlhf.workers.reward_server import RewardServerSpec

WORKER_CLASSES = {"actor": ActorWorker, "critic": CriticWorker, "reference": ReferenceWorker,
                  "reward": RewardWorker}


def make_plan(cfg: PPOConfig, use_running_cluster: bool = True) -> PlacementPlan:
    """The placement plan, checked against `cfg.placement.cluster` or (if empty) the Ray cluster."""
    cluster = cfg.placement.cluster or (cluster_from_ray() if use_running_cluster else None)
    return plan_placement(cfg.placement, cfg.roles(), cluster=cluster)


def start_worker_groups(cfg: PPOConfig, env_vars: dict[str, str] | None = None,
                        worker_classes: dict[str, type] | None = None) -> RoleGroups:
    """Create every role's worker group and load its model (Ray must be initialised).

    `worker_classes` replaces the role classes (e.g. the benchmark's instrumented subclasses)."""
    plan = make_plan(cfg)
    classes = worker_classes or WORKER_CLASSES
    groups = RoleGroups.create(plan, {r: classes[r] for r in cfg.roles()}, seed=cfg.trainer.seed,
                               env_vars=env_vars, call_timeout_s=cfg.trainer.call_timeout_s)
    try:
        init_models(cfg, groups)
    except BaseException:
        groups.shutdown()
        raise
    return groups


def init_models(cfg: PPOConfig, groups) -> None:
    """Load each role's model on its ranks (concurrently across roles)."""
    schedule, engines = cfg.algorithm.update, cfg.engines
    batch = cfg.rollout.batch_size
    fwd = engines.forward_micro_batch_size
    tokenizer = cfg.actor.tokenizer_path
    pending = []
    actor_accum = schedule.grad_accum_steps(batch // cfg.placement.actor.world_size)
    pending.append(groups["actor"].call_async("init_model", cfg.actor.path, cfg.actor.options, engines.actor,
                                              schedule.micro_batch_size, actor_accum, tokenizer))
    if "critic" in groups:
        critic_accum = schedule.grad_accum_steps(batch // cfg.placement.critic.world_size)
        pending.append(groups["critic"].call_async(
            "init_model", cfg.critic_path(), cfg.critic.options, engines.critic, schedule.micro_batch_size,
            critic_accum, cfg.critic.tokenizer_path or tokenizer))
    pending.append(groups["reference"].call_async("init_model", cfg.reference_path(), cfg.reference.options,
                                                  engines.reference, fwd))
    if "reward" in groups:  # an environment (ppo.env) scores its own episodes: no reward role
        pending.append(groups["reward"].call_async(
            "init_model", cfg.reward.path or None, cfg.reward.options, engines.reward, fwd, task=cfg.task.name,
            task_kwargs=dict(cfg.task.kwargs), use_task_reward=cfg.reward_role.use_task_reward,
            reward_fn=cfg.reward_role.reward_fn,
            reward_fn_timeout_s=cfg.reward_role.fn_timeout_s, reward_fn_fallback=cfg.reward_role.fn_fallback,
            reward_fn_limits=RewardFnLimits(cfg.reward_role.fn_memory_mb, cfg.reward_role.fn_cpu_s),
            server=reward_server_spec(cfg.reward_role), tokenizer_path=cfg.reward.tokenizer_path,
            actor_tokenizer_path=tokenizer or cfg.actor.path, use_chat_template=cfg.reward.use_chat_template))
    for call in pending:
        call.result()
    if engines.forward_max_tokens_per_micro_batch is not None:
        for role in cfg.roles():
            groups[role].call("set_forward_token_budget", engines.forward_max_tokens_per_micro_batch)
    groups["actor"].call("init_rollout", cfg.rollout, cfg.max_model_len(), cfg.trainer.seed)


def reward_server_spec(role) -> RewardServerSpec | None:
    """The reward service of `ppo.reward_role` (a RewardRoleConfig), or None when scores come from elsewhere."""
    if not role.server_url:
        return None
    return RewardServerSpec(url=role.server_url, timeout_s=role.server_timeout_s, max_retries=role.server_max_retries,
                            backoff_s=role.server_backoff_s, batch_size=role.server_batch_size,
                            max_concurrency=role.server_concurrency, fallback=role.fn_fallback)

