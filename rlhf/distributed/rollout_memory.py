"""GPU memory of colocated vLLM rollout engines (`ppo.rollout.engine=vllm`), for the memory planner.

vLLM reserves `gpu_memory_utilization` × the GPU's memory when it starts (its weights, then KV cache
blocks in the rest) and keeps it, so on the actor's GPUs the planner adds that reservation to the
actor's own estimate; the actor then needs no HF-generation KV cache (rlhf.distributed.memory). The
reservation is counted even with `enable_sleep_mode`: at rollout time the engine is awake while the
actor's weights and optimizer state stay resident, so the sum is the peak that must fit.
"""
from __future__ import annotations

from rlhf.config.ppo import PPOConfig
from rlhf.distributed.memory import GIB, MemoryEstimate

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def rollout_estimate(cfg: PPOConfig, actor: MemoryEstimate, gpu_memory_gib: float) -> MemoryEstimate:
    """One colocated engine's reservation on one actor GPU: weights (the full model in vLLM's dtype,
    no ZeRO sharding) and KV cache filling the rest of the reserved fraction."""
    vllm = cfg.rollout.vllm
    options = vllm.llm_options(actor.dtype, cfg.max_model_len())
    reserved = vllm.gpu_memory_utilization * gpu_memory_gib
    weights = actor.parameters * _DTYPE_BYTES[options["dtype"]] / GIB
    return MemoryEstimate(
        role="rollout", num_nodes=actor.num_nodes, devices_per_node=actor.devices_per_node, zero_stage=0,
        offload="none", dtype={"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[options["dtype"]],
        parameters=actor.parameters, trainable_parameters=0, weights_gib=weights, grads_gib=0.0, optimizer_gib=0.0,
        activations_gib=0.0, kv_cache_gib=max(reserved - weights, 0.0), overhead_gib=0.0, cpu_gib=0.0,
        total_gib=max(reserved, weights))


def describe_rollout(cfg: PPOConfig) -> str:
    """The dry run's placement line for the rollout engines."""
    rollout, trainer = cfg.rollout, cfg.trainer
    timing = ("synchronous" if not trainer.max_staleness else
              f"asynchronous: step k+1..k+{trainer.max_staleness} sampled before step k's update "
              f"(trainer.max_staleness={trainer.max_staleness}, staleness_policy={trainer.staleness_policy})")
    if rollout.engine == "hf":
        return f"rollout: hf generate on the actor's own ranks (no separate engine); {timing}"
    vllm, ranks = rollout.vllm, cfg.placement.actor.world_size
    sleep = ", sleeps while the actor trains" if vllm.enable_sleep_mode else ""
    return (f"rollout: vllm, {ranks} engine(s), one per actor rank, colocated on the actor's "
            f"{'GPUs' if cfg.placement.use_gpu else 'CPU ranks'} (gpu_memory_utilization {vllm.gpu_memory_utilization:g}"
            f"{sleep}); weights synced after every update in {vllm.sync_bucket_mb} MB buckets; {timing}")
