"""Shared set-up for PPO controller tests: tiny models, arithmetic prompt files, a small PPOConfig."""
from pathlib import Path

from rlhf.config.algorithm import AlgorithmConfig, UpdateSchedule
from rlhf.config.engine import EngineConfig
from rlhf.config.model import ModelConfig
from rlhf.config.placement import PlacementConfig, RolePlacement
from rlhf.config.ppo import PPOConfig, PromptDataConfig, RoleEngines, RolloutConfig, TaskConfig, TrainerConfig
from rlhf.models.tiny import build_tiny_model, build_tiny_reward_model, build_tiny_tokenizer
from rlhf.tasks import get_task

TINY = dict(num_layers=2, hidden_size=32, num_heads=2)
TASK_KWARGS = {"num_train_prompts": 64, "num_eval_prompts": 8, "num_train_pairs": 16, "num_eval_pairs": 8}


def build_assets(root: Path) -> dict[str, str]:
    build_tiny_tokenizer(root / "tok")
    files = get_task("arithmetic", **TASK_KWARGS).write_files(root / "data")
    return {"lm": str(build_tiny_model(root / "lm", root / "tok", seed=0, **TINY)),
            "rm": str(build_tiny_reward_model(root / "rm", root / "tok", seed=1, **TINY)),
            "train": str(files["train_prompts"]), "eval": str(files["eval_prompts"])}


def small_config(assets: dict[str, str], **overrides) -> PPOConfig:
    cpu = dict(cpus_per_rank=0.25)
    cfg = PPOConfig(
        actor=ModelConfig(path=assets["lm"]), reward=ModelConfig(path=assets["rm"]),
        data=PromptDataConfig(train=assets["train"], eval=assets["eval"], max_eval_prompts=8, max_prompt_len=16),
        task=TaskConfig(name="arithmetic", kwargs=dict(TASK_KWARGS)),
        rollout=RolloutConfig(prompts_per_step=4, samples_per_prompt=2, max_new_tokens=4),
        algorithm=AlgorithmConfig(update=UpdateSchedule(epochs=1, num_minibatches=2, micro_batch_size=2)),
        engines=RoleEngines(actor=EngineConfig(lr=1e-3), critic=EngineConfig(lr=1e-3), forward_micro_batch_size=8),
        placement=PlacementConfig(use_gpu=False, actor=RolePlacement(**cpu), critic=RolePlacement(**cpu),
                                  reward=RolePlacement(**cpu), reference=RolePlacement(**cpu)),
        trainer=TrainerConfig(total_steps=3, eval_every=2, save_every=1, keep_last=2, progress=False),
    )
    for dotted, value in overrides.items():
        target = cfg
        *parents, leaf = dotted.split("__")
        for name in parents:
            target = getattr(target, name)
        setattr(target, leaf, value)
    return cfg
