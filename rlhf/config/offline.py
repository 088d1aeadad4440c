"""Config of the `offline` stage: the policy trained on stored rollouts, with no sampling at all.

    offline:
      actor: {path: ${run_dir}/sft/final}
      data: {train: ${run_dir}/ppo/rollouts}       # the shards `ppo.trainer.save_rollouts` writes
      algorithm: {advantage: grpo, policy_loss: {name: dro, dro_beta: 0.05}}

The rows are either saved rollouts (token ids, masks, behaviour log-probs, rewards, groups) or text rows
with a prompt, a response and a reward (rlhf/data/offline.py). Each step is one optimizer update of the
actor on `trainer.batch_size` rows with one of the policy losses (`importance_sampling`, `ppo`, `cispo`,
`dro`; rlhf/algorithms/losses.py), the importance ratio taken against the behaviour log-probs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.config.algorithm import PolicyLossConfig, invalid
from rlhf.config.engine import EngineConfig
from rlhf.config.expectations import Expectation
from rlhf.config.model import ModelConfig
from rlhf.config.placement import PlacementConfig
from rlhf.config.supervised import GoldEvalConfig, SupervisedTrainerConfig

# How a row's advantage is formed from the rewards of its group (rlhf/data/offline.py): grpo
# (standardised in the group), dr_grpo (centred), rloo (leave-one-out baseline), none (the reward itself).
OFFLINE_ADVANTAGES = ("grpo", "dr_grpo", "rloo", "none")
# Where the behaviour log-probs (the policy loss's "old" log-probs) come from: the dataset's
# `behaviour_logprobs` column, or the frozen reference model (for data without them, e.g. text rows).
BEHAVIOUR_SOURCES = ("dataset", "reference")


@dataclass
class OfflineDataConfig:
    """The stored rollouts: a file, a directory of shards, a glob, or a hub name."""

    train: str = ""  # e.g. ${run_dir}/ppo/rollouts (required)
    split: str = "train"
    # Text rows (no `response_ids` column): the fields of the prompt and the response, tokenized by the
    # actor's tokenizer as SFT rows are. Saved rollouts carry their token ids and ignore these two.
    prompt_key: str = "prompt"
    response_key: str = "response"
    reward_key: str = "score"  # the sequence reward (finite numbers)
    gold_key: str | None = "gold"  # an optional verifier column, reported as the data's gold accuracy
    # Columns whose values together name a row's group (the samples of one prompt); null = [step, group_id]
    # for saved rollouts, [prompt_key] for text rows.
    group_keys: list[str] | None = None
    use_chat_template: bool | None = None  # text rows only, as sft.data.use_chat_template
    max_len: int = 512  # prompt + response tokens of a row; a longer row is an error naming it; >= 2
    behaviour: str = "dataset"  # one of BEHAVIOUR_SOURCES

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOUR_SOURCES:
            invalid("offline.data", "behaviour", self.behaviour, f"one of {list(BEHAVIOUR_SOURCES)}")
        if self.max_len < 2:
            invalid("offline.data", "max_len", self.max_len, ">= 2")
        if self.group_keys is not None and not self.group_keys:
            invalid("offline.data", "group_keys", self.group_keys, "a non-empty list of columns, or null")


@dataclass
class OfflineAlgorithmConfig:
    """Advantages from the stored rewards and the policy loss on them."""

    advantage: str = "grpo"  # one of OFFLINE_ADVANTAGES
    eps: float = 1e-6  # grpo's std epsilon; > 0
    policy_loss: PolicyLossConfig = field(default_factory=lambda: PolicyLossConfig(name="dro"))
    # Log-probs are taken at this temperature; it must be the one the behaviour log-probs were sampled at.
    temperature: float = 1.0
    # Micro-batches of rows of similar length, each trimmed to its own width (as ppo.algorithm.update).
    padding_free: bool = True

    def __post_init__(self) -> None:
        if self.advantage not in OFFLINE_ADVANTAGES:
            invalid("offline.algorithm", "advantage", self.advantage, f"one of {list(OFFLINE_ADVANTAGES)}")
        if not self.eps > 0:
            invalid("offline.algorithm", "eps", self.eps, "> 0")
        if not self.temperature > 0:
            invalid("offline.algorithm", "temperature", self.temperature, "> 0")


@dataclass
class OfflineConfig:
    """Offline RL of `actor` on `data` (see the module docstring)."""

    actor: ModelConfig = field(default_factory=ModelConfig)  # the policy trained (usually the SFT model)
    reference: ModelConfig = field(default_factory=ModelConfig)  # frozen; null path = actor.path
    data: OfflineDataConfig = field(default_factory=OfflineDataConfig)
    algorithm: OfflineAlgorithmConfig = field(default_factory=OfflineAlgorithmConfig)
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(lr=1e-6))  # the actor's
    reference_engine: EngineConfig = field(default_factory=EngineConfig)
    forward_micro_batch_size: int = 16  # rows per reference forward (per rank); >= 1
    placement: PlacementConfig = field(default_factory=PlacementConfig)  # its actor and reference entries
    trainer: SupervisedTrainerConfig = field(default_factory=SupervisedTrainerConfig)
    gold_eval: GoldEvalConfig = field(default_factory=GoldEvalConfig)  # gold accuracy before and after
    expectations: dict[str, Expectation] = field(default_factory=dict)

    def roles(self) -> list[str]:
        """The worker groups: the reference only where its log-probs are used (KL loss or behaviour)."""
        uses_reference = self.algorithm.policy_loss.kl_loss_coef > 0 or self.data.behaviour == "reference"
        return ["actor", "reference"] if uses_reference else ["actor"]

    def reference_path(self) -> str:
        return self.reference.path or self.actor.path

    def validate(self) -> None:
        if not self.actor.path:
            invalid("offline", "actor.path", self.actor.path, "an HF model directory or hub name")
        if not self.data.train:
            invalid("offline", "data.train", self.data.train, "stored rollouts or prompt/response/reward rows")
        if self.forward_micro_batch_size < 1:
            invalid("offline", "forward_micro_batch_size", self.forward_micro_batch_size, "an int >= 1")
        self.placement.validate()
        self.trainer.grad_accum_steps(self.placement.actor.world_size)
