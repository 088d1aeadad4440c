"""The PPO stage end to end: validate the config, start Ray and the worker groups, load prompts, train.

    summary = run_ppo(cfg, run_dir="outputs/run1")            # fresh run
    summary = run_ppo(cfg, run_dir="outputs/run1", resume=True)  # continue from the last checkpoint

Validation (config fields, placement against the cluster) happens before any actor starts. On a
worker failure the run stops with the error (role, rank, method), the worker groups are shut down,
and the last complete checkpoint stays on disk for `resume=True`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from rlhf.config.ppo import PPOConfig
from rlhf.data.prompts import PromptDataset
from rlhf.models import load_tokenizer
from rlhf.trainers.ppo import PPOTrainer

logger = logging.getLogger(__name__)


def load_prompts(cfg: PPOConfig):
    """(train, eval) PromptDatasets tokenized with the actor's tokenizer."""
    tokenizer = load_tokenizer(cfg.actor.tokenizer_path or cfg.actor.path, padding_side="left")
    data = cfg.data
    # A task scores responses against each row's reference: without them every score would be 0.
    common = dict(prompt_key=data.prompt_key, reference_key=data.reference_key, require_reference=bool(cfg.task.name),
                  use_chat_template=data.use_chat_template, max_prompt_len=data.max_prompt_len,
                  overlong=data.overlong)
    train = PromptDataset(data.train, tokenizer, split=data.train_split, **common)
    if len(train) < cfg.rollout.prompts_per_step:
        raise ValueError(f"data.train has {len(train)} usable prompts, fewer than rollout.prompts_per_step="
                         f"{cfg.rollout.prompts_per_step}")
    evaluation = None
    if data.eval:
        evaluation = PromptDataset(data.eval, tokenizer, split=data.eval_split, **common)
        evaluation = [evaluation[i] for i in range(min(len(evaluation), data.max_eval_prompts))]
    return train, evaluation


def episode_runner(cfg: PPOConfig):
    """The EpisodeRunner of `ppo.env` (rlhf/trainers/episodes.py), or None for single responses."""
    if not cfg.env.name:
        return None
    from rlhf.trainers.episodes import EpisodeRunner

    tokenizer = load_tokenizer(cfg.actor.tokenizer_path or cfg.actor.path, padding_side="left")
    return EpisodeRunner(cfg.env.name, dict(cfg.env.kwargs), cfg.env.max_turns, cfg.env.max_tokens, tokenizer,
                         observations=cfg.env.observations, observation_role=cfg.env.observation_role,
                         step_timeout_s=cfg.env.step_timeout_s)


def init_ray(num_cpus: float | None = None) -> None:
    """Join the Ray cluster named by RAY_ADDRESS, or start a private local one bound to loopback.

    Without RAY_ADDRESS we never attach to whatever Ray happens to run on the machine (plain
    `ray.init()` would): another user's or test's cluster could be stopped under us.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
    else:
        keep_local_ray_on_loopback()
        ray.init(address="local", num_cpus=num_cpus, logging_level="ERROR", include_dashboard=False)


def keep_local_ray_on_loopback() -> None:
    """Make the private single-machine Ray cluster about to start listen on 127.0.0.1 only.

    Ray 2.x binds its daemons (GCS, raylet, agents) and every worker's gRPC server to all interfaces
    unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and the driver reads that variable once, when `ray` is
    first imported (`ray._private.ray_constants.ENABLE_RAY_CLUSTER`). A driver that imported ray earlier
    (any `rlhf` stage does, through the worker modules) would start a cluster listening on `::`: we
    set the variable for the daemons and workers this driver starts, and the driver's constant to what
    the variable now says. Never for a cluster joined through RAY_ADDRESS: its nodes must reach each
    other. tests/recipes/test_recipes_cpu.py checks every listener of a real run.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def run_ppo(cfg: PPOConfig, run_dir: str | Path, resume: bool = False, stage: str = "ppo") -> dict[str, float]:
    """Run (or resume) the PPO stage of `cfg` in `run_dir`; returns its summary."""
    from rlhf.distributed.worker_group import WorkerDiedError, WorkerTimeoutError
    from rlhf.trainers.metrics import write_summary
    from rlhf.trainers.ppo_setup import start_worker_groups
    from rlhf.trainers.role_tokenizers import check_role_tokenizers

    cfg.validate()
    check_role_tokenizers(cfg)
    train, evaluation = load_prompts(cfg)
    init_ray()
    restarts = 0
    while True:
        groups = start_worker_groups(cfg)
        try:
            trainer = PPOTrainer(cfg, groups, train, evaluation, run_dir=run_dir, stage=stage,
                                 episodes=episode_runner(cfg))
            summary = trainer.fit(resume=resume or restarts > 0)
            if restarts:
                summary.update(write_summary(Path(run_dir) / "summary.json", stage, {"worker_restarts": restarts})[stage])
            return summary
        except (WorkerDiedError, WorkerTimeoutError) as err:
            if restarts >= cfg.trainer.max_restarts:
                raise
            restarts += 1
            logger.warning("%s: %s; restarting the worker groups from the last good checkpoint (restart %d of "
                           "trainer.max_restarts=%d)", stage, err, restarts, cfg.trainer.max_restarts)
        finally:
            groups.shutdown()
