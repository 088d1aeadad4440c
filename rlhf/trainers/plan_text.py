"""The dry run's printout: stage decisions, placement per stage, ZeRO per role, memory per GPU.

    report = preflight(cfg)                # rlhf.trainers.pipeline
    print(describe_plan(cfg, report))      # what `rlhf recipe=... dry_run=true` prints

Ray-free, like the pre-flight it describes; the memory estimate (rlhf.distributed.memory) refuses a
plan that cannot fit (PlanError).
"""
from __future__ import annotations

from pathlib import Path

from rlhf.config.run import RunConfig
from rlhf.trainers.pipeline import Preflight


def describe_plan(cfg: RunConfig, report: Preflight) -> str:
    """The dry run's printout: stage decisions, placement per stage, ZeRO per role, memory per GPU."""
    lines = [f"recipe {cfg.recipe!r}: run_dir {report.run_dir}", "stages:"]
    for d in report.decisions:
        lines.append(f"  {d.stage:<8} {d.action}{': ' + d.reason if d.reason else ''}")
    cluster = ", ".join(f"node{i}: {n.gpus} GPU(s) {n.cpus:g} CPU(s)"
                        + (f" {n.gpu_memory_gb:g} GiB/GPU" if n.gpu_memory_gb else "")
                        for i, n in enumerate(report.cluster)) or "not known before Ray starts"
    lines.append(f"cluster ({report.cluster_source}): {cluster}")
    for stage, plan in report.plans.items():
        lines.append(f"\n== {stage}: placement ==")
        lines.append(plan.describe())
        if stage == "ppo":
            from rlhf.distributed.rollout_memory import describe_rollout

            lines.append(describe_rollout(cfg.ppo))
        lines.append(f"== {stage}: engines ==")
        for role, engine in _engines(cfg, stage).items():
            offload = "+".join(n for n, on in (("optimizer", engine.offload_optimizer),
                                               ("params", engine.offload_params)) if on) or "none"
            trained = f"  lr {engine.lr:g}" if role not in ("reference", "reward") else "  (forward only)"
            lines.append(f"  {role:<10} ZeRO-{engine.zero_stage}  offload {offload}  {engine.dtype}{trained}")
        if stage == "ppo":
            lines.append(_memory_text(cfg, report))
    if cfg.ppo_reward_norm_from_rm and "ppo" in report.plans:
        lines.append("\nppo reward normalisation: from summary.json rm.score_mean/score_std (ppo_reward_norm_from_rm)")
    return "\n".join(lines)


def _engines(cfg: RunConfig, stage: str) -> dict:
    if stage in ("sft", "rm", "dpo"):
        return {stage: getattr(cfg, stage).engine}
    if stage == "offline":
        engines = {"actor": cfg.offline.engine, "reference": cfg.offline.reference_engine}
        return {role: engines[role] for role in cfg.offline.roles()}
    return {role: getattr(cfg.ppo.engines, role) for role in cfg.ppo.roles()}


def _memory_text(cfg: RunConfig, report: Preflight) -> str:
    """Estimated memory per GPU of the PPO roles (rlhf.distributed.memory); refuses a plan that cannot fit."""
    from rlhf.distributed.memory import check_memory, describe_memory, load_model_configs

    if not cfg.ppo.placement.use_gpu:
        return "== ppo: memory == not estimated: placement.use_gpu=false (CPU ranks)"
    sizes = [n.gpu_memory_gb for n in report.cluster if n.gpus > 0 and n.gpu_memory_gb > 0]
    if not sizes:
        return ("== ppo: memory == not estimated: the cluster does not say its GPU memory "
                "(ppo.placement.cluster[i].gpu_memory_gb)")
    try:
        configs = load_model_configs(_architecture_sources(cfg, report.run_dir))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"== ppo: memory == not estimated: a role's model config.json is not readable here "
                f"(offline, or made by an earlier stage): {first}")
    gpu_memory = None if cfg.ppo.placement.cluster else min(sizes)
    text = "== ppo: memory ==\n" + describe_memory(cfg.ppo, configs, gpu_memory)
    check_memory(cfg.ppo, configs, gpu_memory)  # PlanError when a device group does not fit
    return text


def _architecture_sources(cfg: RunConfig, run_dir: Path):
    """A copy of cfg.ppo whose model paths made by earlier stages (not there yet) point at the model
    those stages start from — same architecture, so the memory planner can read a config.json."""
    import copy

    made_from = {run_dir / "sft" / "final": cfg.sft.model.path, run_dir / "rm" / "final": cfg.rm.model.path}
    ppo = copy.deepcopy(cfg.ppo)
    for model in (ppo.actor, ppo.critic, ppo.reward, ppo.reference):
        for _ in range(len(made_from)):  # rm/final ← sft/final ← base: follow the chain
            if model.path and Path(model.path) in made_from and not Path(model.path).exists():
                model.path = made_from[Path(model.path)]
    return ppo
